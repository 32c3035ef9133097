"""General spike-fed layers for users' own networks, and the wrapper that runs any per-step
module over a sequence.

SpikingLinear and SpikingConv2d compute what nn.Linear and nn.Conv2d compute (the same
parameters, state dict and gradients) for 0/1 inputs, but keep their input only as bits (1 bit
per element, packed 8 to a byte) for the weight gradient, instead of the float tensor autograd
would keep: 32x less saved memory in float32. An input that is not 0/1 is a ValueError.
SeqToANN runs per-step modules on `[T, B, ...]` by folding time into the batch (SpikingJelly's
SeqToANNContainer)."""

from __future__ import annotations

import torch
from torch import nn

from spikeclip.kernels.spike_products.conv import spike_conv2d
from spikeclip.kernels.spike_products.linear import spike_linear
from spikeclip.kernels.spike_products.pack import pack_spikes
from spikeclip.models.kernel_policy import layer_product_backend


class SpikingLinear(nn.Linear):
    """nn.Linear for spike inputs `[..., in_features]` (any leading dims, e.g. `[T, B, N,
    C]`): y = x W^T + b, x's bits kept for the weight gradient. On CPU with the cpp kernels
    the product sums weight rows at the spikes (work in proportion to the firing rate); on
    CUDA Triton's kernels read the bits inside tensor-core products; backend "torch" unpacks
    and multiplies densely (the reference)."""

    def __init__(self, in_features, out_features, bias=True, *, backend="auto", **factory):
        super().__init__(in_features, out_features, bias=bias, **factory)
        self.backend = backend  # set_backend reaches it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"SpikingLinear: input must be [..., {self.in_features}], got {tuple(x.shape)}"
            )
        flat = x.reshape(-1, self.in_features)
        bits = pack_spikes(flat)  # raises ValueError if x is not 0/1
        y = spike_linear(flat, bits, self.weight, backend=layer_product_backend(self.backend))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.out_features)


class SpikingConv2d(nn.Conv2d):
    """nn.Conv2d for spike inputs `[..., C_in, H, W]` (leading dims folded into the batch, so
    `[T, B, C, H, W]` works as is): any kernel size, stride, padding, dilation, groups and
    bias (zero padding); x's bits kept for the weight gradient. Stride-1 'same' convolutions
    with square odd kernels sum weight rows at the spikes on CPU (cpp kernels); the rest
    convolve densely."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError("SpikingConv2d: only zero padding (padding_mode='zeros')")
        if isinstance(self.padding, str):
            raise ValueError("SpikingConv2d: give padding as numbers, not 'same' / 'valid'")
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 4 or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"SpikingConv2d: input must be [..., {self.in_channels}, H, W], got "
                f"{tuple(x.shape)}"
            )
        # "auto" / "cpp": the cpp sums where the geometry allows; anything else dense
        backend = "auto" if self.backend in ("auto", "cpp") else "torch"
        y = spike_conv2d(
            x.flatten(0, -4), self.weight, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, backend=backend,
        )  # fmt: skip
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(-1, 1, 1)
        return y.unflatten(0, x.shape[:-3])


class SeqToANN(nn.Sequential):
    """Runs per-step modules (convolutions, BatchNorm, pooling, ...) on a sequence `[T, B,
    ...]`: time folded into the batch, then unfolded. BatchNorm inside sees T x B samples (its
    statistics over time and batch, as Spikformer and SpikingJelly's SeqToANNContainer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"SeqToANN: input must be [T, B, ...], got {tuple(x.shape)}")
        y = super().forward(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])
