"""Layers on time-major sequences `[T, B, ...]`: conv/linear + batch norm (statistics over time
and batch, as Spikingformer does), the temporal weighted readout, and the neuron factory that
gives a LIF (spiking) or a ReLU (the ANN counterpart)."""

from __future__ import annotations

import math

import torch
from torch import nn

from spikeclip.models.config import SpikeCLIPConfig
from spikeclip.models.neurons import LIF


def make_neuron(
    config: SpikeCLIPConfig, *, spiking: bool, v_th: float | None = None, backend: str = "auto"
) -> nn.Module:
    """The neuron of a SpikeCLIP encoder: LIF(tau, v_th, hard reset, detach_reset, surrogate)
    on `[T, B, ...]`, or ReLU for the ANN counterpart."""
    if not spiking:
        return nn.ReLU()
    return LIF(
        tau=config.tau,
        v_th=config.v_th if v_th is None else v_th,
        v_reset=config.v_reset,
        detach_reset=True,
        surrogate=config.surrogate,
        alpha=config.alpha,
        backend=backend,
    )


class SeqConvBN(nn.Module):
    """Conv2d (no bias) + BatchNorm2d on `[T, B, C_in, H, W]` -> `[T, B, C_out, H', W']`,
    time folded into the batch (batch statistics over T x B x H x W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1)))
        return y.unflatten(0, (T, B))


class SeqLinearBN(nn.Module):
    """Linear (no bias) + BatchNorm over the last dimension of `[T, B, ..., C_in]` ->
    `[..., C_out]`: a 1x1 convolution + BN on tokens (statistics over every other dimension)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return self.bn(y.reshape(-1, y.shape[-1])).view(y.shape)


class TemporalReadout(nn.Module):
    """Weighted sum over time `[T, B, ...]` -> `[B, ...]` with one learnable weight per step.

    The weights are used as they are (not exponentiated), initialised to ln(0.8 / 2^(T-1-t)):
    ln(0.1), ln(0.2), ln(0.4), ln(0.8) for T = 4, as SpikeCLIP does; later steps weigh more.
    """

    def __init__(self, time_steps: int):
        super().__init__()
        init = [math.log(0.8 / 2.0 ** (time_steps - 1 - t)) for t in range(time_steps)]
        self.weight = nn.Parameter(torch.tensor(init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.weight.numel():
            raise ValueError(
                f"TemporalReadout: expected {self.weight.numel()} time steps, got {x.shape[0]}"
            )
        w = self.weight.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (w * x).sum(0)
