"""Helpers for LIF tests: inputs, the float64 truth, comparison with rounding taken into account."""

from __future__ import annotations

import torch

from spikeclip.kernels import lif, lif_reference

# Relative error norm allowed against the float64 reference, per storage dtype.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
# Distance of h from v_th under which a spike may legitimately flip (storage rounding of h).
NEAR = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    denom = b.norm().item()
    return (a - b).norm().item() / (denom if denom > 0 else 1.0)


def make_inputs(shape, dtype, device, *, soft=False, v0=True, learn_tau=True):
    """x [T, *] with a healthy firing rate (never zeros), v0, tau, upstream grads."""
    x = (torch.randn(shape, dtype=torch.float64) * 1.2 + 0.6).to(dtype).to(device)
    state = torch.float64 if dtype == torch.float64 else torch.float32
    v0_t = (torch.rand(shape[1:], dtype=torch.float64) * 0.8).to(state).to(device) if v0 else None
    tau = torch.tensor(1.7, dtype=torch.float64, device=device) if learn_tau else 2.0
    gs = torch.randn(shape, dtype=torch.float64).to(device)
    gv = torch.randn(shape[1:], dtype=torch.float64).to(device)
    return x, v0_t, tau, gs, gv


def run(x, v0, tau, gs, gv, backend, **opts):
    """Forward + backward; returns spikes, v and grads of (x, v0, tau), all detached."""
    x = x.detach().clone().requires_grad_(True)
    leaves = [x]
    if v0 is not None:
        v0 = v0.detach().clone().requires_grad_(True)
        leaves.append(v0)
    if isinstance(tau, torch.Tensor):
        tau = tau.detach().clone().requires_grad_(True)
        leaves.append(tau)
    s, v = lif(x, tau=tau, v0=v0, return_v=True, backend=backend, **opts)
    loss = (s.double() * gs.double()).sum() + (v.double() * gv.double()).sum()
    grads = torch.autograd.grad(loss, leaves)
    return s.detach(), v.detach(), [g.detach() for g in grads]


def truth(x, v0, tau, gs, gv, **opts):
    """float64 reference on the same (rounded) inputs, plus its h trace for the flip mask."""
    x64 = x.detach().double().cpu()
    v064 = v0.double().cpu() if v0 is not None else None
    tau64 = tau.double().cpu() if isinstance(tau, torch.Tensor) else tau
    s, v, grads = run(x64, v064, tau64, gs.cpu(), gv.cpu(), "torch", **opts)
    ref_opts = {k: opts[k] for k in opts}
    _, _, h = lif_reference(x64, tau=tau64, v0=v064, return_h=True, **ref_opts)
    return s, v, grads, h.detach()


def near_threshold(h64: torch.Tensor, v_th: float, dtype) -> torch.Tensor:
    """Neurons `[*]` whose trajectory came within rounding of the threshold at some step."""
    return ((h64 - v_th).abs() < NEAR[dtype]).any(dim=0)
