"""RecipeConfig: every setting of a training run (no torch import: the command line reads its
defaults before torch loads)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class RecipeConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    config: str = "tiny"
    teacher: str = "lit"  # "lit", "clip:DIR", or a saved teacher directory
    teacher_image_size: int = 64  # LiT teacher's input size
    teacher_steps: int = 300  # LiT projection training steps
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
    logit_scale: float | None = None  # student's cosine-logit scale; None: the teacher's
    ann: bool = True  # also train the ANN counterpart (ReLU image encoder, T=1)
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
