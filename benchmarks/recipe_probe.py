"""Probe one image-side change of the SpikeCLIP recipe at small scale, cheaply.

Reuses a finished run's teacher and trained text encoder (`--run DIR`, e.g. a `spikeclip train`
output), trains a fresh image encoder (image alignment + dual-loss fine-tuning) with the given
model-config and recipe overrides on a seeded subset of the training split, and prints one JSON
line with the zero-shot top-1 on the full test split. Compare variants with each other (and the
ANN counterpart, `--model '{"image_neuron": "relu"}'`), not with full runs.

    python benchmarks/recipe_probe.py --run /tmp/long --name ft3e3 --recipe '{"finetune_lr": 3e-3}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from spikeclip.data import load_dataset
from spikeclip.models import SpikeCLIP
from spikeclip.models.image_encoder import ImageEncoder
from spikeclip.models.spikeclip_model import set_memory
from spikeclip.teachers import HFTokenizer, load_teacher
from spikeclip.train.config import RecipeConfig
from spikeclip.train.evaluate import embed_images, top1
from spikeclip.train.loop import RunContext
from spikeclip.train.recipe import teacher_targets, train_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished run directory (teacher/, checkpoint/)")
    p.add_argument("--name", required=True)
    p.add_argument("--model", default="{}", help="SpikeCLIPConfig overrides (JSON), image side")
    p.add_argument("--recipe", default="{}", help="RecipeConfig overrides (JSON)")
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=2, help="image-alignment and fine-tuning epochs")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default="probe_out")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = RecipeConfig(
        train_images=args.train_images,
        image_epochs=args.epochs,
        finetune_epochs=args.epochs,
        progress=False,
        out=str(Path(args.out) / args.name),
        **json.loads(args.recipe),
    )
    torch.manual_seed(cfg.seed)
    train = load_dataset(cfg.dataset, "train", cfg.data_dir).subset(cfg.train_images, cfg.seed)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir)
    teacher = load_teacher(run / "teacher")
    temb, tlogits = teacher_targets(teacher, train, cfg.cache_dir)
    model = SpikeCLIP.load(run / "checkpoint")
    model.tokenizer = HFTokenizer(teacher.tokenizer, model.config.context_length)
    torch.manual_seed(cfg.seed)
    model.image_encoder = ImageEncoder(model.config.replace(**json.loads(args.model)))
    set_memory(model, cfg.memory)
    ctx = RunContext(Path(cfg.out), seed=cfg.seed, progress=False)
    start = time.perf_counter()
    scale = cfg.logit_scale or teacher.logit_scale
    summaries = train_image(cfg, model, "", train, temb, tlogits, scale, ctx)
    seconds = time.perf_counter() - start
    model.eval()
    emb = embed_images(model.encode_image, test, progress=False)
    with torch.no_grad():
        acc = top1(emb, model.classifier(test.class_names, test.templates), test.labels)
    record = {
        "name": args.name,
        "model": json.loads(args.model),
        "recipe": json.loads(args.recipe),
        "acc": round(acc, 4),
        "seconds": round(seconds),
        "final_losses": [round(s["final_loss"], 4) for s in summaries],
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
