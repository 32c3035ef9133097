"""What the paper's 3x3 stride-2 tokenizer pool costs against the 2x2 one: the pools alone at the
paper encoder's shapes, forward + backward (the library op and our `max_pool3x3s2` kernel for
3x3, our `max_pool2x2` kernel and the library op for 2x2), and a training step of the paper
image encoder with each (3x3 on the library op and on our kernel), in the same run.

    python benchmarks/tokenizer_pool.py [--device cpu|cuda] [--batch 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from spikeclip.bench.timing import format_table, median_times
from spikeclip.kernels.max_pool.op import max_pool2x2, max_pool3x3s2
from spikeclip.models import ImageEncoder, SpikeCLIPConfig
from spikeclip.models.layers import SeqMaxPool3x3


def pool_rows(device, batch, T=4):
    rows = []
    for C, S in ((192, 32), (384, 16)):  # the paper tokenizer's two pools
        x = torch.randn(T * batch, C, S, S, device=device, requires_grad=True)
        g3 = torch.randn(T * batch, C, S // 2, S // 2, device=device)

        def step(pool, x=x, g=g3):
            def run():
                x.grad = None
                pool(x).backward(g)

            return run

        contenders = {"3x3 s2 p1 (library)": step(lambda t: F.max_pool2d(t, 3, 2, 1)),
                      "2x2 (library)": step(lambda t: F.max_pool2d(t, 2))}  # fmt: skip
        if device.type == "cpu":
            contenders["3x3 s2 p1 (max_pool3x3s2 cpp)"] = step(
                lambda t: max_pool3x3s2(t, backend="cpp"))  # fmt: skip
            contenders["2x2 (max_pool2x2 cpp)"] = step(lambda t: max_pool2x2(t, backend="cpp"))
        times = median_times(contenders, device, rounds=15)
        base = times["3x3 s2 p1 (library)"]
        for name, t in times.items():
            rows.append({"what": f"pool [{T * batch},{C},{S},{S}] fwd+bwd", "contender": name,
                         "ms": 1e3 * t, "vs 3x3": base / t})  # fmt: skip
    return rows


def step_rows(device, batch):
    rows, contenders = [], {}
    images = torch.rand(batch, 3, 32, 32, device=device)
    for pool, library in (("3x3", True), ("3x3", False), ("2x2", False)):
        torch.manual_seed(0)
        enc = ImageEncoder(SpikeCLIPConfig.named("paper", tokenizer_pool=pool)).to(device)
        if library:  # the pool alone on the library op, everything else as shipped
            for m in enc.modules():
                if isinstance(m, SeqMaxPool3x3):
                    m.backend = "torch"

        def run(enc=enc):
            enc.zero_grad(set_to_none=True)
            enc(images).square().sum().backward()

        label = " (library)" if library else (" (kernel)" if device.type == "cpu" else "")
        contenders[f"paper encoder step, {pool} pool{label}"] = run
    times = median_times(contenders, device, rounds=7, budget_s=60)
    base = times["paper encoder step, 3x3 pool (library)"]
    for name, t in times.items():
        rows.append({"what": f"train step batch {batch}", "contender": name, "ms": 1e3 * t,
                     "vs 3x3": base / t})  # fmt: skip
    return rows


def memory_rows(batch: int = 4):
    """Bytes the paper encoder saves for its backward per sample: the reference path (plain),
    and ours (lossless) with the 3x3 pool on the library op and on our kernel."""
    from spikeclip.memory import saved_tensor_bytes
    from spikeclip.models import set_backend, set_memory

    images = torch.rand(batch, 3, 32, 32)
    torch.manual_seed(0)
    reference = ImageEncoder(SpikeCLIPConfig.named("paper")).train()
    set_backend(reference, "torch")
    set_memory(reference, "plain")
    _, plain = saved_tensor_bytes(reference, images)
    rows = [{"what": "paper encoder saved MiB/sample", "contender": "reference (plain)",
             "MiB": plain / batch / 2**20, "vs reference": 1.0}]  # fmt: skip
    for library in (True, False):
        ours = ImageEncoder(SpikeCLIPConfig.named("paper")).train()
        set_memory(ours, "lossless")
        for m in ours.modules():
            if isinstance(m, SeqMaxPool3x3) and library:
                m.backend = "torch"
        _, saved = saved_tensor_bytes(ours, images)
        label = "lossless, 3x3 pool " + ("(library)" if library else "(kernel)")
        rows.append({"what": "paper encoder saved MiB/sample", "contender": label,
                     "MiB": saved / batch / 2**20, "vs reference": plain / saved})  # fmt: skip
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = pool_rows(device, args.batch) + step_rows(device, args.batch)
    print(f"# tokenizer pools: device={device} threads={torch.get_num_threads()}")
    print(format_table(rows, ["what", "contender", "ms", "vs 3x3"]))
    memory = memory_rows() if device.type == "cpu" else []
    if memory:
        print(format_table(memory, ["what", "contender", "MiB", "vs reference"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows + memory, f, indent=1)


if __name__ == "__main__":
    main()
