"""The recipe at corpus scale on generated data: shards from every source (round trip of
images, labels, captions, keys), the stream's split by rank and worker, teacher features by
shard (one rank, two ranks under torchrun, resumed), a stage killed mid-epoch and resumed
(each sample once), align -> finetune -> eval through the CLI, and bad input named."""

import importlib
import importlib.abc
import importlib.machinery
import io
import json
import os
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import fake_idx_dataset
from PIL import Image

from spikeclip.checkpoint import load_tensors
from spikeclip.cli import main as cli
from spikeclip.shards import (
    ShardError,
    dataset_source,
    folder_source,
    iter_shard,
    read_meta,
    tsv_source,
    write_shards,
)
from spikeclip.streaming import ShardStream, StreamBatches, collate, steps_per_epoch
from spikeclip.train import Interrupted
from spikeclip.train.distributed import Dist
from spikeclip.train.loop import RunContext, StageConfig, run_stage
from spikeclip.train.shard_features import (
    FeatureStore,
    compute_features,
    feature_file,
    read_feature_file,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    fake_idx_dataset(root, n=40, n_test=20, seed=3)
    return root


@pytest.fixture(scope="module")
def fm_shards(tmp_path_factory, fm_dir):
    out = tmp_path_factory.mktemp("shards") / "fm-train"
    write_shards(dataset_source("fashion-mnist", "train", fm_dir), out, shard_size=7)
    return out


@pytest.fixture(scope="module")
def fm_features(tmp_path_factory, fm_shards, clip_dir):
    out = tmp_path_factory.mktemp("feat") / "fm-train"
    compute_features(fm_shards, f"clip:{clip_dir}", out, batch_size=8, log=lambda *_: None)
    return out


def all_samples(root):
    meta = read_meta(root)
    return [s for shard in meta["shards"] for s in iter_shard(Path(root) / shard["name"])]


def test_dataset_shards_round_trip(fm_dir, fm_shards):
    from spikeclip.data import load_dataset

    ds = load_dataset("fashion-mnist", "train", fm_dir)
    meta = read_meta(fm_shards)
    assert meta["count"] == 40 and [s["count"] for s in meta["shards"]] == [7] * 5 + [5]
    assert meta["class_names"] == ds.class_names and meta["templates"] == ds.templates
    samples = all_samples(fm_shards)
    assert [s["__key__"] for s in samples] == [f"fashion-mnist-train-{i:08d}" for i in range(40)]
    for i, s in enumerate(samples):
        image = np.asarray(Image.open(io.BytesIO(s["png"])))
        assert np.array_equal(image, ds.images[i].numpy())
        assert int(s["cls"]) == int(ds.labels[i])
    with pytest.raises(FileExistsError):  # never over a finished corpus
        write_shards(dataset_source("fashion-mnist", "train", fm_dir), fm_shards)


def make_folder(root, per_class=6):
    rng = np.random.default_rng(0)
    files = {}
    for c, cls in enumerate(["cat", "sea_lion"]):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            ext = "png" if i % 2 else "jpg"
            path = root / cls / f"img.{i}.{ext}"
            size = (20 + i, 16)  # sizes differ within the folder
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
            files[f"{cls}/{path.name}"] = (path.read_bytes(), c)
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "cat" / "notes.txt").write_text("not an image")
    return files


def test_folder_shards_split_and_skip(tmp_path):
    files = make_folder(tmp_path / "folder")
    metas, seen = {}, {}
    for split in ("train", "test"):
        src = folder_source(tmp_path / "folder", split, seed=1, test_fraction=0.3)
        metas[split] = write_shards(src, tmp_path / split, shard_size=4)
        seen[split] = {}
        for s in all_samples(tmp_path / split):
            ext = "png" if "png" in s else "jpg"
            seen[split][s["__key__"]] = (s[ext], int(s["cls"]))
    assert metas["train"]["class_names"] == ["cat", "sea lion"]
    assert metas["train"]["templates"]  # generic prompts, so that a folder corpus is usable
    assert set(seen["train"]).isdisjoint(seen["test"]) and seen["test"]  # a real split
    got = {**seen["train"], **seen["test"]}
    assert sorted(got.values()) == sorted(files.values())  # every file once, original bytes
    skipped = metas["train"]["skipped"] + metas["test"]["skipped"]
    assert [s["path"] for s in skipped] == ["cat/broken.jpg"]
    assert "not a readable image" in skipped[0]["why"]
    with pytest.raises(ValueError, match="split"):
        folder_source(tmp_path / "folder", "val")


