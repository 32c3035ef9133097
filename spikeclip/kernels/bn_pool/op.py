"""BatchNorm followed by a max-pool, fused: `bn_max_pool(y, <F.batch_norm's args>, window=)`.

y is a conv's output `[N, C, H, W]` (T folded into N), window "3x3s2" (3x3, stride 2, padding
1: the Spikformer stem's pool between BatchNorm and the neuron) or "2x2" (stride 2). The
reference (`backend="torch"`, bn_pool/reference.py) is F.max_pool2d(F.batch_norm(y)): the same
values and winners (the first maximum of a window in row-major order; NaN wins).
- `cpp` (CPU, float32 / float64; csrc/cpu/bn_pool_cpu.cpp): statistics by `bn_stats` (one read
  of y), then one pass normalises each plane into scratch and pools it, keeping a byte per
  window: BatchNorm's output never goes to memory. The backward keeps y and the bytes (the
  pair keeps y, BatchNorm's whole output and the pool's indices) and runs both backwards in
  one pass per plane after the sums at the winners.
"auto" takes cpp for CPU float32 / float64 y, else the reference (on CUDA, PyTorch's kernels).
Training mode updates the running statistics as nn.BatchNorm does.
"""

from __future__ import annotations

import torch

from spikeclip._ext import extension_loaded
from spikeclip.kernels.bn_pool.reference import POOLS, bn_max_pool_reference
from spikeclip.kernels.common.backends import resolve_backend
from spikeclip.kernels.common.batch_norm import check_batch_norm, normalising_statistics

_WINDOW = {"2x2": 2, "3x3s2": 3}  # the kernels' `window` argument


class _BnMaxPoolCpp(torch.autograd.Function):
    """The cpp kernels: forward and backward one op each; y and a byte per window kept."""

    @staticmethod
    def forward(ctx, y, weight, bias, mean, invstd, window, training):
        z, where = torch.ops.spikeclip.bn_max_pool(y, mean, invstd, weight, bias, window)
        ctx.save_for_backward(y, where, weight, mean, invstd)
        ctx.window, ctx.training = window, training
        ctx.bias_dtype = None if bias is None else bias.dtype
        return z

    @staticmethod
    def backward(ctx, grad_z):
        y, where, weight, mean, invstd = ctx.saved_tensors
        grad_y, grad_w, grad_b = torch.ops.spikeclip.bn_max_pool_backward(
            grad_z.to(y.dtype).contiguous(), where, y, mean, invstd, weight, ctx.window,
            ctx.training,
        )  # fmt: skip
        needs = ctx.needs_input_grad
        return (
            grad_y if needs[0] else None,
            grad_w.to(weight.dtype) if weight is not None and needs[1] else None,
            grad_b.to(ctx.bias_dtype) if ctx.bias_dtype is not None and needs[2] else None,
            *([None] * 4),
        )


def bn_pool_backend(y: torch.Tensor, backend: str = "auto") -> str:
    """The backend `bn_max_pool(y, ..., backend=backend)` runs: "cpp" or "torch" (the
    reference); a backend asked for by name that cannot run y is an error."""
    asked = backend
    backend = resolve_backend(backend, y.device, op="bn_max_pool")
    if backend == "cpp" and y.dtype not in (torch.float32, torch.float64):
        if asked != "auto":
            raise TypeError(f"bn_max_pool: the cpp backend takes float32 and float64 y, got "
                            f"{y.dtype}")  # fmt: skip
        return "torch"
    return backend


def bn_max_pool(
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
    backend: str = "auto",
) -> torch.Tensor:
    """F.max_pool2d(F.batch_norm(y, running_mean, running_var, weight, bias, training, momentum,
    eps), window) for y `[N, C, H, W]` (F.batch_norm's arguments as nn.BatchNorm passes them:
    kernels.common.batch_norm.batch_norm_args; the running statistics are updated in training
    mode). window: "3x3s2" (3x3, stride 2, padding 1; H, W >= 1) or "2x2" (stride 2, an odd
    last row or column dropped; H, W >= 2). backend "torch": the reference; "cpp": the fused
    kernels; "auto": cpp for CPU float32 / float64 y, else torch."""
    if window not in _WINDOW:
        raise ValueError(f"bn_max_pool: window must be one of {tuple(_WINDOW)}, got {window!r}")
    check_batch_norm("bn_max_pool", y, running_mean, running_var, weight, bias, training)
    smallest = 2 if window == "2x2" else 1
    if y.dim() != 4 or y.shape[-2] < smallest or y.shape[-1] < smallest:
        raise ValueError(f"bn_max_pool: y must be [N, C, H, W] with H, W >= {smallest} for a "
                         f"{window} pool, got {tuple(y.shape)}")  # fmt: skip
    backend = bn_pool_backend(y, backend)
    args = (running_mean, running_var, weight, bias, training, momentum, eps)
    if backend == "torch" or y.numel() == 0 or torch.compiler.is_compiling():
        return bn_max_pool_reference(y, *args, window=window)
    mean, invstd = normalising_statistics(y, running_mean, running_var, training, momentum, eps,
                                          "cpp")  # fmt: skip
    y = y.contiguous()
    return _BnMaxPoolCpp.apply(y, weight, bias, mean, invstd, _WINDOW[window], training)


def _fwd_fake(y, mean, invstd, weight, bias, window):
    shape = (*y.shape[:2], *[(n // 2 if window == 2 else (n - 1) // 2 + 1) for n in y.shape[2:]])
    return y.new_empty(shape), y.new_empty(shape, dtype=torch.uint8)


def _bwd_fake(grad_z, where, y, mean, invstd, weight, window, training):
    return torch.empty_like(y), y.new_empty(y.shape[1]), y.new_empty(y.shape[1])


if extension_loaded():  # fakes of the cpp ops (torch.compile, opcheck)
    torch.library.register_fake("spikeclip::bn_max_pool")(_fwd_fake)
    torch.library.register_fake("spikeclip::bn_max_pool_backward")(_bwd_fake)

__all__ = ["POOLS", "bn_max_pool", "bn_pool_backend"]
