"""`spikeclip bench inference`'s breakdown: every part of the encoder is timed once (no module
counted twice), and the parts add up to the call."""

import pytest
import torch

from spikeclip.bench.inference_bench import INFERENCE_TOKENIZER, _part, _top_parts, breakdown
from spikeclip.models import ConvTokenizer, SpikeCLIP, SpikeCLIPConfig, set_backend

TOKENIZER_PARTS = {"first conv + BN (image input)", "tokenizer conv + BN", "tokenizer neurons",
                   "tokenizer pools"}  # fmt: skip


@pytest.mark.parametrize("whole_tokenizer", [False, True])
def test_parts_are_the_outermost_modules_of_each_part(whole_tokenizer):
    model = SpikeCLIP(SpikeCLIPConfig.named("tiny"))
    chosen = _top_parts(model.image_encoder, whole_tokenizer)
    parts = {_part(p, whole_tokenizer) for p in chosen}
    tokenizer = {INFERENCE_TOKENIZER} if whole_tokenizer else TOKENIZER_PARTS
    assert parts == tokenizer | {"attention", "MLP"}
    paths = list(chosen)
    assert not [a for a in paths for b in paths if a != b and a.startswith(b + ".")]
    depth = model.config.depth
    assert sum(_part(p, whole_tokenizer) == "attention" for p in paths) == depth
    convs = sum(_part(p, whole_tokenizer) == "tokenizer conv + BN" for p in paths)
    assert convs == (0 if whole_tokenizer else 4)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_breakdown_adds_up_to_the_call(backend, monkeypatch):
    """In eval mode on CPU the tokenizer takes its inference path and is timed whole (hooks
    inside would divert it); the reference backend keeps the plain path, timed by parts."""
    inferred = []
    infer = ConvTokenizer._infer
    monkeypatch.setattr(ConvTokenizer, "_infer", lambda *a: inferred.append(1) or infer(*a))
    torch.manual_seed(0)
    model = SpikeCLIP(SpikeCLIPConfig.named("tiny")).eval()
    set_backend(model, backend)
    images = torch.rand(3, 3, 28, 28)
    parts = breakdown(model, images, rounds=3)
    tokenizer = {INFERENCE_TOKENIZER} if backend == "auto" else TOKENIZER_PARTS
    assert set(parts) == tokenizer | {"attention", "MLP", "other"}
    assert all(v > 0 for k, v in parts.items() if k != "other")
    assert not model.image_encoder.tokenizer.pool._forward_hooks  # hooks removed
    assert not model.image_encoder.tokenizer._forward_hooks
    assert bool(inferred) == (backend == "auto")  # timed as it runs untimed
