"""The inference ops of packed spikes (kernels.spike_products.lookup, csrc/cpu/
spike_lookup_cpu.cpp) against their spec, the dense computations they replace: products by
table lookup equal F.conv2d / F.linear up to float rounding; the LIF writing packed spikes (and
the convolution fused with it) equal the reference LIF's spikes bit for bit, packed."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from seeded_draws import integer

from spikeclip._ext import extension_loaded
from spikeclip.kernels import lif_reference, pack_spikes
from spikeclip.kernels.spike_products import lookup
from spikeclip.kernels.spike_products.lookup import (
    lif_spike_codes,
    lookup_fits,
    spike_conv3x3_lookup,
    spike_conv3x3_lookup_lif,
    spike_linear_lookup,
    spike_linear_lookup_lif,
)

pytestmark = pytest.mark.skipif(not extension_loaded(), reason="needs spikeclip._C")

DTYPES = [torch.float32, torch.float64]
# float32: sums of up to 576 rows of unit weights, in another order than the dense product
TOL = {torch.float32: dict(rtol=1e-5, atol=2e-4), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def spikes(*shape, rate=0.3, dtype=torch.float32):
    return (torch.rand(*shape) < rate).to(dtype)


def packed(s: torch.Tensor, border: bool) -> torch.Tensor:
    """[..., H, W, C] spikes -> codes [..., H (+2), W (+2), ceil(C/8)] (pack_spikes's layout)."""
    codes = pack_spikes(s.contiguous(), backend="torch")
    return F.pad(codes, (0, 0, 1, 1, 1, 1)).contiguous() if border else codes


CONV_SHAPES = [  # N, C_in, C_out, H, W: channels off every multiple, a 1x1 image, one channel
    (3, 5, 7, 4, 6),
    (2, 16, 32, 9, 9),
    (2, 19, 70, 5, 3),
    (1, 8, 1, 1, 1),
    (4, 1, 17, 3, 8),
    (2, 64, 64, 7, 7),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv_equals_f_conv2d(shape, dtype):
    torch.manual_seed(sum(shape))
    N, cin, cout, H, W = shape
    s = spikes(N, H, W, cin, rate=float(torch.empty(1).uniform_(0.05, 0.6)), dtype=dtype)
    weight, bias = torch.randn(cout, cin, 3, 3, dtype=dtype), torch.randn(cout, dtype=dtype)
    y = spike_conv3x3_lookup(packed(s, True), weight, bias)
    expected = F.conv2d(s.permute(0, 3, 1, 2), weight, bias, padding=1).permute(0, 2, 3, 1)
    assert y.shape == (N, H, W, cout) and y.dtype == dtype
    torch.testing.assert_close(y, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cin,cout", [(64, 64), (7, 300), (256, 64), (9, 1), (1, 16)])
def test_linear_equals_f_linear(cin, cout, dtype):
    torch.manual_seed(cin + cout)
    x = spikes(37, cin, dtype=dtype)
    weight, bias = torch.randn(cout, cin, dtype=dtype), torch.randn(cout, dtype=dtype)
    y = spike_linear_lookup(packed(x, False), weight, bias)
    torch.testing.assert_close(y, F.linear(x, weight, bias), **TOL[dtype])


def test_bits_past_c_in_are_not_read_as_spikes():
    """The last byte's bits past C_in (and the border's codes) select zero rows: junk there
    changes nothing, and no table is read out of range whatever the codes hold."""
    torch.manual_seed(0)
    s = spikes(2, 5, 6, 11)
    weight, bias = torch.randn(4, 11, 3, 3), torch.randn(4)
    codes = packed(s, True)
    dirty = codes.clone()
    dirty[..., 1] |= 0xF8  # channels 11..15 do not exist
    torch.testing.assert_close(
        spike_conv3x3_lookup(dirty, weight, bias), spike_conv3x3_lookup(codes, weight, bias)
    )
    rows = packed(spikes(9, 11), False)
    linear_weight = torch.randn(4, 11)
    torch.testing.assert_close(
        spike_linear_lookup(rows | torch.tensor([0, 0xF8], dtype=torch.uint8), linear_weight, bias),
        spike_linear_lookup(rows, linear_weight, bias),
    )
    every = torch.randint(0, 256, (2, 7, 8, 2), dtype=torch.uint8)  # any byte is a valid code
    assert torch.isfinite(spike_conv3x3_lookup(every, weight, bias)).all()


NEURONS = {
    "hard reset": dict(tau=2.0, v_th=0.5, v_reset=0.0, decay_input=True),
    "soft reset, learned threshold": dict(
        tau=1.7, input_scale=0.8, v_th=0.5, v_reset=None, decay_input=True
    ),
    "reset to -0.2, no input decay": dict(tau=3.0, v_th=0.3, v_reset=-0.2, decay_input=False),
    "IF": dict(tau=math.inf, v_th=1.0, v_reset=0.0, decay_input=False),
}


def reference_codes(x, T, pool, options, dtype):
    """lif_spike_codes's spec: the reference LIF on the (pooled, scaled) input, packed."""
    options = dict(options)
    scale = options.pop("input_scale", 1.0)
    x = x.expand(T, *x.shape[1:])
    if pool:
        pooled = F.max_pool2d(x.flatten(0, 1).permute(0, 3, 1, 2), 3, 2, 1)
        x = pooled.permute(0, 2, 3, 1).unflatten(0, (T, x.shape[1]))
    s, _ = lif_reference(x * torch.tensor(scale, dtype=dtype), **options)
    return packed(s, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neuron", list(NEURONS))
@pytest.mark.parametrize("pool", [False, True], ids=["no pool", "pool"])
@pytest.mark.parametrize("constant", [False, True], ids=["per step", "one step"])
def test_lif_codes_equal_the_reference_lif(neuron, pool, constant, dtype):
    torch.manual_seed(len(neuron) + 2 * pool + constant)
    T, B, H, W, C = 4, 3, 7, 6, 13
    x = torch.randn(1 if constant else T, B, H, W, C, dtype=dtype)
    codes = lif_spike_codes(x, T, pool=pool, **NEURONS[neuron])
    assert codes.dtype == torch.uint8
    expected = reference_codes(x, T, pool, NEURONS[neuron], dtype)
    assert torch.equal(codes, expected)
    assert 0 < int(expected.count_nonzero()) < expected.numel()


def test_lif_codes_pool_nan_and_inf_as_f_max_pool2d():
    """The pool's NaN wins its window, -inf loses, as in F.max_pool2d; then the LIF as the
    reference runs it (a NaN membrane never fires)."""
    torch.manual_seed(1)
    x = torch.randn(2, 2, 6, 5, 9)
    x[0, 0, 2, 3, 4] = float("nan")
    x[1, 1, :, :, 2] = float("-inf")
    x[1, 0, 0, 0, :] = float("inf")
    options = NEURONS["soft reset, learned threshold"]
    for pool in (False, True):
        expected = reference_codes(x, 2, pool, options, x.dtype)
        assert torch.equal(lif_spike_codes(x, 2, pool=pool, **options), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool", [False, True], ids=["no pool", "pool"])
@pytest.mark.parametrize("B", [1, 3, 40], ids=lambda b: f"B={b}")  # pooled: tasks of 2 rows, whole
def test_conv_fused_with_its_lif_equals_the_two_ops(B, pool, dtype):
    torch.manual_seed(B + pool)
    T, cin, cout, H, W = 3, 10, 21, 9, 7
    s = spikes(T * B, H, W, cin, dtype=dtype)
    weight, bias = 0.5 * torch.randn(cout, cin, 3, 3, dtype=dtype), torch.randn(cout, dtype=dtype)
    codes = packed(s, True)
    options = NEURONS["soft reset, learned threshold"]
    fused = spike_conv3x3_lookup_lif(codes, weight, bias, T, pool=pool, **options)
    y = spike_conv3x3_lookup(codes, weight, bias).unflatten(0, (T, B))
    assert torch.equal(fused, lif_spike_codes(y, T, pool=pool, **options))
    assert int(fused.count_nonzero()) > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "M,heads,tokens", [(7, 1, 1), (12, 2, 3), (10, 4, 5), (1, 1, 1)], ids=str
)  # M odd: a sample without a pair
def test_linear_fused_with_its_lif_equals_the_two_ops(M, heads, tokens, dtype):
    torch.manual_seed(M + heads)
    T, cin, cout = 3, 21, 12
    codes = packed(spikes(T * M, cin, dtype=dtype), False)
    weight, bias = 0.5 * torch.randn(cout, cin, dtype=dtype), torch.randn(cout, dtype=dtype)
    options = NEURONS["soft reset, learned threshold"]
    y = spike_linear_lookup(codes, weight, bias).view(T, M, cout)
    scale = options["input_scale"]
    lif = {k: v for k, v in options.items() if k != "input_scale"}
    expected, _ = lif_reference(y * torch.tensor(scale, dtype=dtype), **lif)  # [T, M, cout]
    fused = spike_linear_lookup_lif(codes, weight, bias, T, heads=heads, tokens=tokens, **options)
    by_heads = expected.reshape(T * M // tokens, tokens, heads, cout // heads).transpose(1, 2)
    assert fused.shape == by_heads.shape and fused.dtype == dtype
    assert torch.equal(fused, by_heads)
    codes_out = spike_linear_lookup_lif(codes, weight, bias, T, packed=True, **options)
    assert torch.equal(codes_out, packed(expected.reshape(T * M, cout), False))
    assert 0 < float(expected.mean()) < 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_weights_with_inf_or_nan_give_the_dense_answer(bad, dtype):
    """A weight holding inf / NaN at an input that never spikes: the dense product meets it at
    the zeros (0 x inf = NaN), a table of sums at the ones would not. Each op gives its spec's
    answer: the dense product, NaN for NaN, and the LIFs the spikes of that product."""
    torch.manual_seed(5)
    T, B, cin, cout, H, W = 2, 3, 10, 21, 5, 4
    s = spikes(T * B, H, W, cin, dtype=dtype)
    s[..., 3] = 0
    weight, bias = 0.5 * torch.randn(cout, cin, 3, 3, dtype=dtype), torch.randn(cout, dtype=dtype)
    weight[6, 3, 0, 1] = bad
    codes = packed(s, True)
    dense = F.conv2d(s.permute(0, 3, 1, 2), weight, bias, padding=1).permute(0, 2, 3, 1)
    assert torch.isnan(dense).any()  # a case the sums would miss
    torch.testing.assert_close(spike_conv3x3_lookup(codes, weight, bias), dense, equal_nan=True)
    options = NEURONS["soft reset, learned threshold"]
    for pool in (False, True):
        fused = spike_conv3x3_lookup_lif(codes, weight, bias, T, pool=pool, **options)
        expected = lif_spike_codes(dense.unflatten(0, (T, B)), T, pool=pool, **options)
        assert torch.equal(fused, expected)
    rows = packed(s.reshape(-1, cin), False)  # T * 60 samples of one token
    w2 = weight[:, :, 0, 1].contiguous()
    dense = F.linear(s.reshape(-1, cin), w2, bias)
    assert torch.isnan(dense).any()
    torch.testing.assert_close(spike_linear_lookup(rows, w2, bias), dense, equal_nan=True)
    scale = options["input_scale"]
    lif = {k: v for k, v in options.items() if k != "input_scale"}
    expected, _ = lif_reference(dense.view(T, -1, cout) * torch.tensor(scale, dtype=dtype), **lif)
    fused = spike_linear_lookup_lif(rows, w2, bias, T, packed=True, **options)
    assert torch.equal(fused, packed(expected.reshape(-1, cout), False))
    fused = spike_linear_lookup_lif(rows, w2, bias, T, heads=3, tokens=5, **options)
    by_heads = expected.reshape(-1, 5, 3, cout // 3).transpose(1, 2)
    assert torch.equal(fused, by_heads)


def test_empty_batches():
    weight, bias = torch.randn(4, 8, 3, 3), torch.randn(4)
    no_images = torch.zeros(0, 5, 5, 1, dtype=torch.uint8)
    assert spike_conv3x3_lookup(no_images, weight, bias).shape == (0, 3, 3, 4)
    no_rows = torch.zeros(0, 1, dtype=torch.uint8)
    assert spike_linear_lookup(no_rows, torch.randn(4, 8), bias).shape == (0, 4)
    out = spike_conv3x3_lookup_lif(no_images, weight, bias, 2, **NEURONS["hard reset"])
    assert out.shape == (2, 0, 5, 5, 1)


BAD = {
    "codes not uint8": lambda w, b: spike_conv3x3_lookup(torch.zeros(1, 4, 4, 1), w, b),
    "codes of the wrong width": lambda w, b: spike_conv3x3_lookup(
        torch.zeros(1, 4, 4, 2, dtype=torch.uint8), w, b),
    "codes without a border": lambda w, b: spike_conv3x3_lookup(
        torch.zeros(1, 2, 4, 1, dtype=torch.uint8), w, b),
    "a 5x5 weight": lambda w, b: spike_conv3x3_lookup(
        torch.zeros(1, 4, 4, 1, dtype=torch.uint8), torch.randn(4, 8, 5, 5), b),
    "a half weight": lambda w, b: spike_conv3x3_lookup(
        torch.zeros(1, 4, 4, 1, dtype=torch.uint8), w.half(), b.half()),
    "a bias of the wrong size": lambda w, b: spike_conv3x3_lookup(
        torch.zeros(1, 4, 4, 1, dtype=torch.uint8), w, torch.randn(5)),
    "a bias of another dtype": lambda w, b: spike_conv3x3_lookup(
        torch.zeros(1, 4, 4, 1, dtype=torch.uint8), w, b.double()),
    "linear codes of the wrong width": lambda w, b: spike_linear_lookup(
        torch.zeros(3, 2, dtype=torch.uint8), torch.randn(4, 8), b),
    "T not dividing the images": lambda w, b: spike_conv3x3_lookup_lif(
        torch.zeros(3, 4, 4, 1, dtype=torch.uint8), w, b, 2, **NEURONS["hard reset"]),
    "heads not dividing C_out": lambda w, b: spike_linear_lookup_lif(
        torch.zeros(4, 1, dtype=torch.uint8), torch.randn(4, 8), b, 2, heads=3,
        **NEURONS["hard reset"]),
    "tokens not dividing the samples": lambda w, b: spike_linear_lookup_lif(
        torch.zeros(6, 1, dtype=torch.uint8), torch.randn(4, 8), b, 2, tokens=2,
        **NEURONS["hard reset"]),
    "packed spikes in heads": lambda w, b: spike_linear_lookup_lif(
        torch.zeros(4, 1, dtype=torch.uint8), torch.randn(4, 8), b, 2, packed=True, heads=2,
        **NEURONS["hard reset"]),
    "tau <= 1": lambda w, b: lif_spike_codes(
        torch.randn(2, 1, 3, 3, 4), 2, tau=1.0, v_th=1.0, v_reset=0.0, decay_input=True),
    "x of another step count": lambda w, b: lif_spike_codes(
        torch.randn(3, 1, 3, 3, 4), 2, tau=2.0, v_th=1.0, v_reset=0.0, decay_input=True),
    "x of four dimensions": lambda w, b: lif_spike_codes(
        torch.randn(2, 3, 3, 4), 2, tau=2.0, v_th=1.0, v_reset=0.0, decay_input=True),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused(case):
    with pytest.raises(RuntimeError):
        BAD[case](torch.randn(4, 8, 3, 3), torch.randn(4))


def test_the_table_budget():
    # the demo's stages fit in float32 and float64; SpikeCLIP's wider ones do not
    assert lookup_fits(64, 64, 9, torch.float64)
    assert not lookup_fits(192, 384, 9, torch.float32)
    size = 9 * 8 * 256 * 64 * 4  # C_in 64 -> 8 bytes per pixel, C_out 64 in float32
    assert lookup_fits(64, 64, 9, torch.float32) == (size <= lookup.TABLE_BUDGET)


def _unpacked(codes: torch.Tensor, c_in: int) -> torch.Tensor:
    """codes [..., G] -> float spikes [..., c_in]: bit j of byte g is channel 8 g + j; bits past
    c_in are dropped (they are junk to the ops)."""
    bits = (codes.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten(-2)[..., :c_in].float()


@pytest.mark.parametrize("seed", range(60))
def test_random_shapes_and_junk_bits_give_the_reference_or_an_error(seed):
    """Fuzz: random sizes (zeros among them), widths that fit or not, every bit past C_in set at
    random, now and then an inf or a NaN among the weights. An op either refuses (RuntimeError) or
    equals the dense product of the spikes the codes hold (NaN where it has NaN), never reads
    elsewhere (the ASAN run covers this file)."""
    g = torch.Generator().manual_seed(seed)

    def r(lo, hi):
        return integer(g, lo, hi)

    c_in, c_out, n, h, w = r(1, 20), r(1, 9), r(0, 3), r(1, 6), r(1, 6)
    groups = (c_in + 7) // 8 + (r(0, 3) == 0) * r(-1, 1)  # now and then a wrong width
    weight, bias = torch.randn(c_out, c_in, 3, 3, generator=g), torch.randn(c_out, generator=g)
    codes = torch.randint(0, 256, (n, h + 2, w + 2, max(groups, 0)), generator=g,
                          dtype=torch.uint8)  # fmt: skip
    codes[:, 0], codes[:, -1], codes[:, :, 0], codes[:, :, -1] = 0, 0, 0, 0  # the zero border
    if r(0, 3) == 0:  # now and then an inf or a NaN among the weights: the dense product's answer
        weight[r(0, c_out - 1), r(0, c_in - 1), r(0, 2), 1] = (float("inf"), float("nan"))[r(0, 1)]
    valid = groups == (c_in + 7) // 8
    if not valid:
        with pytest.raises(RuntimeError):
            spike_conv3x3_lookup(codes, weight, bias)
    else:
        x = _unpacked(codes[:, 1:-1, 1:-1], c_in).permute(0, 3, 1, 2)
        want = F.conv2d(x, weight, bias, padding=1).permute(0, 2, 3, 1)
        torch.testing.assert_close(
            spike_conv3x3_lookup(codes, weight, bias), want, equal_nan=True, **TOL[torch.float32]
        )
    rows = (
        codes.reshape(-1, codes.shape[-1])
        if codes.numel()
        else codes.new_zeros(r(0, 2), max(groups, 0))
    )
    linear_weight = weight[:, :, 1, 1].contiguous()
    if not valid:
        with pytest.raises(RuntimeError):
            spike_linear_lookup(rows, linear_weight, bias)
    else:
        want = F.linear(_unpacked(rows, c_in), linear_weight, bias)
        torch.testing.assert_close(spike_linear_lookup(rows, linear_weight, bias), want,
                                   equal_nan=True, **TOL[torch.float32])  # fmt: skip


# Every op at odd sizes (a partial last tile: C_out 70), pooled and not, each layout of the
# linear's LIF, float32 and float64: what each vector width must compute alike.
_WIDTH_CASES = r"""
import sys
import torch
from spikeclip.kernels.spike_products import lookup as L

options = dict(tau=2.0, input_scale=1.3, v_th=0.4, v_reset=None, decay_input=True)
torch.manual_seed(0)
outs = []
for dtype in (torch.float32, torch.float64):
    codes = torch.randint(0, 256, (6, 7, 9, 3), dtype=torch.uint8)  # T 2 x B 3, C_in 19
    codes[:, 0] = codes[:, -1] = codes[:, :, 0] = codes[:, :, -1] = 0
    w, b = 0.3 * torch.randn(70, 19, 3, 3, dtype=dtype), torch.randn(70, dtype=dtype)
    outs.append(L.spike_conv3x3_lookup(codes, w, b))
    for pool in (False, True):
        outs.append(L.spike_conv3x3_lookup_lif(codes, w, b, 2, pool=pool, **options))
    rows = torch.randint(0, 256, (30, 3), dtype=torch.uint8)  # T 2 x 15 samples of 3 tokens
    w, b = 0.3 * torch.randn(70, 24, dtype=dtype), torch.randn(70, dtype=dtype)
    outs.append(L.spike_linear_lookup(rows, w, b))
    outs.append(L.spike_linear_lookup_lif(rows, w, b, 2, packed=True, **options))
    outs.append(L.spike_linear_lookup_lif(rows, w, b, 2, heads=5, tokens=3, **options))
torch.save(dict(width=L.cpu_vector_bytes(), outs=outs), sys.argv[1])
"""


def test_every_vector_width_computes_the_same_bits(tmp_path):
    """The kernels run at the CPU's widest vectors (cpu_simd.h's run_widest); each width is
    forced in a process of its own (SPIKECLIP_CPU_VECTOR_BYTES) and must give the same bits.
    On an x86 CPU with AVX2 at least two widths run."""
    import os
    import subprocess
    import sys

    script = tmp_path / "cases.py"
    script.write_text(_WIDTH_CASES)
    got = {}
    for asked in (64, 32, 16):
        out = tmp_path / f"{asked}.pt"
        env = dict(os.environ, SPIKECLIP_CPU_VECTOR_BYTES=str(asked))
        subprocess.run([sys.executable, str(script), str(out)], env=env, check=True)
        got[asked] = torch.load(out)
    widest = got[64]["width"]
    assert widest in (16, 32, 64)
    assert [got[a]["width"] for a in (32, 16)] == [min(32, widest), 16]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and " avx2" in cpuinfo.read_text():
        assert widest >= 32
    for asked in (32, 16):
        for a, b in zip(got[64]["outs"], got[asked]["outs"], strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert all(int(o.count_nonzero()) > 0 for o in got[16]["outs"])
