"""Where the time of a SpikingJelly model's training step goes, as shipped and after
`spikeclip.accelerate` (torch.profiler, self CPU time by op, three steps): what our kernels took
over, and what is left in PyTorch's own convolutions, BatchNorm and pooling.

    python benchmarks/peer_profile.py [--model spikformer] [--batch 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import os
from collections import defaultdict

# as `spikeclip bench` does: without it, page faults of fresh large tensors swamp every op
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch
from torch.profiler import profile

import spikeclip
from spikeclip.bench.peer_models import PEER_MODELS, zoo_model

GROUPS = {  # op name -> group, by the first prefix that matches
    "aten::mkldnn_convolution": "convolution", "aten::convolution_backward": "convolution",
    "aten::native_batch_norm": "batch norm", "aten::native_batch_norm_backward": "batch norm",
    "aten::max_pool2d_with_indices": "max-pool", "aten::max_pool2d_with_indices_backward":
    "max-pool", "spikeclip::": "spikeclip kernels",
}  # fmt: skip


def group_of(name: str) -> str:
    for prefix, group in GROUPS.items():
        if name == prefix or (prefix.endswith("::") and name.startswith(prefix)):
            return group
    return "other"


def breakdown(net, x, steps: int = 3) -> dict[str, float]:
    from spikingjelly.activation_based import functional

    def step():
        net(x).float().sum().backward()
        functional.reset_net(net)

    step()
    with profile() as prof:
        for _ in range(steps):
            step()
    totals = defaultdict(float)
    for event in prof.key_averages():
        totals[group_of(event.key)] += event.self_cpu_time_total / 1e3 / steps
    return dict(totals)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="spikformer", choices=PEER_MODELS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", help="also append the table to this file")
    args = p.parse_args()
    torch.manual_seed(0)
    shipped, x = zoo_model(args.model, batch=args.batch)
    ours = copy.deepcopy(shipped)
    spikeclip.accelerate(ours)
    rows = {"spikingjelly (as shipped)": breakdown(shipped, x), "accelerate()": breakdown(ours, x)}
    groups = sorted(
        {g for r in rows.values() for g in r}, key=lambda g: -rows["accelerate()"].get(g, 0)
    )
    lines = [f"# python benchmarks/peer_profile.py --model {args.model} --batch {args.batch}: "
             f"ms of self CPU time per training step (torch.profiler, 3 steps), "
             f"{torch.get_num_threads()} threads"]  # fmt: skip
    lines.append(f"{'group':>20}  " + "  ".join(f"{k:>26}" for k in rows))
    for g in groups:
        cells = []
        for r in rows.values():
            total = sum(r.values())
            cells.append(f"{r.get(g, 0.0):9.1f} ms ({100 * r.get(g, 0.0) / total:4.1f}%)".rjust(26))
        lines.append(f"{g:>20}  " + "  ".join(cells))
    lines.append(
        f"{'total':>20}  "
        + "  ".join(f"{sum(r.values()):9.1f} ms".rjust(26) for r in rows.values())
    )
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
