"""Where the time of a SpikingJelly model's training step goes, as shipped and after
`spikeclip.accelerate` (torch.profiler, self CPU time by op, three steps): what our kernels took
over, and what is left in PyTorch's own convolutions, BatchNorm and pooling.

With `--fusion`: the training step as shipped, accelerated with each BatchNorm and neuron pair
run unfused (BN, then our LIF), and accelerated as `accelerate()` leaves it (the pair fused,
kernels.bn_lif), timed in the same run, interleaved.

With `--floor`: the least time those convolutions (and linear layers) need. Each one's forward
and backward is timed on its own, at its shape in the step and on the input it got there, in
PyTorch's layout and channels last, beside the whole steps (as shipped and accelerated). A change
that leaves those layers to PyTorch cannot make the step faster than they are: SpikingJelly's
step over their time bounds the speed-up any such change can reach. (Channels last is timed for
layers fed `[N, C, H, W]`; one fed `[T, B, C, H, W]` counts in that sum as laid out.) Beside
each layer, its floating-point work (forward, weight gradient and, where the step needs it, input
gradient: 2 flops a multiply-add) and the rate it ran at; after the sum, a float32 matrix
product's rate measured in the same run, and the bound if every layer ran at that rate.

    python benchmarks/peer_profile.py [--model spikformer] [--batch 16] [--floor | --fusion]
                                      [--rounds 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from collections import defaultdict

# as `spikeclip bench` does: without it, page faults of fresh large tensors swamp every op
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch
from torch.profiler import profile

import spikeclip
from spikeclip.bench.peer_models import PEER_MODELS, training_step, zoo_model
from spikeclip.bench.timing import median_times

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
    step = training_step(net, x)
    step()
    with profile() as prof:
        for _ in range(steps):
            step()
    totals = defaultdict(float)
    for event in prof.key_averages():
        totals[group_of(event.key)] += event.self_cpu_time_total / 1e3 / steps
    return dict(totals)


DENSE = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)


def dense_layers(net, x) -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    """(name, layer, the input it got, whether that input needed a gradient) of every
    convolution and linear layer of one forward (with autograd on, as in a training step)."""
    from spikingjelly.activation_based import functional

    seen, hooks = [], []
    for name, m in net.named_modules():
        if isinstance(m, DENSE):
            hooks.append(m.register_forward_hook(
                lambda m, args, out, name=name: seen.append((name, m, args[0].detach().clone(),
                                                             args[0].requires_grad))))  # fmt: skip
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
        functional.reset_net(net)
    return seen


def layer_flops(layer, inp, out, needs_grad: bool) -> float:
    """The floating-point work of one forward + backward of a convolution or linear layer:
    2 flops per multiply-add, for the forward, the weight gradient and (needs_grad) the input
    gradient, each the same number of multiply-adds."""
    if isinstance(layer, torch.nn.Linear):
        per_output = layer.in_features
    else:
        per_output = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return 2.0 * out.numel() * per_output * (3 if needs_grad else 2)


def matmul_rate(n: int = 2048, rounds: int = 5) -> float:
    """flop/s of a float32 n x n matrix product here (what dense layers could run at)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = median_times({"mm": lambda: a @ b}, torch.device("cpu"), rounds=rounds)["mm"]
    return 2.0 * n**3 / seconds


