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

from spikeclip.kernels import pack_spikes, sdsa, ssa
from spikeclip.kernels.spike_products.lookup import (
    lif_spike_codes,
    spike_linear_lookup,
    spike_linear_lookup_lif,
)
from spikeclip.memory import low_memory_saves
from spikeclip.models.config import SpikeCLIPConfig
from spikeclip.models.layers import SeqLinearBN, hooked, make_neuron
from spikeclip.models.neurons import LIF


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


def looks_up(x: torch.Tensor, neuron: nn.Module, units, fused_neurons: bool = True) -> bool:
    """Whether a sub-block's inference path may run `neuron` on x `[T, B, N, C]` writing
    packed spikes and `units` (called here, not as modules) as table lookups
    (SeqLinearBN.looks_up), each with its LIF fused if fused_neurons; nobody watching them."""
    return (
        isinstance(neuron, LIF)
        and neuron.step_mode == "m"
        and not hooked(neuron)
        and all(u.looks_up(x) and not hooked(u) for u in units)
        and all(isinstance(u.neuron, LIF) == fused_neurons for u in units)
    )


def input_codes(neuron: LIF, x: torch.Tensor) -> torch.Tensor:
    """The spikes of `neuron` over x `[T, B, N, C]`, packed: `[T * B * N, ceil(C / 8)]`."""
    codes = lif_spike_codes(x.unsqueeze(3), x.shape[0], pad=0, **neuron.forward_options(x.dtype))
    return codes.view(-1, codes.shape[-1])


def heads_codes(y: torch.Tensor) -> torch.Tensor:
    """Spikes y `[T, B, H, N, d]` (d a multiple of 8) packed in token order, `[T * B * N,
    H * d / 8]`: the codes of `[T, B, N, H * d]`. Each byte holds 8 channels of one head, so only
    the bytes change places (1/32 of what moving the floats would)."""
    T, B, H, N, d = y.shape
    return pack_spikes(y).transpose(2, 3).reshape(T * B * N, H * d // 8)


def lookup_lif(unit: SeqLinearBN, codes: torch.Tensor, T: int, **layout) -> torch.Tensor:
    """unit (BN folded) and its LIF on the packed spikes codes `[T * M, ceil(C_in / 8)]`, the
    spikes laid out as spike_linear_lookup_lif's layout arguments (packed, heads, tokens) ask."""
    options = unit.neuron.forward_options(unit.op.weight.dtype)
    return spike_linear_lookup_lif(codes, *unit.folded_weights(), T, **layout, **options)


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
        inference = looks_up(x, self.input_neuron, (self.q, self.k, self.v))
        if inference:
            # inference: the input's spikes packed once, q, k, v by table lookup with their
            # LIFs fused, written in heads layout (kernels.spike_products.lookup); the same up
            # to float rounding
            codes, H = input_codes(self.input_neuron, x), self.heads
            q, k, v = (
                lookup_lif(u, codes, T, heads=H, tokens=N).view(T, B, H, N, C // H)
                for u in (self.q, self.k, self.v)
            )
        else:
            s = self.input_neuron(x)
            q, k, v = self._heads(self.q(s)), self._heads(self.k(s)), self._heads(self.v(s))
        y = self.attend(q, k, v)  # [T, B, H, N, d]
        if (
            inference
            and (C // self.heads) % 8 == 0
            and looks_up(x, self.input_neuron, (self.proj,), fused_neurons=False)
        ):  # the attention's spikes packed as they lie, then moved into token order
            out = spike_linear_lookup(heads_codes(y), *self.proj.folded_weights())
            return out.view(T, B, N, C)
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
        if looks_up(x, self.input_neuron, (self.fc1,)) and looks_up(
            x, self.input_neuron, (self.fc2,), fused_neurons=False
        ):
            # inference: spikes packed from neuron to product, never as floats
            # (kernels.spike_products.lookup); the same up to float rounding
            codes = input_codes(self.input_neuron, x)
            hidden = lookup_lif(self.fc1, codes, x.shape[0], packed=True)
            y = spike_linear_lookup(hidden, *self.fc2.folded_weights())
            return y.view(*x.shape[:-1], y.shape[-1])
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
