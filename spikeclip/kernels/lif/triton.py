"""Multi-step LIF in Triton: one fused forward kernel and one fused backward kernel.

Each program owns BLOCK neighbouring neurons and sweeps t; the membrane (forward) or the
gradient carry (backward) stays in registers. Formulas mirror the spec,
spikeclip/kernels/lif/reference.py (and csrc/lif_math.h), in the same order of operations; divisions
are correctly rounded (div_rn) so that forward spikes match the reference bit for bit.
Registered as the torch custom ops spikeclip::lif_fwd_triton / lif_bwd_triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spikeclip.kernels.common.options import LIF_OPTIONS_SCHEMA, SURROGATE_CODES, LifOptions
from spikeclip.kernels.common.triton_math import _charge, _lif_dh, _reset
from spikeclip.kernels.lif.autograd import register_lif_pair

_BLOCK = 1024


@triton.jit
def _lif_fwd_kernel(
    x_ptr,
    v0_ptr,
    tau_ptr,
    s_ptr,
    h_ptr,
    v_last_ptr,
    T,
    N,
    v_th,
    v_reset,
    rest,
    HAS_V0: tl.constexpr,
    DECAY: tl.constexpr,
    SOFT: tl.constexpr,
    SAVE_H: tl.constexpr,
    RETURN_V: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    inv_tau = tl.math.div_rn(1.0, tl.load(tau_ptr))
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    else:
        v = tl.zeros([BLOCK], dtype=tl.float32) + rest
    x_ptrs = x_ptr + offs
    s_ptrs = s_ptr + offs
    h_ptrs = h_ptr + offs
    for _ in range(T):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        h = _charge(v, x, inv_tau, rest, DECAY)
        s = (h >= v_th).to(tl.float32)
        tl.store(s_ptrs, s.to(s_ptr.dtype.element_ty), mask=mask)
        if SAVE_H:
            tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=mask)
        v = _reset(h, v_th, v_reset, SOFT)
        x_ptrs += N
        s_ptrs += N
        h_ptrs += N
    if RETURN_V:
        tl.store(v_last_ptr + offs, v, mask=mask)


@triton.jit
def _lif_bwd_kernel(
    gs_ptr,
    gvl_ptr,
    h_ptr,
    v0_ptr,
    tau_ptr,
    gx_ptr,
    gv0_ptr,
    tau_part_ptr,
    T,
    N,
    last_off,
    v_th,
    v_reset,
    rest,
    alpha,
    HAS_GVL: tl.constexpr,
    HAS_V0: tl.constexpr,
    DECAY: tl.constexpr,
    SOFT: tl.constexpr,
    DETACH: tl.constexpr,
    SURR: tl.constexpr,
    TAU_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tau = tl.load(tau_ptr)
    inv_tau = tl.math.div_rn(1.0, tau)
    leak = 1.0 - inv_tau
    if HAS_GVL:
        carry = tl.load(gvl_ptr + offs, mask=mask, other=0.0)
    else:
        carry = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_V0:
        v_init = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    else:
        v_init = tl.zeros([BLOCK], dtype=tl.float32) + rest
    tau_acc = tl.zeros([BLOCK], dtype=tl.float32)
    h_ptrs = h_ptr + last_off + offs  # last_off = (T - 1) * N, T >= 1
    gs_ptrs = gs_ptr + last_off + offs
    gx_ptrs = gx_ptr + last_off + offs
    # h[t] is loaded once: as h_prev at step t+1, then used as h at step t.
    h = tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)
    for i in range(T):
        has_prev = i < T - 1
        h_prev = tl.load(h_ptrs - N, mask=mask & has_prev, other=0.0).to(tl.float32)
        gs = tl.load(gs_ptrs, mask=mask, other=0.0).to(tl.float32)
        dh = _lif_dh(h, gs, carry, v_th, v_reset, alpha, SOFT, DETACH, SURR)
        if DECAY:
            gx = dh * inv_tau
        else:
            gx = dh
        tl.store(gx_ptrs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        carry = dh * leak
        if TAU_GRAD:
            v_prev = tl.where(has_prev, _reset(h_prev, v_th, v_reset, SOFT), v_init)
            if DECAY:
                dtau = -(h - v_prev) * inv_tau
            else:
                dtau = (v_prev - rest) * (inv_tau * inv_tau)
            tau_acc += tl.where(mask, dh * dtau, 0.0)
        h = h_prev
        h_ptrs -= N
        gs_ptrs -= N
        gx_ptrs -= N
    tl.store(gv0_ptr + offs, carry, mask=mask)
    if TAU_GRAD:
        tl.store(tau_part_ptr + pid, tl.sum(tau_acc, axis=0))


def _flat(t: torch.Tensor) -> tuple[int, int]:
    """(T, N) of a [T, *] tensor seen as [T, N]."""
    return t.shape[0], torch.Size(t.shape[1:]).numel()


# The same schemas as the _C ops (csrc/ops.cpp), the options spelled by options.LifOptions.
torch.library.define(
    "spikeclip::lif_fwd_triton",
    f"(Tensor x, Tensor? v0, Tensor tau, {LIF_OPTIONS_SCHEMA}, bool save_h, bool return_v) "
    "-> (Tensor, Tensor, Tensor)",
)
torch.library.define(
    "spikeclip::lif_bwd_triton",
    "(Tensor grad_spikes, Tensor? grad_v_last, Tensor h, Tensor? v0, Tensor tau, "
    f"{LIF_OPTIONS_SCHEMA}, bool need_tau_grad) -> (Tensor, Tensor, Tensor)",
)


def lif_fwd_triton(x, v0, tau, *options_and_flags):
    *options, save_h, return_v = options_and_flags
    v_th, v_reset, soft_reset, decay_input, _, _, _ = LifOptions(*options)
    T, N = _flat(x)
    spikes = torch.empty_like(x)
    h = torch.empty_like(x) if save_h else x.new_empty(0)
    v_last = (
        x.new_empty(x.shape[1:], dtype=torch.float32)
        if return_v
        else x.new_empty(0, dtype=torch.float32)
    )
    if N > 0:
        rest = 0.0 if soft_reset else v_reset
        _lif_fwd_kernel[(triton.cdiv(N, _BLOCK),)](
            x,
            v0 if v0 is not None else x,
            tau,
            spikes,
            h if save_h else spikes,
            v_last if return_v else spikes,
            T,
            N,
            v_th,
            v_reset,
            rest,
            HAS_V0=v0 is not None,
            DECAY=decay_input,
            SOFT=soft_reset,
            SAVE_H=save_h,
            RETURN_V=return_v,
            BLOCK=_BLOCK,
            num_warps=4,
            enable_fp_fusion=False,  # no FMA: spikes bit-equal to the reference
        )
    return spikes, h, v_last


def lif_bwd_triton(grad_spikes, grad_v_last, h, v0, tau, *options_and_flag):
    *options, need_tau_grad = options_and_flag
    v_th, v_reset, soft_reset, decay_input, detach_reset, surrogate, alpha = LifOptions(*options)
    T, N = _flat(h)
    grad_x = torch.empty_like(h)
    grad_v0 = h.new_empty(h.shape[1:], dtype=torch.float32)
    grid = triton.cdiv(N, _BLOCK)
    partials = h.new_zeros(grid if need_tau_grad else 1, dtype=torch.float32)
    if T == 0:
        grad_v0.copy_(grad_v_last if grad_v_last is not None else grad_v0.zero_())
    elif N > 0:
        rest = 0.0 if soft_reset else v_reset
        _lif_bwd_kernel[(grid,)](
            grad_spikes,
            grad_v_last if grad_v_last is not None else grad_v0,
            h,
            v0 if v0 is not None else grad_v0,
            tau,
            grad_x,
            grad_v0,
            partials,
            T,
            N,
            (T - 1) * N,
            v_th,
            v_reset,
            rest,
            alpha,
            HAS_GVL=grad_v_last is not None,
            HAS_V0=v0 is not None,
            DECAY=decay_input,
            SOFT=soft_reset,
            DETACH=detach_reset,
            SURR=SURROGATE_CODES[surrogate],
            TAU_GRAD=need_tau_grad,
            BLOCK=_BLOCK,
            num_warps=4,
            enable_fp_fusion=False,  # the reference's roundings (common/triton_math.py)
        )
    return grad_x, grad_v0, partials.sum()


for _device in ("cpu", "cuda"):
    torch.library.impl("spikeclip::lif_fwd_triton", _device)(lif_fwd_triton)
    torch.library.impl("spikeclip::lif_bwd_triton", _device)(lif_bwd_triton)
register_lif_pair(
    "spikeclip::lif_fwd_triton", "spikeclip::lif_bwd_triton", torch.ops.spikeclip.lif_bwd_triton
)
