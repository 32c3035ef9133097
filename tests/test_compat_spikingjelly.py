"""spikeclip.accelerate on SpikingJelly 2.0 networks: the same outputs and gradients as
SpikingJelly's own code (float64, rel 1e-9), every neuron option, both step modes, its state and
checkpoints, and the modules it must leave alone named with their reasons."""

import copy
import io

import pytest
import torch
from sj_models import ZOO, spikingjelly, zoo

import spikeclip


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-300))


def train_twice(net, image, loss=lambda out: out.square().sum(), lr=0.1, second=None):
    """Two batches (image, then `second`, default image.flip(-1) * 0.9) with reset_net between
    them and an SGD step after the first: the outputs and the gradients of the second."""
    from spikingjelly.activation_based import functional

    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    outs = []
    for batch in (image, image.flip(-1) * 0.9 if second is None else second):
        opt.zero_grad()
        out = net(batch)
        loss(out).backward()
        outs.append(out.detach())
        if not outs[1:]:
            opt.step()
        functional.reset_net(net)
    return outs, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


# the zoo models whose BN + neuron pairs accelerate() fuses at these sizes (spiking VGG's are
# plain layers; the Spike-driven Transformer's SDSA and QKFormer's last-stage SSA see 2 x 2
# tokens, fewer than the cpp kernels' CPP_MIN_INNER: test_fused_sdsa_stages_at_a_larger_image)
FUSES = ("spikformer", "sew_resnet")


