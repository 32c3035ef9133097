"""BatchNorm + max-pool fused: op.py (bn_max_pool, its autograd, fakes of the _C ops),
reference.py (F.max_pool2d of F.batch_norm, the spec)."""
