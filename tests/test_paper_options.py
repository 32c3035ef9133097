"""The `paper` network and recipe as the official code computes them, and our variants as
named options: tokenizer pools and shortcut, text embeddings, preprocessing, the official dual
loss and its gradient-angle rule, the optimisers, the official ANN counterpart."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeclip.models import ImageEncoder, SpikeCLIP, SpikeCLIPConfig
from spikeclip.models.config import LEGACY_VALUES
from spikeclip.models.layers import SeqMaxPool2x2, SeqMaxPool3x3
from spikeclip.train.losses import gradient_angle, official_dual_loss

SMALL = dict(width=32, heads=4, image_size=16, vocab_size=60, context_length=5, text_width=8,
             text_hidden=24, embed_dim=12)  # fmt: skip


def test_paper_defaults_are_the_official_code():
    tiny = SpikeCLIPConfig.named("tiny")  # the paper's structure but its text embeddings
    assert (tiny.tokenizer_pool, tiny.tokenizer_shortcut, tiny.image_normalize) == (
        "3x3",
        False,
        "clip",
    )
    assert tiny.text_embeddings == "frozen-layernorm"
    # tiny departs from paper in its sizes and where measured (models/config.py says why)
    sizes = {"image_size", "width", "depth", "heads", "embed_dim", "text_width", "text_hidden",
             "vocab_size"}  # fmt: skip
    paper = SpikeCLIPConfig.named("paper")
    differ = {k for k, v in tiny.to_dict().items() if getattr(paper, k) != v} - sizes
    assert differ == {"text_embeddings", "v_th", "learnable_tau"}
    c = SpikeCLIPConfig.named("paper")
    assert (c.tokenizer_pool, c.tokenizer_shortcut, c.text_embeddings) == ("3x3", False, "trained")
    assert (c.image_normalize, c.resize_antialias) == ("clip", False)
    enc = ImageEncoder(c)
    assert isinstance(enc.tokenizer.pool, SeqMaxPool3x3) and not enc.tokenizer.shortcut
    legacy = ImageEncoder(c.replace(**LEGACY_VALUES))
    assert isinstance(legacy.tokenizer.pool, SeqMaxPool2x2) and legacy.tokenizer.shortcut
    for bad in (dict(tokenizer_pool="4x4"), dict(text_embeddings="x"), dict(image_normalize=1),
                dict(tokenizer_shortcut="yes")):  # fmt: skip
        with pytest.raises(ValueError):
            SpikeCLIPConfig.named("tiny", **bad)


def test_a_config_saved_before_the_options_keeps_its_function():
    old = SpikeCLIPConfig.named("tiny").to_dict()
    for key in LEGACY_VALUES:
        del old[key]
    restored = SpikeCLIPConfig.from_dict(old)
    assert all(getattr(restored, k) == v for k, v in LEGACY_VALUES.items())
    assert (
        SpikeCLIPConfig.from_dict(SpikeCLIPConfig.named("tiny").to_dict()).tokenizer_pool == "3x3"
    )


def test_soft_reset_reaches_every_neuron_and_changes_the_network():
    """v_reset None: every LIF of both encoders and every attention's LIF resets softly (the
    paper's hard reset otherwise); a learned threshold goes with it; bad values are named."""
    from spikeclip.models.blocks import AttentionCore
    from spikeclip.models.neurons import LIF

    torch.manual_seed(0)
    hard = SpikeCLIP(SpikeCLIPConfig.named("tiny", **SMALL)).eval()
    soft = SpikeCLIP(SpikeCLIPConfig.named("tiny", **SMALL, v_reset=None)).eval()
    soft.load_state_dict(hard.state_dict())
    lifs = [m for m in soft.modules() if isinstance(m, LIF)]
    cores = [m for m in soft.modules() if isinstance(m, AttentionCore)]
    assert lifs and cores
    assert all(m.v_reset is None for m in lifs)
    assert all(m.lif_options["v_reset"] is None for m in cores)
    assert all(m.v_reset == 0.0 for m in hard.modules() if isinstance(m, LIF))
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():  # training-mode BN: unit-variance currents, neurons firing often
        assert not torch.allclose(soft.train().encode_image(images),
                                  hard.train().encode_image(images))  # fmt: skip
    SpikeCLIP(SpikeCLIPConfig.named("tiny", **SMALL, v_reset=None, learnable_v_th=True))
    with pytest.raises(TypeError, match="v_reset"):
        SpikeCLIPConfig.named("tiny", v_reset="soft")
    with pytest.raises(ValueError, match="v_reset"):
        SpikeCLIPConfig.named("tiny", v_reset=float("nan"))


