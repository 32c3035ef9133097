"""Max-pools with autograd that keep one byte per window for the backward: `max_pool2x2` (2x2,
stride 2) and `max_pool3x3s2` (3x3, stride 2, padding 1: the SpikeCLIP / Spikformer tokenizer's).

The `torch` backend is F.max_pool2d (the spec: max_pool/reference.py). The `cpp` kernels give
the same values and the same gradients (the first maximum of a window in row-major order takes
the window's gradient, as in PyTorch; NaNs win, the last one; overlapping 3x3 windows add their
gradients in PyTorch's order), keeping the winner's place in its window, one byte, instead of
PyTorch's int64 index, in one pass over x (PyTorch's CPU pooling of [T B, C, H, W] planes ran at
about a fifth of the machine's copy speed here: csrc/cpu/max_pool_cpu.cpp).
"""

from __future__ import annotations

import torch

from spikeclip._ext import extension_loaded
from spikeclip.kernels.common.backends import resolve_backend
from spikeclip.kernels.max_pool.reference import max_pool2x2_reference, max_pool3x3s2_reference


class _BytePool(torch.autograd.Function):
    """A cpp pool `spikeclip::<name>` -> (y, where) and its `<name>_backward`."""

    @staticmethod
    def forward(ctx, x, name):
        y, where = getattr(torch.ops.spikeclip, name)(x)
        ctx.save_for_backward(where)
        ctx.size, ctx.name = x.shape[-2:], name
        ctx.mark_non_differentiable(where)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (where,) = ctx.saved_tensors
        backward = getattr(torch.ops.spikeclip, f"{ctx.name}_backward")
        return backward(grad_y.contiguous(), where, *ctx.size), None


def _pool(x, name, backend, smallest, spec):
    if x.dim() != 4 or x.shape[-2] < smallest or x.shape[-1] < smallest:
        raise ValueError(
            f"{name}: x must be [N, C, H, W] with H, W >= {smallest}, got {tuple(x.shape)}"
        )
    backend = resolve_backend(backend, x.device, op=name)
    if backend == "torch" or torch.compiler.is_compiling():
        return spec(x)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return getattr(torch.ops.spikeclip, name)(x)[0]
    return _BytePool.apply(x, name)


def max_pool2x2(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """F.max_pool2d(x, 2) for x `[N, C, H, W]` (H, W >= 2; an odd last row or column is
    dropped). Returns `[N, C, H // 2, W // 2]`."""
    return _pool(x, "max_pool2x2", backend, 2, max_pool2x2_reference)


def max_pool3x3s2(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """F.max_pool2d(x, 3, stride=2, padding=1) for x `[N, C, H, W]` (H, W >= 1). Returns
    `[N, C, (H - 1) // 2 + 1, (W - 1) // 2 + 1]`."""
    return _pool(x, "max_pool3x3s2", backend, 1, max_pool3x3s2_reference)


if extension_loaded():  # fakes of spikeclip._C's ops (torch.compile, opcheck)

    @torch.library.register_fake("spikeclip::max_pool2x2")
    def _pool_fake(x):
        shape = (*x.shape[:-2], x.shape[-2] // 2, x.shape[-1] // 2)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)

    @torch.library.register_fake("spikeclip::max_pool3x3s2")
    def _pool3_fake(x):
        shape = (*x.shape[:-2], (x.shape[-2] - 1) // 2 + 1, (x.shape[-1] - 1) // 2 + 1)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)

    @torch.library.register_fake("spikeclip::max_pool2x2_backward")
    @torch.library.register_fake("spikeclip::max_pool3x3s2_backward")
    def _pool_bwd_fake(grad_y, where, height, width):
        return grad_y.new_empty((*grad_y.shape[:-2], height, width))
