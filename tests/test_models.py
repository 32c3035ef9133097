"""The model layer: SpikeCLIP's encoders on every backend against backend="torch" (outputs and
every parameter gradient, train and eval), the paper config's size, torch.compile, save/load,
zero-shot head, the ANN counterpart, and errors."""

import math

import pytest
import torch
from conftest import FUSED
from lif_cases import rel_err
from torch import nn

from spikeclip.checkpoint import CheckpointError
from spikeclip.models import (
    LIF,
    ImageEncoder,
    SpikeCLIP,
    SpikeCLIPConfig,
    TemporalReadout,
    set_backend,
)

# Small enough for the Triton interpreter; N = 16 tokens, head width 8 and 16 (both SSA
# associations), odd batch.
SMALL = SpikeCLIPConfig.named(
    "tiny",
    width=32,
    heads=4,
    image_size=16,
    vocab_size=50,
    context_length=5,
    text_width=8,
    text_hidden=24,
    embed_dim=12,
    time_steps=3,
    text_embeddings="frozen-layernorm",  # fires at initialisation (trained ones start silent)
)


def warm_bn(model: nn.Module, *inputs) -> None:
    """Running statistics = one batch's statistics, so that eval mode fires like train mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(*inputs)
    for m in bns:
        m.momentum = 0.1


def firing_rates(model, *inputs):
    rates = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: rates.append(float(o.mean())))
        for m in model.modules()
        if isinstance(m, LIF)
    ]
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return rates


def run(model, backend, x, mode):
    set_backend(model, backend)
    model.train(mode == "train")
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize("attention", ["ssa", "sdsa"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("backend", "device"), FUSED)
def test_encoders_match_reference(backend, device, mode, attention):
    config = SMALL.replace(attention=attention, heads=2 if attention == "sdsa" else 4)
    images = torch.rand(3, 3, 20, 20, device=device)  # resized to 16
    ids = torch.randint(0, config.vocab_size, (3, config.context_length), device=device)
    for encoder, x in ((ImageEncoder(config), images), (SpikeCLIP(config).text_encoder, ids)):
        encoder = encoder.to(device)
        warm_bn(encoder, x)
        rates = firing_rates(encoder.train(mode == "train"), x)
        assert max(rates) > 0.02, "degenerate test: the neurons do not fire"
        out_ref, grads_ref = run(encoder, "torch", x, mode)
        out, grads = run(encoder, backend, x, mode)
        assert rel_err(out, out_ref) < 1e-4
        assert grads.keys() == grads_ref.keys()
        assert len(grads) > 5
        for name in grads:
            assert rel_err(grads[name], grads_ref[name]) < 1e-4, name


def test_paper_config_size_and_shapes():
    config = SpikeCLIPConfig.named("paper")
    encoder = ImageEncoder(config)
    n = sum(p.numel() for p in encoder.parameters())
    assert 9.0e6 <= n <= 10.0e6
    assert config.tokens == 64 and config.head_dim == 48
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = encoder.tokenizer(x, 4)
    assert tokens.shape == (4, 2, 64, 384)
    ann = ImageEncoder(config.replace(image_neuron="relu"))
    assert ann.time_steps == 1
    # Same layout: the parameters differ only in the readout's one weight per time step.
    assert sum(p.numel() for p in ann.parameters()) == n - 3


def test_temporal_readout_init_and_sum():
    readout = TemporalReadout(4)
    expected = [math.log(0.1), math.log(0.2), math.log(0.4), math.log(0.8)]
    assert torch.allclose(readout.weight, torch.tensor(expected))
    x = torch.randn(4, 2, 3)
    assert torch.allclose(readout(x), sum(w * x[t] for t, w in enumerate(expected)))
    assert TemporalReadout(1).weight.tolist() == pytest.approx([math.log(0.8)])
    with pytest.raises(ValueError, match="time steps"):
        readout(torch.randn(3, 2, 3))


def test_torch_compile_image_encoder_matches_eager():
    encoder = ImageEncoder(SMALL)
    x = torch.rand(2, 3, 16, 16)
    warm_bn(encoder, x)
    encoder.eval()
    with torch.no_grad():
        eager = encoder(x)
        compiled = torch.compile(encoder)(x)
    assert rel_err(compiled, eager) < 1e-5


def _toy_tokenizer(config):
    def tokenize(texts):
        ids = torch.zeros(len(texts), config.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            codes = [ord(c) % config.vocab_size for c in text][: config.context_length]
            ids[i, : len(codes)] = torch.tensor(codes)
        return ids

    return tokenize


def test_save_load_round_trip(tmp_path):
    model = SpikeCLIP(SMALL, tokenizer=_toy_tokenizer(SMALL))
    images = torch.rand(2, 3, 16, 16)
    warm_bn(model.image_encoder, images)
    model.eval()
    model.save(tmp_path / "ckpt")
    loaded = SpikeCLIP.load(tmp_path / "ckpt", tokenizer=_toy_tokenizer(SMALL)).eval()
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    classes = model.classifier(["cat", "dog", "bird"], ["a {}", "the {}."])
    assert classes.shape == (3, SMALL.embed_dim)
    assert torch.allclose(classes.norm(dim=-1), torch.ones(3))
    assert torch.equal(loaded.classifier(["cat", "dog", "bird"], ["a {}", "the {}."]), classes)
    with torch.no_grad():
        assert torch.equal(model.logits(images, classes), loaded.logits(images, classes))
        assert model.logits(images, classes, temperature=100.0).shape == (2, 3)


def test_checkpoint_errors(tmp_path):
    model = SpikeCLIP(SMALL)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        SpikeCLIP.load(tmp_path / "missing")
    model.save(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        SpikeCLIP.load(tmp_path / "a")
    # Weights of another shape under a config that does not fit them.
    SpikeCLIP(SMALL.replace(width=64)).save(tmp_path / "b")
    model.save(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(
        (tmp_path / "b" / "model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match="shape mismatch"):
        SpikeCLIP.load(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        SpikeCLIP.load(tmp_path / "c")


def test_bad_inputs():
    model = SpikeCLIP(SMALL)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.encode_image(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.encode_image(torch.rand(3, 16, 16))
    with pytest.raises(TypeError, match="floating"):
        model.encode_image(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    # images outside [0, 1]: 0-255 values, CLIP-normalised ones; NaN keeps its own message
    with pytest.raises(ValueError, match=r"in \[0, 1\], got values from 0 to 2.*divide by 255"):
        model.encode_image(torch.rand(2, 3, 16, 16).mul(255).round())
    with pytest.raises(ValueError, match=r"got values from -1.5 to 0.25$"):
        model.logits(torch.tensor([-1.5, 0.25]).repeat(2, 3, 8, 1), torch.randn(4, SMALL.embed_dim))
    nan = torch.rand(2, 3, 16, 16)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        model.encode_image(nan)
    with pytest.raises(ValueError, match="no tokenizer"):
        model.encode_text(["a cat"])
    model.tokenizer = _toy_tokenizer(SMALL)
    with pytest.raises(ValueError, match="non-empty"):
        model.classifier([])
    with pytest.raises(ValueError, match="has no"):
        model.classifier(["cat"], ["a photo"])
    with pytest.raises(ValueError, match="width"):
        model.logits(torch.rand(2, 3, 16, 16), torch.randn(4, SMALL.embed_dim + 1))
    with pytest.raises(ValueError, match=r"token ids must lie"):
        model.encode_text(torch.full((1, SMALL.context_length), SMALL.vocab_size))
    with pytest.raises(ValueError, match=r"token ids must be"):
        model.encode_text(torch.zeros(1, SMALL.context_length + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of 4"):
        SpikeCLIPConfig.named("tiny", image_size=30)
    with pytest.raises(ValueError, match="divisible"):
        SpikeCLIPConfig.named("tiny", heads=3)
    with pytest.raises(ValueError, match="config must be"):
        SpikeCLIPConfig.named("huge")
    with pytest.raises(ValueError, match="backend"):
        set_backend(model, "gpu")
    with pytest.raises(ValueError, match="token embeddings"):
        model.text_encoder.load_embeddings(torch.randn(3, 8), torch.randn(5, 8))


@pytest.mark.parametrize("layout", ["paper", "legacy", "shipped"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_image_encoder_equals_an_independent_composition(mode, layout):
    """The tiny image encoder against its layers composed by hand from torch.nn.functional and
    the reference neurons (the paper's layout, SPIKECLIP.md: CLIP normalisation, conv+BN
    stages with LIFs, two 3x3 stride-2 pools, plain stage 5, blocks of SSA and MLP, token
    mean, temporal weighted readout, projection; or the legacy options: 2x2 pools, the
    membrane shortcut of stage 5, no normalisation): the same outputs and gradients."""
    import torch.nn.functional as F

    from spikeclip.kernels import lif_reference, ssa_reference
    from spikeclip.models.config import CLIP_MEAN, CLIP_STD, LEGACY_VALUES

    # "shipped": tiny's own neurons (threshold 0.5, a PLIF's learnable tau each); else fixed tau
    layout_values = {"legacy": LEGACY_VALUES, "paper": dict(learnable_tau=False)}.get(layout, {})
    cfg = SpikeCLIPConfig.named("tiny", depth=2, **layout_values)
    torch.manual_seed(5)
    enc = ImageEncoder(cfg)
    set_backend(enc, "torch")
    for m in enc.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    for name, p in enc.named_parameters():  # each PLIF its own tau, 1 / sigmoid(w)
        if name.endswith(".w"):
            p.data.uniform_(-1.0, 1.0)
    assert any(n.endswith(".w") for n, _ in enc.named_parameters()) == (layout == "shipped")
    enc.train(mode == "train")
    images = torch.rand(3, 3, 28, 28)
    T, P = cfg.time_steps, dict(enc.named_parameters())
    train = mode == "train"
    stats = {n: b.clone() for n, b in enc.named_buffers()}  # the composition's own copies

    def bn(x, name):
        return F.batch_norm(x, stats[f"{name}.running_mean"], stats[f"{name}.running_var"],
                            P[f"{name}.weight"], P[f"{name}.bias"], train, 0.1, 1e-5)  # fmt: skip

    def lif(x, name):
        tau = 1.0 / torch.sigmoid(P[f"{name}.w"]) if cfg.learnable_tau else cfg.tau
        return lif_reference(x, tau=tau, v_th=cfg.v_th, v_reset=cfg.v_reset, detach_reset=True,
                             surrogate=cfg.surrogate, alpha=cfg.alpha)[0]  # fmt: skip

    def conv_bn(x, i):  # x [T', B, C, H, W]
        name = f"tokenizer.stages.{i}"
        y = F.conv2d(x.flatten(0, 1), P[f"{name}.op.weight"], padding=1)
        return bn(y, f"{name}.bn").unflatten(0, x.shape[:2])

    def pool(x):
        if layout == "legacy":
            return F.max_pool2d(x.flatten(0, 1), 2).unflatten(0, x.shape[:2])
        return F.max_pool2d(x.flatten(0, 1), 3, 2, 1).unflatten(0, x.shape[:2])

    def linear_bn(x, name):  # x [T, B, N, C]
        y = F.linear(x, P[f"{name}.op.weight"])
        return bn(y.reshape(-1, y.shape[-1]), f"{name}.bn").view(y.shape)

    def composed(images):
        if cfg.image_normalize == "clip":  # paper and shipped; not legacy
            mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
            images = (images - mean) / std
        x = conv_bn(images.unsqueeze(0), 0).expand(T, -1, -1, -1, -1)
        x = conv_bn(lif(x, "tokenizer.neurons.0"), 1)
        x = pool(conv_bn(lif(x, "tokenizer.neurons.1"), 2))
        x = pool(conv_bn(lif(x, "tokenizer.neurons.2"), 3))
        y = conv_bn(lif(x, "tokenizer.neurons.3"), 4)
        x = x + y if layout == "legacy" else y
        x = x.flatten(3).transpose(2, 3)  # [T, B, N, C]
        Tn, B, N, C = x.shape
        H = cfg.heads
        for b in range(cfg.depth):
            a = f"blocks.{b}.attn"
            s = lif(x, f"{a}.input_neuron")

            def heads(y):
                return y.view(Tn, B, N, H, C // H).transpose(2, 3)

            q, k, v = (heads(lif(linear_bn(s, f"{a}.{n}"), f"{a}.{n}.neuron")) for n in "qkv")
            y = ssa_reference(q, k, v, scale=cfg.attn_scale, v_th=cfg.attn_v_th, tau=cfg.tau,
                              v_reset=cfg.v_reset, detach_reset=True, surrogate=cfg.surrogate,
                              alpha=cfg.alpha)  # fmt: skip
            x = x + linear_bn(y.transpose(2, 3).reshape(Tn, B, N, C), f"{a}.proj")
            m = f"blocks.{b}.mlp"
            h = lif(linear_bn(lif(x, f"{m}.input_neuron"), f"{m}.fc1"), f"{m}.fc1.neuron")
            x = x + linear_bn(h, f"{m}.fc2")
        w = P["readout.weight"].view(-1, 1, 1)
        return F.linear((w * x.mean(2)).sum(0), P["proj.weight"], P["proj.bias"])

    x1 = images.clone().requires_grad_(True)
    x2 = images.clone().requires_grad_(True)
    out = enc(x1)
    ref = composed(x2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x1, *enc.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [x2, *enc.parameters()], g)
    for (name, _), a, b in zip([("input", None), *enc.named_parameters()], grads, grads_ref,
                               strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_encode_image_checks_values_in_one_pass():
    """encode_image's one aminmax pass refuses NaN and inf (with the finiteness message) and
    values outside [0, 1]; the encoder then does not check again. check_finite=False still
    lets non-finite images through, as the encoder alone does."""
    model = SpikeCLIP(SMALL)
    inf = torch.rand(2, 3, 16, 16)
    inf[1, 2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        model.encode_image(inf)
    calls = []
    original = torch.isfinite
    try:
        torch.isfinite = lambda t: calls.append(t.shape) or original(t)
        model.encode_image(torch.rand(2, 3, 16, 16))
    finally:
        torch.isfinite = original
    assert (2, 3, 16, 16) not in calls  # no second pass over the images
    model.image_encoder.check_finite = False
    nan = torch.rand(2, 3, 16, 16)
    nan[0, 0, 0, 0] = float("nan")
    assert model.encode_image(nan).shape == (2, SMALL.embed_dim)
