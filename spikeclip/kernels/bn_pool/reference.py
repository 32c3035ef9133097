"""The fused BatchNorm + max-pool's reference (its spec): F.batch_norm, then F.max_pool2d of the
window named (POOLS: "3x3s2", 3x3 stride 2 padding 1; "2x2", stride 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOLS = {"3x3s2": dict(kernel_size=3, stride=2, padding=1), "2x2": dict(kernel_size=2, stride=2)}


def bn_max_pool_reference(
    y: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    *,
    window: str = "3x3s2",
) -> torch.Tensor:
    """F.max_pool2d(F.batch_norm(y, ...), window) for y `[N, C, H, W]`."""
    z = F.batch_norm(y, running_mean, running_var, weight, bias, training, momentum, eps)
    return F.max_pool2d(z, **POOLS[window])
