"""Peak memory and speed of the streamed stages against the corpus's size, and against the
in-memory path, on Fashion-MNIST stored as a real corpus holds images (224 px JPEG files).

    python benchmarks/corpus_scale.py --images 6000 60000 --work /tmp/corpus --json out.json

For each size N: the first N training images upscaled to 224 px (bilinear) and written as JPEG
files in class folders; `spikeclip shards` of that folder; `spikeclip features` (offline LiT
teacher, at its own 64 px, from the 224 px originals); `spikeclip align` (tiny config, image
alignment only, one epoch); and beside them the in-memory path (`spikeclip train --stages image`
on the same N images held as arrays). Each command runs in its own process under
/usr/bin/time: its peak RSS and wall time are what is reported, with the image stage's
images/s from its summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def export_jpeg_folder(n: int, size: int, out: Path) -> None:
    import numpy as np
    from PIL import Image

    from spikeclip.data import load_dataset

    ds = load_dataset("fashion-mnist", "train")
    if (out / ".done").is_file():
        return
    for name in ds.class_names:
        (out / name.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.fromarray(ds.images[i].numpy()).resize((size, size), Image.BILINEAR)
        name = ds.class_names[int(ds.labels[i])].replace(" ", "_")
        image.save(out / name / f"{i:06d}.jpg", quality=90)
    (out / ".done").write_text(str(np.int64(n)))


def measured(cmd: list[str], log: Path) -> dict:
    """Runs cmd under /usr/bin/time -v; returns its peak RSS (MiB) and wall seconds."""
    started = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")
    rss_kb = next(
        int(line.split(":")[1]) for line in text.splitlines() if "Maximum resident" in line
    )
    return {"peak_rss_MiB": rss_kb / 1024, "seconds": time.perf_counter() - started}


def image_rate(run: Path, stage: str = "image-alignment") -> float:
    done = json.loads((run / "stages" / stage / "done.json").read_text())
    steps, seconds, batch = done["steps"], done["seconds"], done["config"]["batch_size"]
    return steps * batch / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[6000, 60000])
    p.add_argument("--work", default="/tmp/spikeclip-corpus")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="alternating align / in-memory runs")
    p.add_argument(
        "--source", choices=["jpeg224", "dataset"], default="jpeg224",
        help="jpeg224: a folder of 224 px JPEG files; dataset: the dataset's own 28 px images "
        "(shards of PNG), for the speed comparison at equal decoding work",
    )  # fmt: skip
    p.add_argument("--json")
    args = p.parse_args()
    work = Path(args.work)
    spikeclip = [sys.executable, "-m", "spikeclip"]
    env_note = f"threads={os.cpu_count()}"
    rows = []
    for n in args.images:
        d = work / f"{args.source}-n{n}"
        d.mkdir(parents=True, exist_ok=True)
        row = {"images": n, "machine": env_note, "source": args.source}
        if not (d / "shards" / "meta.json").is_file():
            if args.source == "jpeg224":
                export_jpeg_folder(n, 224, d / "jpeg")
                source = ["--dataset", "folder", "--data-dir", str(d / "jpeg"), "--split", "all"]
            else:
                source = ["--dataset", "fashion-mnist", "--split", "train", "--limit", str(n)]
            row["shards"] = measured(
                [*spikeclip, "shards", *source, "--out", str(d / "shards"), "--no-progress"],
                d / "shards.log",
            )
        shutil.rmtree(d / "features", ignore_errors=True)
        row["features"] = measured(
            [*spikeclip, "features", "--data", str(d / "shards"), "--teacher", "lit", "--out",
             str(d / "features"), "--no-progress"],
            d / "features.log",
        )  # fmt: skip
        # alignment, streamed and in memory, in alternating rounds (times here wander)
        for r in range(args.rounds):
            align_run = d / f"align-{r}"
            shutil.rmtree(align_run, ignore_errors=True)
            row.setdefault("align", []).append(measured(
                [*spikeclip, "align", "--data", str(d / "shards"), "--features",
                 str(d / "features"), "--config", "tiny", "--epochs", "1", "--text-epochs", "0",
                 "--batch", str(args.batch), "--workers", str(args.workers), "--out",
                 str(align_run), "--no-progress"],
                d / "align.log",
            ))  # fmt: skip
            row["align"][-1]["images_per_s"] = image_rate(align_run)
            memory_run = d / "in-memory"
            row.setdefault("in_memory", []).append(measured(
                [*spikeclip, "train", "--dataset", "fashion-mnist", "--config", "tiny",
                 "--train-images", str(n), "--test-images", "1000", "--stages", "image",
                 "--image-epochs", "1", "--finetune-epochs", "0", "--batch", str(args.batch),
                 "--no-ann", "--out", str(memory_run), "--no-progress", "--overwrite",
                 "--cache-dir", str(d / "cache")],
                d / "in-memory.log",
            ))  # fmt: skip
            row["in_memory"][-1]["images_per_s"] = image_rate(memory_run)
        for part in ("align", "in_memory"):
            rates = sorted(m["images_per_s"] for m in row[part])
            row[f"{part}_median_images_per_s"] = rates[len(rates) // 2]
            row[f"{part}_max_peak_rss_MiB"] = max(m["peak_rss_MiB"] for m in row[part])
        row["streamed_over_in_memory_speed"] = (
            row["align_median_images_per_s"] / row["in_memory_median_images_per_s"]
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