def floor(shipped, ours, x, rounds: int = 7) -> list[str]:
    """Lines: both steps, each dense layer's forward + backward alone (as laid out in the step,
    and channels last), their sum, and the bound it puts on the speed-up."""
    cpu = torch.device("cpu")
    steps = median_times({"shipped": training_step(shipped, x), "ours": training_step(ours, x)},
                         cpu, rounds=rounds, budget_s=60.0)  # fmt: skip
    lines, total, work = [], {"as in the step": 0.0, "channels last": 0.0}, 0.0
    for name, layer, inp, needs_grad in dense_layers(shipped, x):
        layer = copy.deepcopy(layer)
        out = layer(inp)
        grad = torch.randn_like(out)
        flops = layer_flops(layer, inp, out, needs_grad)
        work += flops
        cases = {"as in the step": (layer, inp, grad)}
        if inp.dim() == 4:
            cl = torch.channels_last
            cases["channels last"] = (copy.deepcopy(layer).to(memory_format=cl),
                                      inp.contiguous(memory_format=cl),
                                      grad.contiguous(memory_format=cl))  # fmt: skip

        def fwd_bwd(layer, inp, grad, needs_grad=needs_grad):
            inp = inp.detach().requires_grad_(needs_grad)
            return lambda: layer(inp).backward(grad)

        times = median_times({k: fwd_bwd(*c) for k, c in cases.items()}, cpu, rounds=rounds)
        cells = [f"{times[k] * 1e3:8.2f} ms" if k in times else f"{'-':>11}" for k in total]
        # a layer fed [T, B, ...] (SpikingJelly's multi-step layers) counts as laid out
        times.setdefault("channels last", times["as in the step"])
        for k in total:
            total[k] += times[k]
        achieved = flops / times["as in the step"]
        lines.append(f"{name:>40}  {tuple(inp.shape)!s:>20}  " + "  ".join(cells)
                     + f"  {flops / 1e9:7.3f}  {achieved / 1e9:7.1f}")  # fmt: skip
    head = [f"# python benchmarks/peer_profile.py --floor: training step (median of {rounds}) "
            f"and each convolution / linear layer's forward + backward alone (median of "
            f"{rounds}), {torch.get_num_threads()} threads",
            f"step: spikingjelly (as shipped) {steps['shipped'] * 1e3:.1f} ms, accelerate() "
            f"{steps['ours'] * 1e3:.1f} ms ({steps['shipped'] / steps['ours']:.2f}x)",
            f"{'layer':>40}  {'input':>20}  {'as in the step':>11}  "
            f"{'channels last':>11}  {'GFLOP':>7}  {'GFLOP/s':>7} (as in the step)"]  # fmt: skip
    rate = matmul_rate()
    tail = [f"{'sum':>40}  {'':>20}  " + "  ".join(f"{v * 1e3:8.2f} ms" for v in total.values())
            + f"  {work / 1e9:7.3f}  {work / total['as in the step'] / 1e9:7.1f}",
            f"a float32 2048 x 2048 matrix product here: {rate / 1e9:.1f} GFLOP/s; these layers "
            f"at that rate would take {work / rate * 1e3:.1f} ms, a bound of "
            f"{steps['shipped'] * rate / work:.2f}x over SpikingJelly's step",
            "the most a step that leaves these layers to PyTorch can gain over SpikingJelly's: "
            + ", ".join(f"{steps['shipped'] / v:.2f}x ({k})"
                        for k, v in total.items())]  # fmt: skip
    return head + lines + tail


def unfused(net):
    """`net` (accelerated) with its fused BN + neuron blocks back on the unfused pair: each
    Fused* block class of spikeclip.compat.spikingjelly_units becomes the class it runs as
    without the fusion (SpikingJelly's own block; our SSA with its stages unfused)."""
    from spikeclip.compat import spikingjelly as compat
    from spikeclip.compat import spikingjelly_units as units

    back = {cls: peer for peer, cls in units.FUSED_BLOCKS.items()}
    back.update({cls: compat.ATTENTION[peer] for peer, cls in units.FUSED_ATTENTION.items()})
    for m in net.modules():
        if type(m) in back:
            m.__class__ = back[type(m)]
    return net


def fusion(shipped, ours, x, rounds: int = 7) -> list[str]:
    """Lines: the three steps (as shipped, accelerated unfused, accelerated) side by side."""
    plain = unfused(copy.deepcopy(ours))
    steps = {"spikingjelly (as shipped)": shipped, "accelerate(), BN + neuron unfused": plain,
             "accelerate()": ours}  # fmt: skip
    times = median_times({k: training_step(n, x) for k, n in steps.items()},
                         torch.device("cpu"), rounds=rounds, budget_s=30.0 * rounds)  # fmt: skip
    base = times["spikingjelly (as shipped)"]
    lines = [f"# python benchmarks/peer_profile.py --fusion: training step (median of {rounds}, "
             f"interleaved), {torch.get_num_threads()} threads"]  # fmt: skip
    lines += [f"{k:>36}  {v * 1e3:8.1f} ms  {base / v:5.2f}x" for k, v in times.items()]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="spikformer", choices=PEER_MODELS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--floor",
        action="store_true",
        help="time the convolutions and linear layers alone instead of profiling",
    )
    p.add_argument(
        "--fusion",
        action="store_true",
        help="time the step with BN + neuron fused and unfused, side by side",
    )
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (--floor, --fusion)")
    p.add_argument("--out", help="also append the table to this file")
    args = p.parse_args()
    torch.manual_seed(0)
    shipped, x = zoo_model(args.model, batch=args.batch)
    ours = copy.deepcopy(shipped)
    spikeclip.accelerate(ours)
    if args.floor:
        return report(floor(shipped, ours, x, args.rounds), args.out)
    if args.fusion:
        return report(fusion(shipped, ours, x, args.rounds), args.out)
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
    report(lines, args.out)


def report(lines: list[str], out: str | None) -> None:
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
