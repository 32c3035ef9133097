"""`spikeclip classify` against `spikeclip eval` on the same Fashion-MNIST test images, written
as PNG files: the accuracy of each, then the probabilities with labels the model never saw
(synonyms of the class names).

    python benchmarks/classify_check.py --checkpoint spikeclip_out/demo/checkpoint [--n 50] \
        [--json benchmarks/results/classify_demo_<cpu>_cpu_2core.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from spikeclip.bench.machine import cpu_name

SYNONYMS = ["tee", "pants", "sweater", "gown", "jacket", "flip-flop", "blouse", "trainer",
            "purse", "boot"]  # fmt: skip


def spikeclip(*args) -> str:
    return subprocess.run([sys.executable, "-m", "spikeclip", *args], check=True,
                          capture_output=True, text=True).stdout  # fmt: skip


def main():
    from PIL import Image

    from spikeclip.data import load_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--json", help="also write the figures to this results file")
    args = p.parse_args()
    recipe = json.loads((Path(args.checkpoint) / "recipe.json").read_text())
    test = load_dataset("fashion-mnist", "test").subset(args.n, recipe.get("seed", 0))
    names = list(test.class_names)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(len(test)):
            path = Path(tmp) / f"{i:05d}.png"
            Image.fromarray(test.images[i].numpy()).save(path)
            files.append((path, int(test.labels[i])))

        def classify(labels):
            out = spikeclip("classify", "--checkpoint", args.checkpoint, "--labels",
                            ",".join(labels), "--json", "--top-k", "10", tmp)  # fmt: skip
            return json.loads(out)

        records = classify(names)
        hits = sum(r["predictions"][0]["label"] == names[label]
                   for r, (_, label) in zip(records, files, strict=True))  # fmt: skip
        out = Path(tmp) / "eval"
        spikeclip("eval", "--checkpoint", args.checkpoint, "--test-images", str(args.n),
                  "--no-progress", "--out", str(out))  # fmt: skip
        evaluated = json.loads((out / "eval.json").read_text())
        synonyms = classify(SYNONYMS)
    syn_hits = sum(r["predictions"][0]["label"] == SYNONYMS[label]
                   for r, (_, label) in zip(synonyms, files, strict=True))  # fmt: skip
    top = [r["predictions"][0]["probability"] for r in synonyms]
    sums = [sum(p["probability"] for p in r["predictions"]) for r in synonyms]
    print(f"checkpoint {args.checkpoint}, {len(files)} Fashion-MNIST test images as PNG")
    print(f"spikeclip classify top-1: {100 * hits / len(files):.2f}%")
    print(f"spikeclip eval top-1 on the same images: {100 * evaluated['top1']:.2f}%")
    syn_acc = 100 * syn_hits / len(files)
    median = sorted(top)[len(top) // 2]
    off = max(abs(s - 1) for s in sums)
    print(f"classify with synonyms ({', '.join(SYNONYMS)}): top-1 {syn_acc:.2f}%, top "
          f"probability median {median:.3f} (min {min(top):.3f}, max {max(top):.3f}), "
          f"probabilities sum to 1 within {off:.1e}")  # fmt: skip
    print("first image, synonyms:", json.dumps(synonyms[0]["predictions"][:3]))
    if args.json:
        result = {
            "command": "python " + " ".join(sys.argv),
            "date": datetime.date.today().isoformat(),
            "cpu": cpu_name(),
            "checkpoint": args.checkpoint,
            "images": len(files),
            "classify_top1": hits / len(files),
            "eval_top1": evaluated["top1"],
            "synonyms": SYNONYMS,
            "synonyms_top1": syn_hits / len(files),
            "synonyms_top_probability": {"median": median, "min": min(top), "max": max(top)},
            "probability_sum_off_by": off,
        }
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
