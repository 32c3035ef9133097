"""The multi-step LIF: op.py (lif), autograd.py (fakes, autograd, the _C pair), triton.py,
reference.py (the spec)."""
