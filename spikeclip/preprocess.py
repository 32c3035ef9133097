"""Preprocessing of a user's images for a SpikeCLIP checkpoint: a file, a PIL image, an
`[H, W(, C)]` uint8 array or a `[3, H, W]` tensor -> the float tensor `[3, S, S]` the image
encoder takes, exactly as the training data reached it (RGB in [0, 1], resized as
`resize_images` does)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def resize_images(images: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """`[..., 3, H, W]` -> `[..., 3, size, size]` as the encoder sees its input (bilinear,
    align_corners=False; antialiased when shrinking if `antialias`: config.resize_antialias);
    an image already of that size passes unchanged. The one resize of the package: the encoder,
    the data loaders that resize ahead (spikeclip.streaming), Preprocess and the teachers call
    it, so that every path gives the encoder the same pixels."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    out = torch.nn.functional.interpolate(
        flat, size=(size, size), mode="bilinear", antialias=antialias, align_corners=False
    )
    return out.reshape(*lead, *out.shape[-3:])


@dataclass(frozen=True)
class Preprocess:
    """image -> float32 `[3, image_size, image_size]`: converted to RGB (grey repeated over
    the three channels, as the datasets are), scaled to [0, 1], resized with bilinear
    interpolation (antialiased when shrinking if `antialias`). The encoder's own resize is then
    a no-op; it normalises itself (config.image_normalize)."""

    image_size: int
    interpolation: str = "bilinear"
    antialias: bool = True

    @classmethod
    def for_config(cls, config) -> Preprocess:
        return cls(image_size=config.image_size, antialias=config.resize_antialias)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        known = {"image_size", "interpolation", "antialias"}
        if not isinstance(d, dict) or set(d) - known or "image_size" not in d:
            raise ValueError(f"not a preprocessing description: {d!r}")
        return cls(**d)

    def __call__(self, image) -> torch.Tensor:
        x = to_tensor(image)
        return resize_images(x.unsqueeze(0), self.image_size, self.antialias)[0]


def to_tensor(image) -> torch.Tensor:
    """A path, PIL image, numpy array (`[H, W]` or `[H, W, 3|4]`, uint8 or float in [0, 1])
    or tensor (`[3, H, W]` float in [0, 1]) -> float32 `[3, H, W]` in [0, 1]."""
    if isinstance(image, str | Path):
        with Image.open(image) as im:
            return to_tensor(im.convert("RGB"))
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"an image array must be [H, W] or [H, W, 3], got {arr.shape}")
        x = torch.from_numpy(np.array(arr)).permute(2, 0, 1)  # a copy: PIL arrays are read-only
        return x.float() / 255.0 if arr.dtype == np.uint8 else x.float()
    if isinstance(image, torch.Tensor):
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(
                f"an image tensor must be [3, H, W] (or [H, W]), got {tuple(image.shape)}"
            )
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        return image.float().expand(3, *image.shape[1:]).contiguous()
    raise TypeError(f"not an image: {type(image).__name__} (a path, PIL image, array or tensor)")


def image_files(paths) -> list[Path]:
    """Image files and folders (searched recursively, sorted) -> the image files; a path that
    does not exist, or a folder without images, is an error naming it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            found += files
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return found