def test_tsv_shards_keep_captions(tmp_path):
    make_folder(tmp_path / "img", per_class=2)
    lines = ["cat/img.0.jpg\ta cat on a mat", "sea_lion/img.1.png\ta sea lion", "",
             "cat/missing.png\tgone"]  # fmt: skip
    (tmp_path / "img" / "c.tsv").write_text("\n".join(lines) + "\n")
    meta = write_shards(tsv_source(tmp_path / "img" / "c.tsv"), tmp_path / "s")
    samples = all_samples(tmp_path / "s")
    assert [s["txt"].decode() for s in samples] == ["a cat on a mat", "a sea lion"]
    assert all("cls" not in s for s in samples) and not meta["has_labels"]
    assert meta["skipped"][0]["path"] == "cat/missing.png"
    assert samples[0]["jpg"] == (tmp_path / "img" / "cat" / "img.0.jpg").read_bytes()


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_stream_covers_every_sample_once(fm_shards, world, workers):
    stream = ShardStream(fm_shards, image_size=16, seed=5, stage="s", shuffle_buffer=4)
    for epoch in (0, 1):
        keys = []
        for rank in range(world):
            stream.set_epoch(epoch, rank, world)
            for batch in stream.loader(3, workers):
                assert batch["image"].shape[1:] == (3, 16, 16)
                keys += batch["key"]
        assert sorted(keys) == sorted(s["__key__"] for s in all_samples(fm_shards))
    # the order depends on the epoch, not on the run
    stream.set_epoch(0)
    a = [k for b in stream.loader(40) for k in b["key"]]
    stream.set_epoch(1)
    b = [k for b in stream.loader(40) for k in b["key"]]
    stream.set_epoch(0)
    assert a != b and a == [k for b in stream.loader(40) for k in b["key"]]


def test_streamed_images_equal_the_in_memory_ones(fm_dir, fm_shards):
    from spikeclip.data import load_dataset

    ds = load_dataset("fashion-mnist", "train", fm_dir)
    stream = ShardStream(fm_shards, image_size=None, shuffle=False)
    batch = next(iter(stream.loader(40)))
    index = [int(k.rsplit("-", 1)[1]) for k in batch["key"]]
    images, labels = ds.batch(torch.tensor(index))
    assert torch.equal(batch["image"], images) and torch.equal(batch["label"], labels)
    # resized in the workers exactly as the encoder resizes what it is given
    from spikeclip.preprocess import resize_images

    small = next(iter(ShardStream(fm_shards, image_size=12, shuffle=False).loader(40)))
    assert torch.equal(small["image"], resize_images(images, 12))


def test_features_match_the_teacher_by_key(fm_dir, fm_shards, fm_features, clip_dir):
    from spikeclip.data import load_dataset
    from spikeclip.teachers import load_teacher

    teacher = load_teacher(f"clip:{clip_dir}")
    ds = load_dataset("fashion-mnist", "train", fm_dir)
    store = FeatureStore(fm_features, read_meta(fm_shards))
    rows = store.shard("shard-000002.tar")
    keys = sorted(rows)
    index = torch.tensor([int(k.rsplit("-", 1)[1]) for k in keys])
    with torch.no_grad():
        want = teacher.image_features(ds.batch(index)[0])
    torch.testing.assert_close(torch.stack([rows[k] for k in keys]), want, rtol=1e-5, atol=1e-5)
    stream = ShardStream(fm_shards, image_size=28, features=store, shuffle_buffer=3)
    batch = next(iter(stream.loader(5)))
    for key, target in zip(batch["key"], batch["target"], strict=True):
        assert torch.equal(target, store.shard(f"shard-{int(key[-8:]) // 7:06d}.tar")[key])


