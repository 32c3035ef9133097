"""Zero-shot classification of a user's images by a user's labels with a trained checkpoint:

    model, preprocess, tokenizer = spikeclip.load("spikeclip_out/demo/checkpoint")
    probs = model.classify([preprocess("cat.png")], ["cat", "dog"])    # [1, 2], rows sum to 1

and the `spikeclip classify` command on files and folders.
"""

from __future__ import annotations

import sys

import torch


def load(path, device: str = "cpu", backend: str = "auto"):
    """(model, preprocess, tokenizer) of a SpikeCLIP checkpoint directory (an SNN or its ANN
    counterpart), as open_clip.create_model_and_transforms returns them: the model in eval
    mode on `device`, with its trained logit scale and tokenizer restored; preprocess maps an
    image (file, PIL image, array, tensor) to the `[3, S, S]` tensor the model takes."""
    from spikeclip.models import SpikeCLIP

    model = SpikeCLIP.load(path, backend=backend, map_location=device).eval()
    return model, model.preprocess, model.tokenizer


def parse_labels(text: str) -> list[str]:
    labels = [n.strip() for n in text.split(",") if n.strip()]
    if not labels:
        raise ValueError('--labels: no labels (give them comma-separated: "cat,dog,car")')
    if len(set(labels)) != len(labels):
        raise ValueError(f"--labels: a label is given twice ({', '.join(labels)})")
    return labels


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


def table(records) -> str:
    lines = []
    for r in records:
        lines.append(r["path"])
        if "error" in r:
            lines.append(f"  error: {r['error']}")
            continue
        width = max(len(p["label"]) for p in r["predictions"])
        for p in r["predictions"]:
            lines.append(f"  {p['label']:<{width}}  {100 * p['probability']:6.2f}%")
    return "\n".join(lines)


def add_classify_command(sub) -> None:
    c = sub.add_parser(
        "classify",
        help="zero-shot: the best of your labels for each of your images (files or folders)",
    )
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (recursive)")
    c.add_argument("--checkpoint", required=True, help="a checkpoint directory (SNN or ANN)")
    c.add_argument("--labels", required=True, help='candidate labels, "cat,dog,car"')
    c.add_argument(
        "--templates",
        action="append",
        help="a prompt template with {} for the label; repeat for several (default: those of "
        "training, saved in the checkpoint)",
    )
    c.add_argument("--top-k", type=int, default=3, help="predictions shown per image")
    c.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    c.add_argument("--batch", type=int, default=64, help="images per forward pass")
    c.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda if any)")
    c.add_argument("--backend", default="auto", help="kernel backend")


def run_classify(args) -> int:
    import json

    from spikeclip.preprocess import image_files

    if args.top_k < 1 or args.batch < 1:
        raise SystemExit("--top-k and --batch must be positive")
    try:
        labels = parse_labels(args.labels)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    for t in args.templates or []:
        if "{}" not in t:
            raise SystemExit(f"--templates: {t!r} has no {{}} for the label")
    files = image_files(args.paths)
    model, _, _ = load(args.checkpoint, device=args.device, backend=args.backend)
    if model.tokenizer is None:
        raise SystemExit(f"{args.checkpoint}: the checkpoint has no tokenizer to read labels with")
    records = classify_files(model, files, labels, args.templates, args.top_k, args.batch)
    print(json.dumps(records, indent=1) if args.json else table(records))
    failed = [r["path"] for r in records if "error" in r]
    if failed:
        print(f"spikeclip classify: {len(failed)} of {len(records)} files are not readable "
              f"images (first: {failed[0]})", file=sys.stderr)  # fmt: skip
        return 1
    return 0
