"""The image encoder's inference path (eval mode, no gradient, CPU): the tokenizer with BN
folded into each convolution and activations channels last (ConvTokenizer.
takes_inference_path), the blocks' linear + BN units with BN folded into the linear map
(_SpikingUnit.takes_inference_path). It must give what the plain path gives in eval mode (up to
float rounding: in float64 every spike the same), and be taken exactly where it may."""

import contextlib

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook

from spikeclip.kernels import unpack_spikes
from spikeclip.models import ConvTokenizer, SpikeCLIP, SpikeCLIPConfig, set_backend
from spikeclip.models.image_encoder import normalize_images
from spikeclip.models.layers import SeqLinearBN
from spikeclip.models.neurons import LIF

VARIANTS = {
    "tiny": {},
    "ANN twin": {"image_neuron": "relu"},
    "2x2 pools, shortcut": {"tokenizer_pool": "2x2", "tokenizer_shortcut": True},
    "PLIF, learned threshold, T=3": dict(learnable_tau=True, learnable_v_th=True, time_steps=3),
    "odd size": {"image_size": 20},
    "soft reset, learned threshold": dict(v_reset=None, learnable_v_th=True),
}
# The variants whose tokenizer runs its spike-fed stages as table lookups (the others keep the
# channels-last convolutions: the ANN has no spikes, the lookup path has no 2x2 pool or shortcut)
LOOKS_UP = {"tiny", "PLIF, learned threshold, T=3", "odd size", "soft reset, learned threshold"}


def trained_looking(config: SpikeCLIPConfig, dtype=torch.float64, seed: int = 0) -> SpikeCLIP:
    """A tiny model in eval mode whose BNs hold random running statistics and affines (fresh
    ones are the identity and would hide a folding error), and whose learnable neuron
    parameters moved off their initial values."""
    torch.manual_seed(seed)
    model = SpikeCLIP(SpikeCLIPConfig.named("tiny", **config)).to(dtype).eval()
    with torch.no_grad():
        for m in model.image_encoder.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0.0, 0.5)
        for name, p in model.image_encoder.named_parameters():
            if "v_th_log_scale" in name or name.endswith(".w"):
                p.add_(torch.empty_like(p).uniform_(-0.3, 0.3))
    return model


def images_for(model: SpikeCLIP, batch: int = 5, dtype=torch.float64) -> torch.Tensor:
    size = model.config.image_size
    return torch.rand(batch, model.config.in_channels, size, size, dtype=dtype)


def counted(monkeypatch, cls, name: str) -> list:
    """A list that grows by one at each call of cls.name (which still runs)."""
    calls, original = [], getattr(cls, name)
    monkeypatch.setattr(cls, name, lambda *args: calls.append(1) or original(*args))
    return calls


@contextlib.contextmanager
def plain_path():
    """Every module down its plain path: a global forward hook watches them all, as the energy
    count's hooks watch its layers."""
    handle = register_module_forward_hook(lambda *args: None)
    try:
        yield
    finally:
        handle.remove()


def both_paths(tokenizer: ConvTokenizer, x: torch.Tensor, T: int):
    """(inference path, plain path) of the tokenizer on x in inference mode."""
    with torch.inference_mode():
        assert tokenizer.takes_inference_path(x)
        fast = tokenizer(x, T)
        with plain_path():
            assert not tokenizer.takes_inference_path(x)
            plain = tokenizer(x, T)
    return fast, plain


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float64_equals_the_plain_path_spike_for_spike(variant):
    model = trained_looking(VARIANTS[variant])
    enc = model.image_encoder
    x = normalize_images(images_for(model), enc.config.image_normalize)
    with torch.inference_mode():
        assert enc.tokenizer._looks_up(x) == (variant in LOOKS_UP)
    fast, plain = both_paths(enc.tokenizer, x, enc.time_steps)
    assert fast.shape == plain.shape and fast.is_contiguous()
    # a spike flipped anywhere moves its tokens by a whole weight: far outside this tolerance
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)
    # and the features end to end (encode_image takes the path in eval under inference_mode,
    # the blocks' units too)
    images = images_for(model, dtype=torch.float64)
    with torch.inference_mode():
        features = model.encode_image(images)
        with plain_path():
            expected = model.encode_image(images)
    torch.testing.assert_close(features, expected, rtol=1e-10, atol=1e-10)


