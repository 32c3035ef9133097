"""BatchNorm's pieces shared by the ops that fuse it (bn_lif: BatchNorm + LIF; bn_pool:
BatchNorm + max-pool): nn.BatchNorm's arguments, their checks, and the statistics that
normalise (with the running statistics' update, as F.batch_norm does)."""

from __future__ import annotations

import torch
from torch import nn


def channels_view(y: torch.Tensor, op: str = "bn_lif") -> tuple[int, int, int]:
    """(outer, C, inner) of y `[outer, C]` or `[outer, C, *spatial]`."""
    if y.dim() < 2:
        raise ValueError(f"{op}: y must be [outer, C, ...], got shape {tuple(y.shape)}")
    inner = 1
    for d in y.shape[2:]:
        inner *= d
    return y.shape[0], y.shape[1], inner


def check_batch_norm(op: str, y, running_mean, running_var, weight, bias, training) -> None:
    """What a fused BatchNorm relies on, refused with a clear error before anything reads it: y
    floating `[outer, C, ...]`, every per-channel tensor C long on y's device, the running
    statistics in eval mode, more than one value per channel to normalise over in training mode
    (as F.batch_norm asks)."""
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"{op}: y must be a floating tensor, got {getattr(y, 'dtype', y)}")
    outer, C, inner = channels_view(y, op)
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):  # fmt: skip
        if t is not None and (t.dim() != 1 or t.numel() != C or t.device != y.device):
            raise ValueError(
                f"{op}: {name} must be [{C}] on {y.device}, got {tuple(t.shape)} on {t.device}"
            )
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: eval mode normalises with running_mean and running_var")
    if training and outer * inner <= 1:
        raise ValueError(
            f"{op}: more than 1 value per channel is needed in training mode, got y of shape "
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


def normalising_statistics(y, running_mean, running_var, training: bool, momentum: float,
                           eps: float, backend: str):  # fmt: skip
    """(mean, invstd) [C] normalising y, as F.batch_norm's (and its update of the running
    statistics in training mode: unbiased variance): float32 for triton, y's dtype for cpp."""
    outer, C, inner = channels_view(y)
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
