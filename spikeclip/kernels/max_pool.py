"""2x2 max-pool with stride 2 (the tokenizer's pooling), with autograd.

The `torch` backend is F.max_pool2d(x, 2) (the spec). The `cpp` kernel gives the same values and
the same gradients (the first maximum of a window in row-major order takes the window's
gradient, as in PyTorch; NaNs win), keeping one byte per window for the backward instead of
PyTorch's int64 index, in one pass over x (PyTorch's CPU pooling of [T B, C, H, W] planes ran at
about a fifth of the machine's copy speed here: csrc/cpu/max_pool_cpu.cpp).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spikeclip.kernels.backends import resolve_backend

MAX_POOL_BACKENDS = ("torch", "cpp")


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y, where = torch.ops.spikeclip.max_pool2x2(x)
        ctx.save_for_backward(where)
        ctx.size = x.shape[-2:]
        ctx.mark_non_differentiable(where)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (where,) = ctx.saved_tensors
        return torch.ops.spikeclip.max_pool2x2_backward(grad_y.contiguous(), where, *ctx.size)


def max_pool2x2(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """F.max_pool2d(x, 2) for x `[N, C, H, W]` (H, W >= 2; an odd last row or column is
    dropped). Returns `[N, C, H // 2, W // 2]`."""
    if x.dim() != 4 or x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(
            f"max_pool2x2: x must be [N, C, H, W] with H, W >= 2, got {tuple(x.shape)}"
        )
    backend = resolve_backend(backend, x.device, supported=MAX_POOL_BACKENDS, op="max_pool2x2")
    if backend == "torch" or torch.compiler.is_compiling():
        return F.max_pool2d(x, 2)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.ops.spikeclip.max_pool2x2(x)[0]
    return _MaxPool2x2.apply(x)
