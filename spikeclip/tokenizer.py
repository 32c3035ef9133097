"""The tokenizer of SpikeCLIP's text side: strings -> token ids with a Hugging Face tokenizer
(the teacher's), saved with checkpoints. Needs only torch here; transformers to read one back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


class HFTokenizer:
    """strings -> ids `[B, context_length]` (int64) with a Hugging Face tokenizer, padded and
    truncated: what SpikeCLIP's text encoder takes (a class, so that models stay picklable)."""

    def __init__(self, hf_tokenizer, context_length: int):
        self.hf, self.length = hf_tokenizer, int(context_length)

    def save(self, path: str | Path) -> None:
        """The Hugging Face tokenizer's files in the directory `path` (save_pretrained)."""
        self.hf.save_pretrained(str(path))

    @classmethod
    def load(cls, path: str | Path, context_length: int) -> HFTokenizer:
        """A tokenizer saved by `save`; transformers is needed to read it."""
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ImportError(
                f"{path}: reading a checkpoint's tokenizer needs transformers: pip install "
                "'spikeclip[teachers]' (or pip install transformers)"
            ) from None
        return cls(AutoTokenizer.from_pretrained(str(path)), context_length)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = self.hf(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.length,
            return_tensors="pt",
        )
        return out["input_ids"].long()