def test_features_refuse_other_data_and_name_missing_files(tmp_path, fm_dir, fm_features, clip_dir):
    other = tmp_path / "test-shards"
    write_shards(dataset_source("fashion-mnist", "test", fm_dir), other, shard_size=7)
    with pytest.raises(ShardError, match="other data"):
        FeatureStore(fm_features, read_meta(other))
    copy = tmp_path / "feat"
    import shutil

    shutil.copytree(fm_features, copy)
    feature_file(copy, "shard-000001.tar").unlink()
    store = FeatureStore(
        copy, read_meta(Path(json.loads((copy / "index.json").read_text())["shards_dir"]))
    )
    with pytest.raises(ShardError, match=r"shard-000001.safetensors: missing"):
        store.shard("shard-000001.tar")
    feature_file(copy, "shard-000002.tar").write_bytes(b"garbage")
    with pytest.raises(ShardError, match=r"shard-000002.safetensors: unreadable"):
        store.shard("shard-000002.tar")
    with pytest.raises(ShardError, match=r"no index\.json"):
        FeatureStore(tmp_path, read_meta(other))
    with pytest.raises(ShardError, match="features of another teacher"):
        read_feature_file(feature_file(fm_features, "shard-000000.tar"), "efficientnet/other")


def test_empty_sources_and_shard_lists(tmp_path, fm_shards):
    import shutil

    from spikeclip.shards import Source

    with pytest.raises(ValueError, match="no samples to write"):
        write_shards(Source("nothing", "all", iter(())), tmp_path / "none")
    assert not (tmp_path / "none" / "meta.json").exists()
    empty = tmp_path / "empty"
    shutil.copytree(fm_shards, empty)
    meta = json.loads((empty / "meta.json").read_text())
    (empty / "meta.json").write_text(json.dumps({**meta, "shards": []}))
    with pytest.raises(ShardError, match="lists no shards"):
        ShardStream(empty, image_size=8)
    stream = ShardStream(fm_shards, image_size=8)
    with pytest.raises(ShardError, match="6 shards cannot be split over 7 ranks"):
        stream.set_epoch(0, 0, 7)


