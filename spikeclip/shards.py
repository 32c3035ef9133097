"""A corpus as WebDataset tar shards (the format of OpenCLIP and img2dataset), written once and
then streamed by every stage.

    meta = write_shards(dataset_source("fashion-mnist", "train"), "shards/fm-train")
    meta = write_shards(folder_source("imagenet/train", "train", seed=0), "shards/in1k-train")
    meta = write_shards(tsv_source("captions.tsv"), "shards/cc")

A shard `shard-000123.tar` holds, per sample, `<key>.<ext>` (the image: a JPEG/PNG file's own
bytes, PNG for array datasets), `<key>.cls` (the label index, when the source has labels) and
`<key>.txt` (a caption, when it has one). Keys are stable (a dataset's index, a file's path,
a TSV line number) and hold no dot. `meta.json`, written last, lists the shards with their
sample counts, the class names and templates, what was skipped (and why), and a digest of
everything written, so that features and checkpoints can name exactly the data they came from.
A shard is written under a temporary name and renamed when complete: a killed run leaves no
half shard behind, and meta.json only exists for a finished corpus.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from spikeclip.checkpoint import atomic_write_json
from spikeclip.data import GENERIC_TEMPLATES, folder_files, load_dataset, to_float_chw

META = "meta.json"
FORMAT = "spikeclip-shards/1"
IMAGE_EXTS = ("jpg", "jpeg", "png", "bmp", "gif", "webp", "npy")


class ShardError(ValueError):
    """A shard or its meta.json is missing, truncated, corrupt or of other data."""


@dataclass
class Sample:
    key: str
    image: bytes | None  # encoded image bytes
    ext: str  # the image's extension (one of IMAGE_EXTS)
    label: int | None = None
    caption: str | None = None
    source: str = ""  # where it came from (a path or a dataset index), for messages


@dataclass
class Source:
    """What to shard: samples in a fixed order, plus what meta.json records about them."""

    name: str
    split: str
    samples: Iterator[Sample]
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # filled while samples are drawn


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def dataset_source(name: str, split: str, data_dir=None) -> Source:
    """A dataset of `spikeclip.data` (images as PNG; keys `<name>-<split>-<index>`)."""
    ds = load_dataset(name, split, data_dir)

    def samples():
        images = ds.images.numpy()
        for i in range(len(ds)):
            yield Sample(
                f"{name}-{split}-{i:08d}", _png(images[i]), "png", int(ds.labels[i]),
                source=f"{name}[{split}][{i}]",
            )  # fmt: skip

    return Source(name, split, samples(), list(ds.class_names), list(ds.templates))


def sample_key(relpath: str) -> str:
    """A stable key for a file: its relative path made safe (no dot, no slash) + a short hash
    of the exact path, so that two paths never share a key."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", relpath.rsplit(".", 1)[0])[-80:]
    return f"{stem}-{zlib.crc32(relpath.encode()):08x}"


def _image_file(path: Path, source: Source, relpath: str) -> tuple[bytes, str] | None:
    """A file's bytes if PIL can read it as an image, else None (counted in source.skipped)."""
    ext = path.suffix.lower().lstrip(".")
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as exc:  # PIL raises many types for a bad file
        source.skipped.append({"path": relpath, "why": f"not a readable image ({exc})"})
        return None
    return data, ext


def folder_source(
    root, split: str = "all", seed: int = 0, test_fraction: float = 0.1, name: str = "folder"
) -> Source:
    """root/<class>/<image files>: classes in sorted order ("_" read as a space). split "train"
    or "test" takes a seeded share of the files (`spikeclip.data.folder_files`), "all" every
    file. Files are read one at a time: nothing scales with the folder in memory but the list
    of its paths."""
    classes, files = folder_files(root, split, seed, test_fraction)
    source = Source(name, split, iter(()), classes, list(GENERIC_TEMPLATES))

    def samples():
        for label, path, rel in files:
            got = _image_file(path, source, rel)
            if got is not None:
                yield Sample(sample_key(rel), got[0], got[1], label, source=rel)

    source.samples = samples()
    return source


