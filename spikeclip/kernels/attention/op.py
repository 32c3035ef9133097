"""Spiking attention fused with its LIF: `sdsa` (Spike-driven Transformer) and `ssa`
(Spikformer / SpikeCLIP). Spec: reference.sdsa_reference / reference.ssa_reference.

Fused kernels (spikeclip._C: csrc/cpu, csrc/cuda; Triton: attention/triton.py) keep the LIF over
t inside the kernel that computes its input, and save for the backward only h and q, k, v packed
1 bit per element.
"""

from __future__ import annotations

import torch

from spikeclip.kernels.attention.autograd import raise_not_spikes
from spikeclip.kernels.attention.reference import sdsa_reference, ssa_reference
from spikeclip.kernels.common import autograd as op_autograd
from spikeclip.kernels.common import options as opt
from spikeclip.kernels.common.backends import check_dtype_for_backend, resolve_backend


def _check_qkv(q, k, v, op: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        opt.check_sequence(t, name)
        if t.dim() != 5:
            raise ValueError(f"{op}: {name} must be [T, B, H, N, D], got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, q has {tuple(q.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}, q has {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device}, q is on {q.device}")


def _run_fused(fwd_name, q, k, v, *args):
    save = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    # non-spikes that need a gradient: a ValueError from the kernel (they are kept packed)
    return op_autograd.apply(
        fwd_name, save, q.contiguous(), k.contiguous(), v.contiguous(), *args, save
    )[0]


_REFERENCES = {"sdsa": sdsa_reference, "ssa": ssa_reference}


def _attention(name, q, k, v, extra, tau, v_th, v_reset, detach_reset, surrogate, alpha, backend):
    """Checks, then the reference or the fused op `name`; `extra`: the op's own arguments."""
    _check_qkv(q, k, v, name)
    tau = opt.check_number(tau, "tau", minimum=1.0)
    options = opt.lif_options(v_th, v_reset, True, detach_reset, surrogate, alpha)
    backend = resolve_backend(backend, q.device, op=name)
    check_dtype_for_backend(q, backend, "q")
    if backend == "torch" or q.numel() == 0:
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        # As the fused backends, so that the backends agree; not in compiled code, where a
        # check of the values would break the graph (and wait for the device) at every call.
        checks = needs_grad and not torch.compiler.is_compiling()
        if checks and not all(bool(((t == 0) | (t == 1)).all()) for t in (q, k, v)):
            raise_not_spikes(name)
        kwargs = options.reference_kwargs(with_decay_input=False)
        return _REFERENCES[name](q, k, v, **extra, tau=tau, **kwargs)
    if backend == "triton":
        from spikeclip.kernels.attention import triton  # noqa: F401  (registers the ops)

        fwd = f"spikeclip::{name}_fwd_triton"
    else:
        fwd = f"spikeclip::{name}_fwd"
    return _run_fused(fwd, q, k, v, *extra.values(), tau, *options.attention_args())


def sdsa(
    q,
    k,
    v,
    *,
    v_th=0.5,
    tau=2.0,
    v_reset=0.0,
    detach_reset=True,
    surrogate="sigmoid",
    alpha=None,
    backend="auto",
):
    """Spike-driven self-attention on spikes q, k, v `[T, B, H, N, D]`.

    kv[t] = sum over the N tokens of k[t] * v[t]; a multi-step LIF over t on kv (threshold v_th,
    from rest, decay_input); out[t] = q[t] * spikes(kv)[t]. Linear in N. Returns `[T, B, H, N, D]`
    in q's dtype. Other values than 0/1 are allowed in the forward; the fused backward needs
    spikes (it keeps them packed) and raises ValueError otherwise.
    """
    return _attention(
        "sdsa", q, k, v, {}, tau, v_th, v_reset, detach_reset, surrogate, alpha, backend
    )


def ssa(
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
    backend="auto",
):
    """Spiking self-attention (Spikformer, SpikeCLIP) on spikes q, k, v `[T, B, H, N, D]`.

    y[t] = (q[t] @ k[t]^T @ v[t]) * scale (no softmax); a multi-step LIF over t on y. Returns
    spikes `[T, B, H, N, D]` in q's dtype. The fused kernels compute q @ (k^T @ v) as sums over
    the spikes of k and q (exact integer counts); the backward needs spikes, as for sdsa.
    """
    extra = {"scale": opt.check_number(scale, "scale")}
    return _attention(
        "ssa", q, k, v, extra, tau, v_th, v_reset, detach_reset, surrogate, alpha, backend
    )
