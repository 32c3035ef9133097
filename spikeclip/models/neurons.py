"""Spiking neurons as nn.Modules over `[T, B, ...]`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from spikeclip.kernels import lif
from spikeclip.kernels.common.options import check_flag, compute_dtype, lif_options
from spikeclip.memory import check_memory_mode, low_memory_saves


class LIF(nn.Module):
    """LIF neuron (spikeclip.kernels.lif holds the math).

    step_mode "m" (default): each call takes a whole sequence `[T, B, ...]` and starts from the
    rest potential (stateless). step_mode "s": each call is one time step `[B, ...]`; the
    membrane is kept in the module between calls (gradients flow through it, as through the
    steps of a sequence) until `reset()` (or `reset_net(model)`), so T single steps give the
    spikes and gradients of one multi-step call.

    learnable_tau=True makes it a PLIF: tau = 1 / sigmoid(w) with w learnable, so tau > 1
    always; w starts where tau equals `tau`.

    learnable_v_th=True makes the threshold learnable: v_th * exp(s), s learnable (starting at
    0, one per neuron layer), computed as the input scaled by exp(-s) against the fixed v_th.
    With a reset to 0 (or a soft reset) that is the same neuron in exact arithmetic: every
    potential scales with the input. The surrogate gradient is then taken in units of the
    threshold (its width scales with it), and the membrane state is kept in those units.
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_th: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        detach_reset: bool = False,
        surrogate: str = "sigmoid",
        alpha: float | None = None,
        learnable_tau: bool = False,
        backend: str = "auto",
        memory: str = "lossless",
        step_mode: str = "m",
        learnable_v_th: bool = False,
    ):
        super().__init__()
        self.memory = check_memory_mode(memory)
        if step_mode not in ("m", "s"):
            raise ValueError(
                f"step_mode must be 'm' (multi-step) or 's' (one step), got {step_mode!r}"
            )
        self.step_mode = step_mode
        self.v: torch.Tensor | None = None  # the membrane between single steps
        if not tau > 1:
            raise ValueError(f"tau must be > 1, got {tau}")
        if tau == math.inf and (decay_input or learnable_tau):
            raise ValueError(
                "tau=inf (no leak) needs decay_input=False and a fixed tau (or use IF())"
            )
        # checked here, at construction, not at the first forward
        lif_options(v_th, v_reset, decay_input, detach_reset, surrogate, alpha)
        check_flag(learnable_tau, "learnable_tau")
        check_flag(learnable_v_th, "learnable_v_th")
        if learnable_v_th and v_reset not in (0.0, None):
            raise ValueError(
                f"learnable_v_th needs v_reset 0 or None (soft reset): a threshold learned as an "
                f"input scale leaves a reset to {v_reset} unscaled"
            )
        self.v_th, self.v_reset = v_th, v_reset
        self.decay_input, self.detach_reset = decay_input, detach_reset
        self.surrogate, self.alpha, self.backend = surrogate, alpha, backend
        if learnable_tau:
            self.w = nn.Parameter(torch.tensor(-math.log(tau - 1.0)))
            self.tau = None
        else:
            self.w = None
            self.tau = float(tau)
        # log of the learned threshold's factor over v_th (None: the threshold is v_th)
        self.v_th_log_scale = nn.Parameter(torch.zeros(())) if learnable_v_th else None

    def current_tau(self) -> float | torch.Tensor:
        return self.tau if self.w is None else 1.0 / torch.sigmoid(self.w)

    def current_v_th(self) -> float:
        """The threshold this neuron fires at (v_th, or v_th times its learned factor)."""
        s = self.v_th_log_scale
        return self.v_th if s is None else self.v_th * float(torch.exp(s.detach()))

    def forward_options(self, dtype: torch.dtype) -> dict:
        """What this neuron's forward computes on inputs of `dtype`, as numbers (the options of
        kernels.spike_products.lookup.lif_spike_codes): tau as the kernels take it (in the
        compute dtype), the input scale of a learned threshold (1 without), v_th, v_reset,
        decay_input."""
        tau = self.current_tau()
        if isinstance(tau, torch.Tensor):
            tau = float(tau.detach().to(compute_dtype(dtype)))
        s = self.v_th_log_scale
        scale = 1.0 if s is None else float(torch.exp(-s.detach()).to(dtype))
        return dict(tau=tau, input_scale=scale, v_th=self.v_th, v_reset=self.v_reset,
                    decay_input=self.decay_input)  # fmt: skip

    @property
    def has_parameters(self) -> bool:
        """Whether the neuron learns anything (tau or threshold): fused BN + LIF kernels take
        a fixed neuron only."""
        return self.w is not None or self.v_th_log_scale is not None

    def reset(self) -> None:
        """Back to the rest potential (single-step mode keeps the membrane between calls)."""
        self.v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `[T, B, ...]` input current (step_mode "m"), or one step `[B, ...]` ("s") ->
        spikes of the same shape and dtype."""
        if self.step_mode == "s":
            seq = x.unsqueeze(0)
            with low_memory_saves(self.memory, seq.shape, self.v_th):
                spikes, self.v = self._lif(seq, v0=self.v, return_v=True)
            return spikes[0]
        with low_memory_saves(self.memory, x.shape, self.v_th):
            return self._lif(x)

    def _lif(self, x: torch.Tensor, **state):
        if self.v_th_log_scale is not None:  # threshold v_th * e^s: the input over e^s
            x = x * torch.exp(-self.v_th_log_scale).to(x.dtype)
        return lif(
            x,
            tau=self.current_tau(),
            v_th=self.v_th,
            v_reset=self.v_reset,
            decay_input=self.decay_input,
            detach_reset=self.detach_reset,
            surrogate=self.surrogate,
            alpha=self.alpha,
            backend=self.backend,
            **state,
        )

    def extra_repr(self) -> str:
        tau = "learnable" if self.w is not None else self.tau
        reset = "soft" if self.v_reset is None else f"v_reset={self.v_reset}"
        v_th = f"learnable from {self.v_th}" if self.v_th_log_scale is not None else self.v_th
        return (
            f"tau={tau}, v_th={v_th}, {reset}, surrogate={self.surrogate}, "
            f"backend={self.backend}, step_mode={self.step_mode}"
        )


class IF(LIF):
    """Integrate-and-fire neuron: no leak, h = v + x, then fire and reset as the LIF (the
    LIF's charge with 1/tau = 0 and the input not divided, so every backend runs it).
    Same options, step modes and state as LIF."""

    def __init__(
        self,
        v_th: float = 1.0,
        v_reset: float | None = 0.0,
        detach_reset: bool = False,
        surrogate: str | Callable = "sigmoid",
        alpha: float | None = None,
        backend: str = "auto",
        memory: str = "lossless",
        step_mode: str = "m",
    ):
        super().__init__(
            tau=math.inf, v_th=v_th, v_reset=v_reset, decay_input=False,
            detach_reset=detach_reset, surrogate=surrogate, alpha=alpha, backend=backend,
            memory=memory, step_mode=step_mode,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return super().extra_repr().replace("tau=inf, ", "")


def reset_net(model: nn.Module) -> None:
    """reset() every neuron of `model` that keeps state between calls (single-step LIFs)."""
    for m in model.modules():
        if isinstance(m, LIF):
            m.reset()
