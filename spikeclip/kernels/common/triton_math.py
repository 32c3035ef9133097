"""The LIF's formulas in Triton, once, for every Triton kernel (LIF, SDSA, SSA): the twin of
csrc/lif_math.h, in the same order of operations (spec: spikeclip/kernels/lif/reference.py).
Launch the kernels that use them with enable_fp_fusion=False: an FMA would round a*b+c once
where the reference rounds twice, and move spikes that sit on the threshold.
benchmarks/triton_compile_check.py compiles every such kernel for sm_90 and sm_80 and fails if
its PTX holds one fma.rn.f32.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl


def inv_tau_f32(tau: float) -> float:
    """1 / tau as every backend computes it: tau rounded to float32, then divided in float32
    (csrc/lif_launch.h; the reference on a float32 tau); a Python float that passes to a
    kernel's float32 argument unchanged."""
    return float(np.float32(1.0) / np.float32(tau))


@triton.jit
def _surrogate_grad(u, alpha, SURR: tl.constexpr):
    # sigmoid, atan, triangle, erf: reference.SURROGATES
    if SURR == 0:
        # alpha sig (1 - sig) in the symmetric form of lif_math.h: 1 - sig cancels to nothing in
        # float32 once alpha |u| passes ~16 (SDSA's counted kv does), e / (1 + e)^2 does not
        e = tl.exp(-tl.abs(alpha * u))
        g = alpha * e / ((1.0 + e) * (1.0 + e))
    elif SURR == 1:
        w = 1.5707963267948966 * alpha * u
        g = alpha / 2.0 / (1.0 + w * w)
    elif SURR == 2:
        g = alpha * tl.maximum(1.0 - tl.abs(alpha * u), 0.0)
    else:
        au = alpha * u
        g = alpha * 0.5641895835477563 * tl.exp(-au * au)
    return g


@triton.jit
def _charge(v, x, inv_tau, rest, DECAY: tl.constexpr):
    # lif_math.h: lif_charge (rest = v_reset, or 0 for soft reset)
    if DECAY:
        h = v + (x - (v - rest)) * inv_tau
    else:
        h = v - (v - rest) * inv_tau + x
    return h


@triton.jit
def _reset(h, v_th, v_reset, SOFT: tl.constexpr):
    # lif_math.h: lif_reset, as the reference writes it (inf and NaN go where they go there)
    s = (h >= v_th).to(tl.float32)
    if SOFT:
        v = h - v_th * s
    else:
        v = h * (1.0 - s) + v_reset * s
    return v


@triton.jit
def _reset_grad(h, s, g, v_th, v_reset, SOFT: tl.constexpr, DETACH: tl.constexpr):
    # d v[t] / d h[t] through the reset (csrc/lif_math.h: reset_grad)
    if SOFT:
        if DETACH:
            r = tl.zeros_like(h) + 1.0
        else:
            r = 1.0 - v_th * g
    else:
        if DETACH:
            r = 1.0 - s
        else:
            r = (1.0 - s) + (v_reset - h) * g
    return r


@triton.jit
def _lif_dh(
    h,
    grad_s,
    carry,
    v_th,
    v_reset,
    alpha,
    SOFT: tl.constexpr,
    DETACH: tl.constexpr,
    SURR: tl.constexpr,
):
    """dL/dh[t] from dL/dspikes[t] and the gradient `carry` reaching v[t] from the future."""
    g = _surrogate_grad(h - v_th, alpha, SURR)
    s = (h >= v_th).to(tl.float32)
    return grad_s * g + carry * _reset_grad(h, s, g, v_th, v_reset, SOFT, DETACH)
