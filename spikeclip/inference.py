"""Zero-shot classification of a user's images by a user's labels with a trained checkpoint:

    model, preprocess, tokenizer = spikeclip.load("spikeclip_out/demo/checkpoint")
    probs = model.classify([preprocess("cat.png")], ["cat", "dog"])    # [1, 2], rows sum to 1

classify_files for many files (spikeclip/classify_command.py is the command on them).
"""

from __future__ import annotations

import torch

from spikeclip.models import SpikeCLIP


def load(path, device: str = "cpu", backend: str = "auto"):
    """(model, preprocess, tokenizer) of a SpikeCLIP checkpoint directory (an SNN or its ANN
    counterpart), as open_clip.create_model_and_transforms returns them: the model in eval
    mode on `device`, with its trained logit scale and tokenizer restored; preprocess maps an
    image (file, PIL image, array, tensor) to the `[3, S, S]` tensor the model takes."""
    model = SpikeCLIP.load(path, backend=backend, map_location=device).eval()
    return model, model.preprocess, model.tokenizer


def classify_files(model, files, labels, templates=None, top_k=3, batch_size=64):
    """One record per file, in order: {"path", "predictions": [{"label", "probability"}, ...]
    highest first (top_k of them)}, or {"path", "error"} for a file that is not a readable
    image."""
    records, batch, where = [], [], []
    classes = model.classifier(labels, templates or model.templates)  # once, for every batch

    def flush():
        if not batch:
            return
        probs = model.probabilities(torch.stack(batch), classes)
        top = probs.topk(min(top_k, len(labels)), dim=1)
        for i, values, indices in zip(
            where, top.values.tolist(), top.indices.tolist(), strict=True
        ):
            records[i]["predictions"] = [
                {"label": labels[j], "probability": p} for p, j in zip(values, indices, strict=True)
            ]
        batch.clear()
        where.clear()

    for f in files:
        records.append({"path": str(f)})
        try:
            batch.append(model.preprocess(f))
        except Exception as exc:  # PIL raises many types for a bad file
            records[-1]["error"] = f"not a readable image ({type(exc).__name__}: {exc})"
            continue
        where.append(len(records) - 1)
        if len(batch) == batch_size:
            flush()
    flush()
    return records
