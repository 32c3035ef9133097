"""One stage of the recipe as a resumable, distributable training loop.

A stage trains `module` (wrapped in DistributedDataParallel when torchrun started several
processes) on batches of a source: item indices 0..n-1 of data in memory (each epoch in an
order drawn from (seed, stage, epoch) alone, the global batch split into equal contiguous parts,
one per rank), or a shard stream (spikeclip.streaming) whose every rank's position is saved
with each checkpoint. Either way a run continued from a checkpoint sees exactly the samples the
uninterrupted run would have seen in that epoch, none twice, none left out.
Optimiser (StageConfig.optimizer): "adamw" (AdamW, amsgrad, decoupled weight decay, the cosine
schedule from `lr` to `lr_final` per step) or "adam" (SpikeCLIP's official: Adam, amsgrad, no
weight decay, the cosine per epoch); either computed from the step or epoch (no scheduler state
to lose). A step function may return no loss: that step is skipped (the official gradient-
angle rule).

On disk, under run_dir/stages/<name>/: ckpt-<step>/ (model.safetensors: the whole student,
optimizer.safetensors + state.json), `latest.json` naming the newest complete checkpoint
(written last, atomically: a kill at any moment leaves the previous one valid), and at the end
final/model.safetensors + done.json. Checkpoints come every `checkpoint_every` steps: a resumed
run redoes the steps after the last one, exactly. Metrics go to run_dir/metrics.jsonl (rank 0).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from spikeclip.checkpoint import (
    CheckpointError,
    atomic_write_json,
    load_json,
    load_state_into,
    load_tensors,
    save_tensors,
)
from spikeclip.train import distributed
from spikeclip.train.distributed import Dist

MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


class Interrupted(RuntimeError):
    """Raised by `stop_after_steps` (tests): the process stops as if it had been killed."""


@dataclass(frozen=True)
class StageConfig:
    name: str
    epochs: int
    batch_size: int  # global, over all ranks
    lr: float
    lr_final: float
    weight_decay: float = 0.0
    checkpoint_every: int = 200  # steps (a checkpoint holds the whole student: ~100 MB)
    optimizer: str = "adamw"  # or "adam" (SpikeCLIP's official: no weight decay, per epoch)

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"stage {self.name}: bad epochs/batch_size/lr in {self}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"stage {self.name}: optimizer must be one of {OPTIMIZERS}")

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=0.0, amsgrad=True)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, amsgrad=True)

    def lr_at(self, global_step: int, total_steps: int, epoch: int) -> float:
        if self.optimizer == "adam":
            return cosine_lr(epoch, self.epochs, self.lr, self.lr_final)
        return cosine_lr(global_step, total_steps, self.lr, self.lr_final)


OPTIMIZERS = ("adamw", "adam")


@dataclass
class RunContext:
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    amp: str | None = None  # None or "bf16"
    progress: bool = True
    dist: Dist = field(default_factory=Dist)
    stop_after_steps: int | None = None  # tests: emulate a kill after this many steps

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        self.steps_taken = 0

    def log(self, record: dict) -> None:
        if not self.dist.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def autocast(self):
        if self.amp is None:
            return torch.autocast(self.device.type, enabled=False)
        if self.amp != "bf16":
            raise ValueError(f"amp must be None or 'bf16', got {self.amp!r}")
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def cosine_lr(step: int, total: int, lr: float, lr_final: float) -> float:
    if total <= 1:
        return lr
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * step / (total - 1)))


def epoch_order(n: int, seed: int, stage: str, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{stage}/{epoch}".encode()))
    return torch.randperm(n, generator=g)


# ---- checkpoints ----------------------------------------------------------------------------


def _save_optimizer(path: Path, opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    tensors = {f"{i}.{name}": t for i, st in sd["state"].items() for name, t in st.items()}
    save_tensors(path, tensors)
    return {"param_groups": sd["param_groups"], "state_keys": sorted(tensors)}


def _load_optimizer(path: Path, opt: torch.optim.Optimizer, meta: dict) -> None:
    tensors = load_tensors(path)
    if sorted(tensors) != meta["state_keys"]:
        raise CheckpointError(f"{path}: optimizer tensors do not match {STATE}")
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = t
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not fit ({exc})") from None


def save_checkpoint(stage_dir: Path, model: nn.Module, opt, progress: dict) -> None:
    name = f"ckpt-{progress['global_step']:07d}"
    ckpt = stage_dir / name
    save_tensors(ckpt / MODEL, model.state_dict())
    meta = _save_optimizer(ckpt / OPTIMIZER, opt)
    atomic_write_json(ckpt / STATE, {**progress, **meta})
    atomic_write_json(stage_dir / "latest.json", {"checkpoint": name})
    for old in stage_dir.glob("ckpt-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(stage_dir: Path, model: nn.Module, opt) -> dict | None:
    latest = stage_dir / "latest.json"
    if not latest.is_file():
        return None
    ckpt = stage_dir / load_json(latest)["checkpoint"]
    meta = load_json(ckpt / STATE)
    load_state_into(model, load_tensors(ckpt / MODEL), ckpt / MODEL)
    _load_optimizer(ckpt / OPTIMIZER, opt, meta)
    return meta


def stage_done(run_dir: Path, name: str) -> bool:
    return (Path(run_dir) / "stages" / name / "done.json").is_file()


def load_stage_result(run_dir: Path, name: str, model: nn.Module) -> dict:
    d = Path(run_dir) / "stages" / name
    load_state_into(model, load_tensors(d / "final" / MODEL), d / "final" / MODEL)
    return load_json(d / "done.json")


# ---- the loop -------------------------------------------------------------------------------

StepFn = Callable[[nn.Module, object], tuple[torch.Tensor, dict]]


class IndexBatches:
    """Batches of item indices 0..n-1 (data held in memory): each epoch in an order drawn from
    (seed, stage, epoch); each rank takes its contiguous part of the global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, stage: str, dist: Dist):
        if n < 1:
            raise ValueError(f"stage {stage}: nothing to train on")
        self.n, self.batch_size, self.seed, self.stage, self.dist = n, batch_size, seed, stage, dist

    def steps_per_epoch(self, epoch: int) -> int:
        return math.ceil(self.n / self.batch_size)

    def batches(self, epoch: int, first_step: int, position: dict | None):
        order = epoch_order(self.n, self.seed, self.stage, epoch)
        b = self.batch_size
        for s in range(first_step, self.steps_per_epoch(epoch)):
            yield order[s * b : (s + 1) * b].tensor_split(self.dist.world)[self.dist.rank]

    def position(self) -> dict:
        return {}  # the step in the epoch says it all


