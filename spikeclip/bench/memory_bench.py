"""Memory of training a Spikingformer-style block stack (SpikeCLIP's image encoder shape: depth
4, width 384, 8 heads, T=4, 64 tokens) built several ways: bytes saved for the backward per
sample (on CUDA also the step's peak device memory), and time per training step (forward +
backward + AdamW), in one interleaved run.

- reference: backend="torch", memory="plain" (plain PyTorch layers and the reference neurons);
- spikingjelly: the same network with SpikingJelly 2.0.0 LIFNode neurons (when installed);
- ours lossless / low: fused kernels, memory="lossless" / "low"; low + checkpointed blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from spikeclip.bench.peers import spikingjelly_label, with_spikingjelly
from spikeclip.bench.timing import format_table, median_times
from spikeclip.memory import peak_device_memory, saved_tensor_bytes
from spikeclip.models import Block, SpikeCLIPConfig, set_backend, set_memory


def block_stack(config: SpikeCLIPConfig) -> nn.Sequential:
    return nn.Sequential(*[Block(config) for _ in range(config.depth)])


def bench_memory(
    batch: int = 32, device: str = "cpu", rounds: int = 5, fused: str = "cpp"
) -> list[dict]:
    device = torch.device(device)
    config = SpikeCLIPConfig.named("paper")
    torch.manual_seed(0)
    x = torch.randn(config.time_steps, batch, config.tokens, config.width, device=device)

    def build(backend, memory, checkpoint=False):
        torch.manual_seed(0)
        model = block_stack(config).to(device).train()
        set_backend(model, backend)
        set_memory(model, memory, checkpoint_blocks=checkpoint)
        return model

    models = {
        "reference (plain)": build("torch", "plain"),
        f"ours {fused} plain": build(fused, "plain"),
        f"ours {fused} lossless": build(fused, "lossless"),
        f"ours {fused} low": build(fused, "low"),
        f"ours {fused} low + checkpoint": build(fused, "low", checkpoint=True),
    }
    sj = with_spikingjelly(build("torch", "plain"), device)
    if sj is not None:
        models[f"{spikingjelly_label(device)} neurons"] = sj

    def train_step(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

        def step():
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()

        return step

    saved, peak = {}, {}
    for name, model in models.items():
        out, nbytes = saved_tensor_bytes(model, x)
        del out
        saved[name] = nbytes / batch
        if device.type == "cuda":  # the whole step's peak above what lay there before it
            _, peak[name] = peak_device_memory(train_step(model), device=device)
    times = median_times(
        {name: train_step(m) for name, m in models.items()},
        device,
        rounds=rounds,
        warmup=1,
        budget_s=180.0,
    )
    ref = "reference (plain)"
    rows = [
        {
            "network": name,
            "saved_MB_per_sample": round(saved[name] / 2**20, 2),
            "ref_saves_x": round(saved[ref] / saved[name], 2),
            "step_s": round(times[name], 3),
            "ref_time_x": round(times[ref] / times[name], 2),
            **({"peak_MB_per_sample": round(peak[name] / batch / 2**20, 2)} if peak else {}),
        }
        for name in models
    ]
    print(
        f"# block stack: depth {config.depth}, width {config.width}, {config.heads} heads, "
        f"T={config.time_steps}, {config.tokens} tokens, batch {batch}, device {device}"
    )
    print(format_table(rows, list(rows[0])))
    return rows
