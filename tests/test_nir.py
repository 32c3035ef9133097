"""spikeclip.nir: NIR graphs in and out. SpikingJelly 2.0's own exporter -> our loader, bit for
bit; our exporter -> SpikingJelly's importer and back through a file, the same spikes;
SpikeCLIP's encoders refused with what does export; bad graphs and files named."""

import math
import os

import numpy as np
import pytest
import torch
from sj_models import spikingjelly
from torch import nn

from spikeclip.models import LIF, SeqToANN, SpikeCLIPConfig
from spikeclip.models.neurons import IF

if os.environ.get("CI"):  # the README's test command installs nir: fail, do not skip
    import nir
else:
    nir = pytest.importorskip("nir")
import spikeclip.nir as snir


def _rates(spikes):
    rate = float(spikes.float().mean())
    assert 0 < rate < 1, f"degenerate test: firing rate {rate}"


def _sj_nets(sj):
    """SpikingJelly networks the issue names: flatten-linear-LIF-linear-LIF, and a
    convolutional one (conv, LIF, average pool, flatten, linear, IF)."""
    layer, neuron, functional = sj.layer, sj.neuron, sj.functional
    mlp = nn.Sequential(layer.Flatten(), layer.Linear(2 * 5 * 5, 16), neuron.LIFNode(tau=2.0),
                        layer.Linear(16, 10),
                        neuron.LIFNode(tau=4.0, decay_input=False))  # fmt: skip
    conv = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(tau=2.0),
                         layer.AvgPool2d(2), layer.Flatten(), layer.Linear(4 * 3 * 3, 5),
                         neuron.IFNode(v_threshold=0.5))  # fmt: skip
    for net in (mlp, conv):
        functional.set_step_mode(net, "m")
        for m in net.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.weight.data.mul_(3)
    return {
        "mlp": (mlp, torch.rand(6, 3, 2, 5, 5) * 2),
        "conv": (conv, torch.rand(6, 3, 2, 6, 6) * 2),
    }


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_spikingjelly_export_loads_bit_identical(name):
    sj = spikingjelly()
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    net, x = _sj_nets(sj)[name]
    graph = export_to_nir(net, x)
    sj.functional.reset_net(net)
    ours = snir.load(graph)
    with torch.no_grad():
        want, got = net(x), ours(x)
    _rates(want)
    assert torch.equal(got, want)
    kinds = {type(m).__name__ for m in ours.modules()}
    assert ("LIF" in kinds) and (name == "mlp" or "IF" in kinds)


def _our_net(bn: bool):
    """Conv (+ BatchNorm), LIF, average pool, flatten, linear, LIF, in our layers."""
    torch.manual_seed(7)
    conv = [nn.Conv2d(2, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else [])
    net = nn.Sequential(SeqToANN(*conv), LIF(tau=2.0),
                        SeqToANN(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)),
                        LIF(tau=4.0, v_th=0.5, decay_input=False))  # fmt: skip
    for m in net.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            m.weight.data.mul_(3)
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, folded on export
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net.eval(), torch.rand(6, 3, 2, 6, 6) * 2


@pytest.mark.parametrize("bn", [False, True], ids=["conv", "conv+bn"])
def test_ours_to_spikingjelly_and_through_a_file(tmp_path, bn):
    sj = spikingjelly()
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    net, x = _our_net(bn=bn)
    graph = snir.export(net, x)
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert kinds.count("LIF") == 2 and "Conv2d" in kinds and "BatchNorm2d" not in kinds
    with torch.no_grad():
        want = net(x)
        _rates(want)
        theirs = import_from_nir(graph, step_mode="m")(x)
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        nir.write(tmp_path / "net.nir", graph)
        back = snir.load(tmp_path / "net.nir")(x)
    assert torch.equal(theirs, back)  # the same graph, the same arithmetic: bit for bit
    if bn:
        # BatchNorm folded into the convolution rounds otherwise than conv then BatchNorm: a
        # membrane within rounding of the threshold may fire on one side only, on some CPU
        assert (back != want).float().mean() <= 0.01
    else:
        assert torch.equal(back, want)
    sj.functional.reset_net(net)


