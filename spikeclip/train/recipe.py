"""The SpikeCLIP recipe end to end: teacher, text alignment, image alignment, dual-loss
fine-tuning, the ANN counterpart trained the same way, zero-shot evaluation, energy.

    results = run_recipe(RecipeConfig(dataset="fashion-mnist", config="tiny", out="run1"))

Everything lands in `out/`: teacher/ (a fitted LiT projection, or a pointer to the CLIP
directory), stages/<stage>/ (resumable checkpoints, see spikeclip.train.loop), metrics.jsonl,
checkpoint/ and ann_checkpoint/ (SpikeCLIP.save + the tokenizer + recipe.json: what
`spikeclip eval` loads), results.json, and the plots. `resume=True` continues a killed run
from its last checkpoint with the same results as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spikeclip.checkpoint import atomic_write_json
from spikeclip.data import load_dataset
from spikeclip.energy import estimate
from spikeclip.kernels.common.backends import resolve_backend
from spikeclip.memory import check_memory_mode
from spikeclip.models import SpikeCLIP, SpikeCLIPConfig
from spikeclip.models.layers import TemporalReadout
from spikeclip.models.neurons import LIF
from spikeclip.models.spikeclip_model import set_memory
from spikeclip.teachers import LiTTeacher, load_teacher
from spikeclip.tokenizer import HFTokenizer
from spikeclip.train import distributed, features
from spikeclip.train.config import RecipeConfig
from spikeclip.train.evaluate import embed_images, zero_shot_report
from spikeclip.train.firing import FiringPenalty
from spikeclip.train.loop import RunContext, StageConfig, run_stage
from spikeclip.train.losses import (
    alignment_loss,
    cosine_logits,
    dual_loss,
    gradient_angle,
    official_dual_loss,
)
from spikeclip.train.plots import write_plots
from spikeclip.train.vocabulary import ALIGNMENT_TEMPLATES, alignment_vocabulary

RECIPE_JSON = "recipe.json"
TWIN = "ann"  # init_from, distill_from: the run's own ANN twin, trained first
# Fields that may differ between a run and its --resume (they do not change the result).
RESUMABLE_CHANGES = {"progress", "resume", "overwrite", "stop_after_steps", "cache_dir", "device"}


def _prepare_out(cfg: RecipeConfig, out: Path, main: bool) -> None:
    saved = out / RECIPE_JSON
    if saved.is_file() and main and not run_started(out):
        saved.unlink()  # a run that failed before its first checkpoint: nothing to keep
    if saved.is_file() and main:
        if cfg.resume:
            old = {**RecipeConfig().to_dict(), **json.loads(saved.read_text())}  # older: defaults
            diff = {
                k: (old.get(k), v)
                for k, v in cfg.to_dict().items()
                if k not in RESUMABLE_CHANGES and old.get(k) != v
            }
            if diff:
                raise ValueError(
                    f"--resume: {out} was started with other settings "
                    f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())})"
                )
        elif cfg.overwrite:
            for name in ("stages", "teacher", "metrics.jsonl", "results.json"):
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        else:
            raise FileExistsError(
                f"{out} already holds a run: pass --resume to continue it, --overwrite to "
                "start again, or another --out"
            )
    if main:
        atomic_write_json(saved, cfg.to_dict())


def run_started(out: Path) -> bool:
    """Whether out/ holds anything a stage wrote (a checkpoint, a finished stage, a teacher)."""
    return any((out / "stages").glob("*/*")) or (out / "teacher" / "teacher.json").is_file()


def build_teacher(cfg: RecipeConfig, train, out: Path, ctx: RunContext):
    """The teacher, fitted (LiT) on the training features once and saved under out/teacher."""
    tdir = out / "teacher"
    if (tdir / "teacher.json").is_file():
        return load_teacher(tdir)
    if cfg.teacher == "lit":
        teacher = LiTTeacher(image_size=cfg.teacher_image_size)
        feats = features.image_features(teacher, train, cfg.cache_dir, progress=ctx.progress)
        classes = teacher.classifier(train.class_names, train.templates)
        losses = teacher.fit(
            feats,
            train.labels,
            classes,
            steps=cfg.teacher_steps,
            seed=cfg.seed,
            progress=ctx.progress and ctx.dist.main,
        )
        ctx.log({"stage": "teacher", "loss_first": losses[0], "loss_last": losses[-1]})
    else:
        teacher = load_teacher(cfg.teacher)
    distributed.barrier(ctx.dist)
    if ctx.dist.main:
        teacher.save(tdir)
    return teacher


def stage_config(cfg: RecipeConfig, name, epochs, batch_size, lr, lr_final) -> StageConfig:
    """A stage of this run: its optimiser (cfg.optimizer_kind), weight decay, checkpoints."""
    return StageConfig(name, epochs, batch_size, lr, lr_final, cfg.weight_decay,
                       cfg.checkpoint_every, cfg.optimizer_kind)  # fmt: skip


def build_student(cfg: RecipeConfig, teacher, image_neuron: str = "lif"):
    check_memory_mode(cfg.memory)
    mc = SpikeCLIPConfig.named(cfg.config, image_neuron=image_neuron,
                               **teacher.student_overrides(), **cfg.model_options)  # fmt: skip
    model = SpikeCLIP(mc, backend=cfg.backend)
    model.text_encoder.load_embeddings(*teacher.token_embeddings())
    model.tokenizer = HFTokenizer(teacher.tokenizer, mc.context_length)  # saved with checkpoints
    set_memory(model, cfg.memory)
    return model


def load_source(path: Path, setting: str, device="cpu") -> SpikeCLIP:
    """The SpikeCLIP checkpoint a run learns from (`setting`: init_from, distill_from), in eval
    mode; building it draws no numbers from the run's random state."""
    if not path.is_dir():
        raise FileNotFoundError(f"{setting}: {path}: no such checkpoint directory")
    with torch.random.fork_rng(devices=[]):
        return SpikeCLIP.load(path, map_location=device)