@pytest.mark.parametrize("name", ZOO)
def test_accelerated_zoo_model_equals_spikingjelly(monkeypatch, name):
    from spikeclip.compat import spikingjelly_units as units

    net, image = zoo(name)
    ours = copy.deepcopy(net)
    report = spikeclip.accelerate(ours)
    calls = []
    real = units.bn_lif
    monkeypatch.setattr(units, "bn_lif", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert sum(report.replaced.values()) > 0 and not report.left, str(report)
    if name in ("spikformer", "qkformer"):
        assert report.replaced["SpikingSelfAttention"] >= 1
    if name == "spike_driven_transformer":
        assert report.replaced["SpikeDrivenSelfAttention"] >= 1
    outs_sj, grads_sj = train_twice(net, image)
    outs, grads = train_twice(ours, image)
    assert bool(calls) == (name in FUSES)  # the fused pairs ran where there are some
    for a, b in zip(outs, outs_sj, strict=True):
        assert rel(a, b) < 1e-9
        assert b.abs().sum() > 0  # the network fired: a comparison that can fail
    assert grads.keys() == grads_sj.keys() and grads
    largest = max(float(g.norm()) for g in grads_sj.values())
    for key, g in grads_sj.items():
        # a conv bias before a BatchNorm has a true gradient of 0 (BN cancels it): both are
        # rounding noise there, compared against the largest gradient's size instead
        scale = max(float(g.norm()), 1e-4 * largest)
        assert float((grads[key] - g).norm()) < 1e-9 * scale, key
    nonzero = sum(bool(g.abs().sum() > 0) for g in grads_sj.values())
    assert nonzero > len(grads_sj) // 2


def _surrogates():
    from spikingjelly.activation_based import surrogate

    return [surrogate.Sigmoid(), surrogate.Sigmoid(alpha=2.5), surrogate.ATan(alpha=3.0),
            surrogate.PiecewiseQuadratic(alpha=0.7), surrogate.Erf(alpha=1.5)]  # fmt: skip


NEURON_CASES = [
    ("LIFNode", dict(tau=2.0)),
    ("LIFNode", dict(tau=3.5, decay_input=False, v_threshold=0.7, v_reset=-0.2)),
    ("LIFNode", dict(tau=1.5, v_reset=None)),
    ("LIFNode", dict(tau=2.0, v_reset=None, detach_reset=True)),
    ("LIFNode", dict(tau=2.5, detach_reset=True, v_threshold=0.5)),
    ("ParametricLIFNode", dict(init_tau=2.0)),
    ("ParametricLIFNode", dict(init_tau=4.0, decay_input=False, v_reset=None)),
    ("IFNode", dict()),
    ("IFNode", dict(v_reset=None, v_threshold=0.8, detach_reset=True)),
]


@pytest.mark.parametrize("surrogate_index", range(5))
@pytest.mark.parametrize("kind,options", NEURON_CASES)
@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_each_neuron_option_equals_spikingjelly(kind, options, surrogate_index, step_mode):
    spikingjelly()
    from spikingjelly.activation_based import functional, neuron

    from spikeclip.compat import spikingjelly as compat

    sj = getattr(neuron, kind)(surrogate_function=_surrogates()[surrogate_index],
                               step_mode=step_mode, **options)  # fmt: skip
    ours = copy.deepcopy(sj)
    assert spikeclip.accelerate(ours).replaced[kind] == 1
    assert type(ours) is getattr(compat, kind)
    x = (torch.randn(6, 3, 17, dtype=torch.float64) * 1.5 + 0.6).requires_grad_()
    results = []
    for node in (sj, ours):
        node.double()
        xs = x.detach().clone().requires_grad_()
        if step_mode == "m":
            spikes = node(xs)
        else:
            spikes = torch.stack([node(xs[t]) for t in range(xs.shape[0])])
        v = node.v.detach().clone()
        weights = torch.linspace(-1, 2, spikes.numel(), dtype=xs.dtype).view_as(spikes)
        (spikes * weights).sum().backward()
        params = [p.grad.clone() for p in node.parameters()]
        results.append((spikes.detach(), v, xs.grad, params))
        functional.reset_net(node)
    (s1, v1, g1, p1), (s2, v2, g2, p2) = results
    assert torch.equal(s1, s2) and 0 < s1.mean() < 1
    assert rel(v2, v1) < 1e-12
    assert rel(g2, g1) < 1e-9 and g1.abs().sum() > 0
    for a, b in zip(p2, p1, strict=True):
        assert rel(a, b) < 1e-9


def test_single_steps_equal_one_multi_step_and_state_carries():
    spikingjelly()
    from spikingjelly.activation_based import functional, neuron

    node = neuron.LIFNode(tau=2.0, step_mode="m")
    spikeclip.accelerate(node)
    x = torch.randn(8, 4, 5, dtype=torch.float64) + 0.8
    whole = node(x)
    v_whole = node.v.clone()
    functional.reset_net(node)
    halves = torch.cat([node(x[:4]), node(x[4:])])  # no reset: the membrane carries over
    assert torch.equal(halves, whole) and torch.equal(node.v, v_whole)
    functional.reset_net(node)
    functional.set_step_mode(node, "s")
    steps = torch.stack([node(x[t]) for t in range(8)])
    assert torch.equal(steps, whole) and torch.equal(node.v, v_whole)


def test_store_v_seq_is_honoured():
    spikingjelly()
    from spikingjelly.activation_based import neuron

    sj = neuron.LIFNode(tau=2.0, step_mode="m", store_v_seq=True)
    ours = copy.deepcopy(sj)
    spikeclip.accelerate(ours)
    x = torch.randn(5, 7, dtype=torch.float64) + 0.7
    assert torch.equal(sj(x), ours(x))
    assert sj.v_seq.shape == (5, 7) and rel(ours.v_seq, sj.v_seq) < 1e-12


def test_what_we_do_not_compute_is_left_and_named():
    spikingjelly()
    from spikingjelly.activation_based import neuron, surrogate

    class MyLIF(neuron.LIFNode):
        pass

    net = torch.nn.Sequential(
        torch.nn.Linear(4, 4),
        neuron.LIFNode(surrogate_function=surrogate.SoftSign()),
        neuron.LIFNode(surrogate_function=surrogate.Sigmoid(spiking=False)),
        MyLIF(),
        neuron.QIFNode() if hasattr(neuron, "QIFNode") else neuron.LIFNode(),
        neuron.LIFNode(),
    )
    before = [type(m) for m in net]
    report = spikeclip.accelerate(net)
    reasons = dict(report.left)
    assert "SoftSign has no fused equivalent" in reasons["1"]
    assert "spiking=False" in reasons["2"]
    assert "MyLIF" in reasons["3"] and type(net[3]) is MyLIF
    assert [type(m) for m in net][:4] == before[:4]
    assert type(net[0]) is torch.nn.Linear
    assert report.replaced["LIFNode"] >= 1
    assert "left 1: LIFNode: surrogate SoftSign" in str(report)


def test_settings_changed_after_accelerate_run_spikingjellys_code():
    spikingjelly()
    from spikingjelly.activation_based import functional, neuron, surrogate

    sj = neuron.LIFNode(step_mode="m")
    ours = copy.deepcopy(sj)
    spikeclip.accelerate(ours)
    for node in (sj, ours):
        node.surrogate_function = surrogate.SoftSign()
    x = (torch.randn(4, 9, dtype=torch.float64) + 0.8).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    sj(x).sum().backward()
    ours(x2).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    functional.reset_net(ours)


def test_state_dict_deepcopy_twice_and_checkpoints_both_ways():
    net, image = zoo("spikformer", torch.float32)
    keys = list(net.state_dict())
    ours = copy.deepcopy(net)
    params = list(ours.parameters())
    first = spikeclip.accelerate(ours)
    assert list(ours.state_dict()) == keys
    assert next(iter(ours.parameters())) is params[0]  # optimizers built before still hold them
    second = spikeclip.accelerate(ours)
    assert not second.replaced and sum(second.already.values()) == sum(first.replaced.values())
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    net.load_state_dict(torch.load(buffer))
    ours.load_state_dict(net.state_dict())
    twin = copy.deepcopy(ours)
    net.eval(), ours.eval(), twin.eval()
    with torch.no_grad():
        a, b, c = net(image), ours(image), twin(image)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5) and torch.equal(b, c)


