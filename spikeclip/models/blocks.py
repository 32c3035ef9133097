"""Spikingformer-style transformer blocks on tokens `[T, B, N, C]`.

Each sub-block starts with a neuron on its (real-valued) input and ends in linear + BN; the
residual adds those BN outputs to the stream (membrane shortcut), so the stream between blocks
holds membrane-like values and the spikes live inside the sub-blocks.
"""

from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint
from torch import nn

from spikeclip.kernels import sdsa, ssa
from spikeclip.memory import low_memory_saves
from spikeclip.models.config import SpikeCLIPConfig
from spikeclip.models.layers import SeqLinearBN, make_neuron


class AttentionCore(nn.Module):
    """The attention of spikes q, k, v `[T, B, H, N, d]` -> `[T, B, H, N, d]`, with its LIF fused
    (spikeclip.kernels.ssa / sdsa on `backend`). spiking=False is the ANN counterpart:
    ReLU((q @ k^T @ v) * scale) for ssa, q * ReLU(sum_N k * v) for sdsa."""

    def __init__(self, config: SpikeCLIPConfig, *, spiking: bool = True, backend: str = "auto"):
        super().__init__()
        self.kind, self.scale, self.spiking = config.attention, config.attn_scale, spiking
        self.backend, self.memory = backend, "lossless"
        self.lif_options = dict(
            v_th=config.attn_v_th,
            tau=config.tau,
            v_reset=config.v_reset,
            detach_reset=True,
            surrogate=config.surrogate,
            alpha=config.alpha,
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.spiking:
            with low_memory_saves(self.memory, q.shape, self.lif_options["v_th"]):  # SSA's h
                if self.kind == "ssa":
                    return ssa(q, k, v, scale=self.scale, backend=self.backend, **self.lif_options)
                return sdsa(q, k, v, backend=self.backend, **self.lif_options)
        if self.kind == "ssa":
            N, d = q.shape[-2:]
            y = q @ (k.transpose(-2, -1) @ v) if d < N else (q @ k.transpose(-2, -1)) @ v
            return torch.relu(y * self.scale)
        return q * torch.relu((k * v).sum(-2, keepdim=True))

    def extra_repr(self) -> str:
        return f"{self.kind}, scale={self.scale}, spiking={self.spiking}, backend={self.backend}"


class SelfAttention(nn.Module):
    """Neuron -> q, k, v = neuron(BN(linear)) -> attention (+ its LIF) -> linear + BN.

    `[T, B, N, C]` -> `[T, B, N, C]` (the residual is added by the caller). The linear + BN
    (+ neuron) units of a spiking block keep only their input spikes, packed, for the backward
    (SeqLinearBN packed_input)."""

    def __init__(self, config: SpikeCLIPConfig, *, spiking: bool = True, backend: str = "auto"):
        super().__init__()
        C, self.heads = config.width, config.heads
        self.input_neuron = make_neuron(config, spiking=spiking, backend=backend)
        self.q, self.k, self.v = (
            SeqLinearBN(
                C,
                C,
                neuron=make_neuron(config, spiking=spiking, backend=backend),
                packed_input=spiking,
                backend=backend,
            )
            for _ in range(3)
        )
        self.attend = AttentionCore(config, spiking=spiking, backend=backend)
        self.proj = SeqLinearBN(C, C, packed_input=spiking, backend=backend)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape  # -> [T, B, H, N, d]
        return x.view(T, B, N, self.heads, C // self.heads).transpose(2, 3).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape
        s = self.input_neuron(x)
        q, k, v = self._heads(self.q(s)), self._heads(self.k(s)), self._heads(self.v(s))
        y = self.attend(q, k, v)  # [T, B, H, N, d]
        return self.proj(y.transpose(2, 3).reshape(T, B, N, C))


class MLP(nn.Module):
    """Neuron -> linear + BN (C -> hidden) + neuron -> linear + BN (hidden -> C) on
    `[T, B, N, C]`."""

    def __init__(self, config: SpikeCLIPConfig, *, spiking: bool = True, backend: str = "auto"):
        super().__init__()
        hidden = int(config.width * config.mlp_ratio)
        self.input_neuron = make_neuron(config, spiking=spiking, backend=backend)
        hidden_neuron = make_neuron(config, spiking=spiking, backend=backend)
        self.fc1 = SeqLinearBN(
            config.width, hidden, neuron=hidden_neuron, packed_input=spiking, backend=backend
        )
        self.fc2 = SeqLinearBN(hidden, config.width, packed_input=spiking, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(self.input_neuron(x)))


class Block(nn.Module):
    """x + attention(x), then + mlp(x): `[T, B, N, C]` -> `[T, B, N, C]`.

    checkpoint=True keeps only the block's input for the backward and runs the block again
    there (activation checkpointing); BatchNorm statistics are updated by the first run only.
    """

    def __init__(self, config: SpikeCLIPConfig, *, spiking: bool = True, backend: str = "auto"):
        super().__init__()
        self.attn = SelfAttention(config, spiking=spiking, backend=backend)
        self.mlp = MLP(config, spiking=spiking, backend=backend)
        self.checkpoint = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return torch.utils.checkpoint.checkpoint(
                self._forward,
                x,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), frozen_batch_norm(self)),
            )
        return self._forward(x)


@contextlib.contextmanager
def frozen_batch_norm(module: nn.Module):
    """BatchNorm layers of `module` leave their running statistics as they are (a recomputed
    forward must not count its batch twice)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
        for m in bns
    ]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
