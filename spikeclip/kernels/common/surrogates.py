"""The spike and its surrogate gradients, shared by every op's reference: the Heaviside step
forward, a smooth derivative backward (the fused kernels compile the four named ones in:
csrc/lif_math.h, common/triton_math.py).
"""

from __future__ import annotations

import math

import torch


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