def test_discretisation_is_spikingjellys():
    """LIF: tau dt, r 1 (decay_input) or tau, v_leak = v_reset; IF: r 1 / dt; a PLIF at its
    current tau."""
    plif = LIF(tau=3.0, learnable_tau=True)
    with torch.no_grad():
        plif.w.fill_(0.3)
    net = nn.Sequential(LIF(tau=2.5, v_th=0.7, v_reset=-0.1, decay_input=False), IF(v_th=2.0),
                        plif)  # fmt: skip
    g = snir.export(net, torch.rand(4, 2, 3), dt=1e-3)
    lif, if_, plif_node = (g.nodes[n] for n in ("lif", "if", "lif_1"))
    np.testing.assert_allclose(lif.tau, [2.5e-3] * 3)
    np.testing.assert_allclose(lif.r, [2.5] * 3)
    np.testing.assert_allclose(lif.v_leak, [-0.1] * 3)
    np.testing.assert_allclose(lif.v_threshold, [0.7] * 3)
    np.testing.assert_allclose(if_.r, [1e3] * 3)
    np.testing.assert_allclose(plif_node.tau, [1e-3 / torch.sigmoid(torch.tensor(0.3)).item()] * 3)
    np.testing.assert_allclose(plif_node.r, [1.0] * 3)
    back = snir.load(g, dt=1e-3)
    x = torch.rand(5, 2, 3) * 3
    torch.testing.assert_close(back(x), net(x).detach(), rtol=0, atol=0)


def test_an_accelerated_spikingjelly_network_exports():
    sj = spikingjelly()
    from spikeclip.compat import accelerate

    net, x = _sj_nets(sj)["conv"]
    with torch.no_grad():
        want = net(x)
    sj.functional.reset_net(net)
    report = accelerate(net)
    assert report.replaced
    with torch.no_grad():
        got = snir.load(snir.export(net, x))(x)
    assert torch.equal(got, want)


def test_spikeclip_encoders_are_refused_and_their_parts_export():
    from spikeclip.models import ImageEncoder, SpikeCLIP, TextEncoder

    cfg = SpikeCLIPConfig.named("tiny", depth=1)
    image, text = ImageEncoder(cfg).eval(), TextEncoder(cfg).eval()
    images = torch.rand(2, 3, 28, 28)
    with pytest.raises(snir.NIRError, match=r"self-attention \(blocks.0.attn"):
        snir.export(image, images.expand(4, -1, -1, -1, -1))
    with pytest.raises(snir.NIRError, match=r"token lookup \(token_embedding\)"):
        snir.export(text, torch.zeros(4, 2, 5))
    with pytest.raises(snir.NIRError, match="exportable_part"):
        snir.export(SpikeCLIP(cfg), images)
    for enc, x in (
        (image, torch.rand(2, 3, 28, 28).expand(cfg.time_steps, -1, -1, -1, -1)),
        (text, torch.randn(cfg.time_steps, 2, cfg.context_length * cfg.text_width)),
    ):
        part = snir.exportable_part(enc)
        with torch.no_grad():
            want = part(x)
            got = snir.load(snir.export(part, x))(x)
        assert got.shape == want.shape
        # BatchNorm is folded into the convolution on export: equal to float32 rounding
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # a chain with a max-pool: named, with the call that exports the part before it
    from spikeclip.models.layers import SeqMaxPool2x2

    chain = nn.Sequential(SeqToANN(nn.Conv2d(2, 3, 3, padding=1)), LIF(), SeqMaxPool2x2())
    x = torch.rand(3, 2, 2, 6, 6)
    with pytest.raises(snir.NIRError, match=r"2 \(SeqMaxPool2x2\) has no NIR form.*upto='2'"):
        snir.export(chain, x)
    assert "LIF" in [type(n).__name__ for n in snir.export(chain, x, upto="2").nodes.values()]


def _lif_node(n=3, **changes):
    p = dict(tau=np.full(n, 2e-4), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n),
             v_reset=np.zeros(n))  # fmt: skip
    return nir.LIF(**(p | changes))


