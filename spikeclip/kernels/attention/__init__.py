"""Spiking attention fused with its LIF (sdsa, ssa): op.py, autograd.py (fakes, autograd, the
_C ops), triton.py, reference.py (the spec)."""
