"""benchmarks/lookup_ops.py times like against like: in each case the dense contender and the
lookup contender compute the same product, or the same LIF spikes (the lookup's packed)."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spikeclip._ext import extension_loaded
from spikeclip.kernels import pack_spikes

pytestmark = pytest.mark.skipif(not extension_loaded(), reason="needs spikeclip._C")

spec = importlib.util.spec_from_file_location(
    "lookup_ops", Path(__file__).parent.parent / "benchmarks" / "lookup_ops.py"
)
lookup_ops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lookup_ops)


def test_each_case_times_the_same_computation_both_ways():
    made = lookup_ops.cases(batch=2, rate=0.3)
    assert [n for n, _ in made] == [c[0] for c in lookup_ops.CONVS + lookup_ops.LINEARS]
    for name, (dense, lookup, copy) in made:
        expected, got = dense(), lookup()
        if "LIF" not in name:  # the products: [N, C, H, W] channels last / [rows, C]
            if expected.dim() == 4:
                expected = expected.permute(0, 2, 3, 1)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-4)
            continue
        assert 0.01 < float(expected.mean()) < 0.99, name  # spikes that could differ
        if "conv" in name:  # packed spikes with a border, [T * B, ...] images
            expected = F.pad(pack_spikes(expected), (0, 0, 1, 1, 1, 1))
        elif got.dtype == torch.uint8:  # fc1: packed rows
            expected = pack_spikes(expected).view(got.shape)
        else:  # q, k, v: spikes [T * M, 1, 1, C]
            expected = expected.reshape(got.shape)
        differ = float((got != expected).float().mean())
        assert differ < 1e-3, name  # float32: a membrane within rounding of v_th, rarely
        assert copy() is not None


def test_the_rows():
    rows = lookup_ops.run(batch=1, rate=0.2)
    assert len(rows) == len(lookup_ops.CONVS) + len(lookup_ops.LINEARS)
    for r in rows:
        assert r["dense_ms"] > 0 and r["lookup_ms"] > 0 and r["copy_ms"] > 0
        assert r["vs_dense"] == pytest.approx(r["dense_ms"] / r["lookup_ms"])
