"""2-d convolutions fed by spikes, with autograd, keeping only the input's bits (1/32 of its
float bytes) for the backward; any stride, padding, dilation and groups.

With 0/1 inputs a convolution's outputs are sums of weight rows at the spikes of each output
pixel's receptive field, and its weight gradient sums grad_y rows at the spikes: the `cpp`
kernels do that work for stride-1 'same' convolutions with a square odd kernel (SpikeCLIP's
tokenizer), work that scales with the firing rate (5-20% there), and hand over to dense
convolution where that is faster (csrc/cpu/spike_layers_cpu.cpp). Other geometries, CUDA
tensors and half precision convolve densely (the `torch` backend, the spec) and still keep
only the bits. The input gradient is the transposed convolution of grad_y (it does not depend
on x). The cpp backend's dense 3x3 work (the input gradient; the product and the weight
gradient past the rates the sums pay) goes by Winograd's F(4x4, 3x3) between many channels
(csrc/cpu/winograd_cpu.h): about 1e-5 of the output's scale in float32. Sums run in another
order than a dense convolution's: equal up to float rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from spikeclip._ext import extension_loaded
from spikeclip.kernels.common.backends import (
    BackendUnavailableError,
    autocast_operands,
    spike_product_backend,
)
from spikeclip.kernels.spike_products.pack import pack_spikes, unpack_spikes


def _pair(v, name: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair):
        raise ValueError(f"spike_conv2d: {name} must be an int or a pair of ints, got {v!r}")
    return pair


class ConvGeometry(NamedTuple):
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def summed(self, weight: torch.Tensor) -> bool:
        """Whether the cpp kernels compute it: stride 1, 'same' padding, square odd kernel."""
        k = weight.shape[-1]
        return (
            weight.shape[-2] == k
            and k % 2 == 1
            and self == ConvGeometry((1, 1), (k // 2, k // 2), (1, 1), 1)
        )

    def backward(self, grad_y, x, weight, mask):
        return torch.ops.aten.convolution_backward(
            grad_y, x, weight, None, list(self.stride), list(self.padding),
            list(self.dilation), False, [0, 0], self.groups, mask,
        )  # fmt: skip


def _input_grad(grad_y, weight, shape, geometry, backend):
    """dL/dx: the transposed convolution of grad_y (x's values do not enter)."""
    if backend == "cpp":  # 3x3: Winograd's F(4x4, 3x3) where it pays (csrc/cpu/winograd_cpu.h)
        return torch.ops.spikeclip.spike_conv2d_input_grad(grad_y, weight, geometry.padding[0])
    # x's shape as an allocated, never written tensor (oneDNN was slower given an expanded one)
    return geometry.backward(grad_y, grad_y.new_empty(shape), weight, [True, False, False])[0]


def _weight_grad(grad_y, bits, shape, weight, geometry, backend):
    """bits: the cpp op's codes [B, H, W, ceil(C_in / 8)], else pack_spikes's rows of x."""
    if backend == "cpp":
        k = weight.shape[-1]
        return torch.ops.spikeclip.spike_conv2d_weight_grad(
            grad_y, bits, shape[1], k, geometry.padding[0]
        )
    x = unpack_spikes(bits, shape[-1], grad_y.dtype, backend="torch").view(shape)
    return geometry.backward(grad_y, x, weight, [False, True, False])[1]


class _SpikeConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, geometry, backend):
        ctx.shape, ctx.geometry, ctx.backend = x.shape, geometry, backend
        if backend == "cpp":  # the kernel packs x per pixel (a ValueError if not spikes)
            y, codes = torch.ops.spikeclip.spike_conv2d(x, weight, geometry.padding[0])
            ctx.save_for_backward(codes, weight)
            return y
        bits = pack_spikes(x.reshape(-1, x.shape[-1]))  # raises ValueError if not spikes
        ctx.save_for_backward(bits, weight)
        return F.conv2d(x, weight, None, geometry.stride, geometry.padding, geometry.dilation,
                        geometry.groups)  # fmt: skip

    @staticmethod
    def backward(ctx, grad_y):
        bits, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_x = grad_w = None
        g = ctx.geometry
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(grad_y, weight, ctx.shape, g, ctx.backend)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(grad_y, bits, ctx.shape, weight, g, ctx.backend)
        return grad_x, grad_w, None, None