def test_corrupt_shards_are_named(tmp_path, fm_shards, clip_dir):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(fm_shards, bad)
    data = (bad / "shard-000001.tar").read_bytes()
    (bad / "shard-000001.tar").write_bytes(data[: len(data) // 2 + 100])  # truncated
    stream = ShardStream(bad, image_size=16)
    with pytest.raises(ShardError, match=r"shard-000001.tar: truncated or corrupt"):
        for _ in stream.loader(4):
            pass
    (bad / "shard-000003.tar").unlink()
    with pytest.raises(ShardError, match=r"shard-000003.tar: listed in meta.json but missing"):
        read_meta(bad)
    # a sample with no image (a tar written by hand)
    odd = tmp_path / "odd"
    shutil.copytree(fm_shards, odd)
    with tarfile.open(odd / "shard-000000.tar", "w") as tar:
        info = tarfile.TarInfo("lonely.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    meta = json.loads((odd / "meta.json").read_text())
    meta["shards"][0]["count"] = 1
    (odd / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ShardError, match=r"shard-000000.tar: sample 'lonely' has no image"):
        for _ in ShardStream(odd, image_size=16, shuffle=False).loader(4):
            pass
    # the features stage stops at it too, with the same words (it once skipped it quietly,
    # and the stages after it then stopped)
    with pytest.raises(ShardError, match=r"shard-000000.tar: sample 'lonely' has no image"):
        compute_features(odd, f"clip:{clip_dir}", tmp_path / "f", batch_size=8, log=print)
    with pytest.raises(ShardError, match=r"no meta.json"):
        read_meta(tmp_path)


class KeyLog(torch.nn.Module):
    """A one-parameter 'model' whose steps log the keys they see."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.keys: list[str] = []

    def step(self, module, batch):
        self.keys += batch["key"]
        return (module.w * batch["image"].mean()).sum(), {}


@pytest.mark.parametrize("workers", [0, 2])
def test_stage_killed_mid_epoch_sees_each_sample_once(tmp_path, fm_shards, workers):
    stage = StageConfig("s", epochs=2, batch_size=3, lr=1e-3, lr_final=1e-4, checkpoint_every=2)

    def run(out, stop=None, model=None):
        model = model or KeyLog()
        stream = ShardStream(fm_shards, image_size=8, seed=1, stage="s", shuffle_buffer=5)
        ctx = RunContext(out, progress=False, stop_after_steps=stop)
        summary = run_stage(stage, model, model, StreamBatches(stream, 3, Dist(), workers),
                            model.step, ctx)  # fmt: skip
        return model, summary

    whole, summary = run(tmp_path / "a")
    per_epoch = steps_per_epoch(ShardStream(fm_shards, image_size=8), 0, 1, 3, workers)
    assert summary["steps"] == 2 * per_epoch
    first = whole.keys[: len(whole.keys) // 2]
    assert sorted(first) == sorted(s["__key__"] for s in all_samples(fm_shards))

    killed = KeyLog()
    with pytest.raises(Interrupted):
        run(tmp_path / "b", stop=5, model=killed)  # last checkpoint: step 4, mid epoch 0
    resumed, summary_b = run(tmp_path / "b")
    assert summary_b["steps"] == summary["steps"]
    epoch0 = killed.keys[: 4 * 3] + resumed.keys[: len(first) - 4 * 3]
    assert sorted(epoch0) == sorted(first)  # each sample of epoch 0 exactly once
    assert sorted(resumed.keys[len(first) - 4 * 3 :]) == sorted(whole.keys[len(first) :])


def test_align_finetune_eval_end_to_end(
    tmp_path, fm_dir, fm_shards, fm_features, clip_dir, monkeypatch
):
    common = ["--config", "tiny", "--batch", "8", "--checkpoint-every", "2", "--workers", "0",
              "--no-progress"]  # fmt: skip
    align = ["align", "--data", str(fm_shards), "--features", str(fm_features), "--epochs", "1",
             "--text-epochs", "1", "--out", str(tmp_path / "a"), *common]  # fmt: skip
    assert cli(align) == 0
    assert cli(align) == 1  # a second start without --resume fails, naming --resume
    assert cli([*align, "--resume"]) == 0  # a finished run resumes to the same end
    ckpt = tmp_path / "a" / "checkpoint"
    assert cli(["eval", "--checkpoint", str(ckpt), "--dataset", "fashion-mnist", "--data-dir",
                str(fm_dir), "--teacher", "--no-progress", "--json",
                str(tmp_path / "zero.json")]) == 0  # fmt: skip
    zero = json.loads((tmp_path / "zero.json").read_text())
    assert zero["images"] == 20 and 0 <= zero["top1"] <= zero["top5"] <= 1
    assert set(zero["per_class"]) == set(read_meta(fm_shards)["class_names"])
    assert 0 <= zero["teacher_top1"] <= 1
    ft = ["finetune", "--init", str(ckpt), "--data", str(fm_shards), "--features",
          str(fm_features), "--epochs", "1", "--out", str(tmp_path / "f"), *common]  # fmt: skip
    assert cli(ft) == 0
    ft_ds = ["finetune", "--init", str(ckpt), "--dataset", "fashion-mnist", "--data-dir",
             str(fm_dir), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--out",
             str(tmp_path / "g"), *common]  # fmt: skip
    assert cli(ft_ds) == 0
    from spikeclip.checkpoint import load_tensors

    before = load_tensors(ckpt / "model.safetensors")
    after = load_tensors(tmp_path / "f" / "checkpoint" / "model.safetensors")
    assert torch.equal(before["text_encoder.fc1.weight"], after["text_encoder.fc1.weight"])
    assert not torch.equal(before["image_encoder.proj.weight"], after["image_encoder.proj.weight"])
    test_shards = tmp_path / "test-shards"
    assert cli(["shards", "--dataset", "fashion-mnist", "--data-dir", str(fm_dir), "--split",
                "test", "--out", str(test_shards), "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "eval.json"
    assert cli(["eval", "--checkpoint", str(tmp_path / "f" / "checkpoint"), "--data",
                str(test_shards), "--json", str(out), "--no-progress"]) == 0  # fmt: skip
    on_shards = json.loads(out.read_text())
    assert cli(["eval", "--checkpoint", str(tmp_path / "f" / "checkpoint"), "--dataset",
                "fashion-mnist", "--data-dir", str(fm_dir), "--json", str(out),
                "--no-progress"]) == 0  # fmt: skip
    in_memory = json.loads(out.read_text())
    assert on_shards["top1"] == pytest.approx(in_memory["top1"])  # the same images either way
    assert on_shards["per_class"] == pytest.approx(in_memory["per_class"])
    # clip_benchmark's result fields beside ours
    assert on_shards["task"] == "zeroshot_classification"
    assert on_shards["dataset"] == "wds/test-shards" and on_shards["model"].endswith("checkpoint")
    recalls = [v for v in on_shards["per_class"].values() if v is not None]
    want = {"acc1": on_shards["top1"], "acc5": on_shards["top5"],
            "mean_per_class_recall": sum(recalls) / len(recalls)}  # fmt: skip
    assert on_shards["metrics"] == pytest.approx(want)
    check_clip_benchmark(test_shards, tmp_path / "f" / "checkpoint", on_shards, monkeypatch)
    check_retrieval(tmp_path, tmp_path / "f" / "checkpoint")
    assert cli(["finetune", "--init", str(ckpt), "--out", str(tmp_path / "h")]) == 2


def check_retrieval(tmp_path: Path, checkpoint: Path) -> None:
    """`eval --task retrieval` on captioned TSV shards (an image on several lines: one image
    with several captions) equals a brute-force recall@k; model.retrieve equals the cosines."""
    from spikeclip.models import SpikeCLIP

    make_folder(tmp_path / "cap", per_class=4)
    files = sorted(str(p.relative_to(tmp_path / "cap")) for p in (tmp_path / "cap").rglob("img.*"))
    words = ["a cat", "a sea lion", "a dog", "a mat", "the sea", "a tree", "a car", "a shoe"]
    lines, owner = [], []
    for i, f in enumerate(files):
        for j in range(1 + i % 3):  # 1 to 3 captions per image
            lines.append(f"{f}\t{words[(i + 3 * j) % len(words)]} number {i}")
            owner.append(i)
    # a line with an empty caption is skipped (and listed), not an image without captions
    (tmp_path / "cap" / "c.tsv").write_text("\n".join(lines) + f"\n{files[0]}\t \n")
    shards = tmp_path / "cap-shards"
    assert cli(["shards", "--dataset", "tsv", "--data-dir", str(tmp_path / "cap" / "c.tsv"),
                "--out", str(shards), "--shard-size", "5", "--no-progress"]) == 0  # fmt: skip
    assert (shards / "dataset_type.txt").read_text().strip() == "retrieval"
    skipped = read_meta(shards)["skipped"]
    assert [s["why"] for s in skipped] == [f"line {len(lines) + 1}: empty caption"]
    out = tmp_path / "retrieval.json"
    assert cli(["eval", "--checkpoint", str(checkpoint), "--task", "retrieval", "--data",
                str(shards), "--json", str(out), "--no-progress"]) == 0  # fmt: skip
    got = json.loads(out.read_text())
    assert (got["images"], got["captions"], got["task"]) == (len(files), len(lines),
                                                             "zeroshot_retrieval")  # fmt: skip
    assert got["samples_without_captions"] == 0
    model = SpikeCLIP.load(checkpoint)
    size = model.config.image_size
    from spikeclip.preprocess import to_tensor
    from spikeclip.streaming import resize

    imgs = torch.stack([resize(to_tensor(tmp_path / "cap" / f), size, model.config.resize_antialias)
                        for f in files])  # fmt: skip
    captions = [line.split("\t")[1] for line in lines]
    with torch.no_grad():
        sim = model.encode_text(captions) @ model.encode_image(imgs).t()  # [captions, images]
    for k in (1, 5, 10):
        hits_t2i = [owner[c] in sim[c].topk(min(k, len(files))).indices.tolist()
                    for c in range(len(captions))]  # fmt: skip
        hits_i2t = [any(owner[c] == i for c in sim[:, i].topk(min(k, len(captions))).indices)
                    for i in range(len(files))]  # fmt: skip
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(np.mean(hits_t2i), abs=1e-6)
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(np.mean(hits_i2t), abs=1e-6)
    assert got["metrics"]["text_retrieval_recall@10"] == got["text_retrieval_recall@10"]
    found = model.retrieve(imgs, captions, k=3)
    torch.testing.assert_close(found.similarity, sim.t(), rtol=1e-5, atol=1e-6)
    assert torch.equal(found.texts, found.similarity.topk(3, dim=1).indices)
    assert torch.equal(found.images, found.similarity.t().topk(3, dim=1).indices)
    assert found.images.shape == (len(captions), 3)
    with pytest.raises(ValueError, match="texts must be"):
        model.retrieve(imgs, [])
    assert (
        cli(
            [
                "eval",
                "--checkpoint",
                str(checkpoint),
                "--task",
                "retrieval",
                "--data",
                str(tmp_path / "test-shards"),
                "--no-progress",
            ]
        )
        == 1
    )  # labelled, no captions


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`torchvision` and its submodules as empty modules whose every name is a placeholder
    class: clip_benchmark's dataset builder imports torchvision's datasets at its top, but its
    `wds/` loader uses none of them, and the PyPI torchvision does not import beside the CPU
    torch wheel here. Only for importing the builder in a test."""

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: type(attr, (), {})
        return module

    def exec_module(self, module):
        pass


def clip_benchmark_builder(monkeypatch):
    """clip_benchmark.datasets.builder, imported with the torchvision stand-in (and the real
    torchvision where it imports)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setattr(sys, "meta_path", [_TorchvisionStandIn(), *sys.meta_path])
    for name in [m for m in sys.modules if m.startswith("clip_benchmark.datasets")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("clip_benchmark.datasets.builder")


def check_clip_benchmark(shards: Path, checkpoint: Path, ours: dict, monkeypatch) -> None:
    """LAION clip_benchmark 1.6.2 on our shards: its own `wds/` loader
    (`build_dataset("wds/...")`) reads the directory (OUT/SPLIT/nshards.txt,
    OUT/SPLIT/{0..n-1}.tar, classnames.txt, templates with {c}), and its zero-shot evaluate,
    driving spikeclip.load's model and tokenizer, gives our acc1, acc5 and mean per-class
    recall."""
    if os.environ.get("CI"):  # the README's test command installs it (and scikit-learn)
        from clip_benchmark.metrics import zeroshot_classification
    else:
        zeroshot_classification = pytest.importorskip(
            "clip_benchmark.metrics.zeroshot_classification"
        )
    import spikeclip

    n = int((shards / "test" / "nshards.txt").read_text())
    assert n == len(read_meta(shards)["shards"])
    model, preprocess, tokenizer = spikeclip.load(checkpoint)
    builder = clip_benchmark_builder(monkeypatch)
    dataset = builder.build_dataset("wds/test-shards", root=str(shards), transform=preprocess,
                                    split="test", task="zeroshot_classification")  # fmt: skip
    classes, templates = dataset.classes, dataset.templates
    assert classes == ours["class_names"] and all("{c}" in t for t in templates)
    loader = torch.utils.data.DataLoader(dataset.batched(16), batch_size=None)
    assert sum(len(labels) for _, labels in loader) == ours["images"]
    # its own evaluate(): classifier, classification loop and metrics (its accuracy() calls
    # float() on a 1-element array, which numpy 2.4 refuses: the test command pins numpy<2.4)
    metrics = zeroshot_classification.evaluate(model, loader, tokenizer, classes, templates,
                                               "cpu", amp=False)  # fmt: skip
    assert metrics["acc1"] == pytest.approx(ours["top1"], abs=1e-6)
    assert metrics["acc5"] == pytest.approx(ours["metrics"]["acc5"], abs=1e-6, nan_ok=True)
    recall = ours["metrics"]["mean_per_class_recall"]
    assert metrics["mean_per_class_recall"] == pytest.approx(recall, abs=1e-6)
    assert ours["metrics"]["acc1"] == ours["top1"]  # our eval JSON in its fields


@pytest.mark.slow
def test_features_and_align_under_torchrun(tmp_path, fm_shards, fm_features, clip_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "spikeclip"]  # fmt: skip
    out = tmp_path / "feat2"
    cmd = [*launcher, "features", "--data", str(fm_shards), "--teacher", f"clip:{clip_dir}",
           "--out", str(out), "--batch", "8", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Like with like: the ranks run 1 thread each, so the one-rank reference does too. Across
    # thread counts the teacher's features agree only to the last bits on some CPUs (an AMD
    # EPYC: oneDNN splits the reductions by thread), so they are not compared bit for bit.
    single = tmp_path / "feat1"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compute_features(fm_shards, f"clip:{clip_dir}", single, batch_size=8, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    meta = read_meta(fm_shards)
    one, two = FeatureStore(single, meta), FeatureStore(out, meta)
    for shard in meta["shards"]:
        a, b = one.shard(shard["name"]), two.shard(shard["name"])
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # the offline LiT teacher fitted on 2 ranks is the one fitted on 1 (its projection starts
    # from the seed, not from whatever the process drew before: once 0.14 apart)
    lit2, lit1 = tmp_path / "lit2", tmp_path / "lit1"
    lit_cmd = [*launcher, "features", "--data", str(fm_shards), "--teacher", "lit", "--out",
               str(lit2), "--batch", "8", "--teacher-steps", "20", "--no-progress"]  # fmt: skip
    done = subprocess.run(lit_cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.set_num_threads(1)
    try:
        torch.rand(1000)  # another position of the global generator than the ranks'
        compute_features(fm_shards, "lit", lit1, batch_size=8, teacher_steps=20,
                         log=lambda *_: None)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    fitted = [load_tensors(d / "teacher" / "teacher.safetensors") for d in (lit1, lit2)]
    assert fitted[0].keys() == fitted[1].keys()
    for k in fitted[0]:
        assert torch.equal(fitted[0][k], fitted[1][k]), k
    # killed after some shards: the rerun computes only the missing ones
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    feature_file(out, "shard-000004.tar").unlink()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0: 1 shards computed, 2 already done" in done.stdout + done.stderr
    for name, stamp in stamps.items():
        if name != "shard-000004.safetensors":
            assert (out / name).stat().st_mtime_ns == stamp, name
    # a stage over 2 gloo ranks, both streaming their own shards
    cmd = [*launcher, "align", "--data", str(fm_shards), "--features", str(fm_features),
           "--epochs", "1", "--text-epochs", "0", "--config", "tiny", "--batch", "8",
           "--workers", "0", "--out", str(tmp_path / "a2"), "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "a2" / "metrics.jsonl").open()]
    steps = [r["step"] for r in log if r.get("stage") == "image-alignment"]
    assert steps == list(
        range(1, steps_per_epoch(ShardStream(fm_shards, image_size=8), 0, 2, 4, 0) + 1)
    )


def test_a_batch_holds_captions_when_any_sample_has_them():
    """Shards that mix captioned and uncaptioned samples: the batch's captions list every
    sample's ([] for none), whichever comes first (it once read only the first sample's)."""

    def sample(i, captions=None):
        out = {"key": str(i), "image": torch.zeros(3, 2, 2), "label": -1, "worker": 0, "index": i}
        if captions is not None:
            out["captions"] = captions
        return out

    for samples in ([sample(0), sample(1, ["a cat"])], [sample(0, ["a cat"]), sample(1)]):
        batch = collate(samples)
        assert [len(c) for c in batch["captions"]] in ([0, 1], [1, 0])
    assert "captions" not in collate([sample(0), sample(1)])