def test_spikes_seen_inside_are_the_same_in_float64(monkeypatch):
    """The stage inputs (the neurons' spikes) themselves, not only what they lead to: on the
    inference path the neurons write them packed (the lookup ops' codes, a zero border)."""
    import spikeclip.models.image_encoder as image_encoder

    model = trained_looking({})
    tok = model.image_encoder.tokenizer
    x = normalize_images(images_for(model), model.config.image_normalize)
    fast, plain = [], []

    def spy_on(op):
        def spy(*args, **kwargs):
            codes = op(*args, **kwargs)  # [T, B, H + 2, W + 2, ceil(C / 8)]
            fast.append(codes[:, :, 1:-1, 1:-1])
            return codes

        return spy

    for name in ("lif_spike_codes", "spike_conv3x3_lookup_lif"):
        monkeypatch.setattr(image_encoder, name, spy_on(getattr(image_encoder, name)))
    for n in tok.neurons:

        def record(y, forward=n.forward):
            spikes = forward(y)
            plain.append(spikes)
            return spikes

        n.forward = record
    try:
        with torch.inference_mode():
            assert tok._looks_up(x)
            tok(x, 4)
            assert not plain  # the neurons' work was done by the lookup ops
            with plain_path():
                tok(x, 4)
    finally:
        for n in tok.neurons:
            del n.forward
    assert len(fast) == len(plain) == 4
    for codes, spikes in zip(fast, plain, strict=True):
        unpacked = unpack_spikes(codes, spikes.shape[2], spikes.dtype).permute(0, 1, 4, 2, 3)
        assert torch.equal(unpacked, spikes)
        assert 0.02 < float(spikes.mean()) < 0.98  # spikes that could flip, not all 0 or 1


def test_float32_agrees_up_to_rounding():
    """In float32 the folded, channels-last convolutions round differently: a membrane within
    rounding of the threshold may fire on one path and not the other, rarely."""
    model = trained_looking({}, dtype=torch.float32, seed=1)
    enc = model.image_encoder
    x = normalize_images(images_for(model, 16, torch.float32), enc.config.image_normalize)
    fast, plain = both_paths(enc.tokenizer, x, enc.time_steps)
    differ = (fast - plain).abs() > 1e-3 * (1 + plain.abs())
    assert float(differ.float().mean()) < 1e-3


def test_the_path_is_taken_only_where_it_may():
    model = trained_looking({}, dtype=torch.float32)
    tok = model.image_encoder.tokenizer
    x = torch.rand(2, 3, 28, 28)
    with torch.inference_mode():
        assert tok.takes_inference_path(x)
        # another dtype than the weights': the plain path, and its error
        assert not tok.takes_inference_path(x.double())
        assert not tok.takes_inference_path(x.half())
    with torch.no_grad():
        assert tok.takes_inference_path(x)
    assert not tok.takes_inference_path(x)  # the parameters want gradients
    model.requires_grad_(False)
    assert tok.takes_inference_path(x)  # frozen: nothing needs a gradient
    assert not tok.takes_inference_path(x.requires_grad_())
    x = x.detach()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not tok.takes_inference_path(x)
    tok.stages[2].bn.train()  # batch statistics: nothing to fold
    with torch.no_grad():
        assert not tok.takes_inference_path(x)
    tok.stages[2].bn.eval()
    set_backend(model, "torch")  # the reference keeps the plain path
    with torch.no_grad():
        assert not tok.takes_inference_path(x)
    set_backend(model, "cpp")
    with torch.no_grad():
        assert tok.takes_inference_path(x)
        handle = tok.pool.register_forward_pre_hook(lambda *args: None)
        assert not tok.takes_inference_path(x)  # watched: the energy count sees every layer
        handle.remove()
        handle = tok.register_forward_hook(lambda *args: None)
        assert tok.takes_inference_path(x)  # the tokenizer itself is called either way
        handle.remove()
        tok.neurons[1].step_mode = "s"
        assert not tok.takes_inference_path(x)


def test_encode_image_and_classify_take_it(monkeypatch):
    model = trained_looking({}, dtype=torch.float32)
    calls = counted(monkeypatch, ConvTokenizer, "_infer")
    images = torch.rand(2, 3, 28, 28)
    with torch.inference_mode():
        model.encode_image(images)
    assert len(calls) == 1
    model.image_encoder.train()
    with torch.no_grad():
        model.encode_image(images)  # training mode: batch statistics, the plain path
    assert len(calls) == 1


def test_the_energy_count_sees_every_tokenizer_layer():
    """spikeclip.energy counts through forward hooks: with them the tokenizer takes the plain
    path, so every one of its layers is called and counted (the inference path would hide
    them: no SOPs, no firing rates)."""
    from spikeclip.energy import estimate

    model = trained_looking({}, dtype=torch.float32)
    images = torch.rand(4, 3, 28, 28)
    with torch.inference_mode():
        report = estimate(model.image_encoder, images)
    rows = {r.name: r for r in report.rows}
    assert rows["tokenizer.stages.0.op"].macs > 0
    assert rows["blocks.0.mlp.fc1.op"].sops > 0 and rows["blocks.0.attn.q.op"].sops > 0
    for i in range(1, 5):
        assert rows[f"tokenizer.stages.{i}.op"].sops > 0
    for i in range(4):
        assert rows[f"tokenizer.neurons.{i}"].calls == 1


