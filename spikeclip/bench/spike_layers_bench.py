"""Spike-fed layers at the shapes of SpikeCLIP's paper image encoder (batch 16, T = 4): the
`cpp` kernels that sum weight rows at the input's spikes (spike_linear, spike_conv2d; packing
the input's bits included) against the plain layer (F.linear / F.conv2d: BLAS / oneDNN, a float
copy of the input kept), forward and forward+backward, over firing rates. The kernels hand
over to the dense product above a rate (kDenseRate in csrc/cpu/spike_layers_cpu.cpp), so their
rows there show the hand-over's cost. Also the tokenizer's two 2x2 max-pools (the cpp kernel
against F.max_pool2d; no firing rate: their inputs are batch-normalised floats)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spikeclip.bench.timing import format_table, median_times
from spikeclip.kernels import max_pool2x2, pack_spikes, spike_linear
from spikeclip.kernels.spike_products.conv import spike_conv2d

RATES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
# (name, C_in, C_out, H = W) for 3x3 convolutions on T x B = 64 images; (name, rows, n, C_out)
# for linears on T x B x 64 tokens = 4096 rows.
CONVS = (
    ("conv 48->96 @32", 48, 96, 32),
    ("conv 96->192 @32", 96, 192, 32),
    ("conv 192->384 @16", 192, 384, 16),
    ("conv 384->384 @8", 384, 384, 8),
)
LINEARS = (
    ("linear 384->384", 4096, 384, 384),
    ("linear 384->1536", 4096, 384, 1536),
    ("linear 1536->384", 4096, 1536, 384),
)

# (name, C, H = W) for 2x2 max-pools of T x B = 64 images.
POOLS = (("max-pool 192 @32", 192, 32), ("max-pool 384 @16", 384, 16))


def _conv_case(cin, cout, hw, rate, images=64):
    x = (torch.rand(images, cin, hw, hw) < rate).float()
    w = torch.randn(cout, cin, 3, 3) * 0.05
    g = torch.randn(images, cout, hw, hw)

    def run(backend, backward):
        def fn():
            xs = x.requires_grad_(backward)
            ws = w.requires_grad_(backward)
            if backend == "dense":
                y = F.conv2d(xs, ws, padding=1)
            else:
                y = spike_conv2d(xs, ws, padding=1, backend=backend)
            if backward:
                y.backward(g)
                xs.grad = ws.grad = None

        return fn

    return run


def _linear_case(rows, n, cout, rate, device="cpu", dtype=torch.float32):
    x = (torch.rand(rows, n, device=device) < rate).to(dtype)
    w = torch.randn(cout, n, device=device, dtype=dtype) * 0.05
    g = torch.randn(rows, cout, device=device, dtype=dtype)

    def run(backend, backward):
        def fn():
            xs = x.requires_grad_(backward)
            ws = w.requires_grad_(backward)
            if backend == "dense":
                y = F.linear(xs, ws)
            else:
                y = spike_linear(xs, pack_spikes(x), ws, backend=backend)
            if backward:
                y.backward(g)
                xs.grad = ws.grad = None

        return fn

    return run


def _pool_case(channels, hw, rate=None, images=64):
    x = torch.randn(images, channels, hw, hw)
    g = torch.randn(images, channels, hw // 2, hw // 2)

    def run(backend, backward):
        def fn():
            xs = x.requires_grad_(backward)
            y = F.max_pool2d(xs, 2) if backend == "dense" else max_pool2x2(xs, backend=backend)
            if backward:
                y.backward(g)
                xs.grad = None

        return fn

    return run


def bench_spike_linears_cuda(
    modes=("fwd", "fwd+bwd"),
    rates=(0.05, 0.15),
    dtypes=(torch.float32, torch.bfloat16),
    batch: int = 128,
    rounds: int = 10,
) -> list[dict]:
    """The paper encoder's linears on CUDA at `batch` (T = 4, 64 tokens): the dense layer
    (F.linear, a float copy of the input kept), the `torch` backend (unpacks the bits, then a
    dense product) and `triton` (reads the bits inside its tensor-core products); packing
    included. One row per layer, dtype, rate, mode and contender."""
    device = torch.device("cuda")
    rows = []
    for name, _, n, cout in LINEARS:
        for dtype in dtypes:
            for rate in rates:
                run = _linear_case(4 * batch * 64, n, cout, rate, device, dtype)
                for mode in modes:
                    contenders = {
                        b: run(b, mode == "fwd+bwd") for b in ("dense", "torch", "triton")
                    }
                    times = median_times(contenders, device, rounds=rounds, warmup=2)
                    block = [
                        {
                            "layer": name,
                            "dtype": str(dtype).replace("torch.", ""),
                            "rate": rate,
                            "mode": mode,
                            "contender": b,
                            "ms": round(t * 1e3, 3),
                            "vs_dense": round(times["dense"] / t, 2),
                        }
                        for b, t in times.items()
                    ]
                    rows += block
                    print(format_table(block, list(block[0])) + "\n")
    return rows


def bench_spike_layers(
    modes=("fwd", "fwd+bwd"), rates=RATES, rounds: int = 7, budget_s: float = 10.0
) -> list[dict]:
    """One row per layer, mode and rate: dense ms, cpp ms and their ratio."""
    specs = [(_conv_case, *c) for c in CONVS] + [(_linear_case, *c) for c in LINEARS]
    specs += [(_pool_case, *c) for c in POOLS]
    rows = []
    for make, name, *shape in specs:
        for rate in rates if make is not _pool_case else (None,):
            run = make(*shape, rate)
            for mode in modes:
                backward = mode == "fwd+bwd"
                times = median_times(
                    {b: run(b, backward) for b in ("dense", "cpp")},
                    torch.device("cpu"),
                    rounds=rounds,
                    warmup=1,
                    budget_s=budget_s,
                )
                rows.append(
                    {
                        "layer": name,
                        "rate": rate,
                        "mode": mode,
                        "dense_ms": round(times["dense"] * 1e3, 2),
                        "cpp_ms": round(times["cpp"] * 1e3, 2),
                        "vs_dense": round(times["dense"] / times["cpp"], 2),
                    }
                )
        print(
            format_table(
                [r for r in rows if r["layer"] == name],
                ["layer", "rate", "mode", "dense_ms", "cpp_ms", "vs_dense"],
            )
        )
        print()
    return rows
