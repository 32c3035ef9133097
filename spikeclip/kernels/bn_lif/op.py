"""BatchNorm followed by a multi-step LIF, fused: `bn_lif(y, T, <F.batch_norm's args>, ...)`.

y is a spiking unit's conv / linear output seen as `[outer, C, inner]` (linear: `[T*B*N, C]`,
inner 1; conv: `[T*B, C, H, W]`, inner H*W), time-major (outer = T x ...). The reference
(`backend="torch"`, bn_lif/reference.py) is `bn(y)` then `lif_reference` over T. The fused
paths read y once for the statistics, then one pass normalises, applies the affine and runs
the LIF over T: the normalised BN output never goes to memory.
- `triton` (CUDA): statistics by torch.var_mean; the backward runs the LIF backward kernel and
  BatchNorm's backward formula as torch ops.
- `cpp` (CPU, float32 / float64; csrc/cpu/bn_lif_cpu.cpp): statistics by `bn_stats` (in y's
  dtype, summed in double); the backward is two passes, the LIF's backward sweep (its membrane
  recomputed from y: only y is saved) with the per-channel sums, then BatchNorm's input
  gradient. "auto" takes it for float32 / float64 y
  with at least CPP_MIN_INNER positions per channel and sample (a conv's H*W, a Conv1d's
  tokens); a linear layer's `[rows, C]` (inner 1) runs the unfused pair there.
Training mode updates the running statistics as nn.BatchNorm does (momentum; unbiased running
variance). Saved for the backward: y and the membrane h, as the unfused pair keeps.
"""

from __future__ import annotations

import torch
from torch import nn

from spikeclip._ext import extension_loaded
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


# The cpp kernels' work comes in runs of one channel's positions of one sample: with fewer than
# this many per run "auto" takes the unfused pair. Measured once (AVX2 EPYC, [64, 512, inner],
# fwd + bwd against BatchNorm + the cpp LIF, ad hoc): 0.3x at inner 1 (a linear layer's
# [rows, C]), 0.6-0.7x at 2, 1.2-1.4x at 4, 1.1-1.3x at 8: 4 would do; 8 is what was tested.
CPP_MIN_INNER = 8


def _statistics(y, running_mean, running_var, training: bool, momentum: float, eps: float,
                backend: str):  # fmt: skip
    """(mean, invstd) [C] normalising y, as F.batch_norm's (and its update of the running
    statistics in training mode: unbiased variance): float32 for triton, y's dtype for cpp."""
    outer, C, inner = _channels_view(y)
    dtype = y.dtype if backend == "cpp" else torch.float32
    if not training:
        return running_mean.to(dtype), torch.rsqrt(running_var.to(dtype) + eps)
    if backend == "cpp":
        mean, var = torch.ops.spikeclip.bn_stats(y.detach())
    else:
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


class _BnLifCpp(torch.autograd.Function):
    """The cpp kernels (csrc/cpu/bn_lif_cpu.cpp): forward and backward one op each; only y is
    kept (the backward recomputes the membrane)."""

    @staticmethod
    def forward(ctx, y, weight, bias, mean, invstd, T, tau, options, training, return_v):
        spikes, v_last = torch.ops.spikeclip.bn_lif_fwd(y, mean, invstd, weight, bias, T, tau,
                                                        *options, return_v)  # fmt: skip
        ctx.save_for_backward(y, weight, bias, mean, invstd)
        ctx.T, ctx.tau, ctx.options, ctx.training = T, tau, options, training
        ctx.set_materialize_grads(False)
        return spikes, v_last

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last):
        y, weight, bias, mean, invstd = ctx.saved_tensors
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(y)
        if grad_v_last is not None:
            grad_v_last = grad_v_last.to(y.dtype).contiguous()
        grad_y, grad_w, grad_b = torch.ops.spikeclip.bn_lif_bwd(
            grad_spikes.contiguous(), grad_v_last, y, mean, invstd, weight, bias, ctx.T,
            ctx.tau, *ctx.options, ctx.training,
        )  # fmt: skip
        needs = ctx.needs_input_grad
        return (
            grad_y if needs[0] else None,
            grad_w.to(weight.dtype) if weight is not None and needs[1] else None,
            grad_b.to(bias.dtype) if bias is not None and needs[2] else None,
            *([None] * 7),
        )