NEURONS = {"LIF": lambda: LIF(tau=2.0, v_th=0.5), "ReLU": torch.nn.ReLU, "none": lambda: None}


@pytest.mark.parametrize("neuron", list(NEURONS))
@pytest.mark.parametrize("spikes", [True, False], ids=["spike input", "real input"])
def test_linear_unit_folds_bn_exactly_in_float64(neuron, spikes):
    """SeqLinearBN (the blocks' q/k/v/proj/fc units): BN folded into the linear map, the
    spike sums where the plain path sums (and BLAS above their firing-rate limit)."""
    torch.manual_seed(3)
    unit = SeqLinearBN(24, 40, neuron=NEURONS[neuron](), packed_input=spikes).double().eval()
    with torch.no_grad():
        unit.bn.running_mean.normal_(0.0, 0.5)
        unit.bn.running_var.uniform_(0.3, 3.0)
        unit.bn.weight.uniform_(0.5, 2.0)
        unit.bn.bias.normal_(0.0, 0.5)
    for rate in (0.1, 0.5):  # spike sums, then BLAS
        x = torch.rand(3, 4, 5, 24, dtype=torch.float64)
        x = (x < rate).double() if spikes else x - 0.5
        with torch.inference_mode():
            assert unit.takes_inference_path(x)
            fast = unit(x)
            with plain_path():
                assert not unit.takes_inference_path(x)
                plain = unit(x)
        assert fast.shape == plain.shape == (3, 4, 5, 40)
        torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)
        if neuron == "LIF":
            assert 0.02 < float(plain.mean()) < 0.98


def test_linear_unit_takes_the_path_only_where_it_may():
    unit = SeqLinearBN(8, 8, neuron=LIF(), packed_input=True).eval()
    x = (torch.rand(2, 3, 8) < 0.3).float()
    assert not unit.takes_inference_path(x)  # the parameters want gradients
    with torch.no_grad():
        assert unit.takes_inference_path(x)
        assert not unit.takes_inference_path(x.double())
        unit.bn.train()
        assert not unit.takes_inference_path(x)
        unit.bn.eval()
        unit.backend = "torch"
        assert not unit.takes_inference_path(x)
        unit.backend = "auto"
        handle = unit.neuron.register_forward_hook(lambda *args: None)
        assert not unit.takes_inference_path(x)
        handle.remove()
        handle = unit.register_forward_hook(lambda *args: None)
        assert unit.takes_inference_path(x)  # the unit itself is called either way
        handle.remove()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not unit.takes_inference_path(x)


def test_the_blocks_run_their_spikes_packed_where_they_may(monkeypatch):
    """Attention's q, k, v and the MLP run as lookups with their LIFs fused in eval mode under
    inference_mode; a hook on a unit or a neuron, or the reference backend, keeps them on the
    plain path (where the energy count sees every layer)."""
    import spikeclip.models.blocks as blocks

    model = trained_looking({}, dtype=torch.float32)
    calls = counted(monkeypatch, blocks, "input_codes")
    proj_calls = counted(monkeypatch, blocks, "heads_codes")  # the attention's output packed
    images = torch.rand(2, 3, 28, 28)
    with torch.inference_mode():
        model.encode_image(images)
        assert len(calls) == 2  # attention and MLP each pack their input's spikes once
        assert len(proj_calls) == 1
        block = model.image_encoder.blocks[0]
        for watched in (block.attn.k, block.mlp.fc2, block.mlp.fc1.neuron, block.attn.input_neuron):
            handle = watched.register_forward_hook(lambda *args: None)
            model.encode_image(images)
            handle.remove()
        assert len(calls) == 2 + 4  # each hook stops one of the two sub-blocks, not the other
        assert len(proj_calls) == 1 + 2  # the MLP's two hooks leave the attention its path
        handle = block.attn.proj.register_forward_hook(lambda *args: None)
        model.encode_image(images)
        handle.remove()
        assert len(calls) == 6 + 2 and len(proj_calls) == 3  # a watched proj runs as a module
        set_backend(model, "torch")
        model.encode_image(images)
        assert len(calls) == 8 and len(proj_calls) == 3


def test_the_blocks_units_take_it_in_encode_image(monkeypatch):
    """Every unit folds its BN once (as a folded op, or into the lookup ops' weights)."""
    model = trained_looking({}, dtype=torch.float32)
    calls = counted(monkeypatch, SeqLinearBN, "folded_weights")
    with torch.inference_mode():
        model.encode_image(torch.rand(2, 3, 28, 28))
    units = sum(isinstance(m, SeqLinearBN) for m in model.image_encoder.modules())
    assert units > 0 and len(calls) == units