def test_fused_attention_asks_for_reset_between_sequences():
    net, image = zoo("spikformer")
    spikeclip.accelerate(net)
    net(image)
    with pytest.raises(RuntimeError, match="reset_net"):
        net(image)
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    net(image)  # fine after a reset


def test_attention_false_keeps_spikingjellys_attention():
    net, _ = zoo("spikformer")
    report = spikeclip.accelerate(net, attention=False)
    assert "SpikingSelfAttention" not in report.replaced
    assert any("attention=False" in why for _, why in report.left)
    assert report.replaced["LIFNode"] > 0


def test_float32_equals_spikingjelly_and_bfloat16_keeps_float32_membranes():
    net, image = zoo("spikformer", torch.float32)
    ref = copy.deepcopy(net)
    net16, image16 = copy.deepcopy(net).to(torch.bfloat16), image.to(torch.bfloat16)
    spikeclip.accelerate(net)
    assert rel(net(image), ref(image)) < 1e-5
    # bfloat16: SpikingJelly's CPU path charges its membrane in bfloat16, ours in float32 (as
    # every spikeclip kernel does), so the two differ by design; ours is the float32 LIF of the
    # bfloat16 input, exactly
    spikingjelly()
    from spikingjelly.activation_based import neuron

    node = neuron.LIFNode(tau=2.0, step_mode="m")
    spikeclip.accelerate(node)
    x = (torch.randn(6, 5, 33) + 0.7).to(torch.bfloat16)
    spikes = node(x)
    expected, _ = spikeclip.kernels.lif_reference(x.float(), tau=2.0)
    assert spikes.dtype == torch.bfloat16 and torch.equal(spikes.float(), expected)
    assert 0 < expected.mean() < 1
    spikeclip.accelerate(net16)
    assert net16(image16).dtype == torch.bfloat16


def test_float16_says_why_or_works():
    spikingjelly()
    from spikingjelly.activation_based import neuron

    node = neuron.LIFNode(step_mode="m")
    spikeclip.accelerate(node)
    x = torch.randn(4, 8, dtype=torch.float16) + 0.8
    try:
        spikes = node(x)
    except (TypeError, ValueError) as exc:  # a clear refusal naming the dtype
        assert "float16" in str(exc)
    else:
        assert spikes.dtype == torch.float16


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        spikeclip.accelerate("model")
    with pytest.raises(ValueError, match="backend"):
        spikeclip.accelerate(torch.nn.Linear(2, 2), backend="gpu")
    with pytest.raises(ValueError, match="memory"):
        spikeclip.accelerate(torch.nn.Linear(2, 2), memory="low")
    with pytest.raises(TypeError, match="attention"):
        spikeclip.accelerate(torch.nn.Linear(2, 2), attention="yes")
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    report = spikeclip.accelerate(plain)
    assert not report.replaced and not report.left and "replaced nothing" in str(report)


