"""SpikeCLIP: the spiking image and text encoders in one joint embedding space, zero-shot
classification by class names, save/load."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import spikeclip
from spikeclip.checkpoint import (
    CONFIG,
    WEIGHTS,
    CheckpointError,
    atomic_write_json,
    load_json,
    load_state_into,
    load_tensors,
    save_tensors,
)
from spikeclip.kernels.common.backends import BACKENDS
from spikeclip.memory import check_memory_mode
from spikeclip.models.blocks import Block
from spikeclip.models.config import SpikeCLIPConfig
from spikeclip.models.image_encoder import ImageEncoder, check_images
from spikeclip.models.official_ann import OfficialANNEncoder
from spikeclip.models.text_encoder import TextEncoder
from spikeclip.preprocess import Preprocess
from spikeclip.tokenizer import HFTokenizer

CHECKPOINT_FORMAT = "spikeclip.SpikeCLIP/1"
DEFAULT_TEMPLATES = ("a photo of a {}.",)
TOKENIZER_DIR = "tokenizer"
# classify's logit scale when a checkpoint has none saved (CLIP's): probabilities of a student
# trained at another scale come out too sharp or too flat.
FALLBACK_LOGIT_SCALE = 100.0

# A tokenizer maps strings to token ids `[B, context_length]` (int64).
Tokenizer = Callable[[list[str]], torch.Tensor]


def set_backend(module: nn.Module, backend: str) -> None:
    """Point every neuron and attention of `module` at the kernel backend `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend


def set_memory(module: nn.Module, memory: str, *, checkpoint_blocks: bool | None = None) -> None:
    """What `module` keeps for its backward: "plain", "lossless" (default) or "low"
    (spikeclip.memory.MEMORY_MODES); checkpoint_blocks: activation checkpointing per
    transformer block (None leaves it as it is)."""
    check_memory_mode(memory)
    for m in module.modules():
        if hasattr(m, "memory"):
            m.memory = memory
        if checkpoint_blocks is not None and isinstance(m, Block):
            m.checkpoint = bool(checkpoint_blocks)


class Retrieval(NamedTuple):
    """SpikeCLIP.retrieve's answer: `similarity` [images, texts] cosines; `texts` [images, k]
    and `images` [texts, k] indices of the most similar, highest first."""

    similarity: torch.Tensor
    texts: torch.Tensor
    images: torch.Tensor


class SpikeCLIP(nn.Module):
    """Image encoder + text encoder (`config`), every neuron and attention on `backend`.

    encode_image `[B, C, H, W]` -> `[B, E]`, encode_text (ids `[B, L]` or strings with a
    tokenizer attached) -> `[B, E]`, both L2-normalised; classifier(class names, templates)
    -> `[K, E]`; logits(images, class_embeddings) -> cosine similarities `[B, K]` (times
    `temperature` when given).
    """

    def __init__(
        self,
        config: SpikeCLIPConfig | None = None,
        backend: str = "auto",
        tokenizer: Tokenizer | None = None,
    ):
        super().__init__()
        self.config = config or SpikeCLIPConfig()
        if not isinstance(self.config, SpikeCLIPConfig):
            raise TypeError(f"config must be a SpikeCLIPConfig, got {type(config).__name__}")
        if self.config.image_neuron == "clip-ann":
            self.image_encoder = OfficialANNEncoder(self.config, backend=backend)
        else:
            self.image_encoder = ImageEncoder(self.config, backend=backend)
        self.text_encoder = TextEncoder(self.config, backend=backend)
        self.tokenizer = tokenizer
        # What inference needs beside the weights, saved in config.json: the scale of the
        # cosine logits training used (classify's softmax), and what it was trained on
        # (teacher, class names, templates), set by the recipe.
        self.logit_scale: float | None = None
        self.training_info: dict = {}
        set_backend(self, backend)

    # ---- encoders ---------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised features `[B, embed_dim]` of images `[B, 3, H, W]`, floats in [0, 1]
        (anything else is refused; one pass over the values: check_images)."""
        check_images(self.config, images, self.image_encoder.check_finite, value_range=True)
        return F.normalize(self.image_encoder(images, checked=True), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError(
                "encode_text got strings but this SpikeCLIP has no tokenizer: attach one "
                "(model.tokenizer = teacher.tokenize) or pass token ids [B, context_length]"
            )
        ids = self.tokenizer(list(texts))
        return ids.to(self.text_encoder.token_embedding.weight.device)

    def encode_text(self, text: torch.Tensor | Sequence[str]) -> torch.Tensor:
        if isinstance(text, str):
            text = [text]
        if not isinstance(text, torch.Tensor):
            if len(text) == 0:
                raise ValueError("encode_text: got no texts")
            text = self.tokenize(text)
        return F.normalize(self.text_encoder(text), dim=-1)

    # ---- zero-shot classification -------------------------------------------------------------

    @torch.no_grad()
    def classifier(
        self,
        class_names: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        renormalize: bool = True,
    ) -> torch.Tensor:
        """Class embeddings `[K, E]`: per class the mean over templates of the normalised text
        features of template.format(name), normalised again (renormalize=False: as it is, as
        SpikeCLIP's official fine-tuning uses it)."""
        if isinstance(class_names, str) or len(class_names) == 0:
            raise ValueError("class_names must be a non-empty list of strings")
        if isinstance(templates, str) or len(templates) == 0:
            raise ValueError("templates must be a non-empty list of strings with '{}'")
        for t in templates:
            if "{}" not in t:
                raise ValueError(f"template {t!r} has no '{{}}' for the class name")
        prompts = [t.format(name) for name in class_names for t in templates]
        features = self.encode_text(prompts).view(len(class_names), len(templates), -1)
        mean = features.mean(1)
        return F.normalize(mean, dim=-1) if renormalize else mean

    def logits(
        self,
        images: torch.Tensor,
        class_embeddings: torch.Tensor,
        temperature: float | None = None,
    ) -> torch.Tensor:
        """Cosine similarity of each image to each class `[B, K]`, times temperature if given."""
        E = self.config.embed_dim
        if class_embeddings.dim() != 2 or class_embeddings.shape[0] == 0:
            raise ValueError(
                f"class_embeddings must be [K, {E}] with K >= 1, "
                f"got shape {tuple(class_embeddings.shape)}"
            )
        if class_embeddings.shape[1] != E:
            raise ValueError(
                f"class_embeddings have width {class_embeddings.shape[1]}, the model embeds "
                f"into {E}"
            )
        sims = self.encode_image(images) @ F.normalize(class_embeddings, dim=-1).t()
        return sims if temperature is None else sims * temperature

    @property
    def preprocess(self):
        """image (file, PIL, array, tensor) -> `[3, S, S]` as training fed the encoder."""
        return Preprocess.for_config(self.config)

    @property
    def templates(self) -> tuple[str, ...]:
        """The prompt templates of training (saved with the checkpoint), else the default."""
        return tuple(self.training_info.get("templates") or DEFAULT_TEMPLATES)

    @torch.no_grad()
    def classify(
        self,
        images,
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Zero-shot probabilities `[B, K]` (rows sum to 1) of each image over `labels`:
        softmax of the trained logit scale times the cosine to each label's prompts
        (`templates`, default those of training). images: `[B, 3, H, W]` floats in [0, 1], or
        a list of files / PIL images / arrays / tensors (preprocessed here)."""
        if isinstance(labels, str) or len(labels) == 0:
            raise ValueError("labels must be a non-empty list of strings")
        if not isinstance(images, torch.Tensor):
            if len(images) == 0:
                raise ValueError("classify: got no images")
            images = torch.stack([self.preprocess(im) for im in images])
        classes = self.classifier(list(labels), templates or self.templates)
        return self.probabilities(images, classes, batch_size)

    @torch.no_grad()
    def probabilities(
        self, images: torch.Tensor, class_embeddings: torch.Tensor, batch_size: int = 256
    ) -> torch.Tensor:
        """softmax(trained logit scale x cosine) `[B, K]` of images `[B, 3, H, W]` against
        class embeddings from `classifier` (computed once for many batches of images)."""
        device = self.text_encoder.token_embedding.weight.device
        scale = self.logit_scale if self.logit_scale is not None else FALLBACK_LOGIT_SCALE
        probs = [
            self.logits(chunk.to(device), class_embeddings, scale).float().softmax(-1).cpu()
            for chunk in images.split(batch_size)
        ]
        return torch.cat(probs)

    @torch.no_grad()
    def retrieve(
        self, images, texts: Sequence[str], k: int = 5, batch_size: int = 256
    ) -> Retrieval:
        """Image-text retrieval: the cosine similarity of every image to every text, the k
        texts most similar to each image and the k images most similar to each text (indices,
        highest first; k capped at the candidates). images as for classify."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of strings")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if not isinstance(images, torch.Tensor):
            if len(images) == 0:
                raise ValueError("retrieve: got no images")
            images = torch.stack([self.preprocess(im) for im in images])
        device = self.text_encoder.token_embedding.weight.device
        img = torch.cat([self.encode_image(c.to(device)).float().cpu()
                         for c in images.split(batch_size)])  # fmt: skip
        txt = torch.cat([self.encode_text(list(texts[i : i + batch_size])).float().cpu()
                         for i in range(0, len(texts), batch_size)])  # fmt: skip
        sim = img @ txt.t()
        return Retrieval(sim, sim.topk(min(k, sim.shape[1]), dim=1).indices,
                         sim.t().topk(min(k, sim.shape[0]), dim=1).indices)  # fmt: skip

    # ---- save / load --------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Directory `path`: model.safetensors (every parameter and buffer), config.json (the
        config, logit scale, preprocessing, what training used, spikeclip and torch versions)
        and tokenizer/ when the tokenizer can save itself."""
        path = Path(path)
        save_tensors(path / WEIGHTS, self.state_dict())
        if hasattr(self.tokenizer, "save"):
            self.tokenizer.save(path / TOKENIZER_DIR)
        atomic_write_json(
            path / CONFIG,
            {
                "format": CHECKPOINT_FORMAT,
                "config": self.config.to_dict(),
                "logit_scale": self.logit_scale,
                "preprocess": self.preprocess.to_dict(),
                "training": self.training_info,
                "tokenizer": TOKENIZER_DIR if hasattr(self.tokenizer, "save") else None,
                "versions": {"spikeclip": spikeclip.__version__, "torch": torch.__version__},
            },
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str = "auto",
        tokenizer: Tokenizer | None = None,
        map_location: str | torch.device = "cpu",
    ) -> SpikeCLIP:
        """The model saved at `path` (a directory from save), in eval mode as Hugging Face's
        from_pretrained returns one: BatchNorm on its running statistics, so classify gives
        each image its own answer (.train() to train it further)."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint directory")
        meta = load_json(path / CONFIG)
        if meta.get("format") != CHECKPOINT_FORMAT or not isinstance(meta.get("config"), dict):
            raise CheckpointError(
                f"{path / CONFIG}: not a SpikeCLIP checkpoint (format {meta.get('format')!r}, "
                f"expected {CHECKPOINT_FORMAT!r})"
            )
        try:
            config = SpikeCLIPConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path / CONFIG}: bad config ({exc})") from None
        model = cls(config, backend=backend, tokenizer=tokenizer)
        load_state_into(model, load_tensors(path / WEIGHTS), path / WEIGHTS)
        missing = model._restore_inference_state(path, meta, tokenizer is not None)
        if missing:
            warnings.warn(
                f"{path} lacks what inference needs: {'; '.join(missing)} (a checkpoint of an "
                "older spikeclip, or of a model saved before training recorded them)",
                UserWarning,
                stacklevel=2,
            )
        return model.to(map_location).eval()

    def _restore_inference_state(self, path: Path, meta: dict, has_tokenizer: bool) -> list:
        """Logit scale, training record and tokenizer from a checkpoint's config.json and
        tokenizer/; returns what is missing, each with its consequence."""
        missing = []
        scale = meta.get("logit_scale")
        if scale is None:
            missing.append(
                f"the trained logit scale (classify uses {FALLBACK_LOGIT_SCALE:g}, CLIP's: "
                "probabilities may be too sharp or too flat)"
            )
        else:
            self.logit_scale = float(scale)
        self.training_info = dict(meta.get("training") or {})
        if not self.training_info:
            missing.append("the teacher, class names and templates of training")
        if not has_tokenizer:
            if (path / TOKENIZER_DIR).is_dir():
                try:
                    self.tokenizer = HFTokenizer.load(
                        path / TOKENIZER_DIR, self.config.context_length
                    )
                except (OSError, ValueError) as exc:
                    raise CheckpointError(
                        f"{path / TOKENIZER_DIR}: unreadable tokenizer ({exc})"
                    ) from None
            else:
                missing.append("the tokenizer (pass tokenizer= or set model.tokenizer)")
        if "versions" not in meta:
            missing.append("the spikeclip and torch versions it was written with")
        return missing
