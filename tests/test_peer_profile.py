"""benchmarks/peer_profile.py --floor: it times every convolution and linear layer of the step,
each with the gradients the step computes (its input's too, where the step needs it), and its
bound is SpikingJelly's step over their sum."""

import copy
import math
import re
import sys
from pathlib import Path

import torch
from sj_models import zoo

import spikeclip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peer_profile


def test_dense_layers_are_every_conv_and_linear_with_the_step_s_gradients():
    net, x = zoo("spikformer", dtype=torch.float32)
    seen = peer_profile.dense_layers(net, x)
    expected = [n for n, m in net.named_modules() if isinstance(m, peer_profile.DENSE)]
    assert [name for name, *_ in seen] == expected
    needs = {name: needs_grad for name, _, _, needs_grad in seen}
    # the image needs no gradient; every later layer's input comes from trained layers
    assert needs[expected[0]] is False
    assert all(needs[n] for n in expected[1:])
    for name, layer, inp, _ in seen:
        assert not inp.requires_grad  # a detached copy of what the layer got
        assert layer is net.get_submodule(name)
    first = seen[0][2]  # the image, repeated over T and folded into the batch
    assert torch.equal(first, x.repeat(first.shape[0] // x.shape[0], 1, 1, 1))


def test_floor_reports_each_layer_and_the_bound_it_puts_on_the_speed_up():
    net, x = zoo("spikformer", dtype=torch.float32)
    ours = copy.deepcopy(net)
    spikeclip.accelerate(ours)
    lines = peer_profile.floor(net, ours, x, rounds=3)
    layers = [n for n, m in net.named_modules() if isinstance(m, peer_profile.DENSE)]
    assert [line.split()[0] for line in lines[3 : 3 + len(layers)]] == layers
    step = float(re.search(r"as shipped\) ([\d.]+) ms", lines[1]).group(1))
    sums = [float(v) for v in re.findall(r"([\d.]+) ms", lines[3 + len(layers)])]
    bounds = [float(v) for v in re.findall(r"([\d.]+)x", lines[-1])]
    assert len(sums) == len(bounds) == 2
    # the work column: 2 flops per multiply-add, forward + weight gradient (+ input gradient)
    _, layer, inp, needs_grad = peer_profile.dense_layers(net, x)[1]
    out = layer(inp)
    per_pass = out.numel() * layer.in_channels * math.prod(layer.kernel_size)
    assert needs_grad and peer_profile.layer_flops(layer, inp, out, True) == 6 * per_pass
    assert peer_profile.layer_flops(layer, inp, out, False) == 4 * per_pass
    work = sum(float(line.split()[-2]) for line in lines[3 : 3 + len(layers)])
    assert abs(float(lines[3 + len(layers)].split()[-2]) - work) <= 0.001 * len(layers)
    assert "matrix product here" in lines[-2] and "GFLOP/s" in lines[-2]
    for total, bound in zip(sums, bounds, strict=True):
        # the printed figures are rounded (step to 0.1 ms, sums to 0.01 ms, bounds to 0.01):
        # what the ratio of the rounded figures may be off by, on any CPU's timings
        slack = bound * (0.05 / step + 0.005 / total) * 1.01 + 0.005
        assert abs(bound - step / total) <= slack


def test_unfused_runs_the_same_network_without_the_fused_pairs(monkeypatch):
    """--fusion's middle contender: the accelerated network with every fused block back on its
    unfused class, the same outputs (float64), and bn_lif no longer called."""
    from spikeclip.compat import spikingjelly_units as units

    net, x = zoo("spikformer")
    spikeclip.accelerate(net)
    plain = peer_profile.unfused(copy.deepcopy(net))
    fused_types = set(units.FUSED_BLOCKS.values()) | set(units.FUSED_ATTENTION.values())
    assert any(type(m) in fused_types for m in net.modules())
    assert not any(type(m) in fused_types for m in plain.modules())
    calls = []
    real = units.bn_lif
    monkeypatch.setattr(units, "bn_lif", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = net(x)
    assert calls
    calls.clear()
    out_plain = plain(x)
    assert not calls
    assert torch.allclose(out, out_plain, rtol=1e-12, atol=1e-12)
    from spikingjelly.activation_based import functional

    functional.reset_net(net), functional.reset_net(plain)
    lines = peer_profile.fusion(plain, net, x, rounds=3)
    assert len(lines) == 4 and "unfused" in lines[2]
