"""`spikeclip bench inference`: images per second of a checkpoint's image encoder and its ANN
twin's, measured side by side on real test images, and where each one's time goes.

Both run `model.encode_image` under `torch.inference_mode()` in eval mode, as `classify` and
`eval` do, timed in interleaved rounds (medians). The breakdown times each part of the encoder
(the first convolution, the spike-fed convolutions, the neurons, the pools, attention, MLP, the
rest) with forward hooks in a separate pass, so the throughput figures carry no hook cost.
Where the tokenizer takes its inference path (ConvTokenizer.takes_inference_path: folded BN,
channels last), hooks inside it would send it down the other path: it is timed as one part.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from spikeclip.bench.timing import median_times
from spikeclip.data import load_dataset
from spikeclip.train.stages import load_trained

# The parts of an image encoder, by module path: the first match names a module's part.
PARTS = (
    ("tokenizer.stages.0", "first conv + BN (image input)"),
    ("tokenizer.stages.", "tokenizer conv + BN"),
    ("tokenizer.neurons.", "tokenizer neurons"),
    ("tokenizer.pool", "tokenizer pools"),
    ("blocks.", None),  # split below into attention and MLP
)


INFERENCE_TOKENIZER = "tokenizer (inference path)"


def _part(path: str, whole_tokenizer: bool = False) -> str | None:
    if whole_tokenizer and (path == "tokenizer" or path.startswith("tokenizer.")):
        return INFERENCE_TOKENIZER if path == "tokenizer" else None
    for prefix, name in PARTS:
        if path.startswith(prefix):
            if name is not None:
                return name
            return "attention" if ".attn" in path else "MLP" if ".mlp" in path else None
    return None


def _top_parts(encoder: torch.nn.Module, whole_tokenizer: bool) -> dict[str, torch.nn.Module]:
    """The outermost module of each part (timing nested ones would count twice)."""
    chosen: dict[str, torch.nn.Module] = {}
    for path, module in encoder.named_modules():
        part = _part(path, whole_tokenizer)
        if part is None or any(path.startswith(p + ".") for p in chosen):
            continue
        if part in ("attention", "MLP") and path.count(".") != 2:  # blocks.i.attn / blocks.i.mlp
            continue
        chosen[path] = module
    return chosen


def breakdown(model, images: torch.Tensor, rounds: int = 3) -> dict[str, float]:
    """Seconds per call of encode_image spent in each part (the median round), "other" the
    rest (resize, normalisation, readout, projection, layout changes)."""
    encoder = model.image_encoder
    with torch.inference_mode():
        whole = encoder.tokenizer.takes_inference_path(images)
    modules = _top_parts(encoder, whole)
    spent: dict[str, float] = defaultdict(float)
    started: dict[int, float] = {}
    handles = []

    def pre(mod, args):
        started[id(mod)] = time.perf_counter()

    def post(mod, args, out):
        spent[part_of[id(mod)]] += time.perf_counter() - started.pop(id(mod))

    part_of = {id(module): _part(path, whole) for path, module in modules.items()}
    for module in modules.values():
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    totals, per_round = [], []
    try:
        with torch.inference_mode():
            model.encode_image(images)  # warm-up
            for _ in range(rounds):
                spent.clear()
                t0 = time.perf_counter()
                model.encode_image(images)
                totals.append(time.perf_counter() - t0)
                per_round.append(dict(spent))
    finally:
        for h in handles:
            h.remove()
    middle = sorted(range(rounds), key=lambda i: totals[i])[rounds // 2]
    parts = per_round[middle]
    parts["other"] = totals[middle] - sum(parts.values())
    return parts


def bench_inference(checkpoint: str, ann: str | None = None, *, batch: int = 256,
                    rounds: int = 7, device: str = "cpu") -> list[dict]:  # fmt: skip
    """Rows: images/s of each encoder (the SNN's first), then each one's breakdown."""
    models = {"SNN": load_trained(checkpoint, device, with_teacher=False)}
    if ann is not None:
        models["ANN twin"] = load_trained(ann, device, with_teacher=False)
    _, recipe, _ = models["SNN"]
    test = load_dataset(recipe["dataset"], "test", recipe.get("data_dir"))
    images, _ = test.batch(torch.arange(min(batch, len(test))))
    images = images.to(device)
    encoders = {name: m.eval() for name, (m, _, _) in models.items()}

    def run(model):
        def call():
            with torch.inference_mode():
                model.encode_image(images)

        return call

    times = median_times({n: run(m) for n, m in encoders.items()}, torch.device(device),
                         rounds=rounds, budget_s=120.0)  # fmt: skip
    base = times["SNN"]
    rows = [
        dict(what="images/s", model=name, batch=len(images), ms=1e3 * t,
             images_per_s=len(images) / t, vs_snn=base / t)
        for name, t in times.items()
    ]  # fmt: skip
    for name, model in encoders.items():
        parts = breakdown(model, images)
        total = sum(parts.values())
        for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
            rows.append({"what": "breakdown", "model": name, "part": part, "ms": 1e3 * seconds,
                         "share": seconds / total})  # fmt: skip
    return rows