def init_image_encoder(model, source) -> list[str]:
    """Start `model`'s image encoder from another's (cfg.init_from): `source` is a SpikeCLIP
    checkpoint directory or a SpikeCLIP (the run's own ANN twin). Every tensor the two share
    is copied, which must be all of the source's; the encoder's own neurons' parameters, which
    an ANN twin lacks, keep their values, and an ANN's one-step temporal readout is spread
    evenly over the T steps (weight w / T each: the same sum, of the mean over time of what
    reaches it). Returns the names of the tensors kept."""
    if isinstance(source, SpikeCLIP):
        where, state = "the ANN twin", source.image_encoder.state_dict()
    else:
        where = Path(source)
        state = load_source(where, "init_from").image_encoder.state_dict()
    encoder = model.image_encoder
    own = encoder.state_dict()
    neurons = tuple(f"{n}." for n, m in encoder.named_modules() if isinstance(m, LIF))
    for name, m in encoder.named_modules():
        key, steps = f"{name}.weight", getattr(m, "weight", None)
        if isinstance(m, TemporalReadout) and key in state and state[key].numel() == 1:
            state[key] = (state[key] / steps.numel()).expand_as(steps).clone()
    kept = sorted(set(own) - set(state))
    problems = [f"{k}: not in this encoder" for k in sorted(set(state) - set(own))]
    problems += [f"{k}: missing from the source" for k in kept if not k.startswith(neurons)]
    problems += [
        f"{k}: {tuple(v.shape)} in the source, {tuple(own[k].shape)} here"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if problems:
        raise ValueError(
            f"init_from: {where}'s image encoder does not fit this one: " + "; ".join(problems[:5])
        )
    encoder.load_state_dict({**own, **state})
    return kept


def teacher_targets(teacher, train, cache_dir=None, progress: bool = False):
    """What the image stages learn from: the teacher's L2-normalised image embeddings of `train`
    (image alignment) and its cosine logits over the class prompts (fine-tuning's KL term)."""
    feats = features.image_features(teacher, train, cache_dir, progress=progress)
    with torch.no_grad():
        emb = F.normalize(teacher.image_head(feats), dim=-1)
        classes = teacher.classifier(train.class_names, train.templates)
        return emb, cosine_logits(emb, classes, teacher.logit_scale)


def distillation_targets(
    cfg: RecipeConfig, train, scale: float, embed_dim: int, ctx: RunContext, twin=None
):
    """What the SNN's fine-tuning learns from with cfg.distill_from: a SpikeCLIP checkpoint
    (e.g. an earlier run's ANN twin) or, with "ann", `twin` (the run's own, trained first):
    its L2-normalised image embeddings of `train` (the official loss's KL, which needs the
    student's embed_dim) and its cosine logits over the class prompts at `scale` (ours), in
    eval mode (a model given is put back in the mode it came in)."""
    if cfg.distill_from == TWIN:
        if twin is None:
            raise ValueError("distill_from='ann' needs the run's trained ANN twin")
        model, name = twin, "the ANN twin"
    else:
        path = Path(cfg.distill_from)
        model, name = load_source(path, "distill_from", ctx.device), str(path)
    if cfg.fine_tuning_loss == "official" and model.config.embed_dim != embed_dim:
        raise ValueError(
            f"distill_from: {name} embeds in {model.config.embed_dim} dimensions, the student "
            f"in {embed_dim}: the official loss compares their image features"
        )
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            emb = embed_images(
                model.encode_image, train, device=ctx.device, progress=ctx.progress,
                desc=f"distillation targets: {Path(name).name}",
            ).to(ctx.device)  # fmt: skip
            classes = model.classifier(train.class_names, train.templates)
            return emb.clone(), cosine_logits(emb, classes.to(emb), scale)
    finally:
        model.train(training)


def _maybe_sync_bn(module, cfg: RecipeConfig, ctx: RunContext):
    if not (cfg.sync_bn and ctx.dist.active):
        return module
    if ctx.device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)


