"""Spiking attention in Triton, fused with its LIF.

Same ops and schemas as the C++ ones (csrc/ops.cpp), registered as spikeclip::*_triton:
- sdsa: one program per (head, block of D columns) sweeps t: kv = sum_N k * v, the LIF step on
  kv in registers, out = q * spikes; the backward sweeps t in reverse the same way.
- ssa: A[t] = k^T v per (t, head) first (D x D, small); then one program per (head, block of N
  tokens) sweeps t with the LIF state of its [BLOCK_N, D] tile in registers: y = q A[t] * scale
  never leaves the chip. Backward: per (head, block of N) the LIF backward and gq = gy A^T (gy
  kept for the next kernel), then per (t, head) gA = q^T gy, gk = v gA^T, gv = k gA.
Products run on tensor cores (tl.dot in TF32) and stay exact or float32-accurate: a dot of
0/1 operands (k^T v of spikes) is exact in plain TF32 (0 and 1 are exact, float32 accumulates
the counts); a dot with a float or count operand uses 3xTF32 (each float operand split into a
high and a low TF32 part), whose error is at float32's level, and exact for q @ A with q 0/1 and
integer counts below 2^22 (the low part of a count is exact in TF32).
q, k, v are saved packed 8 per byte (spike_pack_triton.py) and read back as bits.
Spec: spikeclip/kernels/reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spikeclip.kernels.attention_autograd import raise_not_spikes, register_attention_ops
from spikeclip.kernels.lif_triton_math import _charge, _lif_dh, _reset, inv_tau_f32
from spikeclip.kernels.options import ATTENTION_LIF_SCHEMA, SURROGATE_CODES, LifOptions
from spikeclip.kernels.spike_pack_triton import _spike_tile, pack_triton


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


# ---- SDSA ----------------------------------------------------------------------------------


@triton.jit
def _sdsa_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    h_ptr,
    T,
    BH,
    N,
    D,
    inv_tau,
    v_th,
    v_reset,
    rest,
    SOFT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    state = tl.zeros([BLOCK_D], dtype=tl.float32) + rest
    for t in range(T):
        base = (t * BH + bh).to(tl.int64) * N * D
        kv = tl.zeros([BLOCK_D], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            m = (n < N)[:, None] & dmask[None, :]
            off = base + n[:, None] * D + d[None, :]
            k = tl.load(k_ptr + off, mask=m, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + off, mask=m, other=0.0).to(tl.float32)
            kv += tl.sum(k * v, axis=0)
        h = _charge(state, kv, inv_tau, rest, True)
        s = (h >= v_th).to(tl.float32)
        tl.store(h_ptr + (t * BH + bh).to(tl.int64) * D + d, h, mask=dmask)
        state = _reset(h, v_th, v_reset, SOFT)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            m = (n < N)[:, None] & dmask[None, :]
            off = base + n[:, None] * D + d[None, :]
            q = tl.load(q_ptr + off, mask=m, other=0.0).to(tl.float32)
            tl.store(out_ptr + off, (q * s[None, :]).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _sdsa_bwd_kernel(
    go_ptr,
    h_ptr,
    qb_ptr,
    kb_ptr,
    vb_ptr,
    gq_ptr,
    gk_ptr,
    gv_ptr,
    T,
    BH,
    N,
    D,
    nb,
    inv_tau,
    v_th,
    v_reset,
    alpha,
    SOFT: tl.constexpr,
    DETACH: tl.constexpr,
    SURR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        base = (t * BH + bh).to(tl.int64) * N * D
        row0 = (t * BH + bh).to(tl.int64) * N
        gs = tl.zeros([BLOCK_D], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            m = (n < N)[:, None] & dmask[None, :]
            go = tl.load(go_ptr + base + n[:, None] * D + d[None, :], mask=m, other=0.0)
            q = _spike_tile(qb_ptr, row0 + n, d, nb, m)
            gs += tl.sum(go.to(tl.float32) * q, axis=0)
        h = tl.load(h_ptr + (t * BH + bh).to(tl.int64) * D + d, mask=dmask, other=0.0)
        s = (h >= v_th).to(tl.float32)
        dh = _lif_dh(h, gs, carry, v_th, v_reset, alpha, SOFT, DETACH, SURR)
        carry = dh * (1.0 - inv_tau)
        gkv = dh * inv_tau
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            m = (n < N)[:, None] & dmask[None, :]
            off = base + n[:, None] * D + d[None, :]
            go = tl.load(go_ptr + off, mask=m, other=0.0).to(tl.float32)
            k = _spike_tile(kb_ptr, row0 + n, d, nb, m)
            v = _spike_tile(vb_ptr, row0 + n, d, nb, m)
            ty = gq_ptr.dtype.element_ty
            tl.store(gq_ptr + off, (go * s[None, :]).to(ty), mask=m)
            tl.store(gk_ptr + off, (v * gkv[None, :]).to(ty), mask=m)
            tl.store(gv_ptr + off, (k * gkv[None, :]).to(ty), mask=m)


# ---- SSA -----------------------------------------------------------------------------------


@triton.jit
def _ktv_kernel(
    k_ptr,
    v_ptr,
    kb_ptr,
    vb_ptr,
    a_ptr,
    BH,
    N,
    D,
    nb,
    FROM_BITS: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """A[t, bh] = k^T v, [D, D] float32, one program per (t, head)."""
    tb = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        m = (n < N)[:, None] & (d < D)[None, :]
        if FROM_BITS:
            k = _spike_tile(kb_ptr, tb * N + n, d, nb, m)
            v = _spike_tile(vb_ptr, tb * N + n, d, nb, m)
        else:
            off = tb * N * D + n[:, None] * D + d[None, :]
            k = tl.load(k_ptr + off, mask=m, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + off, mask=m, other=0.0).to(tl.float32)
        acc += tl.dot(tl.trans(k), v, input_precision=PREC)
    am = (d < D)[:, None] & (d < D)[None, :]
    tl.store(a_ptr + tb * D * D + d[:, None] * D + d[None, :], acc, mask=am)


@triton.jit
def _ssa_fwd_kernel(
    q_ptr,
    a_ptr,
    out_ptr,
    h_ptr,
    T,
    BH,
    N,
    D,
    scale,
    inv_tau,
    v_th,
    v_reset,
    rest,
    SOFT: tl.constexpr,
    SAVE_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    m = (n < N)[:, None] & (d < D)[None, :]
    am = (d < D)[:, None] & (d < D)[None, :]
    state = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32) + rest
    for t in range(T):
        tb = (t * BH + bh).to(tl.int64)
        off = tb * N * D + n[:, None] * D + d[None, :]
        q = tl.load(q_ptr + off, mask=m, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + tb * D * D + d[:, None] * D + d[None, :], mask=am, other=0.0)
        y = tl.dot(q, a, input_precision="tf32x3") * scale
        h = _charge(state, y, inv_tau, rest, True)
        s = (h >= v_th).to(tl.float32)
        tl.store(out_ptr + off, s.to(out_ptr.dtype.element_ty), mask=m)
        if SAVE_H:
            tl.store(h_ptr + off, h.to(h_ptr.dtype.element_ty), mask=m)
        state = _reset(h, v_th, v_reset, SOFT)


@triton.jit
def _ssa_bwd_gy_kernel(
    go_ptr,
    h_ptr,
    a_ptr,
    gy_ptr,
    gq_ptr,
    T,
    BH,
    N,
    D,
    scale,
    inv_tau,
    v_th,
    v_reset,
    alpha,
    SOFT: tl.constexpr,
    DETACH: tl.constexpr,
    SURR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """LIF backward over t for a [BLOCK_N, D] tile: gy = dL/d(q k^T v) (kept), gq = gy A^T."""
    bh = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    m = (n < N)[:, None] & (d < D)[None, :]
    am = (d < D)[:, None] & (d < D)[None, :]
    carry = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for i in range(T):
        tb = ((T - 1 - i) * BH + bh).to(tl.int64)
        off = tb * N * D + n[:, None] * D + d[None, :]
        h = tl.load(h_ptr + off, mask=m, other=0.0).to(tl.float32)
        go = tl.load(go_ptr + off, mask=m, other=0.0).to(tl.float32)
        dh = _lif_dh(h, go, carry, v_th, v_reset, alpha, SOFT, DETACH, SURR)
        carry = dh * (1.0 - inv_tau)
        gy = dh * (inv_tau * scale)
        tl.store(gy_ptr + off, gy, mask=m)
        a = tl.load(a_ptr + tb * D * D + d[:, None] * D + d[None, :], mask=am, other=0.0)
        gq = tl.dot(gy, tl.trans(a), input_precision="tf32x3")
        tl.store(gq_ptr + off, gq.to(gq_ptr.dtype.element_ty), mask=m)


@triton.jit
def _ssa_bwd_kv_kernel(
    gy_ptr,
    qb_ptr,
    kb_ptr,
    vb_ptr,
    gk_ptr,
    gv_ptr,
    N,
    D,
    nb,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Per (t, head): gA = q^T gy over all tokens, then gk = v gA^T and gv = k gA."""
    tb = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    gA = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        m = (n < N)[:, None] & (d < D)[None, :]
        q = _spike_tile(qb_ptr, tb * N + n, d, nb, m)
        gy = tl.load(gy_ptr + tb * N * D + n[:, None] * D + d[None, :], mask=m, other=0.0)
        gA += tl.dot(tl.trans(q), gy, input_precision="tf32x3")
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        m = (n < N)[:, None] & (d < D)[None, :]
        off = tb * N * D + n[:, None] * D + d[None, :]
        k = _spike_tile(kb_ptr, tb * N + n, d, nb, m)
        v = _spike_tile(vb_ptr, tb * N + n, d, nb, m)
        ty = gk_ptr.dtype.element_ty
        gk = tl.dot(v, tl.trans(gA), input_precision="tf32x3")
        tl.store(gk_ptr + off, gk.to(ty), mask=m)
        tl.store(gv_ptr + off, tl.dot(k, gA, input_precision="tf32x3").to(ty), mask=m)


