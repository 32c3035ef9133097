"""Inference for users: checkpoints that carry the tokenizer, logit scale, preprocessing and
training record; spikeclip.load; preprocessing of files, PIL images, arrays and tensors;
classify's probabilities; and old checkpoints' message about what they lack."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import spikeclip
from spikeclip.models import SpikeCLIP, SpikeCLIPConfig
from spikeclip.preprocess import Preprocess, image_files, to_tensor

CONFIG = SpikeCLIPConfig.named(
    "tiny", width=32, heads=4, image_size=16, vocab_size=400, text_width=24, text_hidden=32,
    embed_dim=24, context_length=12,
)  # fmt: skip


@pytest.fixture
def tokenizer(clip_dir):
    from transformers import AutoTokenizer

    from spikeclip.tokenizer import HFTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(str(clip_dir)), CONFIG.context_length)


def trained_like(tokenizer):
    model = SpikeCLIP(CONFIG, tokenizer=tokenizer).eval()
    model.logit_scale = 7.5
    model.training_info = {"teacher": {"name": "clip:x"}, "class_names": ["cat", "dog"],
                           "templates": ["a photo of a {}.", "a {} picture."]}  # fmt: skip
    return model


def test_checkpoint_round_trip_restores_everything(tmp_path, tokenizer):
    model = trained_like(tokenizer)
    model.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["spikeclip"] == spikeclip.__version__
    assert meta["preprocess"]["image_size"] == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing: no message
        loaded, preprocess, tok = spikeclip.load(tmp_path / "ckpt")
    assert not loaded.training
    assert loaded.logit_scale == 7.5 and loaded.training_info == model.training_info
    assert loaded.templates == ("a photo of a {}.", "a {} picture.")
    assert preprocess == model.preprocess
    texts = ["a photo of a cat.", "zebra"]
    assert torch.equal(tok(texts), tokenizer(texts))
    images = torch.rand(3, 3, 20, 20)
    probs = loaded.classify(images, ["cat", "dog", "car"])
    torch.testing.assert_close(probs, model.classify(images, ["cat", "dog", "car"]))
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    # the probabilities are the softmax of the saved scale times the cosines
    cos = model.logits(images, model.classifier(["cat", "dog", "car"], model.templates))
    torch.testing.assert_close(probs, (7.5 * cos).softmax(1))
    # SpikeCLIP.load too gives an eval-mode model: each image its own answer, alone or in a batch
    direct = SpikeCLIP.load(tmp_path / "ckpt")
    assert not direct.training
    alone = direct.classify(images[:1], ["cat", "dog", "car"])
    torch.testing.assert_close(alone, direct.classify(images, ["cat", "dog", "car"])[:1])


def test_old_checkpoint_loads_with_a_message(tmp_path, tokenizer):
    model = trained_like(tokenizer)
    model.save(tmp_path / "ckpt")
    meta_path = tmp_path / "ckpt" / "config.json"
    meta = json.loads(meta_path.read_text())
    old = {"format": meta["format"], "config": meta["config"]}  # what spikeclip 0.1 wrote
    meta_path.write_text(json.dumps(old))
    import shutil

    shutil.rmtree(tmp_path / "ckpt" / "tokenizer")
    with pytest.warns(UserWarning, match="logit scale.*100.*tokenizer") as record:
        loaded = SpikeCLIP.load(tmp_path / "ckpt")
    message = str(record[0].message)
    assert "class names" in message and "versions" in message
    assert loaded.logit_scale is None and loaded.tokenizer is None
    loaded.tokenizer = tokenizer  # the way out the message names
    probs = loaded.classify(torch.rand(2, 3, 16, 16), ["cat", "dog"])
    torch.testing.assert_close(probs.sum(1), torch.ones(2))


def test_preprocess_takes_files_pil_arrays_and_tensors(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    p = Preprocess(image_size=28)
    from spikeclip.data import to_float_chw

    expected = to_float_chw(torch.from_numpy(grey))  # as the datasets feed the encoder
    for image in (tmp_path / "g.png", str(tmp_path / "g.png"), Image.fromarray(grey), grey,
                  expected):  # fmt: skip
        assert torch.equal(p(image), expected)
    from spikeclip.preprocess import resize_images

    out = p(tmp_path / "c.png")
    assert out.shape == (3, 28, 28)
    assert torch.equal(out, resize_images(to_tensor(rgb)[None], 28)[0])
    assert Preprocess.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="preprocessing"):
        Preprocess.from_dict({"size": 3})
    with pytest.raises(TypeError, match="not an image"):
        p(3.0)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        p(torch.rand(5, 4, 4))


def test_image_files_expands_folders_and_names_what_is_missing(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/2.png", "a/b/1.jpg", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert image_files([tmp_path / "a"]) == [tmp_path / "a" / "2.png", tmp_path / "a/b/1.jpg"]
    with pytest.raises(FileNotFoundError, match="nope"):
        image_files([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        image_files([tmp_path / "empty"])


def test_classify_command_reports_unreadable_files(tmp_path, tokenizer, capsys):
    from spikeclip.cli import main as cli

    trained_like(tokenizer).save(tmp_path / "ckpt")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    code = cli(["classify", "--checkpoint", str(tmp_path / "ckpt"), "--labels", "cat,dog",
                "--json", str(tmp_path / "bad.png"), str(tmp_path / "ok.png")])  # fmt: skip
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert code == 1 and "1 of 2 files" in captured.err
    assert records[0]["path"] == str(tmp_path / "bad.png")
    assert "not a readable image" in records[0]["error"] and "predictions" not in records[0]
    # the readable file's predictions are the model's own probabilities, highest first
    probs = SpikeCLIP.load(tmp_path / "ckpt").classify([tmp_path / "ok.png"], ["cat", "dog"])[0]
    expect = sorted(zip(probs.tolist(), ["cat", "dog"], strict=True), reverse=True)
    got = [(p["probability"], p["label"]) for p in records[1]["predictions"]]
    assert [label for _, label in got] == [label for _, label in expect]
    assert [p for p, _ in got] == pytest.approx([p for p, _ in expect], abs=1e-6)
    assert cli(["classify", "--checkpoint", str(tmp_path / "ckpt"), "--labels", "cat,cat",
                str(tmp_path / "ok.png")]) == 2  # fmt: skip
    assert "twice" in capsys.readouterr().err
    assert cli(["classify", "--checkpoint", str(tmp_path / "ckpt"), "--labels", "a,b",
                "--templates", "no slot", str(tmp_path / "ok.png")]) == 2  # fmt: skip
    # explicit templates
    assert cli(["classify", "--checkpoint", str(tmp_path / "ckpt"), "--labels", "cat,dog",
                "--templates", "a {}", "--templates", "the {}", "--json",
                str(tmp_path / "ok.png")]) == 0  # fmt: skip
    capsys.readouterr()


def test_cli_version_and_help_defaults(capsys):
    from spikeclip.cli import main as cli

    with pytest.raises(SystemExit) as exc:
        cli(["--version"])
    assert exc.value.code == 0 and spikeclip.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["classify", "--help"])
    text = capsys.readouterr().out
    assert "(default: 3)" in text and "(default: auto)" in text
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    text = capsys.readouterr().out
    assert "--seed SEED" in text and "(default: 0)" in text


def test_classify_lists_the_most_probable_labels_highest_first(tmp_path, tokenizer):
    from spikeclip.inference import classify_files

    model = trained_like(tokenizer)
    labels = ["cat", "dog", "bird", "fish", "horse"]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(paths[-1])
    records = classify_files(model, paths, labels, top_k=3)
    classes = model.classifier(labels, model.templates)
    probs = model.probabilities(torch.stack([model.preprocess(p) for p in paths]), classes)
    for record, row in zip(records, probs, strict=True):
        expected = row.sort(descending=True)
        got = [p["probability"] for p in record["predictions"]]
        assert got == pytest.approx(expected.values[:3].tolist(), rel=1e-6)
        assert got == sorted(got, reverse=True) and got[0] > got[-1]
        assert [p["label"] for p in record["predictions"]] == [
            labels[j] for j in expected.indices[:3].tolist()
        ]
