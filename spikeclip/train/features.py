"""Teacher outputs cached on disk: the frozen image backbone's features of a dataset's images
and the text features of a list of prompts, keyed by the teacher's backbone/preprocessing key
and a digest of the exact inputs, so that a cache entry can never be served for other data.

    feats = image_features(teacher, dataset, cache_dir)   # [N, F] float32, rows = dataset order
    text = text_features(teacher, prompts, cache_dir)     # [P, E], L2-normalised
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from spikeclip.checkpoint import CheckpointError, load_tensors, save_tensors


def default_cache_dir() -> Path:
    """$SPIKECLIP_CACHE, else ~/.cache/spikeclip."""
    env = os.environ.get("SPIKECLIP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "spikeclip"


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(str((tuple(part.shape), part.dtype)).encode())
            h.update(part.contiguous().view(torch.uint8).flatten().numpy().tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _cached(path: Path, compute) -> torch.Tensor:
    if path.is_file():
        try:
            return load_tensors(path)["features"]
        except (CheckpointError, KeyError):
            path.unlink(missing_ok=True)  # a damaged entry is recomputed, not trusted
    features = compute()
    save_tensors(path, {"features": features})
    return features


def image_features(
    teacher,
    dataset,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """teacher.image_features of every image of `dataset` (an ImageDataset), `[N, F]`."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _digest(teacher.backbone_key, dataset.images)
    path = cache_dir / "features" / f"image-{dataset.name}-{dataset.split}-{key}.safetensors"

    def compute():
        n = len(dataset)
        out = []
        for i in tqdm(
            range(0, n, batch_size),
            desc=f"teacher features: {dataset.name} {dataset.split}",
            disable=not progress,
        ):
            images, _ = dataset.batch(torch.arange(i, min(i + batch_size, n)))
            out.append(teacher.image_features(images).float())
        return torch.cat(out) if out else torch.empty(0)

    return _cached(path, compute)


def text_features(teacher, prompts: list[str], cache_dir: str | Path | None = None) -> torch.Tensor:
    """teacher.encode_text of `prompts`, `[P, E]` (normalised)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _digest(teacher.text_key, prompts)
    path = cache_dir / "features" / f"text-{key}.safetensors"
    return _cached(path, lambda: teacher.encode_text(prompts))
