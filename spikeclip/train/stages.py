"""The recipe as separate stages over shard directories (spikeclip.shards), each resumable and
distributed with torchrun, for corpora that do not fit in memory:

    align     text + image alignment to the teacher's features (no labels) -> RUN/checkpoint
    finetune  dual-loss fine-tuning of an aligned checkpoint on a labelled set -> RUN2/checkpoint
    evaluate  zero-shot top-1, top-5 and per-class accuracy of a checkpoint on any labelled set

Checkpoints are the recipe's (SpikeCLIP.save + tokenizer + recipe.json), with the teacher in
RUN/teacher, so `spikeclip eval`, `energy` and the next stage load them alike.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spikeclip.checkpoint import CheckpointError, atomic_write_json, load_json
from spikeclip.data import load_dataset
from spikeclip.models import SpikeCLIP
from spikeclip.models.spikeclip_model import TOKENIZER_DIR, set_memory
from spikeclip.shards import read_meta, templates_of
from spikeclip.streaming import ShardStream, StreamBatches
from spikeclip.teachers import load_teacher
from spikeclip.train import distributed
from spikeclip.train.config import RecipeConfig
from spikeclip.train.evaluate import clip_benchmark_result, retrieval_recalls
from spikeclip.train.loop import RunContext, run_stage
from spikeclip.train.losses import alignment_loss, cosine_logits
from spikeclip.train.recipe import (
    RECIPE_JSON,
    build_student,
    distillation_targets,
    finetune_loss,
    firing_penalty,
    run_started,
    save_student,
    stage_config,
    teacher_targets,
    train_text,
    with_firing_term,
)
from spikeclip.train.shard_features import FeatureStore

STAGE_JSON = "stage.json"
TEACHER_DIR = "teacher"


def prepare_run(out: Path, settings: dict, resume: bool, main: bool) -> None:
    """out/stage.json records a stage's settings; a second start needs --resume (same settings)."""
    saved = out / STAGE_JSON
    if main and saved.is_file() and not run_started(out):
        saved.unlink()  # a run that failed before its first checkpoint: nothing to keep
    if main and saved.is_file():
        if not resume:
            raise FileExistsError(f"{out} already holds a run: pass --resume, or another --out")
        old = load_json(saved)
        keep = {"resume", "progress", "device", "workers"}
        diff = {
            k: (old.get(k), v) for k, v in settings.items() if k not in keep and old.get(k) != v
        }
        if diff:
            raise ValueError(f"--resume: {out} was started with other settings: {diff}")
    if main:
        atomic_write_json(saved, settings)


