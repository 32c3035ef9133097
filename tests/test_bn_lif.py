"""BatchNorm + LIF fused (bn_lif, Triton) against the unfused pair (nn.BatchNorm, then the
reference LIF): spikes, the gradients of the input and of BN's affine parameters, and the
running statistics, in both layouts, both modes and every option."""

import copy

import pytest
import torch
from lif_cases import rel_err
from torch import nn

from spikeclip.kernels.bn_lif.op import batch_norm_args, bn_lif
from spikeclip.kernels.common.backends import BackendUnavailableError, why_unavailable
from spikeclip.kernels.common.options import lif_options

TRITON = [
    d
    for d in ("cpu", "cuda")
    if why_unavailable("triton", torch.device(d)) is None
    and (d == "cpu" or torch.cuda.is_available())
]
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


@pytest.mark.parametrize("device", TRITON)
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
def test_fused_equals_bn_then_lif(device, layout, mode, opts):
    y, bn = case(layout, device)
    options = lif_options(**opts)
    results = {}
    for backend in ("torch", "triton"):
        b = copy.deepcopy(bn).train(mode == "train")
        yl = y.clone().requires_grad_(True)
        s = bn_lif(yl, T, *batch_norm_args(b), tau=1.7, options=options, backend=backend)
        g = torch.randn_like(s)
        s.backward(g) if backend == "torch" else s.backward(results["torch"][4])
        results[backend] = (s.detach(), yl.grad, b.weight.grad, b.bias.grad, g,
                            b.running_mean, b.running_var, b.num_batches_tracked)  # fmt: skip
    ref, fused = results["torch"], results["triton"]
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
        bn_lif(y, T, *args, tau=2.0, options=options, backend="cpp")


@pytest.mark.parametrize("device", TRITON)
def test_inconsistent_and_edge_input(device):
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
            bn_lif(y, T, *bad, tau=2.0, options=options, backend="triton")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn_lif(y[:1], 1, *args, tau=2.0, options=options, backend="triton")
    with pytest.raises(TypeError, match="floating"):
        bn_lif(y.long(), T, *args, tau=2.0, options=options, backend="triton")
    with pytest.raises(ValueError, match="multiple of T"):
        bn_lif(y, 0, *args, tau=2.0, options=options, backend="triton")
    ev = batch_norm_args(copy.deepcopy(bn).eval())
    empty = y[:0]
    assert bn_lif(empty, T, *ev, tau=2.0, options=options, backend="triton").shape == (0, 12)
    y = y.clone()
    y[3, 2], y[7, 5], y[11, 0] = float("inf"), float("nan"), float("-inf")
    for mode_args in (ev, None):
        got, ref = [
            bn_lif(y, T, *(mode_args or batch_norm_args(copy.deepcopy(bn).train())), tau=2.0,
                   options=options, backend=b)
            for b in ("triton", "torch")
        ]  # fmt: skip
        assert torch.equal(got, ref)
