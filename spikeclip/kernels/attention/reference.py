"""The spiking attentions' references (the spec the fused SDSA / SSA kernels are tested
against): their products in the compute dtype, then the LIF's reference over t.
"""

from __future__ import annotations

from spikeclip.kernels.common.options import compute_dtype
from spikeclip.kernels.lif.reference import lif_reference


def sdsa_reference(
    q, k, v, *, v_th=0.5, tau=2.0, v_reset=0.0, detach_reset=True, surrogate="sigmoid", alpha=None
):
    """Spike-driven self-attention (Spike-driven Transformer) on q, k, v `[T, B, H, N, D]`:
    kv[t] = sum over tokens of k[t] * v[t] `[T, B, H, 1, D]`; multi-step LIF over t on kv
    (starting at rest, decay_input); out[t] = q[t] * spikes(kv)[t]. Returns q's dtype."""
    cdt = compute_dtype(q.dtype)
    kv = (k.to(cdt) * v.to(cdt)).sum(dim=-2, keepdim=True)
    s, _ = lif_reference(
        kv,
        tau=tau,
        v_th=v_th,
        v_reset=v_reset,
        detach_reset=detach_reset,
        surrogate=surrogate,
        alpha=alpha,
    )
    return (q.to(cdt) * s).to(q.dtype)


def ssa_reference(
    q,
    k,
    v,
    *,
    scale=0.125,
    v_th=0.5,
    tau=2.0,
    v_reset=0.0,
    detach_reset=True,
    surrogate="sigmoid",
    alpha=None,
):
    """Spiking self-attention (Spikformer, as SpikeCLIP uses it) on q, k, v `[T, B, H, N, D]`:
    y[t] = (q[t] @ k[t]^T @ v[t]) * scale, no softmax, in the cheaper association
    (q @ (k^T @ v) when N > D); multi-step LIF over t on y. Returns spikes in q's dtype."""
    cdt = compute_dtype(q.dtype)
    qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
    n, d = q.shape[-2:]
    y = qc @ (kc.transpose(-2, -1) @ vc) if n > d else (qc @ kc.transpose(-2, -1)) @ vc
    s, _ = lif_reference(
        y * scale,
        tau=tau,
        v_th=v_th,
        v_reset=v_reset,
        detach_reset=detach_reset,
        surrogate=surrogate,
        alpha=alpha,
    )
    return s.to(q.dtype)