def test_compat_classes_plug_into_the_model_zoo():
    spikingjelly()
    from spikingjelly.activation_based.model import spikformer

    from spikeclip.compat.spikingjelly import LIFNode

    torch.manual_seed(3)
    net = spikformer.Spikformer(T=2, img_size_h=32, img_size_w=32, patch_size=4, num_classes=5,
                                embed_dims=32, num_heads=2, depths=1, spiking_neuron=LIFNode,
                                tau=2.0, detach_reset=True).double()  # fmt: skip
    assert all(type(m) is LIFNode for m in net.modules() if "LIFNode" in type(m).__name__)
    ref, image = zoo("spikformer")
    ref.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert rel(net(image), ref(image)) < 1e-12


def test_snntorch_neurons_are_left_with_the_reason():
    import os

    if os.environ.get("CI"):
        import snntorch  # CI installs it
    else:
        snntorch = pytest.importorskip("snntorch")
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), snntorch.Leaky(beta=0.5, init_hidden=True))
    report = spikeclip.accelerate(net)
    assert not report.replaced and type(net[1]) is snntorch.Leaky
    assert "mem > threshold" in dict(report.left)["1"]
    # why: at h == threshold snnTorch does not fire, our LIF (h >= v_th, as SpikingJelly) does
    leaky = snntorch.Leaky(beta=0.5, reset_mechanism="zero")
    spk, _ = leaky(torch.ones(1), leaky.init_leaky())
    ours = spikeclip.kernels.lif(torch.ones(1, 1), tau=2.0, decay_input=False)
    assert spk.item() == 0.0 and ours.item() == 1.0