def tsv_source(path, name: str = "tsv") -> Source:
    """Lines `image_path<TAB>caption` (paths relative to the TSV's folder); no labels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TSV file (lines: image_path<TAB>caption)")
    source = Source(name, "all", iter(()))

    def samples():
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if "\t" not in line:
                    raise ValueError(f"{path}:{number}: expected image_path<TAB>caption")
                rel, caption = line.split("\t", 1)
                if not caption.strip():
                    source.skipped.append({"path": rel, "why": f"line {number}: empty caption"})
                    continue
                image = path.parent / rel
                if not image.is_file():
                    source.skipped.append({"path": rel, "why": f"line {number}: no such file"})
                    continue
                got = _image_file(image, source, rel)
                if got is not None:
                    key = f"line{number:09d}-{sample_key(rel)}"
                    yield Sample(key, got[0], got[1], None, caption.strip(), source=rel)

    source.samples = samples()
    return source


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def write_shards(source: Source, out, shard_size: int = 1000, progress: bool = False) -> dict:
    """Writes `source` as shards of `shard_size` samples under `out`, then out/meta.json."""
    import webdataset as wds

    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    out = Path(out)
    if (out / META).exists():
        raise FileExistsError(f"{out} already holds shards ({META}): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    shards: list[dict] = []
    keys: set[str] = set()
    writer = tmp = None
    count = 0
    captions = False

    def close():
        nonlocal writer
        if writer is not None:
            writer.close()
            os.replace(tmp, out / shards[-1]["name"])
            writer = None

    for sample in tqdm(source.samples, desc=f"shards of {source.name}", disable=not progress):
        if sample.key in keys:
            raise ValueError(f"{sample.source}: key {sample.key!r} occurs twice")
        keys.add(sample.key)
        if writer is None or shards[-1]["count"] == shard_size:
            close()
            shards.append({"name": shard_name(len(shards)), "count": 0})
            tmp = out / (shards[-1]["name"] + ".partial")
            writer = wds.TarWriter(str(tmp), encoder=False, mtime=0)
        record = {"__key__": sample.key, sample.ext: sample.image}
        if sample.label is not None:
            record["cls"] = str(sample.label).encode()
        if sample.caption is not None:
            record["txt"] = sample.caption.encode()
            captions = True
        writer.write(record)
        for part in (sample.key, sample.ext, sample.image, record.get("cls"), record.get("txt")):
            digest.update(part if isinstance(part, bytes) else str(part).encode())
            digest.update(b"\0")
        shards[-1]["count"] += 1
        count += 1
    close()
    if count == 0:
        raise ValueError(f"{source.name}: no samples to write ({len(source.skipped)} skipped)")
    meta = {
        "format": FORMAT,
        "name": source.name,
        "split": source.split,
        "count": count,
        "shards": shards,
        "class_names": source.class_names,
        "templates": source.templates,
        "has_labels": bool(source.class_names),
        "has_captions": captions,
        "skipped": source.skipped,
        "digest": digest.hexdigest()[:32],
    }
    atomic_write_json(out / META, meta)
    write_clip_benchmark_layout(out, meta)
    return meta


def write_clip_benchmark_layout(out: Path, meta: dict) -> None:
    """The files LAION's clip_benchmark reads from a WebDataset directory (its `wds/` datasets,
    `--dataset_root OUT --split SPLIT`), beside ours: OUT/SPLIT/0.tar ... (links to our shards)
    and OUT/SPLIT/nshards.txt; with labels OUT/classnames.txt (label order) and
    OUT/zeroshot_classification_templates.txt (our templates with `{c}`); captions without
    labels: OUT/dataset_type.txt = retrieval."""
    split = out / meta["split"]
    split.mkdir(exist_ok=True)
    for i, shard in enumerate(meta["shards"]):
        link = split / f"{i}.tar"
        if not link.exists():
            try:
                link.symlink_to(Path("..") / shard["name"])
            except OSError:  # no symbolic links here: a hard link
                os.link(out / shard["name"], link)
    (split / "nshards.txt").write_text(f"{len(meta['shards'])}\n")
    if meta["has_labels"]:
        (out / "classnames.txt").write_text("".join(f"{c}\n" for c in meta["class_names"]))
        templates = [t.replace("{}", "{c}") for t in templates_of(meta)]
        (out / "zeroshot_classification_templates.txt").write_text("".join(
            f"{t}\n" for t in templates))  # fmt: skip
    elif meta.get("has_captions"):
        (out / "dataset_type.txt").write_text("retrieval\n")


def templates_of(meta: dict) -> list[str]:
    """The prompt templates of a shard directory: its source's, else the generic ones."""
    return list(meta["templates"] or GENERIC_TEMPLATES)


def read_meta(root) -> dict:
    """out/meta.json of a finished shard directory, checked."""
    root = Path(root)
    path = root / META
    if not path.is_file():
        raise ShardError(
            f"{root}: no {META}: not a shard directory, or `spikeclip shards` did not finish"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ShardError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if not meta.get("shards"):
        raise ShardError(f"{path}: lists no shards")
    for s in meta["shards"]:
        if not (root / s["name"]).is_file():
            raise ShardError(f"{root / s['name']}: listed in {META} but missing")
    return meta


def iter_shard(path, expected: int | None = None) -> Iterator[dict]:
    """The samples of one shard as dicts: `__key__` and one entry per file extension (bytes).
    A truncated or corrupt tar raises ShardError naming the shard; so does one that holds
    another number of samples than `expected` (meta.json's count: tar readers end quietly at
    a cut between two members, so the count is what catches a shard cut short)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    path = Path(path)
    n = 0
    try:
        with open(path, "rb") as f:
            for sample in group_by_keys(tar_file_expander([{"url": str(path), "stream": f}])):
                n += 1
                yield sample
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ShardError(
            f"{path}: truncated or corrupt shard ({type(exc).__name__}: {exc})"
        ) from None
    if expected is not None and n != expected:
        raise ShardError(
            f"{path}: truncated or corrupt shard ({n} samples, meta.json lists {expected})"
        )


def image_field(sample: dict) -> str | None:
    """Which entry of a shard sample holds its image (None if it has none)."""
    return next((ext for ext in IMAGE_EXTS if ext in sample), None)


def sample_image(sample: dict, shard) -> object:
    """The image of a sample read from `shard` (decode_image), or a ShardError naming the shard
    and the sample's key: it has none, or it does not decode."""
    key, ext = sample["__key__"], image_field(sample)
    if ext is None:
        raise ShardError(f"{shard}: sample {key!r} has no image (fields {sorted(sample)})")
    try:
        return decode_image(sample, ext)
    except Exception as exc:  # PIL raises many types for a bad image
        raise ShardError(f"{shard}: sample {key!r}: undecodable image ({exc})") from None


def decode_image(sample: dict, ext: str):
    """The sample's image as a float32 tensor `[3, H, W]` in [0, 1] (grey repeated)."""
    data = sample[ext]
    if ext == "npy":
        array = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)

    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ShardError(f"{sample['__key__']}: image must be uint8 [H, W(, 3)]")
    return to_float_chw(torch.from_numpy(array.copy()))
