"""Weights saved by SpikeCLIP's official code (github.com/Lvchangze/SpikeCLIP: model.py's
`Vision_Encoder` and `Language_Encoder` state dicts) -> a `paper` SpikeCLIP computing the same
function.

Key names map one to one (official -> ours):

    patch_embed.block{i}_conv / block{i}_bn         image_encoder.tokenizer.stages.{i}.op / .bn
    block.{j}.attn.{q,k,v}_conv / _bn               image_encoder.blocks.{j}.attn.{q,k,v}.op / .bn
    block.{j}.attn.proj_conv / proj_bn              image_encoder.blocks.{j}.attn.proj.op / .bn
    block.{j}.mlp.mlp{1,2}_conv / _bn               image_encoder.blocks.{j}.mlp.fc{1,2}.op / .bn
    weights_tensor [1, T, 1]; proj                  image_encoder.readout.weight [T]; .proj
    clip_embedding.token_embedding / position_embedding   text_encoder.token_embedding / ...
    fc1, fc2, weights_tensor                        text_encoder.fc1, fc2, readout.weight

1x1 Conv1d / Conv2d weights become Linear weights. The official projection and MLP convs
have a bias that the BatchNorm after them cancels in training; it is folded into that BN's
running mean (BN(y + b) with statistics (m, v) equals BN(y) with (m - b, v)), so eval-mode
outputs are equal too. The official code builds 12 heads by default and its scripts use 8;
heads cannot be read from the weights (pass `heads`).
"""

from __future__ import annotations

import re

import torch

from spikeclip.checkpoint import CheckpointError, load_state_into
from spikeclip.models.config import SpikeCLIPConfig
from spikeclip.models.spikeclip_model import SpikeCLIP

# bias-free in the official code too: plain renames
_IMAGE_PATTERNS = [
    (r"patch_embed\.block(\d)_conv\.weight", "tokenizer.stages.{0}.op.weight"),
    (r"patch_embed\.block(\d)_bn\.(\w+)", "tokenizer.stages.{0}.bn.{1}"),
    (r"block\.(\d+)\.attn\.([qkv])_conv\.weight", "blocks.{0}.attn.{1}.op.weight"),
    (r"block\.(\d+)\.attn\.([qkv])_bn\.(\w+)", "blocks.{0}.attn.{1}.bn.{2}"),
    (r"block\.(\d+)\.attn\.proj_conv\.(weight|bias)", "blocks.{0}.attn.proj.op.{1}"),
    (r"block\.(\d+)\.attn\.proj_bn\.(\w+)", "blocks.{0}.attn.proj.bn.{1}"),
    (r"block\.(\d+)\.mlp\.mlp([12])_conv\.(weight|bias)", "blocks.{0}.mlp.fc{1}.op.{2}"),
    (r"block\.(\d+)\.mlp\.mlp([12])_bn\.(\w+)", "blocks.{0}.mlp.fc{1}.bn.{2}"),
    (r"weights_tensor", "readout.weight"),
    (r"proj\.(weight|bias)", "proj.{0}"),
]
_TEXT_PATTERNS = [
    (r"clip_embedding\.token_embedding\.weight", "token_embedding.weight"),
    (r"clip_embedding\.position_embedding\.weight", "position_embedding"),
    (r"clip_embedding\.position_ids", None),  # a buffer of 0..n-1: nothing to keep
    (r"fc([12])\.(weight|bias)", "fc{0}.{1}"),
    (r"weights_tensor", "readout.weight"),
]


def _rename(state: dict, patterns, where: str) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, target in patterns:
            m = re.fullmatch(pattern, key)
            if m:
                if target is not None:
                    out[target.format(*m.groups())] = value
                break
        else:
            raise CheckpointError(
                f"{where}: unknown key {key!r} (not a SpikeCLIP official {where})"
            )
    return out


def _as_linear(w: torch.Tensor) -> torch.Tensor:
    """1x1 Conv1d `[out, in, 1]` / Conv2d `[out, in, 1, 1]` weight -> Linear `[out, in]`."""
    if w.dim() > 2:
        if any(s != 1 for s in w.shape[2:]):
            raise CheckpointError(f"expected a 1x1 convolution weight, got shape {tuple(w.shape)}")
        w = w.reshape(w.shape[0], w.shape[1])
    return w