# ---- ops -----------------------------------------------------------------------------------


def _raise_if_bad(bad: torch.Tensor, name: str) -> None:
    if int(bad) != 0:
        raise_not_spikes(name)


def _saved_bits(q, k, v, save, name):
    if not save:
        empty = q.new_empty(0, dtype=torch.uint8)
        return empty, empty.clone(), empty.clone()
    packed = [pack_triton(t) for t in (q, k, v)]
    _raise_if_bad(sum(b for _, b in packed), name)
    return tuple(bits for bits, _ in packed)


def _lif_args(tau, o: LifOptions):
    """(1/tau as every backend rounds it, the hard reset's value, the rest potential)."""
    return inv_tau_f32(tau), o.v_reset, 0.0 if o.soft_reset else o.v_reset


def _blocks(N, D):
    BLOCK_D = _pow2(D)
    BLOCK_N = max(16, min(_pow2(N), 8192 // BLOCK_D))
    return BLOCK_N, BLOCK_D


def sdsa_fwd_triton(q, k, v, tau, *lif_and_save):
    *lif, save = lif_and_save
    o = LifOptions.from_attention_args(lif)
    T, B, H, N, D = q.shape
    out = torch.empty_like(q)
    h = q.new_empty((T, B, H, D), dtype=torch.float32)
    inv_tau, v_reset, rest = _lif_args(tau, o)
    BLOCK_N, _ = _blocks(N, D)
    BLOCK_D = min(_pow2(D), 64)
    if q.numel():
        _sdsa_fwd_kernel[(B * H, triton.cdiv(D, BLOCK_D))](
            q,
            k,
            v,
            out,
            h,
            T,
            B * H,
            N,
            D,
            inv_tau,
            o.v_th,
            v_reset,
            rest,
            SOFT=o.soft_reset,
            BLOCK_N=BLOCK_N,
            BLOCK_D=BLOCK_D,
            enable_fp_fusion=False,
        )
    bits = _saved_bits(q, k, v, save, "sdsa")
    return out, h if save else h.new_empty(0), *bits


def sdsa_bwd_triton(grad_out, h, q_bits, k_bits, v_bits, D, tau, *lif):
    o = LifOptions.from_attention_args(lif)
    go = grad_out.contiguous()
    T, B, H, N, _ = go.shape
    gq, gk, gv = (torch.empty_like(go) for _ in range(3))
    inv_tau, v_reset, _ = _lif_args(tau, o)
    BLOCK_N, _ = _blocks(N, D)
    BLOCK_D = min(_pow2(D), 64)
    if go.numel():
        _sdsa_bwd_kernel[(B * H, triton.cdiv(D, BLOCK_D))](
            go,
            h,
            q_bits,
            k_bits,
            v_bits,
            gq,
            gk,
            gv,
            T,
            B * H,
            N,
            D,
            (D + 7) // 8,
            inv_tau,
            o.v_th,
            v_reset,
            o.alpha,
            SOFT=o.soft_reset,
            DETACH=o.detach_reset,
            SURR=SURROGATE_CODES[o.surrogate],
            BLOCK_N=BLOCK_N,
            BLOCK_D=BLOCK_D,
            enable_fp_fusion=False,
        )
    return gq, gk, gv


def _kt_v(T, BH, N, D, k=None, v=None, kb=None, vb=None, like=None, spikes=True):
    """A = k^T v per (t, head), float32 [T * BH, D, D], from float inputs or packed bits.
    spikes: k and v hold only 0 and 1 (bits always do; the forward checks float inputs when it
    saves for a backward): plain TF32 is exact; otherwise 3xTF32."""
    a = like.new_empty((T * BH, D, D), dtype=torch.float32)
    BLOCK_N, BLOCK_D = _blocks(N, D)
    from_bits = kb is not None
    _ktv_kernel[(T * BH,)](
        k if k is not None else like,
        v if v is not None else like,
        kb if from_bits else like,
        vb if from_bits else like,
        a,
        BH,
        N,
        D,
        (D + 7) // 8,
        FROM_BITS=from_bits,
        PREC="tf32" if from_bits or spikes else "tf32x3",
        BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D,
        enable_fp_fusion=False,
    )
    return a


def ssa_fwd_triton(q, k, v, scale, tau, *lif_and_save):
    *lif, save = lif_and_save
    o = LifOptions.from_attention_args(lif)
    T, B, H, N, D = q.shape
    out = torch.empty_like(q)
    h = torch.empty_like(q) if save else q.new_empty(0)
    inv_tau, v_reset, rest = _lif_args(tau, o)
    if q.numel():
        # with save, k and v must be spikes (checked below: a ValueError otherwise)
        a = _kt_v(T, B * H, N, D, k=k, v=v, like=q, spikes=save)
        BLOCK_N, BLOCK_D = _blocks(N, D)
        _ssa_fwd_kernel[(B * H, triton.cdiv(N, BLOCK_N))](
            q,
            a,
            out,
            h if save else out,
            T,
            B * H,
            N,
            D,
            scale,
            inv_tau,
            o.v_th,
            v_reset,
            rest,
            SOFT=o.soft_reset,
            SAVE_H=save,
            BLOCK_N=BLOCK_N,
            BLOCK_D=BLOCK_D,
            enable_fp_fusion=False,
        )
    bits = _saved_bits(q, k, v, save, "ssa")
    return out, h, *bits


def ssa_bwd_triton(grad_out, h, q_bits, k_bits, v_bits, D, scale, tau, *lif):
    o = LifOptions.from_attention_args(lif)
    go = grad_out.contiguous()
    T, B, H, N, _ = go.shape
    gq, gk, gv = (torch.empty_like(go) for _ in range(3))
    if go.numel() == 0:
        return gq, gk, gv
    inv_tau, v_reset, _ = _lif_args(tau, o)
    BLOCK_N, BLOCK_D = _blocks(N, D)
    a = _kt_v(T, B * H, N, D, kb=k_bits, vb=v_bits, like=go)
    gy = go.new_empty(go.shape, dtype=torch.float32)
    _ssa_bwd_gy_kernel[(B * H, triton.cdiv(N, BLOCK_N))](
        go,
        h.contiguous(),
        a,
        gy,
        gq,
        T,
        B * H,
        N,
        D,
        scale,
        inv_tau,
        o.v_th,
        v_reset,
        o.alpha,
        SOFT=o.soft_reset,
        DETACH=o.detach_reset,
        SURR=SURROGATE_CODES[o.surrogate],
        BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D,
        enable_fp_fusion=False,
    )
    _ssa_bwd_kv_kernel[(T * B * H,)](
        gy,
        q_bits,
        k_bits,
        v_bits,
        gk,
        gv,
        N,
        D,
        (D + 7) // 8,
        BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D,
        enable_fp_fusion=False,
    )
    return gq, gk, gv


# The same schemas as the _C ops (csrc/ops.cpp), the LIF's options spelled by LifOptions.
_BITS = "Tensor grad_out, Tensor h, Tensor q_bits, Tensor k_bits, Tensor v_bits, int D"
_OUT5 = "(Tensor, Tensor, Tensor, Tensor, Tensor)"
for _name, _schema, _impl in (
    ("sdsa_fwd", f"(Tensor q, Tensor k, Tensor v, {ATTENTION_LIF_SCHEMA}, bool save) -> {_OUT5}",
     sdsa_fwd_triton),
    ("sdsa_bwd", f"({_BITS}, {ATTENTION_LIF_SCHEMA}) -> (Tensor, Tensor, Tensor)",
     sdsa_bwd_triton),
    ("ssa_fwd", f"(Tensor q, Tensor k, Tensor v, float scale, {ATTENTION_LIF_SCHEMA}, bool save) "
     f"-> {_OUT5}", ssa_fwd_triton),
    ("ssa_bwd", f"({_BITS}, float scale, {ATTENTION_LIF_SCHEMA}) -> (Tensor, Tensor, Tensor)",
     ssa_bwd_triton),
):  # fmt: skip
    torch.library.define(f"spikeclip::{_name}_triton", _schema)
    for _device in ("cpu", "cuda"):
        torch.library.impl(f"spikeclip::{_name}_triton", _device)(_impl)
register_attention_ops("_triton")