def train_text(cfg, model, teacher, train, ctx: RunContext) -> dict:
    names = alignment_vocabulary(train.class_names, cfg.dataset)
    if cfg.vocabulary is not None:
        names = names[: len(train.class_names) + cfg.vocabulary]
    templates = list(dict.fromkeys([*train.templates, *ALIGNMENT_TEMPLATES]))
    prompts = [t.format(n) for n in names for t in templates]
    target = features.text_features(teacher, prompts, cfg.cache_dir).to(ctx.device)
    ids = model.tokenizer(prompts).to(ctx.device)

    def step(enc, idx):
        return alignment_loss(enc(ids[idx]), target[idx]), {}

    stage = stage_config(
        cfg, "text-alignment", cfg.text_epochs, cfg.text_batch_size, cfg.text_lr, cfg.text_lr_final
    )
    summary = run_stage(stage, model, model.text_encoder, len(prompts), step, ctx)
    return {**summary, "prompts": len(prompts), "names": len(names)}


def task_finetune_teacher(cfg: RecipeConfig, teacher, model, train, out: Path, ctx) -> dict:
    """The official code's optional task fine-tuning of a CLIP teacher, between text alignment
    and the image stages: the teacher's image side (vision tower + projection) trained with
    cross-entropy on its L2-normalised image features . the SNN text encoder's class features
    (template means, not renormalised; scale 1), Adam (amsgrad, no weight decay, cosine per
    epoch to 1e-8). The tuned teacher is saved as the run's (out/teacher: a resumed run,
    `spikeclip eval --teacher` and the feature cache's key all see it)."""
    if not hasattr(teacher, "task_module"):
        raise ValueError(
            f"teacher_finetune_epochs: task fine-tuning trains a CLIP teacher's image side; "
            f"the {type(teacher).__name__} has none (the LiT teacher's projection is fitted "
            "with cross-entropy on the task already: teacher_steps)"
        )
    dev = ctx.device
    model.text_encoder.eval()
    with torch.no_grad():
        classes = model.classifier(train.class_names, train.templates, renormalize=False)
    classes = classes.to(dev)
    module = teacher.task_module().to(dev)

    def step(vision, idx):
        images, labels = train.batch(idx)
        logits = F.normalize(vision(images.to(dev)), dim=-1) @ classes.t()
        return F.cross_entropy(logits, labels.to(dev)), {}

    stage = StageConfig(
        "teacher-task-finetune", cfg.teacher_finetune_epochs, cfg.batch_size,
        cfg.teacher_finetune_lr, 1e-8, 0.0, cfg.checkpoint_every, "adam",
    )  # fmt: skip
    # a resumed run whose stage is done: run_stage loads the final weights (already the teacher's)
    summary = run_stage(stage, module, module, len(train), step, ctx)
    teacher.eval()
    teacher.mark_task_finetuned()
    if ctx.dist.main:
        teacher.save(out / "teacher")
    distributed.barrier(ctx.dist)
    return summary