def test_bad_graphs_and_files_are_named(tmp_path):
    ok = nir.NIRGraph.from_list(nir.Affine(np.ones((3, 4)), np.zeros(3)), _lif_node())
    snir.load(ok)
    cuba = nir.NIRGraph.from_list(
        nir.Affine(np.ones((3, 4)), np.zeros(3)),
        nir.CubaLIF(tau_syn=np.full(3, 2e-4), tau_mem=np.full(3, 2e-4), r=np.ones(3),
                    v_leak=np.zeros(3), v_threshold=np.ones(3), v_reset=np.zeros(3)),
    )  # fmt: skip
    with pytest.raises(snir.NIRError, match=r"node 'cubalif': nir.CubaLIF is not a node"):
        snir.load(cuba)
    mismatch = nir.NIRGraph(
        nodes={"input": nir.Input({"input": np.array([4])}),
               "a": nir.Affine(np.ones((3, 4)), np.zeros(3)), "l": _lif_node(5),
               "output": nir.Output({"output": np.array([5])})},
        edges=[("input", "a"), ("a", "l"), ("l", "output")], type_check=False,
    )  # fmt: skip
    with pytest.raises(
        snir.NIRError, match=r"edge \('a', 'l'\): 'a' gives \[3\] but 'l' takes \[5\]"
    ):
        snir.load(mismatch)
    uneven = nir.NIRGraph.from_list(nir.Affine(np.ones((3, 4)), np.zeros(3)),
                                    _lif_node(v_threshold=np.array([1.0, 1.0, 2.0])))  # fmt: skip
    with pytest.raises(snir.NIRError, match="v_threshold differs between its neurons"):
        snir.load(uneven)
    with pytest.raises(snir.NIRError, match="r = 3 is neither 1 nor tau"):
        snir.load(nir.NIRGraph.from_list(nir.Affine(np.ones((3, 4)), np.zeros(3)),
                                         _lif_node(r=np.full(3, 3.0))))  # fmt: skip
    loop = nir.NIRGraph(
        nodes={"input": nir.Input({"input": np.array([3])}),
               "a": nir.Affine(np.eye(3), np.zeros(3)), "l": _lif_node(),
               "output": nir.Output({"output": np.array([3])})},
        edges=[("input", "a"), ("a", "l"), ("l", "a"), ("l", "output")],
    )  # fmt: skip
    with pytest.raises(snir.NIRError, match="recurrent"):
        snir.load(loop)
    (tmp_path / "junk.nir").write_bytes(b"not hdf5 at all")
    with pytest.raises(snir.NIRError, match=r"junk.nir: not a NIR file"):
        snir.load(tmp_path / "junk.nir")
    with pytest.raises(FileNotFoundError, match="no such NIR file"):
        snir.load(tmp_path / "missing.nir")
    with pytest.raises(snir.NIRError, match="soft reset"):
        snir.export(nn.Sequential(LIF(v_reset=None)), torch.rand(2, 2, 3))
    with pytest.raises(ValueError, match=r"input must be \[T, B, 4\]"):
        snir.load(ok)(torch.rand(2, 2, 5))


def test_snntorch_exporter_does_not_run_against_this_nir():
    """snnTorch -> NIR -> spikeclip is not covered because snnTorch 1.0.0's own exporter fails
    under nir 1.0.8's type inference (its Leaky nodes carry no input type). When a release of
    either fixes that, this fails: then compare its graphs' spikes here, as SpikingJelly's."""
    if os.environ.get("CI"):
        import snntorch
        from snntorch.export_nir import export_to_nir
    else:
        snntorch = pytest.importorskip("snntorch")
        export_to_nir = pytest.importorskip("snntorch.export_nir").export_to_nir
    net = nn.Sequential(
        nn.Linear(6, 5),
        snntorch.Leaky(beta=0.8, init_hidden=True),
        nn.Linear(5, 3),
        snntorch.Leaky(beta=0.9, init_hidden=True, output=True),
    )
    with pytest.raises(ValueError, match="Type inference error"):
        export_to_nir(net, torch.randn(1, 6), ignore_dims=[0])


def test_a_learned_threshold_exports_as_the_threshold_it_fires_at():
    """LIF(learnable_v_th) with factor 2: the NIR node's v_threshold is 2 v_th, and the loaded
    network fires as the learned one (continuous random inputs: no membrane within rounding of
    the threshold, so a last-bit difference of e^s on another CPU cannot flip a spike)."""
    learned = LIF(tau=2.0, v_th=0.5, learnable_v_th=True)
    with torch.no_grad():
        learned.v_th_log_scale.fill_(math.log(2.0))
    g = snir.export(nn.Sequential(learned), torch.rand(4, 2, 3))
    np.testing.assert_allclose(g.nodes["lif"].v_threshold, [1.0] * 3)
    x = torch.rand(6, 2, 3, generator=torch.Generator().manual_seed(4)) * 3
    back = snir.load(g)
    with torch.no_grad():
        assert torch.equal(back(x), learned(x))
