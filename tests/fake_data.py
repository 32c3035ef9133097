"""Files in the publishers' formats, written for tests: idx (MNIST, Fashion-MNIST) and a small
randomly initialised Hugging Face CLIP (model + tokenizer) saved to a directory."""

import gzip
import json
import string
from pathlib import Path

import numpy as np


def write_idx(path, array, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def learnable_images(labels, rng):
    """28x28 images a network can learn to classify: class k is a bright vertical band, 3
    columns wide from column 1 + 2.6 k (1 .. 24), over dim noise."""
    images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        c = 1 + int(2.6 * int(k))
        images[i, :, c : c + 3] = rng.integers(200, 256, (28, 3), dtype=np.uint8)
    return images


def fake_idx_dataset(root, n=7, compress=True, n_test=None, seed=0, learnable=False):
    """28x28 images with labels 0..9 as train and t10k idx files under root (the same images
    in both unless n_test is given): random ones, or with learnable=True images whose class
    shows (learnable_images); returns the training arrays."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    suffix = ".gz" if compress else ""
    out = {}
    for prefix, count in (("train", n), ("t10k", n_test)):
        if count is None:
            images, labels = out["train"]
        else:
            labels = rng.integers(0, 10, count, dtype=np.uint8)
            if learnable:
                images = learnable_images(labels, rng)
            else:
                images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        out[prefix] = (images, labels)
    return out["train"]


def export_test_pngs(root, out) -> list:
    """The test split of a fake_idx_dataset under root written as grey PNG files (sorted
    names in test order); returns [(path, label)]."""
    from PIL import Image

    from spikeclip.data import read_idx

    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = read_idx(next(root.glob("t10k-images-idx3-ubyte*")))
    labels = read_idx(next(root.glob("t10k-labels-idx1-ubyte*")))
    files = []
    for i, (im, label) in enumerate(zip(images, labels, strict=True)):
        path = out / f"{i:05d}.png"
        Image.fromarray(im).save(path)
        files.append((path, int(label)))
    return files


def make_tiny_clip(path):
    """A CLIPModel with random weights (2 small towers, 24-d embeddings) and a character-level
    CLIP tokenizer (a byte-level BPE vocabulary without merges), saved with save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {}
    for c in string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,-'!? ":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(str(path))
    end = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=32,
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(str(path))
    return path
