"""Reduced-memory training: packed spiking units, the low mode, checkpointed blocks; what each
saves for the backward."""

import pytest
import torch
from conftest import FUSED
from lif_cases import rel_err
from torch import nn

from spikeclip.kernels import pack_spikes, unpack_spikes
from spikeclip.kernels.common.backends import why_unavailable
from spikeclip.memory import bf16_saves, saved_tensor_bytes
from spikeclip.models import (
    LIF,
    Block,
    ImageEncoder,
    SeqConvBN,
    SeqLinearBN,
    SpikeCLIPConfig,
    set_backend,
    set_memory,
)

CONFIG = SpikeCLIPConfig.named("tiny", width=32, heads=4, image_size=16, learnable_tau=False)
CPU_FUSED = [p for p in FUSED if p.values[1] == "cpu"]


def spikes(*shape, rate=0.3):
    return (torch.rand(*shape) < rate).float()


def step(model, x, memory, checkpoint=False):
    set_memory(model, memory, checkpoint_blocks=checkpoint)
    model.train()
    model.zero_grad(set_to_none=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = x.clone().requires_grad_(True)
    out, saved = saved_tensor_bytes(model, x)
    out.backward(torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # every mode starts from the same running statistics
    return out.detach(), grads, saved, buffers


@pytest.mark.parametrize("shape", [(3, 17), (2, 5, 8), (4, 3, 2, 9), (1, 1)])
def test_pack_round_trip(shape):
    x = spikes(*shape)
    bits = pack_spikes(x)
    assert bits.shape == (*shape[:-1], (shape[-1] + 7) // 8) and bits.dtype == torch.uint8
    assert torch.equal(unpack_spikes(bits, shape[-1]), x)


@pytest.mark.parametrize("unit", ["linear", "conv3", "conv1", "linear+lif", "linear+plif"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_packed_units_equal_plain_layers(unit, mode):
    if unit.startswith("linear"):
        layer = SeqLinearBN(
            12,
            20,
            neuron=LIF(learnable_tau=unit.endswith("plif")) if "lif" in unit else None,
            packed_input=True,
            backend="torch",  # plain: the reference's float copies
        )
        x = spikes(3, 4, 5, 12)
    else:
        layer = SeqConvBN(6, 10, 3 if unit == "conv3" else 1, packed_input=True, backend="torch")
        x = spikes(3, 2, 6, 7, 9)
    layer.train(mode == "train")
    if mode == "eval":
        layer.bn.running_mean.normal_()
        layer.bn.running_var.uniform_(0.5, 2)
    out_p, grads_p, saved_p, buf_p = step(layer, x, "plain")
    out_l, grads_l, saved_l, buf_l = step(layer, x, "lossless")
    assert torch.equal(out_l, out_p)
    for name in grads_p:
        assert rel_err(grads_l[name], grads_p[name]) < 1e-5, name
    for name in buf_p:  # running statistics updated once, alike
        assert torch.equal(buf_l[name], buf_p[name]), name
    if unit.startswith("linear"):
        assert saved_l * 8 <= saved_p  # 1 bit per input element, the rest recomputed
    else:  # the conv's float input copy became 1 bit per element; BN keeps its input
        packed = x.numel() // x.shape[-1] * ((x.shape[-1] + 7) // 8)
        assert saved_p - saved_l == x.numel() * 4 - packed


@pytest.mark.parametrize(("backend", "device"), [p for p in CPU_FUSED if p.values[0] == "cpp"])
@pytest.mark.parametrize("rate", [0.03, 0.4])  # sums of weight rows; BLAS above 20% firing
@pytest.mark.parametrize("unit", ["linear", "conv"])
def test_spike_fed_units_sum_weight_rows(backend, device, rate, unit):
    """A spike-fed linear or conv on a fused CPU backend computes from its input's bits in
    every memory mode (it keeps those, not a float copy) and equals the reference's dense
    product."""
    if unit == "linear":
        layer = SeqLinearBN(40, 24, neuron=LIF(), packed_input=True, backend="torch")
        x = spikes(4, 3, 7, 40, rate=rate)
    else:
        layer = SeqConvBN(13, 70, neuron=LIF(), packed_input=True, backend="torch")
        x = spikes(4, 3, 13, 6, 9, rate=rate)
    out_ref, grads_ref, saved_ref, _ = step(layer, x, "plain")
    set_backend(layer, backend)
    out, grads, saved, _ = step(layer, x, "plain")
    assert rel_err(out, out_ref) < 1e-6
    for name in grads_ref:
        assert rel_err(grads[name], grads_ref[name]) < 1e-5, name
    # The float input (and the dense product's view of the weight) became 1 bit per element.
    packed = x.numel() // x.shape[-1] * ((x.shape[-1] + 7) // 8)
    assert saved_ref - saved >= x.numel() * 4 - packed


def test_packed_unit_rejects_non_spikes():
    layer = SeqLinearBN(8, 4, packed_input=True)
    with pytest.raises(ValueError, match="spikes"):
        layer(torch.randn(2, 3, 8, requires_grad=True))


@pytest.mark.slow
@pytest.mark.parametrize("learnable_tau", [False, True])
@pytest.mark.parametrize(("backend", "device"), CPU_FUSED)
def test_low_mode_and_checkpointing(backend, device, learnable_tau):
    torch.manual_seed(0)
    config = CONFIG.replace(learnable_tau=learnable_tau)
    blocks = nn.Sequential(Block(config), Block(config))
    set_backend(blocks, backend)
    x = torch.randn(4, 3, 16, CONFIG.width)
    out_p, grads_p, saved_p, buf_p = step(blocks, x, "plain")
    out_l, grads_l, saved_l, _ = step(blocks, x, "lossless")
    out_low, grads_low, saved_low, _ = step(blocks, x, "low")
    out_c, grads_c, saved_c, buf_c = step(blocks, x, "lossless", checkpoint=True)
    for out in (out_l, out_low, out_c):
        assert torch.equal(out, out_p)
    for name in grads_p:
        assert rel_err(grads_l[name], grads_p[name]) < 1e-5, name
        assert rel_err(grads_c[name], grads_p[name]) < 1e-5, name
        # bf16 membranes: a PLIF's tau gradient sums every element's rounding (measured 1.03%)
        tolerance = 2e-2 if name.endswith(".w") else 1e-2
        assert rel_err(grads_low[name], grads_l[name]) < tolerance, name
    for name in buf_p:
        assert torch.equal(buf_c[name], buf_p[name]), name  # checkpointing counts a batch once
    assert saved_l * 4 <= saved_p and saved_low < saved_l and saved_c < saved_l


def test_bf16_saves_only_touch_the_given_shape():
    x = torch.randn(4, 10, requires_grad=True)
    w = torch.randn(10, requires_grad=True)

    def product():
        with bf16_saves(x.shape):
            return (x * w).sum()

    out, n = saved_tensor_bytes(product)
    assert n == x.numel() * 2 + w.numel() * 4  # x kept in bf16, w as it is
    out.backward()
    assert rel_err(w.grad, x.detach().sum(0)) < 1e-2


@pytest.mark.skipif(
    why_unavailable("triton", torch.device("cpu")) is not None, reason="needs Triton's interpreter"
)
@pytest.mark.parametrize("neuron", [False, True])
def test_packed_linear_reads_bits_with_triton(neuron):
    """Lossless linear units on the triton backend multiply from the bits (Triton's
    tensor-core products; spike_linear_triton): what the plain unit computes."""
    layer = SeqLinearBN(
        70, 33, neuron=LIF(backend="triton") if neuron else None, packed_input=True,
        backend="triton",
    )  # fmt: skip
    x = spikes(3, 4, 5, 70)
    out_p, grads_p, _, _ = step(layer, x, "plain")
    out_l, grads_l, saved_l, _ = step(layer, x, "lossless")
    flips = (out_l != out_p).float().mean() if neuron else 0.0
    assert flips < 0.01 if neuron else rel_err(out_l, out_p) < 1e-6
    for name in grads_p:
        assert rel_err(grads_l[name], grads_p[name]) < (2e-2 if neuron else 1e-5), name
    assert saved_l < x.numel() / 4  # the bits and BN's few numbers


def autocast_step(layer, x, memory):
    """Forward under bf16 autocast, backward outside it (as a training loop does)."""
    set_memory(layer, memory)
    layer.train()
    layer.zero_grad(set_to_none=True)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    layer.load_state_dict(state)
    return out.detach(), grads


@pytest.mark.parametrize("unit", ["linear", "conv3", "linear+lif", "linear+plif"])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_packed_units_under_bf16_autocast(unit, backend):
    """Autocast reaches into the packed units' own autograd (the recomputation repeats the
    forward under it): lossless computes what plain computes, with float32 parameter grads
    (a PLIF's w among them)."""
    torch.manual_seed(3)
    if unit.startswith("linear"):
        lif = "lif" in unit
        neuron = LIF(learnable_tau=unit.endswith("plif"), backend=backend) if lif else None
        layer = SeqLinearBN(12, 20, neuron=neuron, packed_input=True, backend=backend)
        x = spikes(3, 4, 5, 12)
    else:
        layer = SeqConvBN(6, 10, 3, packed_input=True, backend=backend)
        x = spikes(3, 2, 6, 7, 9)
    out_p, grads_p = autocast_step(layer, x, "plain")
    out_l, grads_l = autocast_step(layer, x, "lossless")
    assert out_l.dtype == out_p.dtype == torch.bfloat16
    assert rel_err(out_l.float(), out_p.float()) < 1e-5
    plif = {"neuron.w"} if unit.endswith("plif") else set()
    assert set(grads_l) == set(grads_p) == {"op.weight", "bn.weight", "bn.bias", "input"} | plif
    for name in grads_p:
        assert grads_l[name].dtype == grads_p[name].dtype, name
        assert rel_err(grads_l[name].float(), grads_p[name].float()) < 1e-5, name


@pytest.mark.parametrize("learnable_tau", [False, True])
def test_image_encoder_memory_modes_same_outputs(learnable_tau):
    encoder = ImageEncoder(CONFIG.replace(learnable_tau=learnable_tau))
    set_backend(encoder, "torch")  # plain: the reference's float copies
    images = torch.rand(2, 3, 16, 16)
    out_p, grads_p, saved_p, _ = step(encoder, images, "plain")
    out_l, grads_l, saved_l, _ = step(encoder, images, "lossless")
    assert torch.equal(out_l, out_p)
    for name in grads_p:
        if name != "input":
            assert rel_err(grads_l[name], grads_p[name]) < 1e-5, name
    taus = [n for n in grads_p if n.endswith(".w")]  # every PLIF's tau gets its gradient
    assert len(taus) == (sum(isinstance(m, LIF) for m in encoder.modules()) if learnable_tau else 0)
    assert saved_l * 1.5 < saved_p  # the convs keep BN inputs as floats (no recompute)


@pytest.mark.parametrize("v_th", [1.0, 0.5, 0.3, -0.25])
def test_bf16_membranes_keep_their_spikes(v_th):
    from spikeclip.memory import to_bf16_keeping_spikes

    h = torch.randn(1000, 37) * 0.6 + v_th
    h[0, :4] = torch.tensor([v_th, v_th - 1e-6, v_th + 1e-6, -v_th])
    hb = to_bf16_keeping_spikes(h, v_th)
    assert hb.dtype == torch.bfloat16
    assert torch.equal(hb.float() >= v_th, h >= v_th)
    assert rel_err(hb.float(), h) < 2**-8
