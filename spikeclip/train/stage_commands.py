"""The corpus-scale subcommands of `spikeclip`: shards, features, align, finetune, and eval
(registered in spikeclip/cli.py). Each runs alone or under torchrun (features, align, finetune).

    spikeclip shards --dataset folder --data-dir imagenet/train --split train --out S
    torchrun --nproc_per_node=8 -m spikeclip features --data S --teacher clip:DIR --out FEAT
    torchrun --nproc_per_node=8 -m spikeclip align --data S --features FEAT --config paper --out A
    torchrun --nproc_per_node=8 -m spikeclip finetune --init A/checkpoint --dataset cifar10 --out B
    spikeclip eval --checkpoint B/checkpoint --dataset cifar10
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path


def _positive(kind=int):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _stage_args(p, d, epochs: str) -> None:
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--config", default=d.config, help="tiny or paper (default %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if any)")
    p.add_argument("--backend", default=d.backend, help="kernel backend (default %(default)s)")
    p.add_argument("--memory", default=d.memory, help="plain, lossless or low")
    p.add_argument("--amp", choices=["bf16"], help="autocast the forward passes to bf16")
    p.add_argument("--batch", type=_positive(), default=d.batch_size, help="global batch size")
    p.add_argument("--epochs", type=_positive(), default=getattr(d, epochs))
    p.add_argument("--workers", type=int, default=2, help="loader workers per rank (decoding)")
    p.add_argument("--shuffle-buffer", type=_positive(), default=1000, help="samples per worker")
    p.add_argument("--checkpoint-every", type=_positive(), default=d.checkpoint_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cache-dir", help="teacher feature cache for --dataset")
    p.add_argument("--no-progress", action="store_true")
    add_optimizer_arg(p, d)


def add_optimizer_arg(p, d) -> None:
    from spikeclip.train.config import OPTIMIZER_NAMES

    p.add_argument(
        "--optimizer", default=d.optimizer, choices=OPTIMIZER_NAMES,
        help="adam: Adam (amsgrad, no weight decay, cosine per epoch) as the official code; "
        "adamw: AdamW (amsgrad, --weight-decay, cosine per step); auto: adam for paper, "
        "adamw for tiny",
    )  # fmt: skip


def add_dual_loss_args(p, d) -> None:
    from spikeclip.train.config import DUAL_LOSSES

    p.add_argument(
        "--dual-loss", default=d.dual_loss, choices=DUAL_LOSSES,
        help="official: SpikeCLIP's code (scale 1, summed KL to the teacher's image features on "
        "the SNN's class features); ours: CE + KL to the teacher's logits at its scale; auto: "
        "official for paper, ours for tiny",
    )  # fmt: skip
    p.add_argument(
        "--angle-boundary", type=float, default=d.angle_boundary,
        help="official loss: above 0, a step on CE alone where the CE and KL gradients lie "
        "within this angle (degrees), else no step",
    )  # fmt: skip
    p.add_argument(
        "--firing-weight", type=float, default=d.firing_weight,
        help="weight of fine-tuning's firing-rate term: the SNN's synaptic operations as a "
        "fraction of their ceiling (0: off; docs/recipe.md)",
    )  # fmt: skip
    p.add_argument(
        "--firing-target", type=float, default=d.firing_target,
        help="the term counts only input firing above this rate (0 to 1)",
    )  # fmt: skip
    p.add_argument(
        "--distill-from", default=d.distill_from, metavar="CHECKPOINT",
        help="fine-tuning's KL term learns from this SpikeCLIP checkpoint's logits (e.g. an "
        "earlier run's ann_checkpoint: ANN-to-SNN distillation) instead of the teacher's; "
        "train takes 'ann' too: the run's own ANN twin, trained first",
    )  # fmt: skip


def _defaults():
    from spikeclip.train.config import RecipeConfig  # torch-free (spikeclip.train is lazy)

    return RecipeConfig()


def add_shards_args(s) -> None:
    s.add_argument(
        "--dataset", required=True,
        help="a dataset of spikeclip.data, 'folder' (--data-dir <root>/<class>/<images>) or "
        "'tsv' (--data-dir a file of image_path<TAB>caption lines)",
    )  # fmt: skip
    s.add_argument("--data-dir")
    s.add_argument("--split", default="train", help="train, test (a folder: seeded), or all")
    s.add_argument("--test-fraction", type=float, default=0.1, help="a folder's test share")
    s.add_argument("--seed", type=int, default=0, help="a folder's train/test split")
    s.add_argument("--out", required=True)
    s.add_argument("--shard-size", type=_positive(), default=1000, help="samples per shard")
    s.add_argument("--limit", type=_positive(), help="only the first N samples of the source")
    s.add_argument("--no-progress", action="store_true")


def add_features_args(f) -> None:
    f.add_argument("--data", required=True, help="a shard directory (spikeclip shards)")
    f.add_argument("--teacher", default="lit", help="lit, clip:DIR or a saved teacher directory")
    f.add_argument("--out", required=True)
    f.add_argument("--batch", type=_positive(), default=256)
    f.add_argument("--teacher-steps", type=_positive(), default=_defaults().teacher_steps)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda if any)")
    f.add_argument("--no-progress", action="store_true")


def add_align_args(a) -> None:
    d = _defaults()
    a.add_argument("--data", required=True, help="a shard directory")
    a.add_argument("--features", required=True, help="its teacher features (spikeclip features)")
    a.add_argument("--teacher", help="check that the features are of this teacher")
    a.add_argument("--text-epochs", type=int, default=d.text_epochs)
    a.add_argument("--lr", type=_positive(float), default=d.lr)
    a.add_argument("--text-lr", type=_positive(float), default=d.text_lr)
    _stage_args(a, d, "image_epochs")


def add_finetune_args(t) -> None:
    d = _defaults()
    t.add_argument("--init", required=True, help="an aligned checkpoint (RUN/checkpoint)")
    t.add_argument("--dataset", help="a labelled dataset of spikeclip.data (its train split)")
    t.add_argument("--data-dir")
    t.add_argument("--train-images", type=_positive())
    t.add_argument("--data", help="or labelled shards, with --features")
    t.add_argument("--features")
    t.add_argument("--lr", type=_positive(float), default=d.finetune_lr)
    add_dual_loss_args(t, d)
    _stage_args(t, d, "finetune_epochs")


def add_eval_args(e) -> None:
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--class-names", help='"name1,name2,..." in label order')
    e.add_argument("--extra-names", help="distractor names added to the candidates")
    e.add_argument("--test-images", type=int)
    e.add_argument("--data-dir")
    e.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda if any)")
    e.add_argument("--out", default="spikeclip_out/eval", help="directory for eval.json")
    e.add_argument("--json", help="write the result to this file instead of OUT/eval.json")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument(
        "--dataset", help="evaluate on this dataset of spikeclip.data instead of the training one "
        "(top-1, top-5, per class)",
    )  # fmt: skip
    e.add_argument("--split", default="test", help="with --dataset (default %(default)s)")
    e.add_argument("--data", help="evaluate on labelled shards (spikeclip shards)")
    e.add_argument("--teacher", action="store_true", help="with --dataset: the teacher's top-1 too")
    e.add_argument(
        "--task", default="zeroshot_classification",
        choices=("zeroshot_classification", "retrieval"),
        help="retrieval: image<->text recall@1/5/10 on captioned shards (--data)",
    )  # fmt: skip


def _cfg(args, **extra):
    from spikeclip.train.config import RecipeConfig

    try:
        return _recipe(RecipeConfig, args, **extra)
    except ValueError as exc:  # a bad setting: usage, named before any work
        raise SystemExit(str(exc)) from None


def _recipe(RecipeConfig, args, **extra):
    return RecipeConfig(
        out=args.out, resume=args.resume, config=args.config, device=args.device,
        backend=args.backend, memory=args.memory, amp=args.amp, batch_size=args.batch,
        checkpoint_every=args.checkpoint_every, seed=args.seed, cache_dir=args.cache_dir,
        progress=not args.no_progress, optimizer=args.optimizer,
        dual_loss=getattr(args, "dual_loss", "auto"),
        angle_boundary=getattr(args, "angle_boundary", -90.0),
        firing_weight=getattr(args, "firing_weight", 0.0),
        firing_target=getattr(args, "firing_target", 0.0),
        distill_from=getattr(args, "distill_from", None), **extra,
    )  # fmt: skip


def run_shards(args) -> int:
    from spikeclip.shards import dataset_source, folder_source, tsv_source, write_shards

    if args.dataset in ("folder", "tsv") and not args.data_dir:
        raise SystemExit(f"spikeclip shards: --dataset {args.dataset} needs --data-dir")
    if args.dataset == "folder":
        source = folder_source(args.data_dir, args.split, args.seed, args.test_fraction)
    elif args.dataset == "tsv":
        source = tsv_source(args.data_dir)
    else:
        source = dataset_source(args.dataset, args.split, args.data_dir)
    if args.limit is not None:
        source.samples = itertools.islice(source.samples, args.limit)
    meta = write_shards(source, args.out, args.shard_size, progress=not args.no_progress)
    skipped = f"{len(meta['skipped'])} files skipped" + (
        ": see meta.json" if meta["skipped"] else ""
    )
    print(f"{meta['count']} samples in {len(meta['shards'])} shards under {args.out} ({skipped})")
    return 0


def run_features(args) -> int:
    from spikeclip.train import distributed
    from spikeclip.train.shard_features import compute_features

    dist, device = distributed.init(args.device)
    index = compute_features(
        args.data, args.teacher, args.out, dist=dist, device=device, batch_size=args.batch,
        teacher_steps=args.teacher_steps, seed=args.seed, progress=not args.no_progress,
    )  # fmt: skip
    if index is not None:
        print(f"features of {index['count']} samples ({index['dim']}-d) in {args.out}")
    distributed.shutdown(dist)
    return 0


def run_align(args) -> int:
    from spikeclip.train.stages import align

    if args.teacher is not None:
        from spikeclip.shards import read_meta
        from spikeclip.teachers import load_teacher
        from spikeclip.train.shard_features import FeatureStore

        store = FeatureStore(args.features, read_meta(args.data))
        if load_teacher(args.teacher).backbone_key != store.backbone_key:
            raise SystemExit(f"spikeclip align: {args.features} holds features of another teacher")
    cfg = _cfg(args, image_epochs=args.epochs, text_epochs=args.text_epochs, lr=args.lr,
               text_lr=args.text_lr)  # fmt: skip
    summaries = align(cfg, args.data, args.features, workers=args.workers,
                      shuffle_buffer=args.shuffle_buffer)  # fmt: skip
    print(
        f"aligned: {summaries['image']['steps']} image steps; checkpoint in {args.out}/checkpoint"
    )
    return 0


def run_finetune(args) -> int:
    from spikeclip.train.stages import finetune

    if (args.dataset is None) == (args.data is None):
        raise SystemExit("spikeclip finetune: give --dataset NAME or --data SHARDS (one of them)")
    if args.data is not None and args.features is None:
        raise SystemExit("spikeclip finetune: --data needs --features (spikeclip features)")
    cfg = _cfg(args, finetune_epochs=args.epochs, finetune_lr=args.lr,
               train_images=args.train_images, data_dir=args.data_dir)  # fmt: skip
    summary = finetune(cfg, args.init, dataset=args.dataset, data=args.data,
                       features=args.features, workers=args.workers,
                       shuffle_buffer=args.shuffle_buffer)  # fmt: skip
    print(f"fine-tuned: {summary['steps']} steps; checkpoint in {args.out}/checkpoint")
    return 0


def eval_json_path(args):
    """Where `spikeclip eval` writes its result: --json FILE, else --out DIR / eval.json
    (never into the checkpoint, which may be read-only or shared)."""
    return Path(args.json) if args.json else Path(args.out) / "eval.json"


def run_classification_eval(args) -> int:
    from spikeclip.checkpoint import atomic_write_json
    from spikeclip.train.stages import EvalUsageError, evaluate, result_lines

    def names(text):
        if text is None:
            return None
        listed = [n.strip() for n in text.split(",") if n.strip()]
        if not listed:
            raise SystemExit("spikeclip eval: empty class-name list")
        return listed

    try:
        result = evaluate(
            args.checkpoint, dataset=args.dataset, split=args.split, data=args.data,
            data_dir=args.data_dir, class_names=names(args.class_names),
            extra_names=names(args.extra_names) or (), test_images=args.test_images,
            device=args.device, with_teacher=args.teacher and args.dataset is not None,
            progress=not args.no_progress,
        )  # fmt: skip
    except EvalUsageError as exc:
        raise SystemExit(str(exc)) from None
    print(result_lines(result))
    out = eval_json_path(args)
    atomic_write_json(out, result)
    print(f"written to {out}")
    return 0


def run_retrieval_eval(args) -> int:
    from spikeclip.checkpoint import atomic_write_json
    from spikeclip.train.stages import evaluate_retrieval

    if args.data is None or args.dataset is not None:
        raise SystemExit("spikeclip eval --task retrieval: give captioned shards with --data")
    result = evaluate_retrieval(args.checkpoint, data=args.data, device=args.device,
                                progress=not args.no_progress)  # fmt: skip
    print(f"{result['images']} images, {result['captions']} captions of {result['data']}")
    for k in (1, 5, 10):
        print(f"  recall@{k:<2d}  image->text {100 * result[f'text_retrieval_recall@{k}']:6.2f}%"
              f"  text->image {100 * result[f'image_retrieval_recall@{k}']:6.2f}%")  # fmt: skip
    out = eval_json_path(args)
    atomic_write_json(out, result)
    print(f"written to {out}")
    return 0


def run_eval(args) -> int:
    """`spikeclip eval`: zero-shot classification, or retrieval with --task retrieval."""
    return run_retrieval_eval(args) if args.task == "retrieval" else run_classification_eval(args)
