"""Where a training step's device time goes: torch.profiler over steps of the paper image
encoder for a few contenders of `spikeclip bench model`, the kernels by self device time.

    python benchmarks/gpu_profile_step.py --batch 128 --precision bfloat16 \
        --contenders torch cuda "cuda lossless" "no-cost stand-in" > profile.txt

Per contender: wall time per step, device-busy time per step (sum of kernel times), and the
top kernels. Wall well above busy means the device waits for the host (launches, syncs).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from spikeclip.bench.model_bench import _contender_models, _step_fn
from spikeclip.models import ImageEncoder, SpikeCLIPConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="paper")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--contenders", nargs="+", default=["torch", "cuda", "cuda lossless"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=14)
    args = p.parse_args()
    device = torch.device("cuda")
    cfg = SpikeCLIPConfig.named(args.config)
    torch.manual_seed(0)
    base = ImageEncoder(cfg).to(device).train()
    base.check_finite = False
    builds = _contender_models(base, device, ("cuda", "triton"), ("plain", "lossless", "low"),
                               False, False)  # fmt: skip
    images = torch.rand(args.batch, 3, cfg.image_size, cfg.image_size, device=device)
    target = torch.randn(args.batch, cfg.embed_dim, device=device)
    for name in args.contenders:
        step = _step_fn(builds[name](), images, target, args.precision)
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / args.steps
        events = prof.key_averages()
        busy = sum(e.self_device_time_total for e in events) / 1e6 / args.steps
        print(f"== {name}: batch {args.batch} {args.precision}: {wall * 1e3:.1f} ms/step wall, "
              f"{busy * 1e3:.1f} ms/step of kernels ({100 * busy / wall:.0f}% busy)")  # fmt: skip
        print(
            events.table(
                sort_by="self_device_time_total", row_limit=args.top, max_name_column_width=70
            )
        )


if __name__ == "__main__":
    main()
