"""SpikeCLIP's training recipe: alignment pre-training (text, image) + dual-loss fine-tuning,
zero-shot evaluation with label experiments, resumable and distributable.

Names load lazily, so that `spikeclip.train.config` can be read without importing torch."""

from spikeclip.train.config import RecipeConfig

_LAZY = {
    "run_recipe": "spikeclip.train.recipe",
    "Interrupted": "spikeclip.train.loop",
    "RunContext": "spikeclip.train.loop",
    "StageConfig": "spikeclip.train.loop",
    "run_stage": "spikeclip.train.loop",
    "top1": "spikeclip.train.evaluate",
    "zero_shot_report": "spikeclip.train.evaluate",
}

__all__ = ["RecipeConfig", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spikeclip.train' has no attribute {name!r}")