def _image_state(official: dict) -> tuple[dict, dict]:
    """Our image-encoder state dict (1x1 convs as linears, biases folded into the BN's running
    mean) and the sizes read from it."""
    state = _rename(official, _IMAGE_PATTERNS, "image state dict")
    for key in list(state):
        if re.fullmatch(r"blocks\.\d+\.(attn\.[qkv]|attn\.proj|mlp\.fc[12])\.op\.weight", key):
            state[key] = _as_linear(state[key])
    for key in [k for k in state if k.endswith(".op.bias")]:
        bias = state.pop(key)
        mean_key = key.replace(".op.bias", ".bn.running_mean")
        if mean_key not in state:
            raise CheckpointError(f"image state dict: {mean_key} missing (its conv has a bias)")
        state[mean_key] = state[mean_key] - bias.to(state[mean_key].dtype)
    w = state.get("readout.weight")
    if w is None:
        raise CheckpointError("image state dict: weights_tensor missing")
    state["readout.weight"] = w.reshape(-1)
    try:
        sizes = dict(
            width=state["tokenizer.stages.4.op.weight"].shape[0],
            in_channels=state["tokenizer.stages.0.op.weight"].shape[1],
            depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
            mlp_ratio=state["blocks.0.mlp.fc1.op.weight"].shape[0]
            / state["blocks.0.mlp.fc1.op.weight"].shape[1],
            embed_dim=state["proj.weight"].shape[0],
            time_steps=state["readout.weight"].numel(),
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"image state dict: incomplete ({exc} missing)") from None
    return state, sizes


def _text_state(official: dict, context_length: int | None) -> tuple[dict, dict]:
    state = _rename(official, _TEXT_PATTERNS, "text state dict")
    try:
        token = state["token_embedding.weight"]
        fc1, fc2 = state["fc1.weight"], state["fc2.weight"]
        width = token.shape[1]
        length = context_length or fc1.shape[1] // width
        sizes = dict(
            vocab_size=token.shape[0], text_width=width, context_length=length,
            text_hidden=fc1.shape[0], embed_dim=fc2.shape[0],
            time_steps=state["readout.weight"].numel(),
        )  # fmt: skip
        state["position_embedding"] = state["position_embedding"][:length]
    except KeyError as exc:
        raise CheckpointError(f"text state dict: {exc} missing") from None
    if fc1.shape[1] != sizes["context_length"] * width:
        raise CheckpointError(
            f"text state dict: fc1 takes {fc1.shape[1]} inputs, not context_length x width = "
            f"{sizes['context_length']} x {width}"
        )
    state["readout.weight"] = state["readout.weight"].reshape(-1)
    return state, sizes


def from_official(
    image_state_dict: dict | None = None,
    text_state_dict: dict | None = None,
    *,
    heads: int = 8,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    **config_overrides,
):
    """A `paper` SpikeCLIP holding weights saved by the official code (either part may be
    None: it keeps its initialisation). Sizes (width, depth, vocabulary, ...) are read from the
    weights; an unknown or missing key, or a misshapen tensor, is a CheckpointError naming it.
    dtype: the model's parameter dtype before loading (float64 for exact parity checks)."""
    if image_state_dict is None and text_state_dict is None:
        raise ValueError("from_official needs an image and/or a text state dict")
    sizes: dict = {}
    image = text = None
    if image_state_dict is not None:
        image, sizes = _image_state(dict(image_state_dict))
    if text_state_dict is not None:
        text, text_sizes = _text_state(
            dict(text_state_dict), config_overrides.get("context_length")
        )
        for k in ("embed_dim", "time_steps"):
            if k in sizes and sizes[k] != text_sizes[k]:
                raise CheckpointError(
                    f"the image and text state dicts disagree on {k}: {sizes[k]} vs {text_sizes[k]}"
                )
        sizes.update(text_sizes)
    config = SpikeCLIPConfig.named("paper", heads=heads, **{**sizes, **config_overrides})
    model = SpikeCLIP(config, backend=backend)
    if dtype is not None:
        model = model.to(dtype)
    if image is not None:
        load_state_into(model.image_encoder, image, "official image state dict")
    if text is not None:
        load_state_into(model.text_encoder, text, "official text state dict")
    return model
