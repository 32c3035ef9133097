"""The LIF's reference: the spec the fused LIF kernels (lif/triton.py, csrc) are tested against,
and the neuron the other ops' references run (attention, bn_lif).

Autograd does the backward here. Fused kernels mirror these formulas (csrc/lif_math.h for
C++/CUDA, spikeclip/kernels/common/triton_math.py for Triton) in the same order of operations,
so that forward spikes agree bit for bit wherever h is not within rounding of the threshold.
Half-precision inputs are computed in float32 (as the kernels do) and returned in their dtype.
"""

from __future__ import annotations

import torch

from spikeclip.kernels.common.options import compute_dtype
from spikeclip.kernels.common.surrogates import spike_fn


def lif_reference(
    x: torch.Tensor,
    *,
    tau: float | torch.Tensor = 2.0,
    v_th: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    v0: torch.Tensor | None = None,
    return_h: bool = False,
):
    """Multi-step LIF over x `[T, *]`. Returns (spikes `[T, *]` in x's dtype, final v `[*]`),
    and with return_h the membrane before reset h `[T, *]` (compute dtype) as a third item.

    For t = 0..T-1 (v[-1] = v0, default: the rest potential, v_reset or 0 for soft reset):
        charge  h = v + (x[t] - (v - rest)) * (1 / tau)      (decay_input)
                h = v - (v - rest) * (1 / tau) + x[t]        (otherwise)
                rest = v_reset, or 0 for soft reset (v_reset=None)
        fire    s = (h >= v_th)
        reset   v = h * (1 - s) + v_reset * s         (hard)
                v = h - v_th * s                       (soft)
    detach_reset stops the gradient through s in the reset. The final v is in the compute
    dtype (float32 for half inputs) so that chunked calls continue exactly.

    Non-finite values (in x or v0) follow IEEE arithmetic through these formulas, on every
    backend alike: h = +inf fires once, NaN and -inf never fire; the membrane turns NaN (a
    hard reset of +inf: inf * 0; the next charge of a +-inf membrane: inf - inf) and a NaN
    membrane stays NaN and silent. A neuron that met a non-finite value is silent from the
    next step on, its final membrane NaN (or +-inf when the value came at the last step and
    the reset kept it: soft reset of +inf, either reset of -inf).
    """
    cdt = compute_dtype(x.dtype)
    soft = v_reset is None
    rest = 0.0 if soft else float(v_reset)
    # 1/tau is rounded once, in the compute dtype; the fused kernels do the same.
    tau = tau.to(cdt) if isinstance(tau, torch.Tensor) else torch.tensor(tau, dtype=cdt)
    inv_tau = 1 / tau.to(x.device)
    xc = x.to(cdt)
    v = v0.to(cdt) if v0 is not None else torch.full(x.shape[1:], rest, dtype=cdt, device=x.device)
    spikes, hs = [], []
    for t in range(x.shape[0]):
        if decay_input:
            h = v + (xc[t] - (v - rest)) * inv_tau
        else:
            h = v - (v - rest) * inv_tau + xc[t]
        s = spike_fn(h - v_th, surrogate, alpha)
        s_r = s.detach() if detach_reset else s
        v = h - v_th * s_r if soft else h * (1 - s_r) + rest * s_r
        spikes.append(s)
        hs.append(h)
    # T = 0: empty outputs that stay in x's graph (x * 0 is empty and differentiable)
    out = torch.stack(spikes) if spikes else xc * 0
    if return_h:
        return out.to(x.dtype), v, torch.stack(hs) if hs else xc * 0
    return out.to(x.dtype), v
