"""Streaming a shard directory (spikeclip.shards) into training and evaluation, with torch's
DataLoader workers doing the tar reading, decoding and resizing.

    stream = ShardStream("shards/fm-train", image_size=28, seed=0, stage="align")
    stream.set_epoch(epoch, rank=r, world=w, skip=None)
    for batch in stream.loader(batch_size=64, workers=2):
        batch["image"], batch["label"], batch["key"], batch["worker"], batch["index"]

Who reads what, per epoch: the shards are put in an order drawn from (seed, stage, epoch);
rank r takes every world-th shard of it from the r-th, and its worker w every W-th of those
from the w-th. Each worker passes its samples through a shuffle buffer seeded from (seed,
stage, epoch, rank, worker). So the stream is a function of those numbers alone: a sample's
position in its worker's stream (`index`) says exactly what was consumed, and `skip` (per
worker, the count already consumed) resumes an epoch without seeing a sample twice or
leaving one out. Skipped samples are read from the tar but not decoded. Memory is bounded by
the shuffle buffer and the loader's prefetch, never by the corpus.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from spikeclip.preprocess import resize_images
from spikeclip.shards import (
    ShardError,
    iter_shard,
    read_meta,
    sample_image,
    templates_of,
)


def resize(image: torch.Tensor, size: int | None, antialias: bool = True) -> torch.Tensor:
    """`[3, H, W]` -> `[3, size, size]` exactly as the image encoder resizes its input (pass its
    config.resize_antialias), so that a resized image then passes through it unchanged (None:
    keep the size)."""
    return image if size is None else resize_images(image, size, antialias)


def _seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


class ShardStream(torch.utils.data.IterableDataset):
    """Samples of a shard directory as dicts: `key` (str), `image` (float32 `[3, S, S]` in
    [0, 1], S = image_size; the original size when None), `label` (int64, -1 without labels),
    `worker`, `index` (position in that worker's stream this epoch), and with `features`
    (a FeatureStore of these shards) `target`: the sample's teacher features `[F]`.
    A sample without an image, or one that does not decode, raises ShardError naming the
    shard and the key (`spikeclip shards` writes no such sample)."""

    def __init__(
        self,
        root,
        *,
        image_size: int | None,
        antialias: bool = True,
        seed: int = 0,
        stage: str = "",
        shuffle_buffer: int = 1000,
        shuffle: bool = True,
        features=None,
    ):
        super().__init__()
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.image_size, self.antialias = image_size, antialias
        self.seed, self.stage = seed, stage
        self.shuffle_buffer = max(1, int(shuffle_buffer)) if shuffle else 1
        self.shuffle = shuffle
        self.features = features  # a FeatureStore: each sample gets its teacher features
        self.set_epoch(0)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def templates(self) -> list[str]:
        return templates_of(self.meta)

    def __len__(self) -> int:
        return int(self.meta["count"])

    # ---- who reads what -----------------------------------------------------------------

    def shard_order(self, epoch: int) -> list[dict]:
        shards = list(self.meta["shards"])
        if self.shuffle:
            random.Random(_seed(self.seed, self.stage, epoch)).shuffle(shards)
        return shards

    def rank_shards(self, epoch: int, rank: int, world: int) -> list[dict]:
        return self.shard_order(epoch)[rank::world]

    def set_epoch(self, epoch: int, rank: int = 0, world: int = 1, skip=None) -> None:
        """What the next iteration reads: this rank's part of `epoch`, each worker w leaving
        out the first skip[w] samples of its stream (a resumed epoch)."""
        if world > len(self.meta["shards"]):
            raise ShardError(
                f"{self.root}: {len(self.meta['shards'])} shards cannot be split over {world} "
                "ranks: write smaller shards (spikeclip shards --shard-size)"
            )
        self.epoch, self.rank, self.world = epoch, rank, world
        self.skip = list(skip or [])

    # ---- iteration ----------------------------------------------------------------------

    def _samples(self, shards: list[dict]) -> Iterator[dict]:
        for s in shards:
            rows = self.features.shard(s["name"]) if self.features is not None else None
            for sample in iter_shard(self.root / s["name"], s["count"]):
                sample["__shard__"] = s["name"]
                if rows is not None:
                    if sample["__key__"] not in rows:
                        raise ShardError(
                            f"{self.features.root}: no features for sample {sample['__key__']!r}"
                            f" of {s['name']}"
                        )
                    sample["__target__"] = rows[sample["__key__"]]
                yield sample

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        shards = self.rank_shards(self.epoch, self.rank, self.world)[worker::workers]
        rng = random.Random(_seed(self.seed, self.stage, self.epoch, self.rank, worker))
        skip = self.skip[worker] if worker < len(self.skip) else 0
        buffer: list[dict] = []
        index = 0

        def emit(sample):
            nonlocal index
            index += 1
            if index <= skip:
                return None
            return self._decode(sample, worker, index - 1)

        for sample in self._samples(shards):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            j = rng.randrange(len(buffer))
            buffer[j], sample = sample, buffer[j]
            out = emit(sample)
            if out is not None:
                yield out
        rng.shuffle(buffer)
        for sample in buffer:
            out = emit(sample)
            if out is not None:
                yield out

    def _decode(self, sample: dict, worker: int, index: int) -> dict:
        key = sample["__key__"]
        image = sample_image(sample, self.root / sample["__shard__"])
        image = resize(image, self.image_size, self.antialias)
        label = int(sample["cls"]) if "cls" in sample else -1
        out = {"key": key, "image": image, "label": label, "worker": worker, "index": index}
        if "__target__" in sample:
            out["target"] = sample["__target__"]
        if "txt" in sample:  # captions, one per line
            out["captions"] = sample["txt"].decode("utf-8").splitlines()
        return out

    def loader(self, batch_size: int, workers: int = 0) -> torch.utils.data.DataLoader:
        """Batches of this rank's stream: collated per worker (a batch holds one worker's
        samples), workers>0 decode in parallel."""
        return torch.utils.data.DataLoader(
            self,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
        )


def collate(samples: list[dict]) -> dict:
    batch = {
        "key": [s["key"] for s in samples],
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "worker": torch.tensor([s["worker"] for s in samples], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }
    if "target" in samples[0]:
        batch["target"] = torch.stack([s["target"] for s in samples])
    if any("captions" in s for s in samples):  # a sample without captions: none ([])
        batch["captions"] = [s.get("captions", []) for s in samples]
    return batch


def steps_per_epoch(stream: ShardStream, epoch: int, world: int, local_batch: int, workers: int):
    """Batches every rank can take in `epoch`: the fewest of any rank (DDP steps in lock-step),
    counted as the loader batches them (per worker, each worker's last batch may be short)."""
    per_rank = []
    for rank in range(world):
        shards = stream.rank_shards(epoch, rank, world)
        w = max(1, workers)
        per_rank.append(
            sum(-(-sum(s["count"] for s in shards[i::w]) // local_batch) for i in range(w))
        )
    return min(per_rank)


class StreamBatches:
    """A ShardStream as the batch source of a training stage (spikeclip.train.loop.run_stage):
    this rank's batches of global_batch / world samples, the same number of steps on every
    rank, and this rank's position (samples consumed per worker) for checkpoints."""

    def __init__(self, stream: ShardStream, batch_size: int, dist, workers: int = 0):
        self.local = batch_size // dist.world
        if self.local < 1:
            raise ValueError(f"batch size {batch_size} is smaller than the {dist.world} ranks")
        self.stream, self.dist, self.workers = stream, dist, int(workers)
        self.consumed = [0] * max(1, self.workers)

    def steps_per_epoch(self, epoch: int) -> int:
        return steps_per_epoch(self.stream, epoch, self.dist.world, self.local, self.workers)

    def batches(self, epoch: int, first_step: int, position: dict | None):
        if first_step and position is None:
            raise ValueError(
                "resuming a streamed epoch needs the stream position of the checkpoint"
            )
        skip = list(position["consumed"]) if position else [0] * max(1, self.workers)
        if len(skip) != max(1, self.workers):
            raise ValueError(
                f"the checkpoint's stream position is of {len(skip)} loader workers: resume "
                f"with as many (--workers {len(skip)}), now {self.workers}"
            )
        self.consumed = skip
        self.stream.set_epoch(epoch, self.dist.rank, self.dist.world, skip)
        for batch in self.stream.loader(self.local, self.workers):
            self.consumed[int(batch["worker"][0])] = int(batch["index"][-1]) + 1
            yield batch

    def position(self) -> dict:
        return {"consumed": list(self.consumed)}