@pytest.mark.parametrize(
    "name,attention,units",
    [("spikformer", True, {"SpikformerMLP": 1, "SpikformerConv2dBNLIF": 5}),
     ("spikformer", False, {"SpikformerMLP": 1, "SpikformerConv2dBNLIF": 5}),
     ("sew_resnet", True, {"BasicBlock": 4})],
)  # fmt: skip
def test_lossless_memory_gives_the_same_gradients_and_saves_less(monkeypatch, name, attention,
                                                                 units):  # fmt: skip
    from spikingjelly.activation_based import functional

    from spikeclip.compat import spikingjelly_units as unit_module
    from spikeclip.memory import saved_tensor_bytes

    net, image = zoo(name)
    ours = copy.deepcopy(net)
    report = spikeclip.accelerate(ours, memory="lossless", attention=attention)
    assert {k: report.replaced[k] for k in units} == units
    calls = []
    real = unit_module.bn_lif
    monkeypatch.setattr(unit_module, "bn_lif", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():  # a copy: its BN statistics move
        copy.deepcopy(ours)(image)
    forward_calls, calls[:] = len(calls), []
    outs_sj, grads_sj = train_twice(net, image)
    outs, grads = train_twice(ours, image)
    # BN + LIF fused in each unit's forward and again in its recomputation, two batches
    assert forward_calls > 0 and len(calls) == 4 * forward_calls
    for a, b in zip(outs, outs_sj, strict=True):
        assert rel(a, b) < 1e-9 and b.abs().sum() > 0
    largest = max(float(g.norm()) for g in grads_sj.values())
    for key, g in grads_sj.items():
        scale = max(float(g.norm()), 1e-4 * largest)
        assert float((grads[key] - g).norm()) < 1e-9 * scale, key
    # BatchNorm's running statistics updated once per forward, as SpikingJelly's
    for (key, a), b in zip(ours.state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12), key
    _, plain = saved_tensor_bytes(net, image)
    functional.reset_net(net)
    _, packed = saved_tensor_bytes(ours, image)
    functional.reset_net(ours)
    assert packed * 2 < plain


def test_lossless_memory_asks_for_reset_between_sequences_and_moves_back():
    net, image = zoo("spikformer")
    spikeclip.accelerate(net, memory="lossless", attention=False)
    net(image).sum().backward()
    with pytest.raises(RuntimeError, match="reset_net"):
        net(image)
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    with torch.no_grad():
        net(image)  # no gradient: the modules themselves, nothing recomputed
    functional.reset_net(net)
    report = spikeclip.accelerate(net)  # memory=None: the blocks move to their fused BN + LIF
    assert report.replaced["SpikformerMLP"] == 1 and report.replaced["SpikingSelfAttention"] == 1
    assert type(net.blocks[0].mlp).__name__ == "FusedSpikformerMLP"
    assert not spikeclip.accelerate(net).replaced


# Each neuron SpikingJelly's SEW-ResNet block can hold, and whether BN + it run fused
# (a PLIF's tau is a parameter: its pair runs unfused).
FUSED_CASES = [
    ("LIFNode", dict(tau=2.0, detach_reset=True), True),
    ("LIFNode", dict(tau=3.5, decay_input=False, v_threshold=0.7, v_reset=-0.2), True),
    ("LIFNode", dict(tau=1.5, v_reset=None), True),
    ("IFNode", dict(v_reset=None, v_threshold=0.8, detach_reset=True), True),
    ("ParametricLIFNode", dict(init_tau=2.0), False),
]


@pytest.mark.parametrize("surrogate_index", [0, 2, 3, 4])
@pytest.mark.parametrize("kind,options,fused", FUSED_CASES)
def test_fused_bn_neuron_units_equal_spikingjelly(monkeypatch, kind, options, fused,
                                                   surrogate_index):  # fmt: skip
    """A SEW-ResNet block (conv-BN-neuron twice, and a downsampling conv-BN-neuron) with every
    neuron option: accelerate()'s fused BN + neuron gives SpikingJelly's outputs, gradients
    (two batches, an SGD step), running statistics and final membranes; the fused kernels do
    run (counted) where they apply, and not for a PLIF."""
    zoo("sew_resnet")  # imports SpikingJelly's model zoo (sew_resnet with a torchvision stand-in)
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.model import sew_resnet

    from spikeclip.compat import spikingjelly_units as units

    torch.manual_seed(surrogate_index)
    node = getattr(neuron, kind)
    kwargs = dict(options, surrogate_function=_surrogates()[surrogate_index])
    down = torch.nn.Sequential(layer.Conv2d(4, 6, 1, stride=2, bias=False, step_mode="m"),
                               layer.BatchNorm2d(6, step_mode="m"))  # fmt: skip
    block = sew_resnet.BasicBlock(4, 6, stride=2, downsample=down, cnf="ADD",
                                  spiking_neuron=node, step_mode="m", **kwargs)  # fmt: skip
    functional.set_step_mode(block, "m")
    block = block.double()
    with torch.no_grad():  # BN scales and shifts that make every neuron fire now and then
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(1.0, 2.0), m.bias.uniform_(0.2, 0.8)
    ours = copy.deepcopy(block)
    assert spikeclip.accelerate(ours).replaced["BasicBlock"] == 1
    calls = []
    real = units.bn_lif
    monkeypatch.setattr(units, "bn_lif", lambda *a, **k: calls.append(1) or real(*a, **k))
    image = torch.rand(3, 2, 4, 9, 9, dtype=torch.float64) * 2.5
    weights = torch.randn(3, 2, 6, 5, 5, dtype=torch.float64)  # a loss that keeps them firing
    outs_sj, grads_sj = train_twice(block, image, lambda out: (out * weights).sum(), lr=0.01)
    outs, grads = train_twice(ours, image, lambda out: (out * weights).sum(), lr=0.01)
    assert len(calls) == (6 if fused else 0)  # three pairs, two batches
    for a, b in zip(outs, outs_sj, strict=True):
        assert rel(a, b) < 1e-9 and b.abs().sum() > 0
    assert grads.keys() == grads_sj.keys()
    for key, g in grads_sj.items():
        assert rel(grads[key], g) < 1e-9, key
    for key, buf in block.state_dict().items():  # weights after the step, running statistics
        mine = ours.state_dict()[key]
        assert (rel(mine, buf) < 1e-12) if buf.is_floating_point() else torch.equal(mine, buf)
    block(image), ours(image)
    for sn in ("sn1", "sn2", "downsample_sn"):
        assert rel(getattr(ours, sn).v, getattr(block, sn).v) < 1e-12, sn
    functional.reset_net(ours)
    buffer = io.BytesIO()
    torch.save(ours, buffer)  # the whole module: its class found again by name
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(ours) and torch.equal(loaded(image), ours(image))


def test_fused_sdsa_stages_at_a_larger_image(monkeypatch):
    """The Spike-driven Transformer at 64 px (4 x 4 tokens): its SDSA's q, k and v stages run
    BN + LIF fused, and the network gives SpikingJelly's outputs and gradients."""
    spikingjelly()
    from spikeclip.bench.peer_models import zoo_model
    from spikeclip.compat import spikingjelly_units as units

    net, image = zoo_model("spike_driven_transformer", T=2, width=32, depth=1, image=64,
                           batch=2, classes=5, dtype=torch.float64)  # fmt: skip
    ours = copy.deepcopy(net)
    assert spikeclip.accelerate(ours).replaced["SpikeDrivenSelfAttention"] == 1
    calls = []
    real = units.bn_lif
    monkeypatch.setattr(units, "bn_lif", lambda *a, **k: calls.append(1) or real(*a, **k))
    outs_sj, grads_sj = train_twice(net, image)
    outs, grads = train_twice(ours, image)
    assert len(calls) == 6  # q, k and v, two batches
    for a, b in zip(outs, outs_sj, strict=True):
        assert rel(a, b) < 1e-9 and b.abs().sum() > 0
    largest = max(float(g.norm()) for g in grads_sj.values())
    for key, g in grads_sj.items():  # a conv bias before BN: rounding noise on both sides
        assert float((grads[key] - g).norm()) < 1e-9 * max(float(g.norm()), 1e-4 * largest), key


def test_fused_units_carry_the_membrane_with_its_gradient():
    """Two calls without reset_net: the second starts from the membrane the fused first call
    left (unfused, as it is not at rest), and the gradient reaches the first call through it."""
    from spikingjelly.activation_based import functional, neuron
    from spikingjelly.activation_based.model import spikformer

    zoo("spikformer")
    torch.manual_seed(0)
    unit = spikformer.SpikformerConv2dBNLIF(3, 5, 3, padding=1, spiking_neuron=neuron.LIFNode,
                                            tau=2.0, step_mode="m").double()  # fmt: skip
    ours = copy.deepcopy(unit)
    assert spikeclip.accelerate(ours).replaced["SpikformerConv2dBNLIF"] == 1
    x = torch.rand(4, 2, 3, 6, 6, dtype=torch.float64) * 3
    results = []
    for net in (unit, ours):
        first = net(x[:2])
        second = net(x[2:])
        (first.sum() + (second * torch.linspace(-1, 1, second.numel(), dtype=x.dtype)
                        .view_as(second)).sum()).backward()  # fmt: skip
        results.append((first, second, [p.grad.clone() for p in net.parameters()], net.neuron.v))
        functional.reset_net(net)
    (f1, s1, g1, v1), (f2, s2, g2, v2) = results
    assert torch.equal(f1, f2) and torch.equal(s1, s2) and 0 < s1.mean() < 1
    assert rel(v2, v1) < 1e-12
    for a, b in zip(g2, g1, strict=True):
        assert rel(a, b) < 1e-9 and b.abs().sum() > 0


def test_the_model_zoo_leaves_no_torchvision_stand_in_behind():
    import importlib.util
    import sys

    zoo("sew_resnet")
    zoo("spiking_vgg")
    importlib.util.find_spec("torchvision")  # others (transformers) look it up: must not raise
    module = sys.modules.get("torchvision")
    assert module is None or module.__spec__ is not None


def _small_net():
    spikingjelly()
    from spikingjelly.activation_based import layer, neuron

    return torch.nn.Sequential(
        layer.Linear(8, 16, step_mode="m"),
        neuron.LIFNode(step_mode="m", tau=2.0),
        layer.Linear(16, 4, step_mode="m"),
        neuron.ParametricLIFNode(step_mode="m"),
    )


def test_torch_compile_runs_the_accelerated_network():
    from spikingjelly.activation_based import functional, neuron

    # neurons only: compiled dense layers may round differently from eager ones on some CPUs,
    # and a spike flipped by the last bit would make this test depend on the CPU
    net = torch.nn.Sequential(neuron.LIFNode(step_mode="m", tau=2.0),
                              neuron.ParametricLIFNode(step_mode="m", v_threshold=0.6))  # fmt: skip
    ref = copy.deepcopy(net)
    spikeclip.accelerate(net)
    x = torch.randn(4, 3, 16) * 2 + 0.5
    compiled = torch.compile(net)
    out = compiled(x)
    expected = ref(x)
    assert torch.equal(out, expected) and 0 < expected.mean() < 1
    assert torch.equal(net[0].v, ref[0].v)  # the state reads back as SpikingJelly's
    out.sum().backward()
    expected.sum().backward()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert net[1].w.grad.abs() > 0
    functional.reset_net(net)


def test_ddp_wraps_the_accelerated_network(tmp_path):
    import torch.distributed as dist
    from spikingjelly.activation_based import functional

    net = _small_net()
    ref = copy.deepcopy(net)
    spikeclip.accelerate(net)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                            rank=0, world_size=1)  # fmt: skip
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        x = torch.randn(4, 3, 8) + 0.3
        ddp(x).sum().backward()
        ref(x).sum().backward()
        for a, b in zip(net.parameters(), ref.parameters(), strict=True):
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)
        functional.reset_net(net)
    finally:
        dist.destroy_process_group()