def train_image(
    cfg, model, prefix, train, teacher_emb, teacher_logits, scale, ctx, finetune_targets=None
) -> list[dict]:
    """Image alignment to the teacher's embeddings, then dual-loss fine-tuning (text frozen)
    against the teacher's, or against finetune_targets (embeddings, logits) where given."""
    enc = _maybe_sync_bn(model.image_encoder, cfg, ctx)
    model.image_encoder = enc
    dev = ctx.device
    teacher_emb, teacher_logits = teacher_emb.to(dev), teacher_logits.to(dev)
    ft_emb, ft_logits = (
        (teacher_emb, teacher_logits)
        if finetune_targets is None
        else (t.to(dev) for t in finetune_targets)
    )

    def align(encoder, idx):
        images, _ = train.batch(idx)
        return with_firing_term(alignment_loss(encoder(images.to(dev)), teacher_emb[idx]), penalty)

    stage = stage_config(
        cfg, f"{prefix}image-alignment", cfg.image_epochs, cfg.batch_size, cfg.lr, cfg.lr_final
    )
    with firing_penalty(cfg, enc, stage="alignment") as penalty:
        summaries = [run_stage(stage, model, enc, len(train), align, ctx)]

    with firing_penalty(cfg, enc) as penalty:
        loss = finetune_loss(cfg, model, train.class_names, train.templates, scale, ctx, penalty)

        def finetune(encoder, idx):
            images, labels = train.batch(idx)
            features = encoder(images.to(dev))
            return loss(encoder, features, labels.to(dev), ft_emb[idx], ft_logits[idx])

        stage = stage_config(
            cfg,
            f"{prefix}finetune",
            cfg.finetune_epochs,
            cfg.batch_size,
            cfg.finetune_lr,
            cfg.finetune_lr_final,
        )
        summaries.append(run_stage(stage, model, enc, len(train), finetune, ctx))
    return summaries


def firing_penalty(cfg: RecipeConfig, encoder, stage: str = "finetune"):
    """The firing-rate term on `encoder` (spikeclip.train.firing) in `stage` ("finetune", or
    "alignment" where cfg.firing_in_alignment) as a context, or a context giving None when the
    stage has none (firing_weight 0)."""
    if stage not in ("finetune", "alignment"):
        raise ValueError(f"firing_penalty: stage must be 'finetune' or 'alignment', got {stage!r}")
    off = cfg.firing_weight == 0 or (stage == "alignment" and not cfg.firing_in_alignment)
    if off or not any(isinstance(m, LIF) for m in encoder.modules()):
        return contextlib.nullcontext(None)  # (an ANN counterpart has no spikes to count)
    return FiringPenalty(encoder, cfg.firing_weight, cfg.firing_target)


def with_firing_term(alignment: torch.Tensor, penalty):
    """An image-alignment step's (loss, metrics): the alignment loss, plus the firing term
    with firing_in_alignment (then both logged, "alignment" and "firing_term")."""
    if penalty is None:
        return alignment, {}
    return add_firing_term(alignment, {"alignment": float(alignment.detach())}, penalty)


def add_firing_term(value, metrics: dict, penalty):
    """(value + the penalty's term of the forward pass that gave value, metrics with the term
    and the SOP-weighted input firing rate), or (value, metrics) without a penalty; a value of
    None (a step the loss skips) stays None."""
    if penalty is None:
        return value, metrics
    term, rate = penalty.take()
    metrics = {**metrics, "firing_term": float(term.detach()), "input_firing_rate": rate}
    return (None if value is None else value + term), metrics


def finetune_loss(
    cfg: RecipeConfig, model, names, templates, scale: float, ctx: RunContext, penalty=None
):
    """The dual-loss fine-tuning loss of this run (cfg.fine_tuning_loss), with the text side
    frozen: loss(encoder, student features, labels, teacher image embeddings, teacher logits)
    -> (loss, or None for a step the angle rule skips; metrics). `penalty`: a FiringPenalty
    (firing_penalty) whose term of the forward pass that gave the features is added."""
    dual = _dual_loss(cfg, model, names, templates, scale, ctx)
    if penalty is None:
        return dual

    def loss(encoder, features, *targets):
        return add_firing_term(*dual(encoder, features, *targets), penalty)

    return loss


