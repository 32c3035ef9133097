"""Max-pools that keep one byte per window: op.py (max_pool2x2, max_pool3x3s2, fakes of the _C
ops), reference.py (F.max_pool2d, the spec)."""
