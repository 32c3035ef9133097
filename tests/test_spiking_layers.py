"""SpikingLinear, SpikingConv2d (equal to the plain layers, keeping 1 bit per input element)
and SeqToANN."""

import pytest
import torch
from torch import nn

from spikeclip.kernels.common.backends import why_unavailable
from spikeclip.models import SeqToANN, SpikingConv2d, SpikingLinear

BACKENDS = [b for b in ("torch", "cpp") if why_unavailable(b, torch.device("cpu")) is None]


def saved_bytes(fn, *params):
    """Bytes autograd keeps for the backward of fn(), parameters not counted."""
    own = {p.data_ptr() for p in params}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in own:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


def twin(spiking: nn.Module, plain: nn.Module) -> nn.Module:
    plain.load_state_dict(spiking.state_dict())
    return plain


def compare_with_plain(layer, ref, x, to_ref=lambda x: x, from_ref=lambda y: y) -> int:
    """Forward and every gradient of the spiking layer against its plain twin (same
    parameters) on x; returns the bytes the spiking layer kept for its backward."""
    xs, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y, saved = saved_bytes(lambda: layer(xs), *layer.parameters())
    y_ref = from_ref(ref(to_ref(xr)))
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    if layer.bias is not None:
        torch.testing.assert_close(layer.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
    return saved


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_spiking_linear_equals_linear(backend, bias):
    torch.manual_seed(0)
    layer = SpikingLinear(37, 19, bias=bias, backend=backend)
    ref = twin(layer, nn.Linear(37, 19, bias=bias))
    x = (torch.rand(4, 3, 5, 37) < 0.2).float()
    saved = compare_with_plain(layer, ref, x)
    rows = x.numel() // 37
    assert saved <= rows * ((37 + 7) // 8)  # the bits, 1 per input element (padded per row)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "geometry",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=(2, 4), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
        dict(kernel_size=3, padding=1, groups=2),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_spiking_conv2d_equals_conv2d(backend, geometry, bias):
    torch.manual_seed(1)
    layer = SpikingConv2d(6, 10, bias=bias, backend=backend, **geometry)
    ref = twin(layer, nn.Conv2d(6, 10, bias=bias, **geometry))
    x = (torch.rand(3, 2, 6, 9, 11) < 0.25).float()  # [T, B, C, H, W]
    saved = compare_with_plain(
        layer, ref, x, lambda x: x.flatten(0, 1), lambda y: y.unflatten(0, (3, 2))
    )
    assert saved <= x.numel() // 11 * 2  # 11 bits per row: 2 bytes


def test_spiking_layers_refuse_non_spikes_and_bad_shapes():
    with pytest.raises(ValueError, match="spikes"):
        SpikingLinear(4, 3)(torch.rand(2, 4) + 0.1)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        SpikingLinear(4, 3)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="spikes"):
        SpikingConv2d(2, 3, 3)(torch.rand(1, 2, 5, 5) + 0.1)
    with pytest.raises(ValueError, match=r"\[\.\.\., 2, H, W\]"):
        SpikingConv2d(2, 3, 3)(torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match="zero padding"):
        SpikingConv2d(2, 3, 3, padding=1, padding_mode="reflect")


def test_seq_to_ann_folds_time_into_the_batch():
    torch.manual_seed(2)
    seq = SeqToANN(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    x = torch.randn(5, 2, 3, 6, 6)
    y = seq(x)
    conv, bn = seq[0], nn.BatchNorm2d(4)
    expected = bn(conv(x.reshape(10, 3, 6, 6))).reshape(5, 2, 4, 6, 6)
    torch.testing.assert_close(y, expected)
    assert y.shape == (5, 2, 4, 6, 6)
    with pytest.raises(ValueError, match=r"\[T, B"):
        seq(torch.randn(3))