def _dual_loss(cfg: RecipeConfig, model, names, templates, scale: float, ctx: RunContext):
    official = cfg.fine_tuning_loss == "official"
    model.text_encoder.eval()
    with torch.no_grad():  # the official code does not renormalise the template mean
        classes = model.classifier(names, templates, renormalize=not official).to(ctx.device)

    def loss(encoder, features, labels, teacher_emb, teacher_logits):
        if not official:
            student = cosine_logits(features, classes, scale)
            return dual_loss(
                student, teacher_logits, labels, ce_weight=cfg.ce_weight,
                kl_weight=cfg.kl_weight, temperature=cfg.kd_temperature,
            )  # fmt: skip
        ce, kl = official_dual_loss(features, teacher_emb, classes, labels)
        metrics = {"ce": ce.item(), "kl": kl.item()}
        if cfg.angle_boundary > 0:  # the official rule: CE alone within the angle, else skip
            params = [p for p in encoder.parameters() if p.requires_grad]
            angle = gradient_angle(cfg.ce_weight * ce, cfg.kl_weight * kl, params)
            angle = distributed.mean_over_ranks(angle, ctx.dist, ctx.device)  # one decision
            metrics["angle"] = angle
            return (cfg.ce_weight * ce if angle <= cfg.angle_boundary else None), metrics
        return cfg.ce_weight * ce + cfg.kl_weight * kl, metrics

    return loss


def save_student(
    model, teacher, path: Path, cfg: RecipeConfig, kind: str, class_names, templates
) -> None:
    """The checkpoint: SpikeCLIP.save (weights, tokenizer, the logit scale the student's
    logits were trained with, what it was trained on) + recipe.json (the run's settings)."""
    model.logit_scale = float(cfg.logit_scale or teacher.logit_scale)
    model.training_info = {
        "kind": kind,
        "teacher": {"name": cfg.teacher, "class": type(teacher).__name__,
                    "backbone": teacher.backbone_key},
        "dataset": cfg.dataset,
        "class_names": list(class_names),
        "templates": list(templates),
    }  # fmt: skip
    model.save(path)
    atomic_write_json(path / RECIPE_JSON, {**cfg.to_dict(), "kind": kind})


def evaluate_all(cfg, teacher, models: dict, test, ctx: RunContext) -> dict:
    """Zero-shot top-1 (+ replace / expand) of the teacher and each student on `test`."""
    dev, labels = ctx.device, test.labels
    tfeats = features.image_features(teacher, test, cfg.cache_dir, progress=ctx.progress)
    with torch.no_grad():
        temb = F.normalize(teacher.image_head(tfeats), dim=-1)

    def teacher_classes(names):
        return teacher.classifier(names, test.templates)

    report = {
        "teacher": zero_shot_report(temb, labels, teacher_classes, test.class_names, cfg.dataset)
    }
    for name, model in models.items():
        model.eval()
        emb = embed_images(
            model.encode_image, test, device=dev, progress=ctx.progress, desc=f"evaluating {name}"
        )

        def student_classes(names, model=model):
            return model.classifier(names, test.templates).cpu()

        report[name] = zero_shot_report(emb, labels, student_classes, test.class_names, cfg.dataset)
    return report


def energy_of(model, test, n: int, device) -> dict:
    model.eval()
    images, _ = test.batch(torch.arange(min(n, len(test))))
    with torch.no_grad():
        report = estimate(model.image_encoder, images.to(device))
    return report


