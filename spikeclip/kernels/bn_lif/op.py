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

from spikeclip._ext import extension_loaded
from spikeclip.kernels.bn_lif.reference import bn_lif_reference
from spikeclip.kernels.common.backends import resolve_backend
from spikeclip.kernels.common.batch_norm import (
    channels_view,
    check_batch_norm,
    normalising_statistics,
)
from spikeclip.kernels.common.options import LifOptions

# The cpp kernels' work comes in runs of one channel's positions of one sample: with fewer than
# this many per run "auto" takes the unfused pair. Measured once (AVX2 EPYC, [64, 512, inner],
# fwd + bwd against BatchNorm + the cpp LIF, ad hoc): 0.3x at inner 1 (a linear layer's
# [rows, C]), 0.6-0.7x at 2, 1.2-1.4x at 4, 1.1-1.3x at 8: 4 would do; 8 is what was tested.
CPP_MIN_INNER = 8


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
        outer, C, inner = channels_view(y)
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
    if backend == "cpp" and asked == "auto" and channels_view(y)[2] < CPP_MIN_INNER:
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
    check_batch_norm("bn_lif", y, running_mean, running_var, weight, bias, training)
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0 or y.shape[0] % T:
        raise ValueError(f"bn_lif: y's first dimension ({y.shape[0]}) must be a multiple of T={T}")
    backend = fused_backend(y, backend) or "torch"
    if return_v and backend == "triton":
        raise ValueError("bn_lif: return_v runs on the cpp and torch backends")
    args = (running_mean, running_var, weight, bias, training, momentum, eps)
    if backend == "torch":
        spikes, v_last = bn_lif_reference(y, T, *args, tau=tau, options=options)
        return (spikes, v_last.to(y.dtype)) if return_v else spikes
    mean, invstd = normalising_statistics(y, running_mean, running_var, training, momentum, eps,
                                          backend)  # fmt: skip
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
