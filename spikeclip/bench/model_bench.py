"""Training step of SpikeCLIP's image encoder: reference neurons, attention and dense layers
(backend="torch") against the fused kernels (with, on CPU, spike-fed linears that sum weight rows
at their input's spikes), and against a no-cost stand-in for neurons and attention on dense
layers: the limit that fusing those two alone can reach (the rest is dense convolutions,
linears and batch norm)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from spikeclip.bench.timing import format_table, median_times
from spikeclip.memory import saved_tensor_bytes
from spikeclip.models import (
    LIF,
    AttentionCore,
    ImageEncoder,
    SpikeCLIPConfig,
    set_backend,
    set_memory,
)

STAND_IN = "no-cost stand-in"


@contextlib.contextmanager
def stand_in_neurons_and_attention(model: torch.nn.Module):
    """Within the block every LIF returns its input and every attention q + k + v (two adds, so
    that the q, k and v projections still get their gradients, as with real attention)."""
    patched = []
    for m in model.modules():
        if isinstance(m, LIF):
            m.forward = lambda x: x
            patched.append(m)
        elif isinstance(m, AttentionCore):
            m.forward = lambda q, k, v: q + k + v
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _step_fn(model, optimizer, images, target):
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = (1 - F.cosine_similarity(model(images), target, dim=-1)).mean()
        loss.backward()
        optimizer.step()

    return step


def bench_train_step(
    config: str = "paper",
    batch: int = 16,
    backends: tuple[str, ...] = ("cpp",),
    device: str = "cpu",
    rounds: int = 5,
    budget_s: float = 120.0,
) -> list[dict]:
    """One row per contender: seconds per step (median of interleaved rounds), the ratio to
    the reference, the share of the stand-in's time, and bytes saved for backward per image."""
    device = torch.device(device)
    cfg = SpikeCLIPConfig.named(config)
    torch.manual_seed(0)
    model = ImageEncoder(cfg).to(device).train()
    images = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    target = torch.randn(batch, cfg.embed_dim, device=device)
    # One optimizer for all contenders: its state only grows, every contender steps it alike.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def with_backend(backend, memory):
        step = _step_fn(model, optimizer, images, target)

        def run():
            set_backend(model, backend)
            set_memory(model, memory)
            step()

        return run

    def stand_in():
        # Dense layers (the stand-in's neurons pass real values on, not spikes).
        set_backend(model, "torch")
        set_memory(model, "plain")
        with stand_in_neurons_and_attention(model):
            _step_fn(model, optimizer, images, target)()

    # The reference path: plain layers, reference neurons and attention. Fused: plain
    # (float saves, fastest) and lossless (packed spikes, recomputed: least memory).
    contenders = {"torch": with_backend("torch", "plain")}
    for b in backends:
        contenders[b] = with_backend(b, "plain")
        contenders[f"{b} lossless"] = with_backend(b, "lossless")
    contenders[STAND_IN] = stand_in
    times = median_times(contenders, device, rounds=rounds, warmup=1, budget_s=budget_s)

    def saved_bytes(name):
        if name == STAND_IN:
            set_backend(model, "torch")
            set_memory(model, "plain")
            ctx = stand_in_neurons_and_attention(model)
        else:
            ctx = contextlib.nullcontext()
            backend, _, memory = name.partition(" ")
            set_backend(model, backend)
            set_memory(model, memory or "plain")
        with ctx:
            out, nbytes = saved_tensor_bytes(model, images)
        del out
        return nbytes / batch

    rows = []
    for name, t in times.items():
        rows.append(
            {
                "config": config,
                "batch": batch,
                "contender": name,
                "step_s": round(t, 4),
                "vs_reference": round(times["torch"] / t, 3),
                "stand_in_share": round(times[STAND_IN] / t, 3),
                "saved_MB_per_image": round(saved_bytes(name) / 2**20, 2),
            }
        )
    print(
        format_table(
            rows,
            ["contender", "step_s", "vs_reference", "stand_in_share", "saved_MB_per_image"],
        )
    )
    return rows
