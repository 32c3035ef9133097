"""Recompute from packed spikes: a unit `fn(x)` whose input x holds spikes keeps only x packed
1 bit per element for its backward, and runs its forward again there (with autograd) to get
the gradients. For a spiking linear/conv + BN (+ LIF) unit this replaces the float copy of the
input (the weight gradient's), the BN input and the LIF membrane with 1/32 of the input's bytes.

Deterministic: the recomputed forward is the same function on the same bits, so outputs and
gradients equal those of the plain unit (up to float rounding of the gradient sums, which is
the same too: same ops, same order). BatchNorm's running statistics are updated once, by the
first forward: the recomputation gets `params` (and `state`) and must not update them.
"""

from __future__ import annotations

import torch

from spikeclip._ext import extension_loaded
from spikeclip.kernels import pack_spikes, unpack_spikes


class _PackedRecompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unit, x, *params):
        ctx.unit, ctx.shape, ctx.dtype = unit, x.shape, x.dtype
        bits = pack_spikes(x.reshape(-1, x.shape[-1]))  # raises ValueError if not spikes
        ctx.save_for_backward(bits, *params)
        ctx.state = unit.recompute_state()
        return unit.unit(x, bits=bits)

    @staticmethod
    def backward(ctx, grad_out):
        bits, *params = ctx.saved_tensors
        needs_x = ctx.needs_input_grad[1]
        with torch.enable_grad():
            if ctx.unit.recompute_reads_bits:
                # The unit computes from the bits: x only carries its gradient (zero strides).
                base = torch.zeros((), dtype=ctx.dtype, device=bits.device)
                x = base.requires_grad_(needs_x).expand(ctx.shape)
            else:
                x = unpack_spikes(bits, ctx.shape[-1], ctx.dtype).view(ctx.shape)
                x.requires_grad_(needs_x)
            leaves = [x] + [p.detach().requires_grad_(p.requires_grad) for p in params]
            out = ctx.unit.unit(x, state=ctx.state, params=leaves[1:], bits=bits)
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out)) if wanted else iter(())
        return (None, *(next(grads) if t.requires_grad else None for t in leaves))


def packed_recompute(unit, x: torch.Tensor, params: list[torch.Tensor]):
    """unit.unit(x) keeping only x (spikes) packed for the backward. `unit` has
    `unit(x, state=None, params=None, bits=None)` (params: the tensors its output depends on
    besides x, given to the recomputation as fresh leaves; bits: x packed, for units that
    compute from them: then `recompute_reads_bits` is True and x's values are not read) and
    `recompute_state()` (what the recomputation needs to repeat the forward exactly, e.g. BN's
    statistics in eval mode)."""
    return _PackedRecompute.apply(unit, x, *params)


class _PackedConv2d(torch.autograd.Function):
    """conv2d(x, weight) (no bias) keeping x (spikes) packed for the weight gradient; the
    backward is the convolution's own (no second forward)."""

    @staticmethod
    def forward(ctx, x, weight, conv):
        ctx.shape, ctx.dtype, ctx.conv = x.shape, x.dtype, conv
        bits = pack_spikes(x.reshape(-1, x.shape[-1]))  # raises ValueError if not spikes
        ctx.save_for_backward(bits, weight)
        return conv._conv_forward(x, weight, None)

    @staticmethod
    def backward(ctx, grad_out):
        bits, weight = ctx.saved_tensors
        c = ctx.conv
        grad_out = grad_out.contiguous()
        if _sparse_weight_grad_applies(c, bits, ctx.dtype):
            # The input gradient needs no input; the weight gradient sums grad_out rows at the
            # input's spikes (spikeclip::spike_conv2d_weight_grad; BLAS above 20% firing).
            B, C, H, W = ctx.shape
            k, p = c.kernel_size[0], c.padding[0]
            grad_x = grad_w = None
            if ctx.needs_input_grad[0]:
                grad_x = torch.nn.functional.conv_transpose2d(grad_out, weight, padding=p)
            if ctx.needs_input_grad[1]:
                grad_w = torch.ops.spikeclip.spike_conv2d_weight_grad(
                    grad_out, bits.view(B, C, H, -1), W, k, p
                )
            return grad_x, grad_w, None
        x = unpack_spikes(bits, ctx.shape[-1], ctx.dtype).view(ctx.shape)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out.contiguous(),
            x,
            weight,
            None,
            c.stride,
            c.padding,
            c.dilation,
            False,
            [0, 0],
            c.groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False],
        )
        return grad_x, grad_w, None


def _sparse_weight_grad_applies(conv, bits: torch.Tensor, dtype: torch.dtype) -> bool:
    k = conv.kernel_size
    return (
        extension_loaded()
        and bits.device.type == "cpu"
        and dtype in (torch.float32, torch.float64)
        and k[0] == k[1]
        and k[0] % 2 == 1
        and tuple(conv.padding) == (k[0] // 2, k[0] // 2)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def packed_conv2d(conv, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for spikes x `[B, C, H, W]` (bias-free, zero padding), keeping x packed 1 bit
    per element for the backward instead of a float copy."""
    return _PackedConv2d.apply(x, conv.weight, conv)
