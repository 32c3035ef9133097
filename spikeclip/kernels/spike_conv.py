"""2-d convolutions fed by spikes (stride 1, 'same' zero padding, a square odd kernel), with
autograd, keeping only the input's bits (1/32 of its float bytes) for the backward.

With 0/1 inputs a convolution's outputs are sums of weight rows at the spikes of each output
pixel's receptive field, and its weight gradient sums grad_y rows at the spikes: the `cpp`
kernels do that work, which scales with the firing rate (SpikeCLIP's tokenizer convolutions
are fed at 5-20%), and hand over to dense convolution where that is faster
(csrc/cpu/spike_layers_cpu.cpp). The input gradient is the transposed convolution of grad_y
(dense; it does not depend on x). The `torch` backend convolves densely (the spec); CUDA
tensors and half precision use it too. Sums run in another order than a dense convolution's:
equal up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spikeclip.kernels.backends import autocast_operands, spike_product_backend
from spikeclip.kernels.spike_pack import pack_spikes, unpack_spikes


def _weight_grad(grad_y, bits, shape, weight, padding, backend):
    B, C, H, W = shape
    if backend == "cpp":
        view = bits.view(B, C, H, -1)
        k = weight.shape[-1]
        return torch.ops.spikeclip.spike_conv2d_weight_grad(grad_y, view, W, k, padding)
    x = unpack_spikes(bits, W, grad_y.dtype, backend="torch").view(shape)
    return torch.ops.aten.convolution_backward(
        grad_y,
        x,
        weight,
        None,
        [1, 1],
        [padding, padding],
        [1, 1],
        False,
        [0, 0],
        1,
        [False, True, False],
    )[1]


class _SpikeConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding, backend):
        bits = pack_spikes(x.reshape(-1, x.shape[-1]))  # raises ValueError if not spikes
        ctx.save_for_backward(bits, weight)
        ctx.shape, ctx.padding, ctx.backend = x.shape, padding, backend
        if backend == "cpp":
            return torch.ops.spikeclip.spike_conv2d(x, weight, padding)
        return F.conv2d(x, weight, padding=padding)

    @staticmethod
    def backward(ctx, grad_y):
        bits, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(grad_y, weight, padding=ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(grad_y, bits, ctx.shape, weight, ctx.padding, ctx.backend)
        return grad_x, grad_w, None, None


def spike_conv2d(
    x: torch.Tensor, weight: torch.Tensor, *, padding: int, backend: str = "auto"
) -> torch.Tensor:
    """conv2d(x, weight, padding=padding) for spikes x `[B, C_in, H, W]` (0/1 values; anything
    else raises ValueError), weight `[C_out, C_in, k, k]`, k odd, padding (k - 1) / 2, stride 1.
    Returns `[B, C_out, H, W]`."""
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"spike_conv2d: x must be [B, C_in, H, W] and weight [C_out, C_in, k, k], got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    k = weight.shape[-1]
    if weight.shape[-2] != k or k % 2 == 0 or padding != k // 2:
        raise ValueError(
            f"spike_conv2d: square odd kernels with 'same' padding (k // 2) only, got kernel "
            f"{tuple(weight.shape[-2:])} and padding {padding}"
        )
    x, weight = autocast_operands(x, weight)
    if x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError("spike_conv2d: x and weight must have the same dtype and device")
    backend = spike_product_backend("spike_conv2d", backend, x.device, x.dtype)
    if backend == "cpp" and not (
        torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    ):
        # No backward: nothing to keep (the kernel checks for spikes itself).
        return torch.ops.spikeclip.spike_conv2d(x, weight, padding)
    return _SpikeConv2d.apply(x, weight, padding, backend)


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