def test_other_devices_work_or_say_why():
    spikingjelly()
    from spikingjelly.activation_based import neuron

    from spikeclip.kernels import BackendUnavailableError

    node = neuron.LIFNode(step_mode="m")
    spikeclip.accelerate(node)
    out = node(torch.randn(4, 3, device="meta"))  # shapes only: the ops' fake kernels
    assert out.device.type == "meta" and out.shape == (4, 3)
    node.reset()
    spikeclip.accelerate(node, backend="cuda")  # asked for a backend these tensors cannot use
    with pytest.raises(BackendUnavailableError, match="CUDA tensors"):
        node(torch.randn(4, 3))


def test_max_pools_of_our_shapes_move_to_the_byte_kernels():
    spikingjelly()
    from spikingjelly.activation_based import layer

    from spikeclip.compat import pooling

    net = torch.nn.Sequential(torch.nn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(2),
                              torch.nn.MaxPool2d(3, 1), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                              layer.MaxPool2d(3, 2, 1, step_mode="m"))  # fmt: skip
    ref = copy.deepcopy(net)
    report = spikeclip.accelerate(net)
    assert report.replaced["MaxPool2d"] == 3 and not report.left
    assert [type(m) for m in net][:4] == [pooling.MaxPool2d, pooling.MaxPool2d,
                                          torch.nn.MaxPool2d, torch.nn.MaxPool2d]  # fmt: skip
    x = torch.randn(2, 3, 4, 17, 13)
    x[0, 0, 0, :3, :3] = float("-inf")
    for i in range(4):
        xs = x[0].clone().requires_grad_(), x[0].clone().requires_grad_()
        a, b = net[i](xs[0]), ref[i](xs[1])
        a.sum().backward(), b.sum().backward()
        assert torch.equal(a, b) and torch.equal(xs[0].grad, xs[1].grad)
    xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = net[4](xs[0]), ref[4](xs[1])
    (a * torch.arange(a.numel()).view_as(a)).sum().backward()
    (b * torch.arange(b.numel()).view_as(b)).sum().backward()
    assert torch.equal(a, b) and torch.equal(xs[0].grad, xs[1].grad)
    zoo_net, _ = zoo("spikformer")
    assert spikeclip.accelerate(zoo_net).replaced["MaxPool2d"] == 2  # its stem's two pools