def test_pools_and_shortcut_change_the_tokenizer_as_stated():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 7, 7)
    y3, y2 = SeqMaxPool3x3()(x), SeqMaxPool2x2("torch")(x[..., :6, :6])
    torch.testing.assert_close(y3, F.max_pool2d(x.flatten(0, 1), 3, 2, 1).unflatten(0, (2, 3)))
    torch.testing.assert_close(
        y2, F.max_pool2d(x[..., :6, :6].flatten(0, 1), 2).unflatten(0, (2, 3))
    )
    assert y3.shape[-2:] == (4, 4)
    cfg = SpikeCLIPConfig.named("tiny", **SMALL)
    images = torch.rand(2, 3, 16, 16)
    # the shortcut adds the last stage's input to its output, the same weights otherwise
    # (training mode: batch statistics, so that freshly made neurons fire)
    plain = ImageEncoder(cfg).tokenizer
    short = ImageEncoder(cfg.replace(tokenizer_shortcut=True)).tokenizer
    short.load_state_dict(plain.state_dict())
    seen = []
    short.neurons[3].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        y_plain, y_short = plain(images, 2), short(images, 2)
    x = seen[0].flatten(3).transpose(2, 3)
    assert y_plain.shape == x.shape == (2, 2, 16, 32)
    assert y_plain.abs().sum() > 0 and x.abs().sum() > 0
    torch.testing.assert_close(y_short, y_plain + x, rtol=0, atol=0)


def test_preprocessing_options():
    from spikeclip.models.image_encoder import normalize_images
    from spikeclip.preprocess import resize_images

    x = torch.rand(2, 3, 40, 40)
    assert not torch.equal(resize_images(x, 16, True), resize_images(x, 16, False))
    plain = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_images(x, 16, False), plain)
    assert torch.equal(normalize_images(x, "none"), x)
    y = normalize_images(x, "clip")
    torch.testing.assert_close(y[:, 0] * 0.26862954 + 0.48145466, x[:, 0])


def test_text_embeddings_trained_or_frozen_with_layernorm():
    trained = SpikeCLIP(
        SpikeCLIPConfig.named("tiny", **SMALL, text_embeddings="trained")
    ).text_encoder
    frozen = SpikeCLIP(
        SpikeCLIPConfig.named("tiny", **SMALL, text_embeddings="frozen-layernorm")
    ).text_encoder
    assert trained.token_embedding.weight.requires_grad and trained.position_embedding.requires_grad
    assert isinstance(trained.norm, nn.Identity) and "norm.weight" not in trained.state_dict()
    assert not frozen.token_embedding.weight.requires_grad
    assert isinstance(frozen.norm, nn.LayerNorm)
    # trained embeddings get a gradient through the first LIF's surrogate even while it is
    # silent (CLIP-scale embeddings), which is what gets it firing
    ids = torch.randint(0, 60, (4, 5))
    trained(ids).square().sum().backward()
    assert trained.token_embedding.weight.grad.abs().sum() > 0