def spike_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """conv2d(x, weight, None, stride, padding, dilation, groups) for spikes x `[B, C_in, H,
    W]` (0/1 values; anything else raises ValueError), weight `[C_out, C_in / groups, kh,
    kw]`. Keeps x's bits for the weight gradient. The cpp kernels (sums at the spikes) run
    stride-1 'same' convolutions with square odd kernels; backend="cpp" with another geometry
    is an error, "auto" convolves it densely."""
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"spike_conv2d: x must be [B, C_in, H, W] and weight [C_out, C_in, k, k], got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"spike_conv2d: groups must be a positive int, got {groups!r}")
    if weight.shape[1] * groups != x.shape[1] or weight.shape[0] % groups:
        raise ValueError(
            f"spike_conv2d: weight [C_out, C_in, k, k] = {tuple(weight.shape)} does not fit x "
            f"{tuple(x.shape)} with groups={groups}"
        )
    geometry = ConvGeometry(
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"), groups
    )
    x, weight = autocast_operands(x, weight)
    if x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError("spike_conv2d: x and weight must have the same dtype and device")
    summed = geometry.summed(weight)
    if backend == "cpp" and not summed:
        raise BackendUnavailableError(
            "spike_conv2d: the cpp kernels run stride-1 'same' convolutions (padding k // 2) "
            f"with square odd kernels; got kernel {tuple(weight.shape[-2:])} and {geometry} "
            "(backend='auto' or 'torch' convolve it densely)"
        )
    backend = spike_product_backend("spike_conv2d", backend, x.device, x.dtype)
    if not summed:
        backend = "torch"
    if backend == "cpp" and not (
        torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    ):
        # No backward: nothing to keep (the kernel checks for spikes itself).
        return torch.ops.spikeclip.spike_conv2d(x, weight, geometry.padding[0])[0]
    return _SpikeConv2d.apply(x, weight, geometry, backend)


def conv_takes_spikes(conv: torch.nn.Conv2d) -> bool:
    """Whether spike_conv2d computes `conv` (bias-free, stride 1, 'same' zero padding, square
    odd kernel, no dilation or groups)."""
    k = conv.kernel_size
    return (
        conv.bias is None
        and k[0] == k[1]
        and k[0] % 2 == 1
        and tuple(conv.padding) == (k[0] // 2, k[0] // 2)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


if extension_loaded():  # fakes of spikeclip._C's ops (torch.compile, opcheck)

    @torch.library.register_fake("spikeclip::spike_conv2d")
    def _conv_fake(x, weight, padding):
        B, C, H, W = x.shape
        codes = x.new_empty((B, H, W, (C + 7) // 8), dtype=torch.uint8)
        return x.new_empty((B, weight.shape[0], H, W)), codes

    @torch.library.register_fake("spikeclip::spike_conv2d_input_grad")
    def _conv_input_grad_fake(grad_y, weight, padding):
        return grad_y.new_empty((grad_y.shape[0], weight.shape[1], *grad_y.shape[2:]))

    @torch.library.register_fake("spikeclip::conv3x3_winograd")
    def _winograd_fake(x, w):
        return x.new_empty((x.shape[0], w.shape[0], *x.shape[2:]))

    @torch.library.register_fake("spikeclip::conv3x3_winograd_weight_grad")
    def _winograd_weight_grad_fake(x, grad_y):
        return x.new_empty((grad_y.shape[1], x.shape[1], 3, 3))

    @torch.library.register_fake("spikeclip::spike_conv2d_weight_grad")
    def _conv_wgrad_fake(grad_y, codes, channels, kernel_size, padding):
        return grad_y.new_empty((grad_y.shape[1], channels, kernel_size, kernel_size))
