"""BatchNorm + LIF fused: op.py (bn_lif, its autograd), triton.py, reference.py (the spec)."""