def official_loss_by_hand(student, teacher, classes, labels):
    s = student / student.norm(dim=1, keepdim=True)
    t = teacher / teacher.norm(dim=1, keepdim=True)
    logits = s @ classes.t()
    ce = -torch.log_softmax(logits, 1)[torch.arange(len(labels)), labels].mean()
    p = torch.softmax(t @ classes.t(), 1)
    kl = (p * (torch.log(p) - torch.log_softmax(logits, 1))).sum()  # summed, not averaged
    return ce, kl


def test_official_dual_loss_is_its_formula():
    torch.manual_seed(3)
    student, teacher = torch.randn(6, 12, requires_grad=True), torch.randn(6, 12)
    classes = F.normalize(torch.randn(4, 3, 12), dim=-1).mean(1)  # template mean, not renormalised
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    ce, kl = official_dual_loss(student, teacher, classes, labels)
    ce_ref, kl_ref = official_loss_by_hand(
        student.detach().double(), teacher.double(), classes.double(), labels
    )
    assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-5)
    assert kl.item() == pytest.approx(kl_ref.item(), rel=1e-5)
    (ce + kl).backward()
    assert student.grad.abs().sum() > 0


def test_classifier_can_leave_the_template_mean_unnormalised():
    model = SpikeCLIP(SpikeCLIPConfig.named("tiny", **SMALL, text_embeddings="frozen-layernorm"),
                      tokenizer=lambda texts: torch.randint(0, 60, (len(texts), 5)))  # fmt: skip
    torch.manual_seed(0)
    raw = model.classifier(["a", "b"], ["x {}", "y {}"], renormalize=False)
    torch.manual_seed(0)
    unit = model.classifier(["a", "b"], ["x {}", "y {}"])
    torch.testing.assert_close(unit, F.normalize(raw, dim=-1))
    assert (raw.norm(dim=-1) <= 1 + 1e-6).all()


def test_gradient_angle():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    a, b, c = w[0] * 3, w[1] * 5, -w[0]  # gradients (3, 0), (0, 5), (-1, 0)
    assert gradient_angle(a, b, [w]) == pytest.approx(90.0, abs=1e-4)
    assert gradient_angle(a, c, [w]) == pytest.approx(180.0, abs=1e-3)
    assert gradient_angle(a, 2 * a, [w]) == pytest.approx(0.0, abs=0.1)


