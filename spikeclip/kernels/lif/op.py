"""`lif`: the multi-step LIF neuron, one public function over every backend."""

from __future__ import annotations

import torch

from spikeclip.kernels.common import autograd as op_autograd
from spikeclip.kernels.common import options as opt
from spikeclip.kernels.common.backends import check_dtype_for_backend, resolve_backend
from spikeclip.kernels.common.options import compute_dtype
from spikeclip.kernels.lif import autograd  # noqa: F401  (registers spikeclip._C's LIF pair)
from spikeclip.kernels.lif.reference import lif_reference


def _fused_op(backend: str) -> str:
    """The forward op of a fused backend, importing its registration on first use."""
    if backend == "triton":
        from spikeclip.kernels.lif import triton  # noqa: F401  (registers the ops; imports Triton)

        return "spikeclip::lif_fwd_triton"
    return "spikeclip::lif_fwd"  # spikeclip._C's, registered by lif/autograd.py


def lif(
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
    return_v: bool = False,
    backend: str = "auto",
):
    """Multi-step leaky integrate-and-fire neuron (the spec: `reference.lif_reference`).

    Args:
        x: input current `[T, *]` (time first, any trailing shape), float32/float16/bfloat16
            (float64 on the torch and cpp backends).
        tau: membrane time constant, a number > 1 or a learnable one-element tensor (PLIF;
            its gradient comes from the same backward sweep); math.inf with
            decay_input=False is the IF neuron (h = v + x, no leak).
        v_th: firing threshold. v_reset: hard-reset value, or None for soft reset
            (v -= v_th on a spike; the charge then leaks towards 0).
        decay_input: divide the input by tau in the charge.
        detach_reset: no gradient through the spike's effect on the reset.
        surrogate, alpha: surrogate gradient ("sigmoid" 4, "atan" 2, "triangle" 1, "erf" 2),
            or a callable g(u) -> the derivative of the spike at u = h - v_th (alpha None;
            runs on the torch backend, which "auto" then picks: the fused kernels compile the
            four named ones in).
        v0: initial membrane `[*]`, default the rest potential (v_reset, or 0 for soft reset).
        return_v: also return the final membrane `[*]`; passing it as v0 of the next call
            continues the sequence exactly as one long call would.
        backend: "auto", "torch", "triton", "cuda" or "cpp" (spikeclip.kernels.common.backends).

    Returns:
        spikes `[T, *]` in x's dtype (0/1), and with return_v the final membrane `[*]` in the
        compute dtype (float32, or float64 for float64 x).
    """
    opt.check_sequence(x)
    opt.check_tau(tau, x, allow_inf=decay_input is False)
    options = opt.lif_options(v_th, v_reset, decay_input, detach_reset, surrogate, alpha)
    opt.check_flag(return_v, "return_v")
    opt.check_state(v0, x)
    only = (("torch",), "callable surrogate") if callable(surrogate) else None
    backend = resolve_backend(backend, x.device, op="lif", only=only)
    check_dtype_for_backend(x, backend)

    if backend == "torch" or x.numel() == 0:
        spikes, v = lif_reference(x, tau=tau, v0=v0, **options.reference_kwargs())
        return (spikes, v) if return_v else spikes

    out_dtype = x.dtype
    if (
        isinstance(tau, torch.Tensor)
        and tau.requires_grad
        and torch.is_grad_enabled()
        and x.dtype in (torch.float16, torch.bfloat16)
    ):
        # dL/dtau sums terms in (h[t] - v[t-1]), a small difference of large values that h
        # stored in half precision cannot resolve: keep h in float32 for a learnable tau.
        x = x.float()
    cdt = compute_dtype(x.dtype)
    if isinstance(tau, torch.Tensor):
        tau_t = tau.to(cdt).reshape(())
    else:
        tau_t = torch.full((), tau, dtype=cdt, device=x.device)
    v0c = v0.to(cdt).contiguous() if v0 is not None else None
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or tau_t.requires_grad or (v0c is not None and v0c.requires_grad)
    )
    fused = _fused_op(backend)
    args = (x.contiguous(), v0c, tau_t, *options, needs_grad, return_v)
    spikes, _, v_last = op_autograd.apply(fused, needs_grad, *args)
    spikes = spikes.to(out_dtype)
    return (spikes, v_last) if return_v else spikes
