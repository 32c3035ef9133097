"""from_official: weights in the official SpikeCLIP code's format (hand-made here with its key
names and shapes) load into a `paper` SpikeCLIP that computes what the official forward
computes, written out below from the official model's structure (eval-mode BN, float64 so
that no spike sits within rounding of a threshold)."""

import pytest
import torch
import torch.nn.functional as F

from spikeclip.checkpoint import CheckpointError
from spikeclip.kernels import lif_reference
from spikeclip.models import from_official
from spikeclip.models.config import CLIP_MEAN, CLIP_STD

W, DEPTH, HEADS, HIDDEN, E, T = 32, 2, 4, 128, 24, 4
VOCAB, TW, L, TH = 50, 16, 6, 40


def bn(prefix, c, g):
    return {f"{prefix}.weight": torch.rand(c, generator=g, dtype=torch.float64) + 0.5,
            f"{prefix}.bias": torch.randn(c, generator=g, dtype=torch.float64) * 0.3,
            f"{prefix}.running_mean": torch.randn(c, generator=g, dtype=torch.float64) * 0.2,
            f"{prefix}.running_var": torch.rand(c, generator=g, dtype=torch.float64) + 0.3,
            f"{prefix}.num_batches_tracked": torch.tensor(7)}  # fmt: skip


def official_image_state(seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    chans = [3, W // 8, W // 4, W // 2, W, W]
    s = {}
    for i in range(5):
        s[f"patch_embed.block{i}_conv.weight"] = rnd(chans[i + 1], chans[i], 3, 3, scale=0.4)
        s.update(bn(f"patch_embed.block{i}_bn", chans[i + 1], g))
    for j in range(DEPTH):
        a = f"block.{j}.attn"
        for n in "qkv":
            s[f"{a}.{n}_conv.weight"] = rnd(W, W, 1, scale=0.5)
            s.update(bn(f"{a}.{n}_bn", W, g))
        s[f"{a}.proj_conv.weight"], s[f"{a}.proj_conv.bias"] = rnd(W, W, 1, scale=0.5), rnd(W)
        s.update(bn(f"{a}.proj_bn", W, g))
        m = f"block.{j}.mlp"
        s[f"{m}.mlp1_conv.weight"], s[f"{m}.mlp1_conv.bias"] = (
            rnd(HIDDEN, W, 1, 1, scale=0.4),
            rnd(HIDDEN),
        )
        s.update(bn(f"{m}.mlp1_bn", HIDDEN, g))
        s[f"{m}.mlp2_conv.weight"], s[f"{m}.mlp2_conv.bias"] = (
            rnd(W, HIDDEN, 1, 1, scale=0.3),
            rnd(W),
        )
        s.update(bn(f"{m}.mlp2_bn", W, g))
    s["weights_tensor"] = torch.tensor(
        [-2.3026, -1.6094, -0.9163, -0.2231], dtype=torch.float64
    ).view(1, 4, 1)
    s["proj.weight"], s["proj.bias"] = rnd(E, W, scale=0.2), rnd(E, scale=0.1)
    return s


READOUT = [-2.3026, -1.6094, -0.9163, -0.2231]  # the official initial weights_tensor


def official_text_state(seed=1):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    return {
        "clip_embedding.token_embedding.weight": rnd(VOCAB, TW),
        "clip_embedding.position_embedding.weight": rnd(77, TW),
        "fc1.weight": rnd(TH, L * TW, scale=0.3),
        "fc1.bias": rnd(TH, scale=0.1),
        "fc2.weight": rnd(E, TH, scale=0.3),
        "fc2.bias": rnd(E, scale=0.1),
        "weights_tensor": torch.tensor(READOUT, dtype=torch.float64).view(1, 4, 1),
    }


def lif(x, v_th=1.0):  # SpikingJelly MultiStepLIFNode(tau=2, detach_reset=True), hard reset 0
    return lif_reference(x, tau=2.0, v_th=v_th, detach_reset=True)[0]


def bn_eval(x, s, p):
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"],
                        s[f"{p}.bias"], False, 0.0, 1e-5)  # fmt: skip


def official_image_forward(s, pixels):
    """The official Vision_Encoder's forward (model.py), on preprocessed pixels [B, 3, H, W]."""
    x = pixels.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    Tn, B = x.shape[:2]

    def stage(x, i, pool=False):
        y = bn_eval(F.conv2d(x.flatten(0, 1), s[f"patch_embed.block{i}_conv.weight"], padding=1),
                    s, f"patch_embed.block{i}_bn")  # fmt: skip
        if pool:
            y = F.max_pool2d(y, 3, 2, 1)
        return y.unflatten(0, (Tn, B))

    x = lif(stage(x, 0))
    x = lif(stage(x, 1))
    x = lif(stage(x, 2, pool=True))
    x = lif(stage(x, 3, pool=True))
    x = stage(x, 4)  # no shortcut
    for j in range(DEPTH):
        a, m = f"block.{j}.attn", f"block.{j}.mlp"
        Tn, B, C, h, w = x.shape
        sx = lif(x).flatten(3).flatten(0, 1)  # [TB, C, N]
        qkv = []
        for n in "qkv":
            y = bn_eval(F.conv1d(sx, s[f"{a}.{n}_conv.weight"]), s, f"{a}.{n}_bn")
            y = lif(y.reshape(Tn, B, C, -1))
            qkv.append(
                y.transpose(-1, -2).reshape(Tn, B, -1, HEADS, C // HEADS).permute(0, 1, 3, 2, 4)
            )
        q, k, v = qkv
        y = (q @ k.transpose(-2, -1)) @ v * 0.125
        y = lif(y.transpose(3, 4).reshape(Tn, B, C, -1), v_th=0.5).flatten(0, 1)
        y = bn_eval(
            F.conv1d(y, s[f"{a}.proj_conv.weight"], s[f"{a}.proj_conv.bias"]), s, f"{a}.proj_bn"
        )
        x = x + y.reshape(Tn, B, C, h, w)
        y = lif(x).flatten(0, 1)
        y = bn_eval(
            F.conv2d(y, s[f"{m}.mlp1_conv.weight"], s[f"{m}.mlp1_conv.bias"]), s, f"{m}.mlp1_bn"
        )
        y = lif(y.unflatten(0, (Tn, B))).flatten(0, 1)
        y = bn_eval(
            F.conv2d(y, s[f"{m}.mlp2_conv.weight"], s[f"{m}.mlp2_conv.bias"]), s, f"{m}.mlp2_bn"
        )
        x = x + y.unflatten(0, (Tn, B))
    x = x.flatten(3).mean(3).transpose(0, 1)  # [B, T, C]
    x = (x * s["weights_tensor"]).sum(1)
    return F.linear(x, s["proj.weight"], s["proj.bias"])


def official_text_forward(s, ids):
    x = (
        s["clip_embedding.token_embedding.weight"][ids]
        + s["clip_embedding.position_embedding.weight"][: ids.shape[1]]
    )
    x = x.unsqueeze(0).repeat(T, 1, 1, 1).flatten(2)
    x = F.linear(lif(x), s["fc1.weight"], s["fc1.bias"])
    x = F.linear(lif(x), s["fc2.weight"], s["fc2.bias"]).transpose(0, 1)
    return (x * s["weights_tensor"]).sum(1)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_from_official_computes_the_official_function(backend):
    """backend "auto" runs the image encoder's inference path (BN folded, the tokenizer channels
    last: eval mode, no gradient, CPU); "torch" the plain reference path. Both are the
    authors' function."""
    image, text = official_image_state(), official_text_state()
    model = from_official(image, text, heads=HEADS, backend=backend, dtype=torch.float64).eval()
    if backend == "auto":
        model.requires_grad_(False)
    c = model.config
    assert (c.width, c.depth, c.heads, c.embed_dim, c.vocab_size, c.text_width) == (
        W,
        DEPTH,
        HEADS,
        E,
        VOCAB,
        TW,
    )
    assert (c.context_length, c.text_hidden, c.tokenizer_pool, c.tokenizer_shortcut) == (
        L,
        TH,
        "3x3",
        False,
    )
    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 28, 28, dtype=torch.float64)  # [0, 1], resized to 32 by both
    # the official preprocessing: CLIP mean/std, bilinear resize to 32 without antialias
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float64).view(3, 1, 1)
    pre = F.interpolate((pixels - mean) / std, size=(32, 32), mode="bilinear", align_corners=False)
    expected = official_image_forward(image, pre)
    ours = model.image_encoder(pixels)
    tokenizer_input = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    assert model.image_encoder.tokenizer.takes_inference_path(tokenizer_input) == (
        backend == "auto"
    )
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    assert expected.abs().max() > 0.1  # spikes flowed through
    ids = torch.randint(0, VOCAB, (5, L))
    torch.testing.assert_close(model.text_encoder(ids), official_text_forward(text, ids),
                               rtol=1e-10, atol=1e-10)  # fmt: skip


