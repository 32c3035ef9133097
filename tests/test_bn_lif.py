"""BatchNorm + LIF fused (bn_lif: Triton, and the cpp kernels) against the unfused pair
(nn.BatchNorm, then the reference LIF): spikes, the gradients of the input and of BN's affine
parameters, and the running statistics, in both layouts, both modes and every option; the cpp
kernels also in float64 to rounding, with the final membrane and its gradient."""

import copy

import pytest
import torch
from lif_cases import rel_err
from seeded_draws import choice
from torch import nn

from spikeclip.kernels.bn_lif.op import bn_lif
from spikeclip.kernels.common.backends import BackendUnavailableError, why_unavailable
from spikeclip.kernels.common.batch_norm import batch_norm_args
from spikeclip.kernels.common.options import lif_options

TRITON = [
    d
    for d in ("cpu", "cuda")
    if why_unavailable("triton", torch.device(d)) is None
    and (d == "cpu" or torch.cuda.is_available())
]
CPP = why_unavailable("cpp", torch.device("cpu")) is None
# (backend, device) of every fused path that runs here
FUSED = [("triton", d) for d in TRITON] + ([("cpp", "cpu")] if CPP else [])
T = 3


def case(layout, device):
    if layout == "linear":  # [T * B * N, C]
        y, bn = torch.randn(T * 2 * 5, 12, device=device), nn.BatchNorm1d(12)
    else:  # [T * B, C, H, W]
        y, bn = torch.randn(T * 2, 6, 5, 7, device=device), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_(0, 0.5)
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return y * 1.7 + 0.3, bn.to(device)


