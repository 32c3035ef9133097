"""Training step of SpikeCLIP's image encoder (forward, cosine loss, backward, AdamW), every way
it can run, in one interleaved run per (batch, precision):

- `torch`: the reference (backend="torch": plain layers, reference neurons and attention);
- `torch.compile`: the reference compiled (inductor, default mode), compiled in the warm-up;
- SpikingJelly: the same network with SpikingJelly's LIFNode for every LIF, attention as the
  reference computes it around SpikingJelly's LIF (when SpikingJelly imports);
- ours: each fused backend in each memory mode (plain, lossless, low);
- the no-cost stand-in: neurons and attention replaced by (almost) nothing on dense layers, the
  limit that fusing those two alone can reach (the rest is convolutions, linears and BN).

Every contender gets its own copy of the same initial weights and its own AdamW. Precision:
"float32", or "bfloat16" (forward and loss under torch.autocast). The encoder's NaN check of
its input (a device sync per step) is off for all alike. Per contender: seconds per step
(median of interleaved rounds), ratios to the reference and to the stand-in, and on CUDA the
step's peak device memory above the model and optimizer state. A contender that fails (a peer
without bf16 kernels, say) is reported with its error and left out of the timing.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F

from spikeclip.bench.peers import spikingjelly_label, spikingjelly_node, with_spikingjelly
from spikeclip.bench.timing import format_table, median_times
from spikeclip.memory import MEMORY_MODES, peak_device_memory, saved_tensor_bytes
from spikeclip.models import (
    LIF,
    AttentionCore,
    ImageEncoder,
    SpikeCLIPConfig,
    set_backend,
    set_memory,
)

STAND_IN = "no-cost stand-in"
REFERENCE = "torch"
COMPILED = "torch.compile"
COLUMNS = [
    "batch",
    "precision",
    "contender",
    "step_s",
    "vs_reference",
    "stand_in_share",
    "peak_MB",
    "saved_MB_per_image",
    "error",
]


def _stand_in(model: torch.nn.Module) -> torch.nn.Module:
    """Every LIF returns its input and every attention q + k + v (two adds, so that the q, k
    and v projections still get their gradients, as with real attention); dense layers."""
    for m in model.modules():
        if isinstance(m, LIF):
            m.forward = lambda x: x
        elif isinstance(m, AttentionCore):
            m.forward = lambda q, k, v: q + k + v
    set_backend(model, "torch")
    set_memory(model, "plain")
    return model


def _step_fn(model, images, target, precision: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    autocast = (
        torch.autocast(images.device.type, dtype=torch.bfloat16)
        if precision == "bfloat16"
        else contextlib.nullcontext()
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(images)
            loss = (1 - F.cosine_similarity(out.float(), target, dim=-1)).mean()
        loss.backward()
        optimizer.step()

    return step


def _contender_models(base, device, backends, memories, compile_reference, peers):
    """name -> a function that builds that contender's model (a copy of `base`)."""

    def ours(backend, memory):
        def build():
            m = copy.deepcopy(base)
            set_backend(m, backend)
            set_memory(m, memory)
            return m

        return build

    builds = {REFERENCE: ours("torch", "plain")}
    if compile_reference:
        builds[COMPILED] = lambda: torch.compile(ours("torch", "plain")())
    if peers and spikingjelly_node(device) is not None:  # SpikingJelly imports here
        label = spikingjelly_label(device)
        builds[label] = lambda: with_spikingjelly(copy.deepcopy(base), device)
    for b in backends:
        for mem in memories:
            builds[b if mem == "plain" else f"{b} {mem}"] = ours(b, mem)
    builds[STAND_IN] = lambda: _stand_in(copy.deepcopy(base))
    return builds


def bench_train_step(
    config: str = "paper",
    batches: tuple[int, ...] = (16,),
    precisions: tuple[str, ...] = ("float32",),
    backends: tuple[str, ...] = ("cpp",),
    memories: tuple[str, ...] = ("plain", "lossless"),
    device: str = "cpu",
    rounds: int = 5,
    budget_s: float = 120.0,
    compile_reference: bool = False,
    peers: bool = True,
    only: tuple[str, ...] | None = None,
    log=print,
) -> list[dict]:
    """One row per (batch, precision, contender); see the module docstring. only: the
    contenders to run, by their names in the table (the reference and the stand-in give the
    ratios: keep them)."""
    device = torch.device(device)
    for mem in memories:
        if mem not in MEMORY_MODES:
            raise ValueError(f"memory modes are {MEMORY_MODES}, got {mem!r}")
    cfg = SpikeCLIPConfig.named(config)
    torch.manual_seed(0)
    base = ImageEncoder(cfg).to(device).train()
    base.check_finite = False
    builds = _contender_models(base, device, backends, memories, compile_reference, peers)
    if only is not None:
        unknown = sorted(set(only) - set(builds))
        if unknown:
            raise ValueError(f"no contenders {unknown}; there are {sorted(builds)}")
        builds = {name: build for name, build in builds.items() if name in only}
    rows: list[dict] = []
    for batch in batches:
        images = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
        target = torch.randn(batch, cfg.embed_dim, device=device)
        for precision in precisions:
            rows += _one_setting(builds, images, target, precision, device, rounds, budget_s, log)
    return rows


def _one_setting(builds, images, target, precision, device, rounds, budget_s, log):
    batch = images.shape[0]
    steps, errors, models = {}, {}, {}
    for name, build in builds.items():
        try:
            models[name] = build()
            steps[name] = _step_fn(models[name], images, target, precision)
            steps[name]()  # the first step: compiles, loads kernels, or fails here
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            steps.pop(name, None)
            log(f"# {name} ({batch}, {precision}) failed: {errors[name]}")
    times = median_times(steps, device, rounds=rounds, warmup=1, budget_s=budget_s)
    peak = {}
    if device.type == "cuda":
        for name, step in steps.items():
            peak[name] = peak_device_memory(step, device=device)[1]
    saved = {}
    for name, model in models.items():
        if name in steps and name != COMPILED:
            with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bfloat16"):
                out, nbytes = saved_tensor_bytes(model, images)
            del out
            saved[name] = nbytes / batch
    ref, stand_in = times.get(REFERENCE), times.get(STAND_IN)
    block = []
    for name in builds:
        t = times.get(name)
        block.append(
            {
                "batch": batch,
                "precision": precision,
                "contender": name,
                "step_s": round(t, 4) if t else None,
                "vs_reference": round(ref / t, 3) if t and ref else None,
                "stand_in_share": round(stand_in / t, 3) if t and stand_in else None,
                "peak_MB": round(peak[name] / 2**20) if name in peak else None,
                "saved_MB_per_image": round(saved[name] / 2**20, 2) if name in saved else None,
                "error": errors.get(name),
            }
        )
    log(format_table(block, COLUMNS) + "\n")
    return block
