"""`spikeclip bench inference`'s breakdown: every part of the encoder is timed once (no module
counted twice), and the parts add up to the call."""

import torch

from spikeclip.bench.inference_bench import _part, _top_parts, breakdown
from spikeclip.models import SpikeCLIP, SpikeCLIPConfig


def test_parts_are_the_outermost_modules_of_each_part():
    model = SpikeCLIP(SpikeCLIPConfig.named("tiny"))
    chosen = _top_parts(model.image_encoder)
    parts = {_part(p) for p in chosen}
    assert parts == {"first conv + BN (image input)", "tokenizer conv + BN", "tokenizer neurons",
                     "tokenizer pools", "attention", "MLP"}  # fmt: skip
    paths = list(chosen)
    assert not [a for a in paths for b in paths if a != b and a.startswith(b + ".")]
    depth = model.config.depth
    assert sum(_part(p) == "attention" for p in paths) == depth
    assert sum(_part(p) == "tokenizer conv + BN" for p in paths) == 4


def test_breakdown_adds_up_to_the_call():
    torch.manual_seed(0)
    model = SpikeCLIP(SpikeCLIPConfig.named("tiny")).eval()
    images = torch.rand(3, 3, 28, 28)
    parts = breakdown(model, images, rounds=3)
    assert set(parts) >= {"attention", "MLP", "tokenizer pools", "other"}
    assert all(v > 0 for k, v in parts.items() if k != "other")
    assert not model.image_encoder.tokenizer.pool._forward_hooks  # hooks removed
