"""Spiking neurons as nn.Modules over `[T, B, ...]`."""

from __future__ import annotations

import math

import torch
from torch import nn

from spikeclip.kernels import lif
from spikeclip.kernels.options import check_flag, lif_options
from spikeclip.memory import check_memory_mode, low_memory_saves


class LIF(nn.Module):
    """Multi-step LIF neuron on `[T, B, ...]` (spikeclip.kernels.lif holds the math).

    learnable_tau=True makes it a PLIF: tau = 1 / sigmoid(w) with w learnable, so tau > 1
    always; w starts where tau equals `tau`. Stateless between calls: each call starts from
    the rest potential (use spikeclip.kernels.lif with v0/return_v to carry state).
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
    ):
        super().__init__()
        self.memory = check_memory_mode(memory)
        if not tau > 1:
            raise ValueError(f"tau must be > 1, got {tau}")
        # checked here, at construction, not at the first forward
        lif_options(v_th, v_reset, decay_input, detach_reset, surrogate, alpha)
        check_flag(learnable_tau, "learnable_tau")
        self.v_th, self.v_reset = v_th, v_reset
        self.decay_input, self.detach_reset = decay_input, detach_reset
        self.surrogate, self.alpha, self.backend = surrogate, alpha, backend
        if learnable_tau:
            self.w = nn.Parameter(torch.tensor(-math.log(tau - 1.0)))
            self.tau = None
        else:
            self.w = None
            self.tau = float(tau)

    def current_tau(self) -> float | torch.Tensor:
        return self.tau if self.w is None else 1.0 / torch.sigmoid(self.w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `[T, B, ...]` input current -> spikes of the same shape and dtype."""
        with low_memory_saves(self.memory, x.shape, self.v_th):
            return self._lif(x)

    def _lif(self, x: torch.Tensor) -> torch.Tensor:
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
        )

    def extra_repr(self) -> str:
        tau = "learnable" if self.w is not None else self.tau
        reset = "soft" if self.v_reset is None else f"v_reset={self.v_reset}"
        return (
            f"tau={tau}, v_th={self.v_th}, {reset}, surrogate={self.surrogate}, "
            f"backend={self.backend}"
        )