def test_stage_skips_a_step_without_loss_and_optimisers(tmp_path):
    from spikeclip.train.loop import RunContext, StageConfig, run_stage

    torch.manual_seed(0)
    module = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    ctx = RunContext(tmp_path, device=torch.device("cpu"), seed=0, progress=False)
    stage = StageConfig("s", 2, 4, 1e-2, 1e-3, optimizer="adam")
    run_stage(stage, module, module, 8, lambda m, idx: (None, {}), ctx)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # no step
    # Adam per epoch: the learning rate changes between epochs only
    lrs = [stage.lr_at(s, 4, s // 2) for s in range(4)]
    assert lrs[0] == lrs[1] == pytest.approx(1e-2) and lrs[2] == lrs[3] == pytest.approx(1e-3)
    adamw = StageConfig("t", 2, 4, 1e-2, 1e-3, weight_decay=0.1)
    assert isinstance(adamw.make_optimizer(module.parameters()), torch.optim.AdamW)
    opt = stage.make_optimizer(module.parameters())
    assert (
        type(opt) is torch.optim.Adam
        and opt.defaults["amsgrad"]
        and opt.defaults["weight_decay"] == 0
    )
    with pytest.raises(ValueError, match="optimizer"):
        StageConfig("u", 1, 4, 1e-2, 1e-3, optimizer="sgd")


def test_recipe_resolves_paper_and_tiny():
    from spikeclip.train.config import RecipeConfig

    paper, tiny = RecipeConfig(config="paper"), RecipeConfig(config="tiny")
    assert (paper.fine_tuning_loss, paper.optimizer_kind) == ("official", "adam")
    assert (tiny.fine_tuning_loss, tiny.optimizer_kind) == ("ours", "adamw")
    assert RecipeConfig(config="tiny", dual_loss="official").fine_tuning_loss == "official"
    for bad in (dict(dual_loss="x"), dict(optimizer="sgd"), dict(ann_kind="cnn"),
                dict(angle_boundary=math.inf)):  # fmt: skip
        with pytest.raises(ValueError):
            RecipeConfig(**bad)


def test_official_ann_shapes_step_and_energy():
    from spikeclip import energy
    from spikeclip.models.official_ann import OfficialANNEncoder

    cfg = SpikeCLIPConfig.named("tiny", **SMALL, image_neuron="clip-ann")
    model = SpikeCLIP(cfg)
    assert isinstance(model.image_encoder, OfficialANNEncoder)
    images = torch.rand(5, 3, 20, 20)
    out = model.image_encoder(images)
    assert out.shape == (5, 12)
    opt = torch.optim.Adam(model.image_encoder.parameters(), lr=1e-3)
    target = F.normalize(torch.randn(5, 12), dim=-1)
    losses = []
    for _ in range(5):
        loss = (1 - F.cosine_similarity(model.image_encoder(images), target)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    report = energy.estimate(model.image_encoder.eval(), images)
    rows = {r.name: r for r in report.rows}
    N, C = (16 // 4) ** 2, 32
    assert rows["layers.0.self_attn"].macs == 2 * 5 * N * N * C
    assert report.sops_per_image == 0 and report.macs_per_image > 0
    full = SpikeCLIP(SpikeCLIPConfig.named("paper", image_neuron="clip-ann")).image_encoder
    assert 9.0e6 < sum(p.numel() for p in full.parameters()) < 10.0e6


def test_learnable_tau_makes_every_lif_a_plif():
    from spikeclip.models import LIF

    torch.manual_seed(0)
    cfg = SpikeCLIPConfig.named("paper", learnable_tau=True, **SMALL)
    model = SpikeCLIP(cfg, backend="torch")
    lifs = [m for m in model.modules() if isinstance(m, LIF)]
    assert lifs and all(m.w is not None for m in lifs)
    assert all(float(m.current_tau()) == pytest.approx(cfg.tau) for m in lifs)  # starts at tau
    fixed = SpikeCLIP(cfg.replace(learnable_tau=False), backend="torch")
    assert all(m.w is None for m in fixed.modules() if isinstance(m, LIF))
    assert SpikeCLIPConfig.from_dict(cfg.to_dict()).learnable_tau
    images = torch.rand(2, 3, 16, 16)
    model.train()
    model.encode_image(images).square().sum().backward()
    grads = [m.w.grad for m in model.image_encoder.modules() if isinstance(m, LIF)]
    assert all(g is not None for g in grads) and any(float(g) != 0 for g in grads)
    with pytest.raises(ValueError, match="learnable_tau"):
        SpikeCLIPConfig.named("tiny", learnable_tau="yes")


def test_text_v_th_sets_the_text_encoders_thresholds_only():
    from spikeclip.models import LIF

    cfg = SpikeCLIPConfig.named("paper", text_v_th=0.5, **SMALL)
    model = SpikeCLIP(cfg, backend="torch")
    text = [m.v_th for m in model.text_encoder.modules() if isinstance(m, LIF)]
    image = {m.v_th for m in model.image_encoder.modules() if isinstance(m, LIF)}
    assert text == [0.5, 0.5] and image == {cfg.v_th}
    default = SpikeCLIP(cfg.replace(text_v_th=None), backend="torch")
    assert {m.v_th for m in default.text_encoder.modules() if isinstance(m, LIF)} == {cfg.v_th}
    assert SpikeCLIPConfig.from_dict(cfg.to_dict()).text_v_th == 0.5
    for bad in ("x", float("nan"), True):
        with pytest.raises((TypeError, ValueError)):
            SpikeCLIPConfig.named("tiny", text_v_th=bad)
