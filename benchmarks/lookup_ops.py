"""The inference ops of packed spikes (kernels.spike_products.lookup) against what the inference
path ran before them, layer by layer at the demo encoder's shapes (T = 4, batch 256, 28 px):
each spike-fed convolution or linear map with the LIF after it (and the tokenizer's 3x3 pool
between), on float spikes with the dense product (oneDNN's channels-last convolution, BLAS),
F.max_pool2d and our LIF kernel, against the table lookups fused with the LIF, reading and
writing packed spikes. Plus a copy of the dense product's output bytes: the memory traffic
alone of writing it once. Interleaved medians; the ratio is dense / lookup.

    python benchmarks/lookup_ops.py [--batch 256] [--rate 0.26] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as `spikeclip bench` does

import torch
import torch.nn.functional as F

from spikeclip.bench.machine import cpu_name
from spikeclip.bench.timing import format_table, median_times
from spikeclip.kernels import lif, pack_spikes
from spikeclip.kernels.spike_products.lookup import (
    spike_conv3x3_lookup,
    spike_conv3x3_lookup_lif,
    spike_linear_lookup,
    spike_linear_lookup_lif,
)

T = 4
NEURON = dict(tau=2.0, v_th=0.5, v_reset=0.0, decay_input=True)
# (name, C_in, C_out, size, then: "lif", "pool + lif" or None): the demo tokenizer's stages 1-4
CONVS = (
    ("conv 8->16 @28 + LIF", 8, 16, 28, "lif"),
    ("conv 16->32 @28 + pool + LIF", 16, 32, 28, "pool + lif"),
    ("conv 32->64 @14 + pool + LIF", 32, 64, 14, "pool + lif"),
    ("conv 64->64 @7", 64, 64, 7, None),
)
# (name, C_in, C_out, then: "lif" (float spikes out), "lif packed" or None): a block's units
LINEARS = (
    ("linear 64->64 + LIF (q, k, v)", 64, 64, "lif"),
    ("linear 64->256 + LIF (fc1)", 64, 256, "lif packed"),
    ("linear 256->64 (fc2)", 256, 64, None),
)


def codes_of(s: torch.Tensor, border: bool) -> torch.Tensor:
    codes = pack_spikes(s.contiguous())
    return F.pad(codes, (0, 0, 1, 1, 1, 1)).contiguous() if border else codes


def conv_contenders(cin, cout, size, then, batch, rate):
    s = (torch.rand(T * batch, size, size, cin) < rate).float()  # [N, H, W, C]: channels last
    x = s.permute(0, 3, 1, 2)
    w, b = 0.3 * torch.randn(cout, cin, 3, 3), 0.1 * torch.randn(cout)
    codes = codes_of(s, True)

    def dense():  # the product, or the LIF's spikes [T, B, H', W', C_out]
        y = F.conv2d(x, w, b, padding=1)  # channels last in and out
        if then == "pool + lif":
            y = F.max_pool2d(y, 3, 2, 1)
        if then is None:
            return y
        return lif(y.permute(0, 2, 3, 1).unflatten(0, (T, batch)), **NEURON)

    def lookup():
        if then is None:
            return spike_conv3x3_lookup(codes, w, b)
        return spike_conv3x3_lookup_lif(codes, w, b, T, pool=then == "pool + lif", **NEURON)

    out = F.conv2d(x, w, b, padding=1)
    return dense, lookup, lambda: out.clone()


def linear_contenders(cin, cout, then, batch, rate, tokens=49):
    s = (torch.rand(T * batch * tokens, cin) < rate).float()
    w, b = 0.3 * torch.randn(cout, cin), 0.1 * torch.randn(cout)
    codes = codes_of(s, False)

    def dense():  # the product, or the LIF's spikes [T, B * tokens, C_out]
        y = F.linear(s, w, b)
        return y if then is None else lif(y.view(T, -1, cout), **NEURON)

    def lookup():
        if then is None:
            return spike_linear_lookup(codes, w, b)
        return spike_linear_lookup_lif(codes, w, b, T, packed=then == "lif packed", **NEURON)

    out = F.linear(s, w, b)
    return dense, lookup, lambda: out.clone()


def cases(batch: int, rate: float) -> list[tuple[str, tuple]]:
    """(name, (dense, lookup, copy)) of every layer: three callables, the first two computing
    the same thing (the product, or the LIF's spikes: lookup packs them)."""
    torch.manual_seed(0)
    made = [(n, conv_contenders(*a, batch, rate)) for n, *a in CONVS]
    return made + [(n, linear_contenders(*a, batch, rate)) for n, *a in LINEARS]


def run(batch: int, rate: float) -> list[dict]:
    rows = []
    for name, (dense, lookup, copy) in cases(batch, rate):
        t = median_times({"dense": dense, "lookup": lookup, "copy": copy}, torch.device("cpu"),
                         rounds=11, budget_s=30.0)  # fmt: skip
        rows.append(dict(layer=name, batch=batch, rate=rate, dense_ms=1e3 * t["dense"],
                         lookup_ms=1e3 * t["lookup"], copy_ms=1e3 * t["copy"],
                         vs_dense=t["dense"] / t["lookup"]))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rate", type=float, default=0.26, help="the input spikes' firing rate")
    parser.add_argument("--out", help="write the rows here as JSON")
    args = parser.parse_args()
    rows = run(args.batch, args.rate)
    print(f"# lookup ops: {cpu_name()}, threads={torch.get_num_threads()}, T={T}")
    print(format_table(rows, ["layer", "batch", "rate", "dense_ms", "lookup_ms", "copy_ms",
                              "vs_dense"]))  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