def fused_backend(y: torch.Tensor, backend: str = "auto") -> str | None:
    """The fused backend `bn_lif(y, ..., backend=backend)` runs ("cpp", "triton"), or None
    where it runs the reference: a backend asked for by name that cannot run y is an error, as
    in bn_lif."""
    asked = backend
    backend = resolve_backend(backend, y.device, op="bn_lif")
    if backend == "cpp" and y.dtype not in (torch.float32, torch.float64):
        if asked != "auto":
            raise TypeError(f"bn_lif: the cpp backend takes float32 and float64 y, got {y.dtype}")
        return None
    if backend == "cpp" and asked == "auto" and _channels_view(y)[2] < CPP_MIN_INNER:
        return None
    return None if backend == "torch" or y.numel() == 0 else backend


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
    return_v: bool = False,
):
    """spikes = LIF over T of F.batch_norm(y, running_mean, running_var, weight, bias,
    training, momentum, eps) (its arguments, as nn.BatchNorm passes them: batch_norm_args;
    the running statistics are updated in training mode as F.batch_norm does). y `[T*B', C,
    ...]`, time-major outer dimension; the LIF's `tau` (a number) and checked `options`.
    Returns spikes of y's shape and dtype; with return_v also the LIF's final membrane `[B',
    C, ...]` in y's dtype, differentiable (cpp and torch backends): passed on as the next
    call's v0, it continues the sequence as the unfused pair would. backend "torch":
    the reference (bn_lif_reference); "triton" / "cpp": the fused kernels; "auto": triton on
    CUDA tensors where it is installed, cpp on CPU tensors (float32 / float64, inner >=
    CPP_MIN_INNER), else torch (fused_backend says which)."""
    _check(y, T, running_mean, running_var, weight, bias, training)
    backend = fused_backend(y, backend) or "torch"
    if return_v and backend == "triton":
        raise ValueError("bn_lif: return_v runs on the cpp and torch backends")
    args = (running_mean, running_var, weight, bias, training, momentum, eps)
    if backend == "torch":
        spikes, v_last = bn_lif_reference(y, T, *args, tau=tau, options=options)
        return (spikes, v_last.to(y.dtype)) if return_v else spikes
    mean, invstd = _statistics(y, running_mean, running_var, training, momentum, eps, backend)
    y = y.contiguous()
    if backend == "triton":
        return _BnLif.apply(y, weight, bias, mean, invstd, T, float(tau), options, training)
    spikes, v_last = _BnLifCpp.apply(y, weight, bias, mean, invstd, T, float(tau), options,
                                     training, return_v)  # fmt: skip
    return (spikes, v_last) if return_v else spikes


def _stats_fake(y):
    return y.new_empty(y.shape[1]), y.new_empty(y.shape[1])


def _fwd_fake(y, mean, invstd, weight, bias, T, tau, *options_and_return_v):
    v_shape = (y.shape[0] // T, *y.shape[1:]) if options_and_return_v[-1] else (0,)
    return torch.empty_like(y), y.new_empty(v_shape)


def _bwd_fake(
    grad_spikes, grad_v_last, y, mean, invstd, weight, bias, T, tau, *options_and_training
):
    return torch.empty_like(y), y.new_empty(y.shape[1]), y.new_empty(y.shape[1])


if extension_loaded():  # fakes of the cpp ops (torch.compile, opcheck)
    torch.library.register_fake("spikeclip::bn_stats")(_stats_fake)
    torch.library.register_fake("spikeclip::bn_lif_fwd")(_fwd_fake)
    torch.library.register_fake("spikeclip::bn_lif_bwd")(_bwd_fake)
