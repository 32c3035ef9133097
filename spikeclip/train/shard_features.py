"""`spikeclip features`: the teacher's image features of a shard directory, one file per shard,
computed once (under torchrun, each rank a disjoint set of shards) and read by key by every
later stage.

    index = compute_features("shards/fm-train", "lit", "features/fm-train", dist=dist)
    store = FeatureStore("features/fm-train", shards_meta, teacher)  # refuses other data
    rows = store.shard("shard-000003.tar")                           # {key: features [F]}

out/<shard stem>.safetensors holds `features` (float32 `[n, F]`: teacher.image_features, the
frozen backbone at the teacher's own resolution, from the original image), `labels` (int64,
-1 without) and, in its metadata, the sample keys in row order, the teacher's backbone key and
the shard directory's digest. A file is written atomically when its shard is done: a killed run
resumes with the shards that have no file. out/index.json (rank 0, last) lists them all;
out/teacher/ is the teacher (for `lit`: its projection, fitted here on the labelled features:
the offline stand-in for a pretrained CLIP, see spikeclip.teachers; on a seeded share of at
most `fit_images` images, so that memory does not grow with the corpus).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from tqdm.auto import tqdm

from spikeclip.checkpoint import CheckpointError, atomic_write_bytes, atomic_write_json, load_json
from spikeclip.shards import (
    ShardError,
    iter_shard,
    read_meta,
    sample_image,
    templates_of,
)
from spikeclip.teachers import LiTTeacher, load_teacher, resize_normalize
from spikeclip.train import distributed

INDEX = "index.json"
TEACHER_DIR = "teacher"


def feature_file(out: Path, shard: str) -> Path:
    return out / (shard.removesuffix(".tar") + ".safetensors")


def _save(path: Path, features, labels, keys, backbone_key: str, digest: str) -> None:
    meta = {
        "keys": json.dumps(keys),
        "backbone_key": backbone_key,
        "data_digest": digest,
    }
    atomic_write_bytes(path, save({"features": features, "labels": labels}, metadata=meta))


def read_feature_file(path: Path, backbone_key: str | None = None, digest: str | None = None):
    """(features [n, F], labels [n], keys, metadata) of one file, checked: a missing file,
    a damaged one, or one of another teacher or other data raises naming it."""
    if not path.is_file():
        raise ShardError(f"{path}: missing feature file (run `spikeclip features` on these shards)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            features, labels = f.get_tensor("features"), f.get_tensor("labels")
        keys = json.loads(meta["keys"])
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise ShardError(f"{path}: unreadable feature file ({exc})") from None
    if len(keys) != len(features) or len(labels) != len(features):
        raise ShardError(f"{path}: {len(keys)} keys for {len(features)} feature rows")
    if backbone_key is not None and meta.get("backbone_key") != backbone_key:
        raise ShardError(
            f"{path}: features of another teacher ({meta.get('backbone_key')!r}, expected "
            f"{backbone_key!r})"
        )
    if digest is not None and meta.get("data_digest") != digest:
        raise ShardError(f"{path}: features of other data (digest {meta.get('data_digest')!r}, "
                         f"the shards' is {digest!r})")  # fmt: skip
    return features, labels, keys, meta


def _embed_shard(teacher, shard_path: Path, expected: int, batch_size: int, device):
    """teacher.image_features of every sample of one shard, in shard order. A sample without
    an image, or one that does not decode, is a ShardError naming the shard and its key, as in
    every stage that streams the shards (`spikeclip shards` writes no such sample)."""
    size = teacher.image_size
    feats, labels, keys, pending = [], [], [], []

    def flush():
        if pending:
            with torch.no_grad():
                batch = torch.stack(pending).to(device)
                feats.append(teacher.image_features(batch).float().cpu())
            pending.clear()

    for sample in iter_shard(shard_path, expected):
        image = sample_image(sample, shard_path)
        # each image to the teacher's size on its own (sizes may differ within a corpus); the
        # same antialiased resize the teacher applies to a batch, so it then has nothing to do
        pending.append(resize_normalize(image[None], size, (0, 0, 0), (1, 1, 1))[0])
        labels.append(int(sample["cls"]) if "cls" in sample else -1)
        keys.append(sample["__key__"])
        if len(pending) == batch_size:
            flush()
    flush()
    if not keys:
        raise ShardError(f"{shard_path}: no samples")
    return torch.cat(feats), torch.tensor(labels, dtype=torch.int64), keys


def compute_features(
    shards,
    teacher_spec: str,
    out,
    *,
    dist=None,
    device="cpu",
    batch_size: int = 256,
    teacher_steps: int = 300,
    fit_images: int = 20000,
    seed: int = 0,
    progress: bool = False,
    log=print,
) -> dict:
    """Features of every shard of `shards` under `out` (see the module docstring); returns the
    index (rank 0; other ranks get None). Shards with a valid file are not recomputed."""
    dist = dist or distributed.Dist()
    shards, out = Path(shards), Path(out)
    meta = read_meta(shards)
    teacher = load_teacher(teacher_spec).to(device)
    out.mkdir(parents=True, exist_ok=True)
    names = [s["name"] for s in meta["shards"]]
    counts = {s["name"]: s["count"] for s in meta["shards"]}
    mine = names[dist.rank :: dist.world]
    done = computed = 0
    for name in tqdm(mine, desc=f"teacher features (rank {dist.rank})", disable=not progress):
        path = feature_file(out, name)
        if path.is_file():
            try:
                read_feature_file(path, teacher.backbone_key, meta["digest"])
                done += 1
                continue
            except ShardError as exc:
                log(f"recomputing {path.name}: {exc}")
        feats, labels, keys = _embed_shard(teacher, shards / name, counts[name], batch_size, device)
        _save(path, feats, labels, keys, teacher.backbone_key, meta["digest"])
        computed += 1
    log(f"rank {dist.rank}: {computed} shards computed, {done} already done")
    distributed.barrier(dist)
    if not dist.main:
        distributed.barrier(dist)
        return None
    teacher = teacher.cpu()  # the LiT fit and the saved teacher live on the CPU
    entries, dim = {}, None
    all_feats, all_labels = [], []
    fit_lit = isinstance(teacher, LiTTeacher) and teacher_spec == "lit"
    # the LiT fit draws steps x 256 rows: a seeded share of at most fit_images rows serves it
    # as well as all, and keeps this process's memory from growing with the corpus
    keep = min(1.0, fit_images / max(1, meta["count"]))
    gen = torch.Generator().manual_seed(seed)
    for name in names:
        feats, labels, keys, _ = read_feature_file(
            feature_file(out, name), teacher.backbone_key, meta["digest"]
        )
        entries[name] = {"file": feature_file(out, name).name, "count": len(keys)}
        dim = feats.shape[1]
        if fit_lit:
            chosen = torch.rand(len(labels), generator=gen) < keep
            all_feats.append(feats[chosen].clone())
            all_labels.append(labels[chosen].clone())
        del feats, labels
    if fit_lit:
        labels = torch.cat(all_labels)
        if (labels < 0).any() or not meta["class_names"]:
            raise ValueError(
                f"{shards}: the offline teacher `lit` is fitted on labelled images; these shards "
                "have none. Pass a fitted teacher (a directory with teacher.json) or clip:DIR."
            )
        classes = teacher.classifier(meta["class_names"], templates_of(meta))
        with torch.random.fork_rng():  # the fit starts from the seed's projection, whatever
            torch.manual_seed(seed)  # this process drew before (ranks, tests, other teachers)
            teacher.projection.reset_parameters()
        losses = teacher.fit(torch.cat(all_feats), labels, classes, steps=teacher_steps, seed=seed)
        log(f"teacher fitted: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    teacher.save(out / TEACHER_DIR)
    index = {
        "backbone_key": teacher.backbone_key,
        "data_digest": meta["digest"],
        "shards_dir": str(shards.resolve()),
        "dim": dim,
        "count": sum(e["count"] for e in entries.values()),
        "shards": entries,
        "teacher": TEACHER_DIR,
    }
    atomic_write_json(out / INDEX, index)
    distributed.barrier(dist)
    return index


class FeatureStore:
    """A features directory checked against the shard directory it is used with."""

    def __init__(self, root, shards_meta: dict):
        self.root = Path(root)
        if not (self.root / INDEX).is_file():
            raise ShardError(f"{self.root}: no {INDEX}: run `spikeclip features` to completion")
        try:
            self.index = load_json(self.root / INDEX)
        except CheckpointError as exc:
            raise ShardError(str(exc)) from None
        if self.index["data_digest"] != shards_meta["digest"]:
            raise ShardError(
                f"{self.root}: features of other data (digest {self.index['data_digest']}, the "
                f"shards' is {shards_meta['digest']})"
            )
        self.digest = shards_meta["digest"]
        self.backbone_key = self.index["backbone_key"]

    def teacher(self):
        teacher = load_teacher(self.root / self.index["teacher"])
        if teacher.backbone_key != self.backbone_key:
            raise ShardError(f"{self.root}: its teacher does not match its features")
        return teacher

    def shard(self, name: str) -> dict[str, torch.Tensor]:
        """{key: features `[F]`} of one shard (checked)."""
        entry = self.index["shards"].get(name)
        if entry is None:
            raise ShardError(f"{self.root}: no features for shard {name}")
        feats, _, keys, _ = read_feature_file(
            self.root / entry["file"], self.backbone_key, self.digest
        )
        return dict(zip(keys, feats, strict=True))
