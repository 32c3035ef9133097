"""PyTorch's and SpikingJelly's max-pools of the two shapes our kernels compute (3x3 stride 2
padding 1, and 2x2 stride 2) on `spikeclip.kernels.max_pool3x3s2` / `max_pool2x2`: the same
values and gradients (tested against F.max_pool2d), a byte per window kept for the backward
instead of an int64 index. Any other pool is never touched; on GPU the library op runs."""

from __future__ import annotations

import torch
from torch import nn

from spikeclip.kernels import max_pool2x2, max_pool3x3s2
from spikeclip.models.kernel_policy import runs_cpp_kernels


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, tuple | list) else (v, v)


def pool_kind(pool: nn.MaxPool2d) -> str | None:
    """ "3x3s2" or "2x2" when `pool` is one our kernels compute exactly, else None."""
    if pool.return_indices or pool.ceil_mode or _pair(pool.dilation) != (1, 1):
        return None
    shape = (_pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding))
    return {((3, 3), (2, 2), (1, 1)): "3x3s2", ((2, 2), (2, 2), (0, 0)): "2x2"}.get(shape)


_KERNELS = {"3x3s2": max_pool3x3s2, "2x2": max_pool2x2}


def byte_pool(pool, x: torch.Tensor, fallback):
    """pool(x) for x `[N, C, H, W]` or `[C, H, W]` on our kernel where it runs (CPU, the
    extension built, a pool shape we compute, inputs the kernel takes), else fallback(x)."""
    kind = pool_kind(pool)
    backend = getattr(pool, "kernel_backend", "auto")
    if kind is None or x.dim() not in (3, 4) or not runs_cpp_kernels(backend, x):
        return fallback(x)
    smallest = 2 if kind == "2x2" else 1
    if x.shape[-1] < smallest or x.shape[-2] < smallest or not x.is_floating_point():
        return fallback(x)
    four = x if x.dim() == 4 else x.unsqueeze(0)
    y = _KERNELS[kind](four, backend="cpp")
    return y if x.dim() == 4 else y[0]


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d (same arguments) on our byte-per-window kernels where they apply."""

    kernel_backend = "auto"

    def forward(self, x):
        return byte_pool(self, x, super().forward)


NEEDS = {nn.MaxPool2d: MaxPool2d}
