"""`spikeclip classify`: the best of the user's labels for each of the user's images (files
or folders), as a table or JSON, through spikeclip.inference."""

from __future__ import annotations

import json
import sys


def parse_labels(text: str) -> list[str]:
    labels = [n.strip() for n in text.split(",") if n.strip()]
    if not labels:
        raise ValueError('--labels: no labels (give them comma-separated: "cat,dog,car")')
    if len(set(labels)) != len(labels):
        raise ValueError(f"--labels: a label is given twice ({', '.join(labels)})")
    return labels


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


def add_classify_args(c) -> None:
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
    from spikeclip.inference import classify_files, load  # torch: after the arguments are read
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