def test_from_official_refuses_unknown_missing_and_misshapen():
    image = official_image_state()
    with pytest.raises(CheckpointError, match=r"unknown key 'block\.0\.attn\.extra'"):
        from_official({**image, "block.0.attn.extra": torch.zeros(1)}, heads=HEADS)
    broken = dict(image)
    del broken["block.1.attn.k_bn.running_var"]
    with pytest.raises(CheckpointError, match=r"missing \['blocks.1.attn.k.bn.running_var'\]"):
        from_official(broken, heads=HEADS)
    broken = dict(image)
    broken["block.0.mlp.mlp1_conv.weight"] = torch.zeros(HIDDEN, W, 3, 3)
    with pytest.raises(CheckpointError, match="1x1 convolution"):
        from_official(broken, heads=HEADS)
    text = official_text_state()
    bad = dict(text)
    bad["fc1.weight"] = torch.zeros(TH, L * TW + 3)
    with pytest.raises(CheckpointError, match="context_length"):
        from_official(None, bad)
    with pytest.raises(CheckpointError, match="disagree on embed_dim"):
        from_official(
            image,
            {**text, "fc2.weight": torch.zeros(E + 1, TH), "fc2.bias": torch.zeros(E + 1)},
            heads=HEADS,
        )
    with pytest.raises(ValueError, match="image and/or a text"):
        from_official()
    # one part alone: the other keeps its initialisation
    model = from_official(None, text)
    assert model.config.vocab_size == VOCAB and model.config.width == 384
