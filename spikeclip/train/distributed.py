"""torch.distributed set-up for `torchrun --nproc_per_node=N -m spikeclip train ...`: gloo on CPU,
nccl on CUDA; one process per device; rank 0 logs and writes checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init(device: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else run alone. Returns
    the ranks and this process's device ("cuda" becomes cuda:LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if world <= 1:
        return Dist(), dev
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local), dev


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def mean_over_ranks(value: float, d: Dist, device: torch.device) -> float:
    if not d.active:
        return value
    t = torch.tensor(
        [value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device
    )
    dist.all_reduce(t)
    return float(t) / d.world


def gather_objects(obj, d: Dist) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not d.active:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def shutdown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
