"""RecipeConfig: every setting of a training run (no torch import: the command line reads its
defaults before torch loads)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

# The choices a run accepts, spelled out so that checking them needs no torch import (the
# command line builds a RecipeConfig for its defaults before torch loads); tests/test_train.py
# checks them against spikeclip.models.config.NAMED_CONFIGS, spikeclip.memory.MEMORY_MODES
# and spikeclip.kernels.common.backends.BACKENDS.
CONFIG_NAMES = ("paper", "tiny")
DUAL_LOSSES = ("auto", "ours", "official")
OPTIMIZER_NAMES = ("auto", "adamw", "adam")
ANN_KINDS = ("relu-twin", "official")
MEMORY_MODES = ("plain", "lossless", "low")
BACKEND_NAMES = ("auto", "torch", "triton", "cuda", "cpp")
# SpikeCLIPConfig fields a run sets itself: the teacher's sizes, the ANN counterpart's neuron
FIXED_MODEL_FIELDS = ("vocab_size", "text_width", "embed_dim", "image_neuron")


@dataclass(frozen=True)
class RecipeConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    config: str = "tiny"
    # SpikeCLIPConfig fields over the named config's (e.g. {"learnable_tau": True}); not those
    # the teacher sets (vocab_size, text_width, embed_dim) or the ANN choice (image_neuron)
    model_options: dict = field(default_factory=dict)
    teacher: str = "lit"  # "lit", "clip:DIR", or a saved teacher directory
    teacher_image_size: int = 64  # LiT teacher's input size
    teacher_steps: int = 300  # LiT projection training steps
    # CLIP teachers: the official code's task fine-tuning of the image side with CE on the SNN
    # text encoder's class features before the image stages (0: off); its lr (the official
    # CIFAR-10 script's 5e-6)
    teacher_finetune_epochs: int = 0
    teacher_finetune_lr: float = 5e-6
    train_images: int | None = None  # a seeded subset of the training split (None: all)
    test_images: int | None = None
    vocabulary: int | None = None  # broad-vocabulary names for text alignment (None: all)
    text_epochs: int = 20
    image_epochs: int = 4
    finetune_epochs: int = 4
    batch_size: int = 128
    text_batch_size: int = 64
    text_lr: float = 1e-3  # measured: 5e-3 (SpikeCLIP's) at batch 256 underfits the prompts
    text_lr_final: float = 1e-4
    lr: float = 5e-3  # image alignment: cosine to lr_final (SpikeCLIP: 5e-3 -> 5e-4)
    lr_final: float = 5e-4
    finetune_lr: float = 3e-3  # measured: +1.9 points for the SNN over 1e-3, -0.4 for the ANN
    finetune_lr_final: float = 1e-5
    weight_decay: float = 1e-4
    ce_weight: float = 1.0
    kl_weight: float = 1.0
    kd_temperature: float = 1.0
    # what fine-tuning's KL term learns from: None, the teacher (SpikeCLIP's recipe), "ann",
    # the run's own ANN twin, trained first, or a SpikeCLIP checkpoint directory (e.g. an
    # earlier run's ANN twin, ann_checkpoint): its own cosine logits over the class prompts
    # (its image features with the official loss); the SNN alone distils from it, alignment
    # and this run's ANN twin keep the teacher
    distill_from: str | None = None
    # where the SNN's image encoder starts (None: random weights): "ann", the run's own ANN
    # twin, trained first, or a SpikeCLIP checkpoint directory (e.g. an earlier run's
    # ann_checkpoint): an ANN twin's layers map onto the SNN's one to one (ANN-to-SNN hybrid
    # training), the neurons keep their own initial parameters
    init_from: str | None = None
    # fine-tuning's firing-rate term (spikeclip.train.firing): its weight (0: off) and the
    # input firing rate above which a spike-fed layer's spikes cost (SOP-weighted); with
    # firing_in_alignment image alignment adds the same term
    firing_weight: float = 0.0
    firing_target: float = 0.0
    firing_in_alignment: bool = False
    logit_scale: float | None = None  # student's cosine-logit scale; None: the teacher's
    # fine-tuning loss: "official" (SpikeCLIP's code: scale 1, summed KL against the teacher's
    # image features on the SNN's class features), "ours" (CE + KL to the teacher's own
    # logits at its logit scale, batch mean); "auto": official for `paper`, ours for `tiny`
    dual_loss: str = "auto"
    angle_boundary: float = -90.0  # official loss: > 0 turns on the gradient-angle rule
    # "adam": Adam (amsgrad, no weight decay, cosine per epoch) as the official code; "adamw":
    # AdamW (amsgrad, weight_decay, cosine per step); "auto": adam for `paper`, adamw for `tiny`
    optimizer: str = "auto"
    ann: bool = True  # also train the ANN counterpart
    ann_kind: str = "relu-twin"  # or "official": softmax attention, LayerNorm, QuickGELU
    backend: str = "auto"
    memory: str = "plain"
    device: str = "cpu"
    amp: str | None = None  # "bf16"
    sync_bn: bool = False
    seed: int = 0
    out: str = "spikeclip_out/run"
    cache_dir: str | None = None
    checkpoint_every: int = 200
    energy_images: int = 64
    progress: bool = True
    resume: bool = False
    overwrite: bool = False
    stop_after_steps: int | None = None  # tests: emulate a kill

    def __post_init__(self):
        """Every setting checked here, at construction: a bad one is named before any work."""

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")

        def is_int(name, low, optional=False):
            v = getattr(self, name)
            ok = (optional and v is None) or (
                isinstance(v, int) and not isinstance(v, bool) and v >= low
            )
            need(ok, name, f"an integer >= {low}" + (" or None" if optional else ""))

        def is_number(name, positive, optional=False):
            v = getattr(self, name)
            ok = (optional and v is None) or (
                isinstance(v, int | float)
                and not isinstance(v, bool)
                and math.isfinite(v)
                and (v > 0 if positive else v >= 0)
            )
            need(ok, name, f"a finite number {'> 0' if positive else '>= 0'}")

        for name in ("text_epochs", "image_epochs", "finetune_epochs", "teacher_finetune_epochs"):
            is_int(name, 0)
        for name in ("batch_size", "text_batch_size", "checkpoint_every", "energy_images",
                     "teacher_steps", "teacher_image_size"):  # fmt: skip
            is_int(name, 1)
        for name in ("train_images", "test_images", "stop_after_steps"):
            is_int(name, 1, optional=True)
        is_int("vocabulary", 0, optional=True)
        is_int("seed", 0)
        for name in ("lr", "text_lr", "finetune_lr", "kd_temperature", "teacher_finetune_lr"):
            is_number(name, positive=True)
        for name in ("lr_final", "text_lr_final", "finetune_lr_final", "weight_decay",
                     "ce_weight", "kl_weight", "firing_weight"):  # fmt: skip
            is_number(name, positive=False)
        is_number("logit_scale", positive=True, optional=True)
        need(isinstance(self.firing_target, int | float) and not isinstance(
             self.firing_target, bool) and 0 <= self.firing_target < 1, "firing_target",
             "a firing rate in [0, 1)")  # fmt: skip
        need(isinstance(self.firing_in_alignment, bool), "firing_in_alignment", "True or False")
        need(self.distill_from is None or (isinstance(self.distill_from, str)
             and self.distill_from != ""), "distill_from",
             "None (the teacher), 'ann' (the run's ANN twin) or a SpikeCLIP checkpoint "
             "directory")  # fmt: skip
        need(self.distill_from != "ann" or self.ann, "distill_from",
             "'ann' only with the run's ANN twin (ann=True)")  # fmt: skip
        need(self.init_from is None or (isinstance(self.init_from, str)
             and self.init_from != ""), "init_from",
             "None (random), 'ann' (the run's ANN twin) or a checkpoint directory")  # fmt: skip
        need(self.init_from != "ann" or (self.ann and self.ann_kind == "relu-twin"),
             "init_from", "'ann' only with the run's relu-twin ANN (ann=True, ann_kind "
             "'relu-twin'): its layers are the SNN's")  # fmt: skip
        need(self.amp in (None, "bf16"), "amp", "None or 'bf16'")
        need(self.memory in MEMORY_MODES, "memory", f"one of {MEMORY_MODES}")
        need(self.backend in BACKEND_NAMES, "backend", f"one of {BACKEND_NAMES}")
        need(self.config in CONFIG_NAMES, "config", f"one of {CONFIG_NAMES}")
        need(isinstance(self.model_options, dict)
             and all(isinstance(k, str) for k in self.model_options)
             and not set(self.model_options) & set(FIXED_MODEL_FIELDS), "model_options",
             f"a dict of SpikeCLIPConfig fields other than {FIXED_MODEL_FIELDS}")  # fmt: skip
        need(self.dual_loss in DUAL_LOSSES, "dual_loss", f"one of {DUAL_LOSSES}")
        need(self.optimizer in OPTIMIZER_NAMES, "optimizer", f"one of {OPTIMIZER_NAMES}")
        need(self.ann_kind in ANN_KINDS, "ann_kind", f"one of {ANN_KINDS}")
        need(isinstance(self.angle_boundary, int | float) and math.isfinite(self.angle_boundary)
             and self.angle_boundary <= 180, "angle_boundary", "a number <= 180")  # fmt: skip
        need(
            isinstance(self.device, str)
            and (self.device in ("cpu", "cuda") or self.device.startswith(("cuda:", "cpu:"))),
            "device", "cpu, cuda or cuda:N",
        )  # fmt: skip
        need(isinstance(self.teacher, str) and self.teacher != "", "teacher",
             "lit, clip:DIR or a saved teacher directory")  # fmt: skip
        self._refuse_ignored_settings()
        lit_tuned = self.teacher == "lit" and self.teacher_finetune_epochs > 0
        need(not lit_tuned, "teacher_finetune_epochs", "0 with the LiT teacher (its projection is "
             "fitted with cross-entropy on the task already: teacher_steps); it tunes CLIP "
             "teachers")  # fmt: skip

    def _refuse_ignored_settings(self) -> None:
        """A setting changed from its default where the run would ignore it is an error: the
        fine-tuning loss or optimizer that reads it is not the one this run uses."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        loss, optimizer = self.fine_tuning_loss, self.optimizer_kind
        ignored = {
            "angle_boundary": (loss != "official",
                               f"the official fine-tuning loss (this run: {loss})"),
            "kd_temperature": (loss != "ours", f"dual_loss='ours' (this run: {loss})"),
            "weight_decay": (optimizer != "adamw",
                             f"the adamw optimizer (this run: {optimizer})"),
            "firing_target": (self.firing_weight == 0, "a firing term (firing_weight > 0)"),
            "firing_in_alignment": (self.firing_weight == 0,
                                    "a firing term (firing_weight > 0)"),
            "distill_from": (self.kl_weight == 0 or self.finetune_epochs == 0,
                             "fine-tuning's KL term (kl_weight > 0, finetune_epochs > 0)"),
        }  # fmt: skip
        for name, (unused, reader) in ignored.items():
            if unused and getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} would be ignored: only {reader} reads it"
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def fine_tuning_loss(self) -> str:
        """dual_loss resolved: "official" for the `paper` config, "ours" for `tiny`."""
        if self.dual_loss != "auto":
            return self.dual_loss
        return "official" if self.config == "paper" else "ours"

    @property
    def optimizer_kind(self) -> str:
        """optimizer resolved: "adam" (the official code's) for `paper`, "adamw" for `tiny`."""
        if self.optimizer != "auto":
            return self.optimizer
        return "adam" if self.config == "paper" else "adamw"
