"""The recipe's subcommands of `spikeclip`: demo, train, energy (registered in spikeclip/cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEMO_OUT = "spikeclip_out/demo"
# The demo's data and stages: Fashion-MNIST, the offline teacher, the tiny config, sized for 15
# minutes on 2 cores. The energy frontier's points change settings over this base
# (benchmarks/energy_frontier.py).
DEMO_BASE = dict(
    dataset="fashion-mnist",
    config="tiny",
    teacher="lit",
    train_images=6000,
    text_epochs=20,
    image_epochs=4,
    finetune_epochs=6,
)
# The demo: the base with the frontier's setting that reaches an ANN's accuracy at a tenth of
# its energy (docs/recipe.md, "The energy frontier": within 1.5 points of the ANN twin at 0.09
# of its energy on two seeds of three): the SNN starts from its ANN twin's trained weights
# (trained first) and distils from it in fine-tuning, runs 3 time steps, and fine-tuning's
# firing term has weight 0.6.
DEMO = dict(
    DEMO_BASE,
    init_from="ann",
    distill_from="ann",
    firing_weight=0.6,
    model_options={"time_steps": 3},
)
STAGES = ("text", "image", "finetune")


def add_recipe_args(p: argparse.ArgumentParser, demo: bool) -> None:
    from spikeclip.train.config import ANN_KINDS, RecipeConfig

    d = RecipeConfig(**(DEMO if demo else {}))
    p.add_argument(
        "--out",
        default=DEMO_OUT if demo else "spikeclip_out/run",
        help="run directory (checkpoints, metrics, plots, results.json)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (cuda if any)")
    p.add_argument("--backend", default=d.backend, help="kernel backend (auto, torch, cpp, ...)")
    p.add_argument("--data-dir", help="where the dataset's files are (default: found)")
    p.add_argument("--cache-dir", help="teacher feature cache ($SPIKECLIP_CACHE, ~/.cache)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if demo:
        return
    p.add_argument("--overwrite", action="store_true", help="start again in an existing --out")
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--config", default=d.config, help="tiny or paper")
    p.add_argument(
        "--model-option", action="append", default=[], metavar="FIELD=VALUE",
        help="a SpikeCLIPConfig field over the config's, e.g. learnable_tau=true, v_th=0.5, "
        'tokenizer_pool=2x2 (VALUE read as JSON, else a string); repeatable',
    )  # fmt: skip
    p.add_argument("--teacher", default=d.teacher, help="lit, clip:DIR, or a saved teacher dir")
    p.add_argument(
        "--teacher-finetune-epochs", type=int, default=d.teacher_finetune_epochs,
        help="CLIP teachers: epochs of the official task fine-tuning of the teacher's image "
        "side (CE on the SNN text encoder's class features) after text alignment; 0: off",
    )  # fmt: skip
    p.add_argument("--teacher-finetune-lr", type=float, default=d.teacher_finetune_lr,
                   help="its learning rate (Adam, amsgrad, cosine per epoch)")  # fmt: skip
    p.add_argument("--train-images", type=int, help="a seeded subset of the training split")
    p.add_argument("--test-images", type=int, help="a seeded subset of the test split")
    p.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"stages to train, comma-separated, from {','.join(STAGES)}",
    )
    p.add_argument("--epochs", type=int, help="image alignment and fine-tuning epochs")
    p.add_argument("--text-epochs", type=int, default=d.text_epochs)
    p.add_argument("--image-epochs", type=int, default=d.image_epochs)
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--batch", type=int, default=d.batch_size, help="global batch size")
    p.add_argument("--text-batch", type=int, default=d.text_batch_size)
    p.add_argument("--vocabulary", type=int, help="broad-vocabulary names for text alignment")
    p.add_argument("--lr", type=float, default=d.lr, help="image alignment learning rate")
    p.add_argument("--text-lr", type=float, default=d.text_lr)
    p.add_argument("--finetune-lr", type=float, default=d.finetune_lr)
    p.add_argument("--ce-weight", type=float, default=d.ce_weight)
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--kd-temperature", type=float, default=d.kd_temperature)
    p.add_argument(
        "--init-from", default=d.init_from, metavar="ann|CHECKPOINT",
        help="start the SNN's image encoder from the run's ANN twin ('ann': trained first) or "
        "a SpikeCLIP checkpoint's, e.g. an earlier run's ann_checkpoint (hybrid training)",
    )  # fmt: skip
    p.add_argument("--memory", default=d.memory, help="plain, lossless or low")
    p.add_argument("--amp", choices=["bf16"], help="autocast the forward passes to bf16")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="adamw only")
    from spikeclip.train.stage_commands import add_dual_loss_args, add_optimizer_arg

    add_dual_loss_args(p, d)
    p.add_argument(
        "--firing-in-alignment", action="store_true",
        help="image alignment adds the firing-rate term too (needs --firing-weight)",
    )  # fmt: skip
    add_optimizer_arg(p, d)
    p.add_argument(
        "--ann", default=d.ann_kind, choices=ANN_KINDS,
        help="the ANN counterpart: relu-twin (our encoder with ReLU, one step) or official "
        "(the official code's: softmax attention, LayerNorm, QuickGELU)",
    )  # fmt: skip
    p.add_argument("--no-ann", action="store_true", help="skip the ANN counterpart")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun (CUDA)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)


def recipe_from_args(args, demo: bool):
    from spikeclip.train.config import RecipeConfig

    common = dict(
        out=args.out, resume=args.resume, device=args.device, backend=args.backend,
        data_dir=args.data_dir, cache_dir=args.cache_dir, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    if demo:
        return RecipeConfig(**DEMO, **common, overwrite=not args.resume)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"spikeclip train: unknown stages {sorted(unknown)}; choose from {STAGES}")
    image_epochs = args.epochs if args.epochs is not None else args.image_epochs
    finetune_epochs = args.epochs if args.epochs is not None else args.finetune_epochs
    return RecipeConfig(
        **common,
        overwrite=args.overwrite,
        dataset=args.dataset,
        config=args.config,
        model_options=model_options(args.model_option),
        teacher=args.teacher,
        teacher_finetune_epochs=args.teacher_finetune_epochs,
        teacher_finetune_lr=args.teacher_finetune_lr,
        train_images=args.train_images,
        test_images=args.test_images,
        text_epochs=args.text_epochs if "text" in stages else 0,
        image_epochs=image_epochs if "image" in stages else 0,
        finetune_epochs=finetune_epochs if "finetune" in stages else 0,
        batch_size=args.batch,
        text_batch_size=args.text_batch,
        vocabulary=args.vocabulary,
        lr=args.lr,
        text_lr=args.text_lr,
        finetune_lr=args.finetune_lr,
        ce_weight=args.ce_weight,
        kl_weight=args.kl_weight,
        kd_temperature=args.kd_temperature,
        distill_from=args.distill_from,
        init_from=args.init_from,
        memory=args.memory,
        amp=args.amp,
        ann=not args.no_ann,
        ann_kind=args.ann,
        dual_loss=args.dual_loss,
        angle_boundary=args.angle_boundary,
        firing_weight=args.firing_weight,
        firing_target=args.firing_target,
        firing_in_alignment=args.firing_in_alignment,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        sync_bn=args.sync_bn,
        checkpoint_every=args.checkpoint_every,
    )


def model_options(pairs: list[str]) -> dict:
    """["learnable_tau=true", "tokenizer_pool=2x2"] -> {"learnable_tau": True, ...}."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"spikeclip train: --model-option wants FIELD=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def results_table(r: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}%"

    rows = [
        ("teacher top-1", pct(r["teacher_acc"])),
        ("SpikeCLIP (SNN) top-1", pct(r["spikeclip_acc"])),
        ("ANN counterpart top-1", pct(r["ann_acc"])),
        ("replace: teacher / SpikeCLIP",
         f"{pct(r['teacher_replace_acc'])} / {pct(r['replace_acc'])}"),
        ("expand: teacher / SpikeCLIP",
         f"{pct(r['teacher_expand_acc'])} / {pct(r['expand_acc'])}"),
        ("energy per image: SNN / ANN",
         f"{r['energy_snn_mJ']:.4f} mJ / "
         + ("-" if r["energy_ann_mJ"] is None else f"{r['energy_ann_mJ']:.4f} mJ")),
        ("SNN mean firing rate", pct(r["mean_firing_rate"])),
        ("kernel backend", r["backend"]),
        ("test images", str(r["test_images"])),
        ("wall time", f"{r['seconds']:.0f} s"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run_train(args, demo: bool) -> int:
    from spikeclip.models import SpikeCLIPConfig
    from spikeclip.train.recipe import run_recipe

    try:
        cfg = recipe_from_args(args, demo)
        SpikeCLIPConfig.named(cfg.config, **cfg.model_options)
    except (ValueError, TypeError) as exc:  # a bad setting: usage, named before any work
        raise SystemExit(str(exc)) from None
    results = run_recipe(cfg)  # writes results.json (rank 0), seconds included
    if "teacher_acc" in results:  # rank 0
        print(results_table(results))
        print(f"results, checkpoint and plots in {cfg.out}/")
    return 0


def load_checkpoint_with_data(path: str, device: str, test_images=None, data_dir=None):
    """A trained SpikeCLIP checkpoint (with its tokenizer) and its dataset's test split."""
    from spikeclip.data import load_dataset
    from spikeclip.train.stages import load_trained

    model, recipe, _ = load_trained(path, device, with_teacher=False)
    test = load_dataset(recipe["dataset"], "test", data_dir or recipe.get("data_dir"))
    n = test_images if test_images is not None else recipe.get("test_images")
    return model.eval(), test.subset(n, recipe.get("seed", 0)), recipe


def run_energy(args) -> int:
    from spikeclip.energy import estimate

    model, test, _ = load_checkpoint_with_data(args.checkpoint, args.device, None, args.data_dir)
    import torch

    images, _ = test.batch(torch.arange(min(args.images, len(test))))
    with torch.no_grad():
        report = estimate(model.image_encoder, images.to(args.device))
    print(report.table())
    out = Path(args.out or args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    plot = "no firing-rate plot (no spiking neurons: an ANN)"
    if report.firing_rates:
        report.plot_firing_rates(out / "firing_rates.png")
        plot = "plot firing_rates.png"
    from spikeclip.checkpoint import atomic_write_json

    atomic_write_json(out / "energy.json", report.to_dict())
    print(f"{report.total_mJ:.4f} mJ per image; table in {out}/energy.json, {plot}")
    return 0


def add_demo_args(p) -> None:
    add_recipe_args(p, demo=True)


def add_train_args(p) -> None:
    add_recipe_args(p, demo=False)


def run_demo(args) -> int:
    return run_train(args, demo=True)


def run_train_command(args) -> int:
    return run_train(args, demo=False)


def add_energy_args(n) -> None:
    n.add_argument("--checkpoint", required=True)
    n.add_argument("--images", type=int, default=64, help="test images to measure on")
    n.add_argument("--data-dir")
    n.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda if any)")
    n.add_argument("--out", help="where energy.json and firing_rates.png go (CHECKPOINT)")