def _context(cfg: RecipeConfig, out: Path):
    dist, device = distributed.init(cfg.device)
    ctx = RunContext(
        out, device=device, seed=cfg.seed, amp=cfg.amp, progress=cfg.progress, dist=dist,
        stop_after_steps=cfg.stop_after_steps,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    return ctx


def _stream_batches(data, features, model_config, stage, cfg, ctx, workers, shuffle_buffer):
    stream = ShardStream(
        data, image_size=model_config.image_size, antialias=model_config.resize_antialias,
        seed=cfg.seed, stage=stage, features=features,
        shuffle_buffer=shuffle_buffer,
    )  # fmt: skip
    return StreamBatches(stream, cfg.batch_size, ctx.dist, workers)


def align(
    cfg: RecipeConfig, data, features, *, workers: int = 0, shuffle_buffer: int = 1000
) -> dict:
    """Text alignment on the corpus's class names (and the broad vocabulary), then image
    alignment on the streamed corpus against its teacher features. No label is read."""
    out = Path(cfg.out)
    meta = read_meta(data)
    cfg = replace(
        cfg, dataset=meta["name"]
    )  # the vocabulary holds out this corpus's "replace" names
    store = FeatureStore(features, meta)
    teacher = store.teacher()
    settings = {**cfg.to_dict(), "data": str(data), "features": str(features), "stage": "align"}
    ctx = _context(cfg, out)
    prepare_run(out, settings, cfg.resume, ctx.dist.main)
    distributed.barrier(ctx.dist)
    model = build_student(cfg, teacher).to(ctx.device)

    class Names:  # what train_text reads of a dataset
        class_names = meta["class_names"]
        templates = templates_of(meta)

    summaries = {}
    if cfg.text_epochs and meta["class_names"]:
        summaries["text"] = train_text(cfg, model, teacher, Names, ctx)
    enc = model.image_encoder
    batches = _stream_batches(
        data, store, model.config, "image-alignment", cfg, ctx, workers, shuffle_buffer
    )

    def step(encoder, batch):
        with torch.no_grad():  # the teacher stays on the CPU (its head is small or none)
            target = F.normalize(teacher.image_head(batch["target"]), dim=-1).to(ctx.device)
        return with_firing_term(alignment_loss(encoder(batch["image"].to(ctx.device)), target),
                                penalty)  # fmt: skip

    stage = stage_config(
        cfg, "image-alignment", cfg.image_epochs, cfg.batch_size, cfg.lr, cfg.lr_final
    )
    with firing_penalty(cfg, enc, stage="alignment") as penalty:
        summaries["image"] = run_stage(stage, model, enc, batches, step, ctx)
    if ctx.dist.main:
        teacher.save(out / TEACHER_DIR)
        save_student(
            model,
            teacher,
            out / "checkpoint",
            replace(cfg, teacher=str(out / TEACHER_DIR)),
            "spikeclip",
            Names.class_names,
            Names.templates,
        )
        atomic_write_json(out / "results.json", {"stages": summaries, "data": str(data)})
    distributed.barrier(ctx.dist)
    distributed.shutdown(ctx.dist)
    return summaries


def load_trained(checkpoint, device="cpu", with_teacher: bool = True):
    """(SpikeCLIP with its tokenizer, its recipe.json, its teacher or None) of a recipe
    checkpoint; a directory that lacks a part says which."""
    path = Path(checkpoint)
    for part in (RECIPE_JSON, TOKENIZER_DIR):
        if not (path / part).exists():
            raise CheckpointError(
                f"{path}: no {part}: not a checkpoint written by the recipe (spikeclip train / "
                "align / finetune write model.safetensors, config.json, recipe.json, tokenizer/)"
            )
    recipe = load_json(path / RECIPE_JSON)
    model = SpikeCLIP.load(path, map_location=device)  # its tokenizer too
    teacher = None
    if with_teacher:
        teacher_dir = path.parent / TEACHER_DIR
        teacher = load_teacher(teacher_dir if teacher_dir.is_dir() else recipe["teacher"])
    return model, recipe, teacher


def finetune(
    cfg: RecipeConfig,
    init,
    *,
    dataset: str | None = None,
    data=None,
    features=None,
    workers: int = 0,
    shuffle_buffer: int = 1000,
) -> dict:
    """Dual-loss fine-tuning (text side frozen) of the checkpoint `init` on a labelled set: a
    dataset of spikeclip.data (`dataset`, its train split) or shards with their features."""
    if (dataset is None) == (data is None):
        raise ValueError("fine-tuning needs exactly one of --dataset and --data")
    if cfg.distill_from == "ann":
        raise ValueError("fine-tuning: --distill-from ann is the recipe's own ANN twin (spikeclip "
                         "train); here name a checkpoint, e.g. a run's ann_checkpoint")  # fmt: skip
    if data is not None and cfg.distill_from:
        raise ValueError("fine-tuning: --distill-from needs --dataset (shards carry the "
                         "teacher's features, not the checkpoint's)")  # fmt: skip
    out = Path(cfg.out)
    model, _, teacher = load_trained(init)
    settings = {**cfg.to_dict(), "init": str(init), "dataset": dataset, "data": str(data),
                "features": str(features), "stage": "finetune"}  # fmt: skip
    ctx = _context(cfg, out)
    prepare_run(out, settings, cfg.resume, ctx.dist.main)
    distributed.barrier(ctx.dist)
    model = model.to(ctx.device)
    set_memory(model, cfg.memory)
    dev = ctx.device
    scale = cfg.logit_scale or teacher.logit_scale
    if data is not None:
        meta = read_meta(data)
        if not meta["has_labels"]:
            raise ValueError(f"{data}: fine-tuning needs labelled shards; these have no labels")
        names, templates = meta["class_names"], templates_of(meta)
        store = FeatureStore(features, meta)
        batches = _stream_batches(
            data, store, model.config, "finetune", cfg, ctx, workers, shuffle_buffer
        )
    else:
        train = load_dataset(dataset, "train", cfg.data_dir).subset(cfg.train_images, cfg.seed)
        names, templates = train.class_names, train.templates
        if cfg.distill_from:
            emb, logits = distillation_targets(cfg, train, scale, model.config.embed_dim, ctx)
        else:
            emb, logits = teacher_targets(teacher, train, cfg.cache_dir, ctx.progress)
        batches = len(train)
    teacher_classes = teacher.classifier(names, templates)

    def step(encoder, batch):
        if isinstance(batch, dict):
            images, labels = batch["image"], batch["label"]
            with torch.no_grad():  # on the CPU, as the teacher
                temb = F.normalize(teacher.image_head(batch["target"]), dim=-1)
                tlogits = cosine_logits(temb, teacher_classes, teacher.logit_scale)
        else:
            images, labels = train.batch(batch)
            temb, tlogits = emb[batch], logits[batch]
        features = encoder(images.to(dev))
        return loss(encoder, features, labels.to(dev), temb.to(dev), tlogits.to(dev))

    stage = stage_config(
        cfg, "finetune", cfg.finetune_epochs, cfg.batch_size, cfg.finetune_lr, cfg.finetune_lr_final
    )
    with firing_penalty(cfg, model.image_encoder) as penalty:
        loss = finetune_loss(cfg, model, names, templates, scale, ctx, penalty)
        summary = run_stage(stage, model, model.image_encoder, batches, step, ctx)
    if ctx.dist.main:
        teacher.save(out / TEACHER_DIR)
        cfg_saved = replace(cfg, teacher=str(out / TEACHER_DIR), dataset=dataset or str(data))
        save_student(model, teacher, out / "checkpoint", cfg_saved, "spikeclip", names, templates)
        atomic_write_json(out / "results.json", {"stages": {"finetune": summary}})
    distributed.barrier(ctx.dist)
    distributed.shutdown(ctx.dist)
    return summary


class EvalUsageError(ValueError):
    """A request evaluate cannot serve as given (a usage error, said before any work)."""


@torch.no_grad()
def evaluate(
    checkpoint,
    *,
    dataset: str | None = None,
    split: str = "test",
    data=None,
    data_dir=None,
    class_names=None,
    extra_names=(),
    test_images: int | None = None,
    device="cpu",
    batch_size: int = 256,
    workers: int = 0,
    with_teacher: bool = False,
    progress: bool = False,
) -> dict:
    """Zero-shot accuracy of a checkpoint on any labelled set: `dataset` (a split of a dataset
    of spikeclip.data), `data` (shards), or neither: the test split of the dataset it was
    trained on (its recipe's data_dir and test_images unless given). `extra_names`: distractor
    names among the candidates (no image is theirs). Returns top-1, top-5 and per-class
    accuracy (and the teacher's top-1 with `with_teacher`), with clip_benchmark's fields."""
    model, recipe, teacher = load_trained(checkpoint, device, with_teacher=with_teacher)
    model.eval()
    if dataset is not None and data is not None:
        raise EvalUsageError("evaluation takes one of --dataset and --data, not both")
    if dataset is None and data is None:  # the test split of the training dataset
        dataset, split = recipe["dataset"], "test"
        data_dir = data_dir or recipe.get("data_dir")
        test_images = test_images if test_images is not None else recipe.get("test_images")
    if data is not None:
        if with_teacher:
            raise ValueError("the teacher's accuracy is measured on --dataset (its resolution)")
        c = model.config
        stream = ShardStream(
            data, image_size=c.image_size, antialias=c.resize_antialias, shuffle=False
        )
        if not stream.meta["has_labels"]:
            raise ValueError(f"{data}: evaluation needs labelled shards; these have no labels")
        names, templates = stream.class_names, stream.templates
        batches = ((b["image"], b["label"]) for b in stream.loader(batch_size, workers))
        n_batches = None
    else:
        ds = load_dataset(dataset, split, data_dir).subset(test_images, recipe.get("seed", 0))
        names, templates = ds.class_names, ds.templates
        idx = torch.arange(len(ds))
        batches = (ds.batch(i) for i in idx.split(batch_size))
        n_batches = -(-len(ds) // batch_size)
    if class_names is not None:
        if len(class_names) != len(names):
            raise EvalUsageError(
                f"{len(class_names)} class names given for {len(names)} classes (in label order: "
                f"{', '.join(names)})"
            )
        names = list(class_names)
    extra_names = list(extra_names)
    classes = model.classifier([*names, *extra_names], templates).to(device)
    tclasses = teacher.classifier(names, templates) if with_teacher else None
    k = min(5, len(names) + len(extra_names))
    hits1 = hits5 = teacher_hits = 0
    per_class = torch.zeros(len(names), 2, dtype=torch.int64)  # [correct, total]
    for images, labels in tqdm(batches, total=n_batches, desc="evaluating", disable=not progress):
        logits = cosine_logits(model.encode_image(images.to(device)), classes, 1.0).cpu()
        top = logits.topk(k, dim=1).indices
        hits1 += int((top[:, 0] == labels).sum())
        hits5 += int((top == labels[:, None]).any(1).sum())
        per_class.index_put_((labels, torch.zeros_like(labels)), (top[:, 0] == labels).long(), True)
        per_class.index_put_((labels, torch.ones_like(labels)), torch.ones_like(labels), True)
        if with_teacher:
            temb = F.normalize(teacher.encode_image(images), dim=-1)
            teacher_hits += int((cosine_logits(temb, tclasses, 1.0).argmax(1) == labels).sum())
    n = int(per_class[:, 1].sum())
    if n == 0:
        raise ValueError("no images to evaluate")
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data) if data is not None else f"{dataset}:{split}",
        "images": n,
        "class_names": names,
        "extra_names": extra_names,
        "top1": hits1 / n,
        f"top{k}": hits5 / n,
        "per_class": {
            name: (int(c) / int(t) if t else None)
            for name, (c, t) in zip(names, per_class.tolist(), strict=True)
        },
    }
    if with_teacher:
        result["teacher_top1"] = teacher_hits / n
    recalls = [v for v in result["per_class"].values() if v is not None]
    name = dataset if data is None else f"wds/{Path(data).name}"
    acc5 = result[f"top{k}"] if k >= 5 else math.nan
    result |= clip_benchmark_result(name, str(checkpoint), result["top1"], acc5,
                                    sum(recalls) / len(recalls))  # fmt: skip
    return result


