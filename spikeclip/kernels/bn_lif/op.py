"""BatchNorm followed by a multi-step LIF, fused: `bn_lif(y, T, <F.batch_norm's args>, ...)`.

y is a spiking unit's conv / linear output seen as `[outer, C, inner]` (linear: `[T*B*N, C]`,
inner 1; conv: `[T*B, C, H, W]`, inner H*W), time-major (outer = T x ...). The reference
(`backend="torch"`, bn_lif/reference.py) is `bn(y)` then `lif_reference` over T. The fused
path (`triton`) reads y once for the statistics (torch.var_mean), then one kernel normalises,
applies the affine and runs the LIF over T in registers: the normalised BN output never goes
to memory. Its backward runs the LIF backward kernel and BatchNorm's backward formula (torch
ops). Training mode updates the running statistics as nn.BatchNorm does (momentum; unbiased
running variance). Saved for the backward: y and the membrane h, as the unfused pair keeps.
"""

from __future__ import annotations

import torch
from torch import nn

from spikeclip.kernels.bn_lif.reference import bn_lif_reference
from spikeclip.kernels.common.backends import resolve_backend
from spikeclip.kernels.common.options import LifOptions


def _channels_view(y: torch.Tensor) -> tuple[int, int, int]:
    """(outer, C, inner) of y `[outer, C]` or `[outer, C, *spatial]`."""
    if y.dim() < 2:
        raise ValueError(f"bn_lif: y must be [outer, C, ...], got shape {tuple(y.shape)}")
    inner = 1
    for d in y.shape[2:]:
        inner *= d
    return y.shape[0], y.shape[1], inner


def _check(y, T, running_mean, running_var, weight, bias, training) -> None:
    """What the fused kernels rely on, refused with a clear error before they read anything:
    y floating `[T*B', C, ...]`, every per-channel tensor C long on y's device, more than one
    value per channel to normalise over in training mode (as F.batch_norm asks)."""
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"bn_lif: y must be a floating tensor, got {getattr(y, 'dtype', y)}")
    outer, C, inner = _channels_view(y)
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0 or outer % T:
        raise ValueError(f"bn_lif: y's first dimension ({outer}) must be a multiple of T={T}")
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):  # fmt: skip
        if t is not None and (t.dim() != 1 or t.numel() != C or t.device != y.device):
            raise ValueError(
                f"bn_lif: {name} must be [{C}] on {y.device}, got {tuple(t.shape)} on {t.device}"
            )
    if not training and (running_mean is None or running_var is None):
        raise ValueError("bn_lif: eval mode normalises with running_mean and running_var")
    if training and outer * inner <= 1:
        raise ValueError(
            f"bn_lif: more than 1 value per channel is needed in training mode, got y of shape "
            f"{tuple(y.shape)}"
        )


def batch_norm_args(bn: nn.modules.batchnorm._BatchNorm) -> tuple:
    """The arguments nn.BatchNorm's forward gives F.batch_norm (after counting the batch):
    (running_mean, running_var, weight, bias, training, momentum, eps)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return (bn.running_mean if keep else None, bn.running_var if keep else None, bn.weight,
            bn.bias, training, factor, bn.eps)  # fmt: skip


def _statistics(y, running_mean, running_var, training: bool, momentum: float, eps: float):
    """(mean, invstd) float32 [C] normalising y, as F.batch_norm's (and its update of the
    running statistics in training mode: unbiased variance)."""
    outer, C, inner = _channels_view(y)
    if not training:
        return running_mean.float(), torch.rsqrt(running_var.float() + eps)
    var, mean = torch.var_mean(y.detach().reshape(outer, C, inner).float(), dim=(0, 2),
                               correction=0)  # fmt: skip
    if running_mean is not None:
        count = outer * inner
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            unbiased = (var * (count / max(count - 1, 1))).to(running_var.dtype)
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    return mean, torch.rsqrt(var + eps)


class _BnLif(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weight, bias, mean, invstd, T, tau, options, training):
        from spikeclip.kernels.bn_lif.triton import bn_lif_forward

        spikes, h = bn_lif_forward(y, mean, invstd, weight, bias, T, tau, options)
        ctx.save_for_backward(y, h, weight, mean, invstd)
        ctx.T, ctx.tau, ctx.options, ctx.training = T, tau, options, training
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        from spikeclip.kernels.lif import triton  # noqa: F401  (registers the LIF's ops)

        y, h, weight, mean, invstd = ctx.saved_tensors
        T = ctx.T
        tau = torch.full((), ctx.tau, dtype=torch.float32, device=y.device)
        # dL/dz, z the LIF's input (the BN output): the LIF backward kernel
        gz = torch.ops.spikeclip.lif_bwd_triton(
            grad_spikes.contiguous().view(T, -1), None, h.view(T, -1), None, tau,
            *ctx.options, False,
        )[0].view(y.shape).float()  # fmt: skip
        outer, C, inner = _channels_view(y)
        gz3 = gz.reshape(outer, C, inner)
        xhat = (y.reshape(outer, C, inner).float() - mean[:, None]) * invstd[:, None]
        sum_gz = gz3.sum(dim=(0, 2))
        sum_gz_xhat = (gz3 * xhat).sum(dim=(0, 2))
        scale = (weight.float() if weight is not None else torch.ones_like(mean)) * invstd
        if ctx.training:  # the statistics depend on y too
            count = outer * inner
            gy = (gz3 - sum_gz[:, None] / count - xhat * (sum_gz_xhat[:, None] / count)) * scale[
                :, None
            ]
        else:
            gy = gz3 * scale[:, None]
        grad_w = sum_gz_xhat.to(weight.dtype) if weight is not None else None
        grad_b = sum_gz.to(weight.dtype) if weight is not None else None
        needs = ctx.needs_input_grad
        return (
            gy.reshape(y.shape).to(y.dtype) if needs[0] else None,
            grad_w if needs[1] else None,
            grad_b if needs[2] else None,
            *([None] * 6),
        )


def bn_lif(
    y: torch.Tensor,
    T: int,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    *,
    tau: float,
    options: LifOptions,
    backend: str = "auto",
) -> torch.Tensor:
    """spikes = LIF over T of F.batch_norm(y, running_mean, running_var, weight, bias,
    training, momentum, eps) (its arguments, as nn.BatchNorm passes them: batch_norm_args;
    the running statistics are updated in training mode as F.batch_norm does). y `[T*B', C,
    ...]`, time-major outer dimension; the LIF's `tau` (a number) and checked `options`.
    Returns spikes of y's shape and dtype. backend "torch": the reference (bn_lif_reference);
    "triton": the fused kernels; "auto": triton on CUDA tensors where it is installed, else
    torch."""
    _check(y, T, running_mean, running_var, weight, bias, training)
    backend = resolve_backend(backend, y.device, op="bn_lif")
    args = (running_mean, running_var, weight, bias, training, momentum, eps)
    if backend == "torch":
        return bn_lif_reference(y, T, *args, tau=tau, options=options)
    mean, invstd = _statistics(y, running_mean, running_var, training, momentum, eps)
    return _BnLif.apply(y.contiguous(), weight, bias, mean, invstd, T, float(tau), options,
                        training)  # fmt: skip