def test_lossless_units_give_a_plifs_w_its_gradient():
    spikingjelly()
    from spikingjelly.activation_based import neuron
    from spikingjelly.activation_based.model import spikformer

    torch.manual_seed(5)
    mlp = spikformer.SpikformerMLP(12, 24, 12, spiking_neuron=neuron.ParametricLIFNode,
                                   init_tau=3.0, step_mode="m").double()  # fmt: skip
    ours = copy.deepcopy(mlp)
    report = spikeclip.accelerate(ours, memory="lossless")
    assert report.replaced["SpikformerMLP"] == 1 and report.replaced["ParametricLIFNode"] == 2
    x = (torch.rand(3, 2, 12, 5, dtype=torch.float64) < 0.4).double()
    grads = []
    for net in (mlp, ours):
        net(x * 3).square().sum().backward()  # fc1 kept as floats; fc2's input packed spikes
        grads.append({n: p.grad for n, p in net.named_parameters()})
    assert {"neuron1.w", "neuron2.w"} <= grads[0].keys()
    for name, g in grads[0].items():
        assert rel(grads[1][name], g) < 1e-9 and g.abs().sum() > 0, name


class _SpikeFedStages(torch.nn.Module):
    """SpikingJelly's conv-BN-pool-LIF stem stage, a conv-BN-LIF one after it and its MLP (1x1
    Conv1d units), fed spikes at `rate`; and a stage fed the float image itself."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based.model import spikformer

        self.image_stage = spikformer.SpikformerConv2dBNLIF(3, 16, 3, 1, 1)
        self.pooled = spikformer.SpikformerConv2dBNLIF(16, 24, 3, 1, 1, pool=True)
        self.plain = spikformer.SpikformerConv2dBNLIF(24, 40, 3, 1, 1)
        self.mlp = spikformer.SpikformerMLP(40, 72, 40)

    def forward(self, inputs):
        image, spikes = inputs
        x = self.plain(self.pooled(spikes))  # [T, B, 40, 4, 4]
        x = self.mlp(x.flatten(3)).sum(-1)  # [T, B, 40, 16] tokens
        return torch.cat([x, self.image_stage(image).sum((-1, -2))], -1)


@pytest.mark.parametrize("memory", [None, "lossless"])
def test_spike_fed_convolutions_sum_at_the_spikes(monkeypatch, memory):
    """accelerate() runs SpikingJelly's convolutions fed spikes (3x3 'same' Conv2d, 1x1 Conv1d)
    through spike_conv2d (sums at the spikes: at 5% firing its cpp kernels take them), with or
    without a pool after BN (BN and pool then fused, kernels.bn_pool) and in lossless units'
    recomputation; one fed a float image is tried once and convolved densely from then on.
    Outputs and gradients are SpikingJelly's."""
    spikingjelly()
    from spikingjelly.activation_based import functional

    from spikeclip.compat import spikingjelly_units as units

    torch.manual_seed(3)
    net = _SpikeFedStages().double()
    functional.set_step_mode(net, "m")
    with torch.no_grad():  # BN scales and shifts that keep the stages firing
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.weight.uniform_(1.0, 2.0), m.bias.uniform_(0.5, 1.0)
    ours = copy.deepcopy(net)
    spikeclip.accelerate(ours, memory=memory)
    fed = []
    real = units.spike_conv2d
    monkeypatch.setattr(units, "spike_conv2d", lambda x, *a, **k: fed.append(x) or real(x, *a, **k))
    pooled, real_pool = [], units.bn_max_pool
    monkeypatch.setattr(
        units, "bn_max_pool", lambda y, *a, **k: pooled.append(y) or real_pool(y, *a, **k)
    )
    image = torch.rand(2, 3, 3, 8, 8, dtype=torch.float64) * 3
    spikes = (torch.rand(2, 3, 16, 8, 8) < 0.05).double()
    batches = dict(image=(image, spikes), second=(image.flip(-1) * 0.9, spikes.flip(-1)), lr=0.01)
    outs_sj, grads_sj = train_twice(net, **batches)
    outs, grads = train_twice(ours, **batches)
    for a, b in zip(outs, outs_sj, strict=True):
        assert rel(a, b) < 1e-9 and b[..., :40].abs().sum() > 0 and b[..., 40:].abs().sum() > 0
    assert grads.keys() == grads_sj.keys()
    for key, g in grads_sj.items():
        assert rel(grads[key], g) < 1e-9 and g.abs().sum() > 0, key
    spiking = [x for x in fed if bool(((x == 0) | (x == 1)).all())]
    # the four spike-fed convolutions in each forward (and, lossless, each recomputation); the
    # image stage's convolution tried once, then left to PyTorch
    per_batch = 4 * (2 if memory == "lossless" else 1)
    assert len(spiking) == 2 * per_batch and len(fed) == len(spiking) + 1
    assert any(float(x.mean()) < 0.1 for x in spiking)  # the kernels' summing side ran too
    assert ours.image_stage.conv_bn.block[0] in units._DENSE_FED
    # the pooled stage's BN + pool fused (kernels.bn_pool), in each forward and recomputation
    assert len(pooled) == per_batch // 2