def evaluate_retrieval(
    checkpoint,
    *,
    data,
    device="cpu",
    batch_size: int = 256,
    workers: int = 0,
    ks=(1, 5, 10),
    progress: bool = False,
) -> dict:
    """Image-text retrieval recall@k (retrieval_recalls: clip_benchmark's definitions) of a
    checkpoint on captioned shards (`spikeclip shards --dataset tsv`, or any whose samples
    hold `txt` captions, one per line). Samples of the same image (a TSV line per caption)
    are one image with all their captions; an image without any caption is left out (as in
    clip_benchmark's retrieval sets, every image has captions) and counted."""
    model, _, _ = load_trained(checkpoint, device)
    model.eval()
    c = model.config
    stream = ShardStream(data, image_size=c.image_size, antialias=c.resize_antialias, shuffle=False)
    image_emb, caption_emb, owner, seen = [], [], [], {}
    uncaptioned = 0
    with torch.no_grad():
        for b in tqdm(stream.loader(batch_size, workers), desc="retrieval", disable=not progress):
            fresh, texts = [], []
            for img, caps in zip(b["image"], b.get("captions", [[]] * len(b["image"])),
                                 strict=True):  # fmt: skip
                if not caps:
                    uncaptioned += 1
                    continue
                digest = hashlib.sha256(img.numpy().tobytes()).hexdigest()
                if digest not in seen:
                    seen[digest] = len(seen)
                    fresh.append(img)
                texts += caps
                owner += [seen[digest]] * len(caps)
            if fresh:
                image_emb.append(model.encode_image(torch.stack(fresh).to(device)).float().cpu())
            if texts:
                caption_emb.append(model.encode_text(texts).float().cpu())
    if not caption_emb:
        raise ValueError(f"{data}: retrieval needs captioned shards (txt); these have none")
    images, captions = torch.cat(image_emb), torch.cat(caption_emb)
    metrics = retrieval_recalls(captions @ images.t(), owner, ks)
    return {
        "checkpoint": str(checkpoint), "data": str(data), "images": len(images),
        "captions": len(captions), "samples_without_captions": uncaptioned, **metrics,
        "dataset": f"wds/{Path(data).name}",
        "model": str(checkpoint), "pretrained": None, "task": "zeroshot_retrieval",
        "metrics": metrics, "language": "en",
    }  # fmt: skip


def result_lines(result: dict) -> str:
    k = next(key for key in result if key.startswith("top") and key != "top1")
    lines = [f"top-1 {100 * result['top1']:.2f}%  {k[:3]}-{k[3:]} {100 * result[k]:.2f}%  "
             f"on {result['images']} images of {result['data']}"]  # fmt: skip
    if "teacher_top1" in result:
        lines.append(f"teacher top-1 {100 * result['teacher_top1']:.2f}%")
    width = max(len(n) for n in result["per_class"])
    for name, acc in result["per_class"].items():
        lines.append(f"  {name:<{width}}  {'-' if acc is None else f'{100 * acc:.2f}%'}")
    return "\n".join(lines)