@pytest.mark.parametrize("fused,device", FUSED)
@pytest.mark.parametrize("layout", ["linear", "conv"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(
    "opts",
    [
        dict(),
        dict(v_reset=None, v_th=0.7),
        dict(decay_input=False, detach_reset=True, surrogate="atan"),
        dict(v_th=0.5, v_reset=-0.2, surrogate="triangle", alpha=0.5),
    ],
    ids=["default", "soft", "nodecay-detach-atan", "vreset-triangle"],
)
def test_fused_equals_bn_then_lif(fused, device, layout, mode, opts):
    y, bn = case(layout, device)
    options = lif_options(**opts)
    results = {}
    for backend in ("torch", fused):
        b = copy.deepcopy(bn).train(mode == "train")
        yl = y.clone().requires_grad_(True)
        s = bn_lif(yl, T, *batch_norm_args(b), tau=1.7, options=options, backend=backend)
        g = torch.randn_like(s)
        s.backward(g) if backend == "torch" else s.backward(results["torch"][4])
        results[backend] = (s.detach(), yl.grad, b.weight.grad, b.bias.grad, g,
                            b.running_mean, b.running_var, b.num_batches_tracked)  # fmt: skip
    ref, fused = results["torch"], results[fused]
    flips = (ref[0] != fused[0]).float().mean()
    assert flips < 2e-3  # a spike on the threshold may round either way
    for i, name in ((1, "y"), (2, "weight"), (3, "bias")):
        assert rel_err(fused[i], ref[i]) < 1e-3, name
    torch.testing.assert_close(fused[5], ref[5], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[6], ref[6], rtol=1e-5, atol=1e-6)
    assert fused[7] == ref[7]


@pytest.mark.parametrize("device", TRITON)
def test_bf16_and_bad_input(device):
    y, bn = case("linear", device)
    options = lif_options()
    args = batch_norm_args(bn.eval())
    ref = bn_lif(y.bfloat16().float(), T, *args, tau=2.0, options=options, backend="torch")
    out = bn_lif(y.bfloat16(), T, *args, tau=2.0, options=options, backend="triton")
    assert out.dtype == torch.bfloat16
    assert (out.float() != ref).float().mean() < 2e-3
    with pytest.raises(ValueError, match="multiple of T"):
        bn_lif(y[:-1], T, *args, tau=2.0, options=options, backend="triton")
    with pytest.raises(BackendUnavailableError, match="no bn_lif kernel"):
        bn_lif(y, T, *args, tau=2.0, options=options, backend="cuda")


@pytest.mark.parametrize("fused,device", FUSED)
def test_inconsistent_and_edge_input(fused, device):
    """Shapes that disagree are refused before a kernel reads; empty input gives empty spikes;
    inf and NaN in y give the reference's spikes; too few values per channel to train on is
    the error F.batch_norm gives."""
    y, bn = case("linear", device)
    options = lif_options()
    args = list(batch_norm_args(bn.train()))
    for i, name in ((0, "running_mean"), (2, "weight"), (3, "bias")):
        bad = list(args)
        bad[i] = args[i][:-1]
        with pytest.raises(ValueError, match=name):
            bn_lif(y, T, *bad, tau=2.0, options=options, backend=fused)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn_lif(y[:1], 1, *args, tau=2.0, options=options, backend=fused)
    with pytest.raises(TypeError, match="floating"):
        bn_lif(y.long(), T, *args, tau=2.0, options=options, backend=fused)
    with pytest.raises(ValueError, match="multiple of T"):
        bn_lif(y, 0, *args, tau=2.0, options=options, backend=fused)
    ev = batch_norm_args(copy.deepcopy(bn).eval())
    empty = y[:0]
    assert bn_lif(empty, T, *ev, tau=2.0, options=options, backend=fused).shape == (0, 12)
    y = y.clone()
    y[3, 2], y[7, 5], y[11, 0] = float("inf"), float("nan"), float("-inf")
    for mode_args in (ev, None):
        got, ref = [
            bn_lif(y, T, *(mode_args or batch_norm_args(copy.deepcopy(bn).train())), tau=2.0,
                   options=options, backend=b)
            for b in (fused, "torch")
        ]  # fmt: skip
        assert torch.equal(got, ref)


CPP_OPTIONS = [
    dict(),
    dict(v_reset=None, v_th=0.7, detach_reset=True),
    dict(decay_input=False, surrogate="atan", alpha=3.0),
    dict(v_th=0.5, v_reset=-0.2, surrogate="triangle", alpha=0.5),
    dict(surrogate="erf", detach_reset=True),
]


@pytest.mark.skipif(not CPP, reason="spikeclip._C is not built")
@pytest.mark.parametrize(
    "shape", [(T * 2, 6, 5, 7), (T * 2, 12, 9), (T * 4, 5, 600), (T * 8, 3, 1)]
)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("opts", CPP_OPTIONS)
def test_cpp_equals_the_reference_in_float64(shape, mode, opts):
    """float64 (rel 1e-12): spikes bit for bit, the gradients of y, of BN's affine parameters
    and of the final membrane, the final membrane itself and the running statistics; runs of
    a channel longer than the kernel's (600 positions) and a single position (inner 1)."""
    torch.manual_seed(len(shape) + shape[-1])
    bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(shape[1]).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0), bn.bias.normal_(0, 0.5)
        bn.running_mean.normal_(0, 0.3), bn.running_var.uniform_(0.5, 2.0)
    y = torch.randn(shape, dtype=torch.float64) * 1.7 + 0.3
    g = torch.randn(shape, dtype=torch.float64)
    gv = torch.randn((shape[0] // T, *shape[1:]), dtype=torch.float64)
    out = {}
    for backend in ("torch", "cpp"):
        b = copy.deepcopy(bn).train(mode == "train")
        yl = y.clone().requires_grad_(True)
        s, v = bn_lif(yl, T, *batch_norm_args(b), tau=1.7, options=lif_options(**opts),
                      backend=backend, return_v=True)  # fmt: skip
        ((s * g).sum() + (v * gv).sum()).backward()
        out[backend] = (s, v, yl.grad, b.weight.grad, b.bias.grad, b.running_mean, b.running_var)
    ref, got = out["torch"], out["cpp"]
    assert torch.equal(got[0], ref[0]) and 0 < ref[0].mean() < 1
    names = ("v", "y", "weight", "bias", "mean", "var")
    for a, b, name in zip(got[1:], ref[1:], names, strict=True):
        assert float((a - b).detach().norm()) <= 1e-12 * float(b.detach().norm()), name
    assert ref[2].abs().sum() > 0


@pytest.mark.skipif(not CPP, reason="spikeclip._C is not built")
def test_cpp_picks_and_refuses():
    """auto takes cpp where it pays (float32 / float64, >= CPP_MIN_INNER positions), else the
    reference; by name a half-precision y is a TypeError, return_v on Triton a ValueError; the
    op itself refuses tensors that disagree with y before reading them."""
    from spikeclip.kernels.bn_lif.op import CPP_MIN_INNER, fused_backend

    conv = torch.randn(T * 2, 4, CPP_MIN_INNER)
    assert fused_backend(conv) == "cpp" and fused_backend(conv.double()) == "cpp"
    assert fused_backend(conv[..., :1]) is None and fused_backend(conv[..., :1], "cpp") == "cpp"
    assert fused_backend(conv.bfloat16()) is None and fused_backend(conv, "torch") is None
    bn = nn.BatchNorm1d(4).train()
    with pytest.raises(TypeError, match="float32 and float64"):
        bn_lif(conv.bfloat16(), T, *batch_norm_args(bn), tau=2.0, options=lif_options(),
               backend="cpp")  # fmt: skip
    if TRITON:
        with pytest.raises(ValueError, match="return_v"):
            bn_lif(conv.to(TRITON[-1]), T, *batch_norm_args(bn.to(TRITON[-1])), tau=2.0,
                   options=lif_options(), backend="triton", return_v=True)  # fmt: skip
    mean, invstd = torch.zeros(4), torch.ones(4)
    options = tuple(lif_options())
    ops = torch.ops.spikeclip
    with pytest.raises(RuntimeError, match="mean must be"):
        ops.bn_lif_fwd(conv, mean[:3], invstd, None, None, T, 2.0, *options, False)
    with pytest.raises(RuntimeError, match="multiple of T"):
        ops.bn_lif_fwd(conv[:5], mean, invstd, None, None, T, 2.0, *options, False)
    with pytest.raises(RuntimeError, match="tau must be > 1"):
        ops.bn_lif_fwd(conv, mean, invstd, None, None, T, 0.5, *options, False)
    with pytest.raises(RuntimeError, match="grad_v_last"):
        ops.bn_lif_bwd(conv, conv[:1], conv, mean, invstd, None, None, T, 2.0, *options, True)
    with pytest.raises(RuntimeError, match="grad_spikes"):
        ops.bn_lif_bwd(conv[:, :2], None, conv, mean, invstd, None, None, T, 2.0, *options, True)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.bn_lif_fwd(conv.transpose(1, 2), mean, invstd, None, None, T, 2.0, *options, False)


@pytest.mark.skipif(not CPP, reason="spikeclip._C is not built")
def test_cpp_ops_on_random_bad_input():
    """The cpp ops called directly, 300 seeded random cases: shapes with 0-sized dimensions, a
    T that does not divide, per-channel tensors of the wrong length or dtype, inf and NaN in y.
    Each either raises RuntimeError (and only when something disagrees) or gives the
    reference's spikes (NaN fires nothing, as h >= v_th is false), its final membrane, and in
    eval mode the reference's input gradient; the backward never returns a wrong shape."""
    from spikeclip.kernels.lif.reference import lif_reference

    ops = torch.ops.spikeclip
    gen = torch.Generator().manual_seed(0)

    def pick(*options):
        return choice(gen, *options)

    raised = matched = 0
    for _ in range(300):
        C = pick(0, 1, 3)
        bad = pick(None, None, None, "outer", "mean", "dtype", "weight", "tau")
        T_ = pick(2, 3) if bad == "outer" else pick(1, 2, 3)  # 2 T + 1: not a multiple of T
        outer = 2 * T_ + 1 if bad == "outer" else pick(0, T_, 2 * T_)
        shape = (outer, C, *pick((), (0,), (1,), (5,), (2, 3)))
        y = torch.randn(shape, dtype=torch.float64, generator=gen) * 2
        if y.numel() and pick(True, False):
            flat = y.view(-1)
            for value in (float("inf"), float("-inf"), float("nan")):
                if pick(True, False):
                    flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = value
        mean = torch.randn(C + 1 if bad == "mean" else C, dtype=torch.float64)
        if bad == "dtype":
            mean = mean.float()
        invstd = torch.rand(C, dtype=torch.float64) + 0.5
        weight = pick(None, torch.rand(C, dtype=torch.float64) + 0.5)
        if bad == "weight":
            weight = torch.rand(C + 1)
        bias = pick(None, torch.randn(C, dtype=torch.float64))
        tau = 0.5 if bad == "tau" else pick(2.0, 1.5)
        options = tuple(lif_options(v_reset=pick(0.0, None), v_th=pick(1.0, 0.5)))
        ok = bad is None
        try:
            spikes, v = ops.bn_lif_fwd(y, mean, invstd, weight, bias, T_, tau, *options, True)
        except RuntimeError:
            assert not ok, (shape, T_, bad)
            raised += 1
            continue
        assert ok, (shape, T_, bad)
        a = invstd * (1 if weight is None else weight.double())
        b = (0 if bias is None else bias) - mean * a
        view = (1, C) + (1,) * (len(shape) - 2)
        yl = y.clone().requires_grad_(True)
        z = yl * a.view(view) + b.view(view)
        kwargs = dict(v_th=options[0], v_reset=None if options[2] else options[1])
        ref, v_ref = lif_reference(z.unflatten(0, (T_, -1)), tau=tau, **kwargs)
        assert spikes.shape == y.shape and torch.equal(spikes, ref.flatten(0, 1))
        assert torch.equal(v.isnan(), v_ref.isnan())
        finite = v_ref.isfinite()
        assert torch.allclose(v[finite], v_ref[finite], rtol=1e-12, atol=1e-12)
        grad = torch.randn(shape, dtype=torch.float64, generator=gen)
        for training in (False, True):
            gy, gw, gb = ops.bn_lif_bwd(grad, None, y, mean, invstd, weight, bias, T_, tau,
                                        *options, training)  # fmt: skip
            assert gy.shape == y.shape and gw.shape == gb.shape == (C,)
        if y.isfinite().all() and y.numel():
            (ref.flatten(0, 1) * grad).sum().backward()
            gy, _, _ = ops.bn_lif_bwd(grad, None, y, mean, invstd, weight, bias, T_, tau,
                                      *options, False)  # fmt: skip
            assert torch.allclose(gy, yl.grad, rtol=1e-10, atol=1e-12)
            matched += 1
    assert raised > 30 and matched > 30  # both kinds of case came up
