"""Fake (meta) implementations and autograd for the fused LIF ops.

Every fused backend exposes the same pair of ops with the same schema (csrc/ops.cpp):
`lif_fwd(x, v0, tau, *LifOptions, save_h, return_v) -> (spikes, h, v_last)` and
`lif_bwd(grad_spikes, grad_v_last, h, v0, tau, *LifOptions, need_tau_grad) -> (grad_x, grad_v0,
grad_tau)` (options.LifOptions, LIF_OPTIONS_SCHEMA).
The C++/CUDA pair lives in spikeclip._C (registered at the end of this module when it loads),
the Triton pair in lif/triton.py; both register through register_lif_pair.
The forward saves h (and v0, tau) only: spikes are recomputed from h in the backward.
"""

from __future__ import annotations

import torch

from spikeclip._ext import extension_loaded
from spikeclip.kernels.common import autograd as op_autograd
from spikeclip.kernels.common.options import compute_dtype


def lif_fwd_fake(x, v0, tau, *options_and_flags):
    *_, save_h, return_v = options_and_flags  # LifOptions, then save_h and return_v
    sdt = compute_dtype(x.dtype)
    h = torch.empty_like(x) if save_h else x.new_empty(0)
    v_last = x.new_empty(x.shape[1:], dtype=sdt) if return_v else x.new_empty(0, dtype=sdt)
    return torch.empty_like(x), h, v_last


def lif_bwd_fake(grad_spikes, grad_v_last, h, v0, tau, *options_and_flag):
    sdt = compute_dtype(h.dtype)
    return torch.empty_like(h), h.new_empty(h.shape[1:], dtype=sdt), h.new_empty((), dtype=sdt)


def _setup_context(ctx, inputs, output):
    _, v0, tau, *options, save_h, return_v = inputs
    _, h, _ = output
    # h is an internal output: without this, autograd would fill a [T, *] zero gradient for it.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h, v0, tau)
    ctx.options = tuple(options)  # the LifOptions
    ctx.saved_h, ctx.return_v = save_h, return_v


def _backward_with(bwd_op):
    def backward(ctx, grad_spikes, grad_h, grad_v_last):
        if not ctx.saved_h:
            raise RuntimeError(
                "spikeclip lif: this forward ran with save_h=False (no input needed a gradient), "
                "so it kept nothing for a backward"
            )
        h, v0, tau = ctx.saved_tensors
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(h)
        if not ctx.return_v or grad_v_last is None:
            grad_v_last = None
        else:
            grad_v_last = grad_v_last.contiguous()
        need_tau = ctx.needs_input_grad[2]
        grad_x, grad_v0, grad_tau = bwd_op(
            grad_spikes.contiguous(), grad_v_last, h, v0, tau, *ctx.options, need_tau
        )
        return (
            grad_x,
            grad_v0 if ctx.needs_input_grad[1] else None,
            grad_tau if need_tau else None,
            *([None] * (len(ctx.options) + 2)),  # the options, save_h and return_v
        )

    return backward


def register_lif_pair(fwd_name: str, bwd_name: str, bwd_op) -> None:
    """Register fakes for both ops and autograd for the forward (bwd_op runs the backward)."""
    torch.library.register_fake(fwd_name)(lif_fwd_fake)
    torch.library.register_fake(bwd_name)(lif_bwd_fake)
    op_autograd.register(fwd_name, _backward_with(bwd_op), _setup_context)


if extension_loaded():
    register_lif_pair("spikeclip::lif_fwd", "spikeclip::lif_bwd", torch.ops.spikeclip.lif_bwd)
