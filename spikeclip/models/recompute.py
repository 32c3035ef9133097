"""Recompute from packed spikes: a unit `fn(x)` whose input x holds spikes keeps only x packed 1 bit
per element for its backward, and runs its forward again there (with autograd) to get the gradients
(`recompute`: the same for an input of any values, kept as it is). For a spiking linear + BN (+ LIF)
unit this replaces the float copy of the input (the weight gradient's), the BN input and the LIF
membrane with 1/32 of the input's bytes.

Deterministic: the recomputed forward is the same function on the same bits, so outputs and
gradients equal those of the plain unit (up to float rounding of the gradient sums, which is
the same too: same ops, same order). BatchNorm's running statistics are updated once, by the
first forward: the recomputation gets `params` (and `state`) and must not update them.
"""

from __future__ import annotations

import torch

from spikeclip.kernels import pack_spikes, unpack_spikes


class _PackedRecompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unit, packed, x, *params):
        ctx.unit, ctx.shape, ctx.dtype, ctx.packed = unit, x.shape, x.dtype, packed
        if packed:
            bits = pack_spikes(x.reshape(-1, x.shape[-1]))  # raises ValueError if not spikes
        else:  # any values: x itself is kept (still the unit's only saved activation)
            bits = None
        ctx.save_for_backward(bits if packed else x, *params)
        ctx.state = unit.recompute_state()
        # The recomputation repeats the forward under the same autocast (as checkpoint does).
        device_type = x.device.type
        ctx.autocast = dict(
            device_type=device_type,
            dtype=torch.get_autocast_dtype(device_type),
            enabled=torch.is_autocast_enabled(device_type),
        )
        return unit.unit(x, bits=bits)

    @staticmethod
    def backward(ctx, grad_out):
        bits, *params = ctx.saved_tensors
        needs_x = ctx.needs_input_grad[2]
        with torch.enable_grad(), torch.autocast(**ctx.autocast):
            if not ctx.packed:
                x, bits = bits.detach().requires_grad_(needs_x), None
            elif ctx.unit.recompute_reads_bits:
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
        return (None, None, *(next(grads) if t.requires_grad else None for t in leaves))


def packed_recompute(unit, x: torch.Tensor, params: list[torch.Tensor]):
    """unit.unit(x) keeping only x (spikes) packed for the backward. `unit` has
    `unit(x, state=None, params=None, bits=None)` (params: the tensors its output depends on
    besides x, given to the recomputation as fresh leaves; bits: x packed, for units that
    compute from them: then `recompute_reads_bits` is True and x's values are not read) and
    `recompute_state()` (what the recomputation needs to repeat the forward exactly, e.g. BN's
    statistics in eval mode)."""
    return _PackedRecompute.apply(unit, True, x, *params)


def recompute(unit, x: torch.Tensor, params: list[torch.Tensor]):
    """packed_recompute for an input of any values: x itself is what the backward keeps."""
    return _PackedRecompute.apply(unit, False, x, *params)
