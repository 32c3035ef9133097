"""Pure-PyTorch references of the LIF, SDSA, SSA and spike packing: the spec the fused
backends are tested against. (The spike-fed products' spec is the dense product of the unpacked
spikes, their "torch" backend; the max-pools' is F.max_pool2d; the fused BatchNorm + LIF's is
BatchNorm then lif_reference.)

Autograd does the backward here. Fused kernels mirror these formulas (csrc/lif_math.h for
C++/CUDA, spikeclip/kernels/lif_triton_math.py for Triton) in the same order of operations, so
that forward spikes agree bit for bit wherever h is not within rounding of the threshold.
Half-precision inputs are computed in float32 (as the kernels do) and returned in their dtype.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "SURROGATES",
    "compute_dtype",
    "lif_reference",
    "pack_spikes_reference",
    "sdsa_reference",
    "spike_fn",
    "ssa_reference",
    "unpack_spikes_reference",
]


def _sigmoid_grad(u: torch.Tensor, alpha: float) -> torch.Tensor:
    sig = torch.sigmoid(alpha * u)
    return alpha * sig * (1 - sig)


def _atan_grad(u: torch.Tensor, alpha: float) -> torch.Tensor:
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * u) ** 2)


def _triangle_grad(u: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha * torch.clamp(1 - (alpha * u).abs(), min=0)


def _erf_grad(u: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha / math.sqrt(math.pi) * torch.exp(-((alpha * u) ** 2))


# Surrogate derivative g(u) of the Heaviside step at u = h - v_th, and its default alpha.
# Each has unit area (it is the derivative of a smooth step from 0 to 1).
SURROGATES = {
    "sigmoid": (_sigmoid_grad, 4.0),
    "atan": (_atan_grad, 2.0),
    "triangle": (_triangle_grad, 1.0),
    "erf": (_erf_grad, 2.0),
}


class _SpikeFn(torch.autograd.Function):
    """Heaviside step forward (u >= 0), surrogate derivative backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.surrogate, ctx.alpha = surrogate, alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (u,) = ctx.saved_tensors
        return grad * surrogate_grad(ctx.surrogate, u, ctx.alpha), None, None


def surrogate_grad(surrogate, u: torch.Tensor, alpha: float | None) -> torch.Tensor:
    """g(u): a named surrogate's derivative at alpha, or a callable's g(u) (its own shape
    closed over), checked to give a tensor of u's shape."""
    if not callable(surrogate):
        return SURROGATES[surrogate][0](u, alpha)
    g = surrogate(u)
    if not isinstance(g, torch.Tensor) or g.shape != u.shape:
        raise ValueError(
            f"a callable surrogate must return a tensor of its input's shape {tuple(u.shape)} "
            f"(the derivative g(u)), got {type(g).__name__} "
            f"{tuple(g.shape) if isinstance(g, torch.Tensor) else ''}"
        )
    return g.to(u.dtype)


def spike_fn(u: torch.Tensor, surrogate="sigmoid", alpha: float | None = None):
    """Spikes (u >= 0) as u's dtype, with the surrogate gradient of `surrogate`: one of
    SURROGATES' names (alpha defaulted per name), or a callable g(u) -> dspike/du."""
    if alpha is None and not callable(surrogate):
        alpha = SURROGATES[surrogate][1]
    return _SpikeFn.apply(u, surrogate, alpha)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype LIF math and membrane state use: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def pack_spikes_reference(x: torch.Tensor) -> torch.Tensor:
    """0/1 values `[..., n]` -> uint8 `[..., ceil(n / 8)]`, bit j of byte b = x[..., 8 b + j]."""
    n = x.shape[-1]
    nb = (n + 7) // 8
    xb = torch.nn.functional.pad(x.detach(), (0, nb * 8 - n)).reshape(*x.shape[:-1], nb, 8)
    weights = (1 << torch.arange(8, device=x.device)).to(torch.uint8)
    return (xb.to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def unpack_spikes_reference(bits: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of pack_spikes_reference: uint8 `[..., ceil(n / 8)]` -> `[..., n]` of dtype."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    x = (bits.unsqueeze(-1) >> shifts) & 1
    return x.reshape(*bits.shape[:-1], bits.shape[-1] * 8)[..., :n].to(dtype)


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
