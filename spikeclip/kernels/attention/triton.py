"""Spiking attention in Triton, fused with its LIF.

Same ops and schemas as the C++ ones (csrc/ops.cpp), registered as spikeclip::*_triton:
- sdsa: one program per (head, block of D columns) sweeps t: kv = sum_N k * v, the LIF step on
  kv in registers, out = q * spikes; the backward sweeps t in reverse the same way.
- ssa: A[t] = k^T v per (t, head) first (D x D, a batched product); then one program per
  (head, tile of N tokens, tile of D columns) sweeps t with the LIF state of its tile in
  registers: y = q A[t] * scale never leaves the chip. Backward: the LIF backward over t gives
  gy; then batched products per (t, head): gq = gy A^T, gA = q^T gy, gk = v gA^T, gv = k gA.
  Every product is tiled (SSA_TILE, SSA_DEPTH), so no tile grows with N or D.
Products run on tensor cores (tl.dot in TF32) and stay exact or float32-accurate: a dot of
0/1 operands (k^T v of spikes) is exact in plain TF32 (0 and 1 are exact, float32 accumulates
the counts); a dot with a float or count operand uses 3xTF32 (each float operand split into a
high and a low TF32 part), whose error is at float32's level, and exact for q @ A with q 0/1 and
integer counts below 2^22 (the low part of a count is exact in TF32).
q, k, v are saved packed 8 per byte (common/pack_triton.py) and read back as bits.
Spec: spikeclip/kernels/attention/reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spikeclip.kernels.attention.autograd import raise_not_spikes, register_attention_ops
from spikeclip.kernels.common.options import ATTENTION_LIF_SCHEMA, SURROGATE_CODES, LifOptions
from spikeclip.kernels.common.pack_triton import _spike_tile, pack_triton
from spikeclip.kernels.common.triton_math import _charge, _lif_dh, _reset, inv_tau_f32


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
def _operand_tile(ptr, b, r, c, R, C, stride_b, stride_r, stride_c, BITS: tl.constexpr,
                  TRANS: tl.constexpr):  # fmt: skip
    """float32 tile X_b[r, c] of a product's operand, masked to its R x C. Floats: at
    ptr + b stride_b + r stride_r + c stride_c (a transpose is a swap of strides). BITS: spikes
    packed 8 per byte in rows of stride_r bytes, X their [R, C] matrix or, with TRANS, the
    transpose of the [C, R] matrix they hold."""
    m = (r < R)[:, None] & (c < C)[None, :]
    base = ptr + b * stride_b
    if BITS:
        if TRANS:
            byte = tl.load(base + c[None, :] * stride_r + (r // 8)[:, None], mask=m, other=0)
            x = ((byte.to(tl.int32) >> (r % 8)[:, None]) & 1).to(tl.float32)
        else:
            x = _spike_tile(base, r, c, stride_r, m)
    else:
        x = tl.load(base + r[:, None] * stride_r + c[None, :] * stride_c, mask=m, other=0.0)
        x = x.to(tl.float32)
    return x


@triton.jit
def _bmm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    sa_b,
    sa_m,
    sa_k,
    sb_b,
    sb_k,
    sb_n,
    A_BITS: tl.constexpr,
    A_TRANS: tl.constexpr,
    B_BITS: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """C[b] = A[b] @ B[b] ([M, K] @ [K, N], float32 accumulation, C contiguous [M, N] per b),
    one program per (b, tile of M, tile of N); operands as _operand_tile reads them."""
    b = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = _operand_tile(a_ptr, b, rm, rk, M, K, sa_b, sa_m, sa_k, A_BITS, A_TRANS)
        y = _operand_tile(b_ptr, b, rk, rn, K, N, sb_b, sb_k, sb_n, B_BITS, False)
        acc += tl.dot(x, y, input_precision=PREC)
    cm = (rm < M)[:, None] & (rn < N)[None, :]
    c_off = b * M * N + rm[:, None] * N + rn[None, :]
    tl.store(c_ptr + c_off, acc.to(c_ptr.dtype.element_ty), mask=cm)


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
    BLOCK_K: tl.constexpr,
):
    """One program per (head, tile of N tokens, tile of D columns) sweeps t with the LIF state
    of its tile in registers: y = q A[t] * scale, summed over D in BLOCK_K slices."""
    bh = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = (n < N)[:, None] & (d < D)[None, :]
    state = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32) + rest
    for t in range(T):
        tb = (t * BH + bh).to(tl.int64)
        acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            q = _operand_tile(q_ptr, tb, n, k, N, D, N * D, D, 1, False, False)
            a = _operand_tile(a_ptr, tb, k, d, D, D, D * D, D, 1, False, False)
            acc += tl.dot(q, a, input_precision="tf32x3")
        y = acc * scale
        h = _charge(state, y, inv_tau, rest, True)
        s = (h >= v_th).to(tl.float32)
        off = tb * N * D + n[:, None] * D + d[None, :]
        tl.store(out_ptr + off, s.to(out_ptr.dtype.element_ty), mask=m)
        if SAVE_H:
            tl.store(h_ptr + off, h.to(h_ptr.dtype.element_ty), mask=m)
        state = _reset(h, v_th, v_reset, SOFT)


@triton.jit
def _ssa_bwd_lif_kernel(
    go_ptr,
    h_ptr,
    gy_ptr,
    T,
    S,
    scale,
    inv_tau,
    v_th,
    v_reset,
    alpha,
    SOFT: tl.constexpr,
    DETACH: tl.constexpr,
    SURR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The LIF backward over t for BLOCK of the S = B H N D positions of a step:
    gy = dL/d(q k^T v), float32."""
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = p < S
    carry = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        off = (T - 1 - i) * S + p
        h = tl.load(h_ptr + off, mask=mask, other=0.0).to(tl.float32)
        go = tl.load(go_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dh = _lif_dh(h, go, carry, v_th, v_reset, alpha, SOFT, DETACH, SURR)
        carry = dh * (1.0 - inv_tau)
        tl.store(gy_ptr + off, dh * (inv_tau * scale), mask=mask)


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


def _sdsa_blocks(N, D):
    """SDSA's tile: BLOCK_D columns (at most 64) by BLOCK_N tokens, 8192 values at most."""
    BLOCK_D = min(_pow2(D), 64)
    return max(16, min(_pow2(N), 8192 // _pow2(D))), BLOCK_D


# SSA's tiles: products in tiles of at most SSA_TILE x SSA_TILE outputs, summed in slices SSA_DEPTH
# deep, every operand a float32 tile (bits unpacked, half precision upcast) whatever the dtype.
# At 64 x 64 x 32 Triton's 3 stages take about 48 KB of shared memory and no product spills, on
# every target from sm_80 (A100) on, at any N and D (benchmarks/triton_compile_check.py). Tests
# set smaller ones to run every tiled path at small shapes.
SSA_TILE, SSA_DEPTH = 64, 32


def _tile(n: int, cap: int) -> int:
    return min(_pow2(n), cap)


def sdsa_fwd_triton(q, k, v, tau, *lif_and_save):
    *lif, save = lif_and_save
    o = LifOptions.from_attention_args(lif)
    T, B, H, N, D = q.shape
    out = torch.empty_like(q)
    h = q.new_empty((T, B, H, D), dtype=torch.float32)
    inv_tau, v_reset, rest = _lif_args(tau, o)
    BLOCK_N, BLOCK_D = _sdsa_blocks(N, D)
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
    BLOCK_N, BLOCK_D = _sdsa_blocks(N, D)
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


def _bmm(a, b, out, M, N, K, a_strides, b_strides, *, a_bits=False, a_trans=False,
         b_bits=False, prec="tf32x3"):  # fmt: skip
    """out[i] = A[i] @ B[i] for each [M, N] matrix i of out ([M, K] @ [K, N]; _bmm_kernel);
    strides (matrix, row, column) of each operand, in bytes of bits for packed ones."""
    BLOCK_M, BLOCK_N, BLOCK_K = _tile(M, SSA_TILE), _tile(N, SSA_TILE), _tile(K, SSA_DEPTH)
    batch = out.numel() // (M * N)
    _bmm_kernel[(batch, triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))](
        a,
        b,
        out,
        M,
        N,
        K,
        *a_strides,
        *b_strides,
        A_BITS=a_bits,
        A_TRANS=a_trans,
        B_BITS=b_bits,
        PREC=prec,
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        enable_fp_fusion=False,
    )
    return out


def _kt_v(T, BH, N, D, k=None, v=None, kb=None, vb=None, like=None, spikes=True):
    """A = k^T v per (t, head), float32 [T * BH, D, D], from float inputs or packed bits.
    spikes: k and v hold only 0 and 1 (bits always do; the forward checks float inputs when it
    saves for a backward): plain TF32 is exact; otherwise 3xTF32."""
    a = like.new_empty((T * BH, D, D), dtype=torch.float32)
    if kb is not None:
        nb = (D + 7) // 8
        bits = (N * nb, nb, 0)
        return _bmm(kb, vb, a, D, D, N, bits, bits, a_bits=True, a_trans=True, b_bits=True,
                    prec="tf32")  # fmt: skip
    return _bmm(k.contiguous(), v.contiguous(), a, D, D, N, (N * D, 1, D), (N * D, D, 1),
                prec="tf32" if spikes else "tf32x3")  # fmt: skip


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
        BLOCK_N, BLOCK_D = _tile(N, SSA_TILE), _tile(D, SSA_TILE)
        _ssa_fwd_kernel[(B * H, triton.cdiv(N, BLOCK_N), triton.cdiv(D, BLOCK_D))](
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
            BLOCK_K=_tile(D, SSA_DEPTH),
            enable_fp_fusion=False,
        )
    bits = _saved_bits(q, k, v, save, "ssa")
    return out, h, *bits


_LIF_BLOCK = 1024


def ssa_bwd_triton(grad_out, h, q_bits, k_bits, v_bits, D, scale, tau, *lif):
    """gy = dL/d(q k^T v) by the LIF backward, then gq = gy A^T, gA = q^T gy, gk = v gA^T and
    gv = k gA as batched products over (t, head)."""
    o = LifOptions.from_attention_args(lif)
    go = grad_out.contiguous()
    T, B, H, N, _ = go.shape
    gq, gk, gv = (torch.empty_like(go) for _ in range(3))
    if go.numel() == 0:
        return gq, gk, gv
    inv_tau, v_reset, _ = _lif_args(tau, o)
    gy = go.new_empty(go.shape, dtype=torch.float32)
    S = go.numel() // T
    _ssa_bwd_lif_kernel[(triton.cdiv(S, _LIF_BLOCK),)](
        go,
        h.contiguous(),
        gy,
        T,
        S,
        scale,
        inv_tau,
        o.v_th,
        v_reset,
        o.alpha,
        SOFT=o.soft_reset,
        DETACH=o.detach_reset,
        SURR=SURROGATE_CODES[o.surrogate],
        BLOCK=_LIF_BLOCK,
        enable_fp_fusion=False,
    )
    nb = (D + 7) // 8
    bits, rows, a_t = (N * nb, nb, 0), (N * D, D, 1), (D * D, 1, D)
    a = _kt_v(T, B * H, N, D, kb=k_bits, vb=v_bits, like=go)
    _bmm(gy, a, gq, N, D, D, rows, a_t)
    g_a = _bmm(q_bits, gy, torch.empty_like(a), D, D, N, bits, rows, a_bits=True, a_trans=True)
    _bmm(v_bits, g_a, gk, N, D, D, bits, a_t, a_bits=True)
    _bmm(k_bits, g_a, gv, N, D, D, bits, (D * D, D, 1), a_bits=True)
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
