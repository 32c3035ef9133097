"""The IF neuron, callable surrogates, and the warning when a built _C fails to load."""

import math
import warnings

import pytest
import torch
from conftest import FUSED

from spikeclip.kernels import BackendUnavailableError, lif
from spikeclip.kernels.common.surrogates import SURROGATES
from spikeclip.models import IF, LIF


def if_by_hand(x, v_th, v_reset):
    """h = v + x; fire at h >= v_th; hard reset (v_reset) or soft (v -= v_th)."""
    v = torch.zeros_like(x[0]) if v_reset is None else torch.full_like(x[0], v_reset)
    out = []
    for t in range(x.shape[0]):
        h = v + x[t]
        s = (h >= v_th).to(x.dtype)
        v = h - v_th * s if v_reset is None else h * (1 - s) + v_reset * s
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("backend,device", [pytest.param("torch", "cpu", id="torch"), *FUSED])
@pytest.mark.parametrize("v_reset", [0.0, -0.2, None])
def test_if_integrates_without_leak(backend, device, v_reset):
    x = torch.rand(9, 4, 33, device=device) * 0.6 - 0.1  # charges slowly: many sub-threshold steps
    neuron = IF(v_th=0.75, v_reset=v_reset, backend=backend)
    spikes = neuron(x)
    expected = if_by_hand(x.cpu().double(), 0.75, v_reset).float()
    assert torch.equal(spikes.cpu(), expected)
    assert 0.05 < spikes.mean() < 0.6
    # gradients equal the reference's (the LIF spec with 1/tau = 0, input not divided)
    xg = x.clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    IF(v_th=0.75, v_reset=v_reset, backend=backend)(xg).backward(g)
    IF(v_th=0.75, v_reset=v_reset, backend="torch")(xr).backward(g)
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-5, atol=1e-6)


def test_if_single_step_and_checks():
    x = torch.rand(6, 3, 5) * 0.7
    multi, single = IF(), IF(step_mode="s")
    assert torch.equal(torch.stack([single(x[t]) for t in range(6)]), multi(x))
    assert "tau" not in repr(single)
    with pytest.raises(ValueError, match="decay_input=False"):
        LIF(tau=math.inf)  # would never charge
    with pytest.raises(ValueError, match="tau must be"):
        lif(x, tau=math.inf)  # decay_input=True
    assert torch.equal(lif(x, tau=math.inf, decay_input=False), multi(x))


def sigmoid_grad(u, a=4.0):
    return a * torch.sigmoid(a * u) * (1 - torch.sigmoid(a * u))


def test_callable_surrogate_equals_the_named_one():
    x = torch.randn(5, 3, 8) * 1.3 + 0.4
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    named = LIF(tau=1.8, surrogate="sigmoid", alpha=4.0)(xa)
    mine = LIF(tau=1.8, surrogate=sigmoid_grad)(xb)  # auto -> the torch backend
    assert torch.equal(named, mine)
    named.backward(g)
    mine.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-6, atol=1e-7)
    assert xa.grad.abs().sum() > 0


def test_callable_surrogate_shape_and_backend_checks():
    x = torch.randn(4, 6, requires_grad=True)
    with pytest.raises(ValueError, match="alpha goes with a named"):
        lif(x, surrogate=sigmoid_grad, alpha=2.0)
    with pytest.raises(BackendUnavailableError, match="callable surrogate"):
        lif(x, surrogate=sigmoid_grad, backend="cpp")
    bad = lif(x, surrogate=lambda u: u.sum())
    with pytest.raises(ValueError, match="input's shape"):
        bad.sum().backward()
    with pytest.raises(ValueError, match="surrogate must be one of"):
        lif(x, surrogate="nope")
    # a callable with its own shape parameter, e.g. a wider sigmoid
    y = lif(x, surrogate=lambda u: sigmoid_grad(u, 1.0))
    y.sum().backward()
    assert set(SURROGATES) == {"sigmoid", "atan", "triangle", "erf"}


def test_auto_warns_once_when_the_built_extension_fails_to_load(monkeypatch):
    from spikeclip.kernels.common import backends

    monkeypatch.setattr(backends, "EXTENSION_LOAD_FAILED", True)
    monkeypatch.setattr(backends, "EXTENSION_ERROR", "ImportError: undefined symbol _ZN3c10")
    monkeypatch.setattr(backends, "extension_loaded", lambda: False)
    monkeypatch.setattr(backends, "_warned_extension", False)
    cpu = torch.device("cpu")
    with pytest.warns(RuntimeWarning, match="undefined symbol.*falls back"):
        assert backends.resolve_backend("auto", cpu, op="lif") == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve_backend("auto", cpu, op="lif") == "torch"  # once only
    with pytest.raises(BackendUnavailableError, match="undefined symbol"):
        backends.resolve_backend("cpp", cpu, op="lif")


def test_info_names_the_extension_state(capsys):
    from spikeclip.cli import main

    assert main(["info"]) == 0
    assert "extension spikeclip._C: " in capsys.readouterr().out