def run_recipe(cfg: RecipeConfig) -> dict:
    """Run (or continue) the whole recipe; returns the results (also out/results.json)."""
    SpikeCLIPConfig.named(cfg.config, **cfg.model_options)  # a bad option is named before work
    started = time.perf_counter()
    dist, device = distributed.init(cfg.device)
    out = Path(cfg.out)
    _prepare_out(cfg, out, dist.main)
    distributed.barrier(dist)
    ctx = RunContext(
        out,
        device=device,
        seed=cfg.seed,
        amp=cfg.amp,
        progress=cfg.progress,
        dist=dist,
        stop_after_steps=cfg.stop_after_steps,
    )
    torch.manual_seed(cfg.seed)

    train = load_dataset(cfg.dataset, "train", cfg.data_dir).subset(cfg.train_images, cfg.seed)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir).subset(cfg.test_images, cfg.seed)
    teacher = build_teacher(cfg, train, out, ctx)
    scale = cfg.logit_scale or teacher.logit_scale
    if not cfg.teacher_finetune_epochs:
        teacher_emb, teacher_logits = teacher_targets(teacher, train, cfg.cache_dir, ctx.progress)

    stages = {}
    snn = build_student(cfg, teacher).to(device)
    if cfg.init_from and cfg.init_from != TWIN:
        init_image_encoder(snn, cfg.init_from)
    stages["text"] = train_text(cfg, snn, teacher, train, ctx)
    if cfg.teacher_finetune_epochs:  # needs the trained text encoder's class features
        stages["teacher"] = task_finetune_teacher(cfg, teacher, snn, train, out, ctx)
        teacher_emb, teacher_logits = teacher_targets(teacher, train, cfg.cache_dir, ctx.progress)

    def train_ann():
        neuron = "relu" if cfg.ann_kind == "relu-twin" else "clip-ann"
        ann = build_student(cfg, teacher, image_neuron=neuron).to(device)
        ann.text_encoder.load_state_dict(snn.text_encoder.state_dict())  # the same text side
        stages["ann"] = train_image(
            cfg, ann, "ann-", train, teacher_emb, teacher_logits, scale, ctx
        )
        return ann

    ann = None
    if TWIN in (cfg.init_from, cfg.distill_from):  # the twin first: the SNN learns from it
        ann = train_ann()
    if cfg.init_from == TWIN:
        init_image_encoder(snn, ann)
    distilled = (
        distillation_targets(cfg, train, scale, snn.config.embed_dim, ctx, twin=ann)
        if cfg.distill_from
        else None
    )
    stages["snn"] = train_image(
        cfg, snn, "", train, teacher_emb, teacher_logits, scale, ctx, finetune_targets=distilled
    )
    if cfg.ann and ann is None:
        ann = train_ann()
    models = {"spikeclip": snn} if ann is None else {"spikeclip": snn, "ann": ann}
    stages = {k: stages[k] for k in ("text", "teacher", "snn", "ann") if k in stages}

    results = {"config": cfg.to_dict(), "stages": stages}
    if dist.main:
        for name, model in models.items():
            save_student(
                model,
                teacher,
                out / ("checkpoint" if name == "spikeclip" else f"{name}_checkpoint"),
                cfg,
                name,
                train.class_names,
                train.templates,
            )
        acc = evaluate_all(cfg, teacher, models, test, ctx)
        energy = {name: energy_of(m, test, cfg.energy_images, device) for name, m in models.items()}
        results.update(summarize(acc, energy, snn, cfg, len(test), started))
        atomic_write_json(out / "results.json", results)
        write_plots(out, results, energy)
    distributed.barrier(dist)
    distributed.shutdown(dist)
    return results


def summarize(acc: dict, energy: dict, snn, cfg: RecipeConfig, n_test: int, started: float) -> dict:
    t, s = acc["teacher"], acc["spikeclip"]
    a = acc.get("ann", {})
    return {
        "teacher_acc": t["acc"],
        "spikeclip_acc": s["acc"],
        "ann_acc": a.get("acc"),
        "replace_acc": s["replace_acc"],
        "teacher_replace_acc": t["replace_acc"],
        "expand_acc": s["expand_acc"],
        "teacher_expand_acc": t["expand_acc"],
        "energy_snn_mJ": energy["spikeclip"].total_mJ,
        "energy_ann_mJ": energy["ann"].total_mJ if "ann" in energy else None,
        "mean_firing_rate": energy["spikeclip"].mean_firing_rate,
        "backend": resolve_backend(cfg.backend, next(snn.parameters()).device, op="lif"),
        "test_images": n_test,
        "seconds": time.perf_counter() - started,
        "accuracy": acc,
    }
