"""Image-text retrieval on Fashion-MNIST with captions made from the class names.

    python benchmarks/retrieval_fashion_mnist.py --checkpoint spikeclip_out/demo/checkpoint \
        [--per-class 20] [--out benchmarks/results/retrieval_fashion_mnist_cpu_2core.json]

Takes the first `per-class` test images of each class, writes them as PNG files with a TSV of
captions (each image three: the dataset's first three prompt templates filled with its class
name), makes captioned shards of it (`spikeclip shards --dataset tsv`) and runs `spikeclip
eval --task retrieval` on them. Captions name only the class, so every image of a class
matches its captions equally well: text->image recall@k is bounded by about k / per-class,
image->text by whether the image's class comes first; the figures measure the classes, not
the images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from spikeclip.bench.machine import cpu_name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--data-dir", help="Fashion-MNIST's files (default: the Debian package's)")
    p.add_argument("--out", default="benchmarks/results/retrieval_fashion_mnist_cpu_2core.json")
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    from spikeclip.cli import main as cli
    from spikeclip.data import load_dataset

    test = load_dataset("fashion-mnist", "test", args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = []
        for c, name in enumerate(test.class_names):
            idx = torch.nonzero(test.labels == c).flatten()[: args.per_class]
            for i in idx.tolist():
                f = f"img/{i:05d}.png"
                (tmp / "img").mkdir(exist_ok=True)
                Image.fromarray(test.images[i].numpy()).save(tmp / f)
                lines += [f"{f}\t{t.format(name)}" for t in test.templates[:3]]
        (tmp / "captions.tsv").write_text("\n".join(lines) + "\n")
        shards, result = tmp / "shards", tmp / "retrieval.json"
        argv_shards = ["shards", "--dataset", "tsv", "--data-dir", str(tmp / "captions.tsv"),
                       "--out", str(shards), "--no-progress"]  # fmt: skip
        if cli(argv_shards) != 0:
            return 1
        argv_eval = ["eval", "--checkpoint", args.checkpoint, "--task", "retrieval", "--data",
                     str(shards), "--json", str(result), "--no-progress"]  # fmt: skip
        if cli(argv_eval) != 0:
            return 1
        got = json.loads(result.read_text())
    got |= {
        "command": " ".join(["python", *sys.argv]),
        "per_class": args.per_class,
        "captions_per_image": 3,
        "cpu": f"{cpu_name()} ({os.cpu_count()} cores)",
        "data": "fashion-mnist test split, first images of each class",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(got, indent=1) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
