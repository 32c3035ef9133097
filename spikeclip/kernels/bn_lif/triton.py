"""The fused BatchNorm + LIF forward in Triton (spikeclip.kernels.bn_lif has the op and its
autograd): each program owns BLOCK positions of one time step's slice and sweeps t, normalising
y with its channel's statistics and affine, charging, firing and resetting in registers. The
LIF formulas are common/triton_math.py's; no FMA contraction, like every LIF kernel here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spikeclip.kernels.common.options import LifOptions
from spikeclip.kernels.common.triton_math import _charge, _reset, inv_tau_f32

_BLOCK = 1024


@triton.jit
def _bn_lif_fwd_kernel(
    y_ptr,
    mean_ptr,
    invstd_ptr,
    w_ptr,
    b_ptr,
    s_ptr,
    h_ptr,
    T,
    S,
    C,
    INNER,
    inv_tau,
    v_th,
    v_reset,
    rest,
    DECAY: tl.constexpr,
    SOFT: tl.constexpr,
    AFFINE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = p < S
    c = (p // INNER) % C
    mean = tl.load(mean_ptr + c, mask=mask, other=0.0)
    invstd = tl.load(invstd_ptr + c, mask=mask, other=0.0)
    if AFFINE:
        w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    v = tl.zeros([BLOCK], dtype=tl.float32) + rest
    for t in range(T):
        off = t * S + p
        y = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
        z = (y - mean) * invstd
        if AFFINE:
            z = z * w + b
        h = _charge(v, z, inv_tau, rest, DECAY)
        s = (h >= v_th).to(tl.float32)
        tl.store(s_ptr + off, s.to(s_ptr.dtype.element_ty), mask=mask)
        tl.store(h_ptr + off, h.to(h_ptr.dtype.element_ty), mask=mask)
        v = _reset(h, v_th, v_reset, SOFT)


def bn_lif_forward(y, mean, invstd, weight, bias, T: int, tau: float, o: LifOptions):
    """(spikes, h), both of y's shape and dtype, for y `[T*B', C, ...]` contiguous."""
    spikes, h = torch.empty_like(y), torch.empty_like(y)
    S = y.numel() // T
    if S == 0:
        return spikes, h
    C = y.shape[1]
    inner = S * T // (y.shape[0] * C)
    affine = weight is not None
    _bn_lif_fwd_kernel[(triton.cdiv(S, _BLOCK),)](
        y,
        mean.contiguous(),
        invstd.contiguous(),
        weight if affine else mean,
        bias if affine else mean,
        spikes,
        h,
        T,
        S,
        C,
        inner,
        inv_tau_f32(tau),
        o.v_th,
        o.v_reset,
        0.0 if o.soft_reset else o.v_reset,
        DECAY=o.decay_input,
        SOFT=o.soft_reset,
        AFFINE=affine,
        BLOCK=_BLOCK,
        enable_fp_fusion=False,
    )
    return spikes, h