def run_stage(
    stage: StageConfig,
    model: nn.Module,
    module: nn.Module,
    data,
    step_fn: StepFn,
    ctx: RunContext,
) -> dict:
    """Train `module` (a part of `model`, the whole student that checkpoints hold) with
    `step_fn(trained_module, batch) -> (mean loss or None to skip the step, extra metrics)`.
    `data` is a number of items (batches of their indices, `IndexBatches`) or a batch source
    with the same three methods (`spikeclip.streaming.StreamBatches`: each rank's position in
    its stream is checkpointed).
    Returns the stage's summary (also written to done.json). A finished stage is loaded, not
    rerun."""
    stage_dir = ctx.run_dir / "stages" / stage.name
    if stage_done(ctx.run_dir, stage.name):
        return load_stage_result(ctx.run_dir, stage.name, model)
    if isinstance(data, int):
        data = IndexBatches(data, stage.batch_size, ctx.seed, stage.name, ctx.dist)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = stage.make_optimizer(params)
    steps = [data.steps_per_epoch(e) for e in range(stage.epochs)]
    total = sum(steps)
    progress = load_checkpoint(stage_dir, model, opt) or {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "seconds": 0.0,
        "world": ctx.dist.world,
    }
    if progress.get("positions") and progress.get("world", 1) != ctx.dist.world:
        raise ValueError(
            f"stage {stage.name}: the checkpoint was written by {progress.get('world')} ranks; "
            f"resume a streamed stage with as many (now {ctx.dist.world})"
        )
    if progress["global_step"]:
        ctx.log({"event": "resumed", "stage": stage.name, "global_step": progress["global_step"]})
    trained = module
    if ctx.dist.active:
        trained = nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    module.train()

    last_loss = float("nan")
    for epoch in range(progress["epoch"], stage.epochs):
        resuming = epoch == progress["epoch"] and progress["step_in_epoch"] > 0
        first = progress["step_in_epoch"] if resuming else 0
        saved = progress.get("positions") if resuming else None
        position = saved[ctx.dist.rank] if saved else None
        steps_per_epoch = steps[epoch]
        bar = tqdm(
            total=steps_per_epoch,
            initial=first,
            desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
            disable=not (ctx.progress and ctx.dist.main),
            leave=False,
        )
        batches = data.batches(epoch, first, position)
        for s in range(first, steps_per_epoch):
            t0 = time.perf_counter()
            local = next(batches)
            lr = stage.lr_at(progress["global_step"], total, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            with ctx.autocast():
                loss, extra = step_fn(trained, local)
            opt.zero_grad(set_to_none=True)
            if loss is not None:
                loss.backward()
                opt.step()
                last_loss = distributed.mean_over_ranks(loss.item(), ctx.dist, ctx.device)
            else:  # skipped (the angle rule: every rank decides alike)
                extra = {**extra, "skipped": 1}
            progress["global_step"] += 1
            progress["seconds"] += time.perf_counter() - t0
            progress.update(epoch=epoch, step_in_epoch=s + 1)
            if s + 1 == steps_per_epoch:
                progress.update(epoch=epoch + 1, step_in_epoch=0)
                progress.pop("positions", None)
            ctx.log(
                {
                    "stage": stage.name,
                    "epoch": epoch,
                    "step": progress["global_step"],
                    "loss": last_loss,
                    "lr": lr,
                    **extra,
                }
            )
            bar.set_postfix(loss=f"{last_loss:.4f}")
            bar.update()
            if progress["global_step"] % stage.checkpoint_every == 0:
                positions = distributed.gather_objects(data.position(), ctx.dist)
                if positions[0]:
                    progress["positions"] = positions
                if ctx.dist.main:
                    save_checkpoint(stage_dir, model, opt, progress)
                distributed.barrier(ctx.dist)
            ctx.steps_taken += 1
            if ctx.stop_after_steps is not None and ctx.steps_taken >= ctx.stop_after_steps:
                raise Interrupted(f"stopped after {ctx.steps_taken} steps (stop_after_steps)")
        batches.close()
        bar.close()
    summary = {
        "stage": stage.name,
        "steps": progress["global_step"],
        "seconds": progress["seconds"],
        "final_loss": last_loss,
        "config": asdict(stage),
    }
    if ctx.dist.main:
        save_tensors(stage_dir / "final" / MODEL, model.state_dict())
        atomic_write_json(stage_dir / "done.json", summary)
        for old in stage_dir.glob("ckpt-*"):
            shutil.rmtree(old, ignore_errors=True)
        (stage_dir / "latest.json").unlink(missing_ok=True)
    distributed.barrier(ctx.dist)
    return summary
