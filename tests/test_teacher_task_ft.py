"""The official code's optional task fine-tuning of a CLIP teacher (RecipeConfig.
teacher_finetune_epochs): its loss written out, what it changes and saves, the feature cache
key, resume after a kill, and the LiT teacher's refusal."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from fake_data import fake_idx_dataset
from test_train import small_recipe, weights

from spikeclip.cli import main as cli
from spikeclip.data import load_dataset
from spikeclip.models import SpikeCLIP
from spikeclip.teachers import load_teacher
from spikeclip.train import Interrupted, RecipeConfig, run_recipe
from spikeclip.train.distributed import Dist
from spikeclip.train.loop import IndexBatches

STAGE = "teacher-task-finetune"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    fake_idx_dataset(root, n=40, n_test=16, seed=2)
    return root


def tuned(out, data_dir, cache_dir, clip_dir, **changes):
    # text alignment long enough that the class features differ (else CE has no gradient)
    return small_recipe(out, data_dir, cache_dir, f"clip:{clip_dir}", ann=False, text_epochs=4,
                        text_lr=1e-2, teacher_finetune_epochs=2, teacher_finetune_lr=1e-3,
                        **changes)  # fmt: skip


def test_task_module_is_the_teachers_image_features(clip_dir):
    teacher = load_teacher(f"clip:{clip_dir}")
    images = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    module = teacher.task_module()
    assert all(p.requires_grad for p in module.parameters())
    torch.testing.assert_close(module(images), teacher.image_features(images), rtol=0, atol=0)
    shared = {id(p) for p in teacher.model.parameters()}
    assert {id(p) for p in module.parameters()} <= shared  # no copy: tuning it tunes the teacher


def test_task_finetuning_loss_saves_and_resumes(tmp_path, data_dir, clip_dir):
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    run_recipe(tuned(out, data_dir, cache, clip_dir))
    log = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    records = [r for r in log if r.get("stage") == STAGE]
    assert [r["step"] for r in records] == list(range(1, 7))  # 2 epochs of 40 / 16 -> 3 steps
    assert [r["stage"] for r in log if "stage" in r].index(STAGE) > 0  # after text alignment

    # The first step's loss, written out: CE of (the untuned teacher's L2-normalised image
    # features . the SNN's class features: template means, not renormalised), scale 1.
    original = load_teacher(f"clip:{clip_dir}")
    train = load_dataset("fashion-mnist", "train", str(data_dir))
    student = SpikeCLIP.load(out / "checkpoint")
    student.eval()
    with torch.no_grad():
        classes = student.classifier(train.class_names, train.templates, renormalize=False)
    idx = next(IndexBatches(len(train), 16, 0, STAGE, Dist()).batches(0, 0, None))
    images, labels = train.batch(idx)
    feats = F.normalize(original.image_features(images), dim=-1)
    expected = F.cross_entropy(feats @ classes.t(), labels)
    assert records[0]["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert records[-1]["loss"] < records[0]["loss"]

    # The tuned image side is the run's teacher: saved, reloaded, and it keys the cache anew;
    # the text tower is untouched.
    meta = json.loads((out / "teacher" / "teacher.json").read_text())
    assert meta["task_finetuned"]
    teacher = load_teacher(out / "teacher")
    final = weights(out / "stages" / STAGE / "final")
    state = teacher.task_module().state_dict()
    assert final.keys() == state.keys()
    for k in final:
        assert torch.equal(final[k], state[k]), k
    before = original.task_module().state_dict()
    assert [k for k in final if not torch.equal(final[k], before[k])]
    for k, v in original.model.text_model.state_dict().items():
        assert torch.equal(v, teacher.model.text_model.state_dict()[k]), k
    assert teacher.backbone_key != original.backbone_key
    assert f"task-ft-{meta['task_finetuned']}" in teacher.backbone_key
    ckpt_meta = json.loads((out / "checkpoint" / "config.json").read_text())
    assert "task-ft-" in json.dumps(ckpt_meta)  # the student records which teacher it learnt from

    # Killed in the teacher's stage (after its checkpoint at step 2), resumed: the same teacher
    # and the same student as the uninterrupted run.
    text_steps = sum(1 for r in log if r.get("stage") == "text-alignment")
    other = tmp_path / "killed"
    cfg = tuned(other, data_dir, cache, clip_dir)
    with pytest.raises(Interrupted):
        run_recipe(replace(cfg, stop_after_steps=text_steps + 3))
    assert not json.loads((other / "teacher" / "teacher.json").read_text()).get("task_finetuned")
    run_recipe(replace(cfg, resume=True))
    for name in ("checkpoint", f"stages/{STAGE}/final"):
        a, b = weights(out / name), weights(other / name)
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    # Resumed once more after the end: the stage is not run again.
    again = run_recipe(replace(cfg, resume=True))
    assert again["stages"]["teacher"]["steps"] == 6


def test_lit_teacher_and_command_line(tmp_path, data_dir, clip_dir, capsys):
    with pytest.raises(ValueError, match="teacher_finetune_epochs"):
        RecipeConfig(teacher="lit", teacher_finetune_epochs=1)
    with pytest.raises(ValueError, match="teacher_finetune_lr"):
        RecipeConfig(teacher=f"clip:{clip_dir}", teacher_finetune_epochs=1, teacher_finetune_lr=0)
    args = ["train", "--teacher", f"clip:{clip_dir}", "--teacher-finetune-epochs", "1",
            "--teacher-finetune-lr", "1e-4", "--data-dir", str(data_dir), "--stages", "text",
            "--text-epochs", "1", "--vocabulary", "4", "--no-ann", "--no-progress",
            "--out", str(tmp_path / "cli"), "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    assert cli(args) == 0
    recipe = json.loads((tmp_path / "cli" / "checkpoint" / "recipe.json").read_text())
    assert recipe["teacher_finetune_epochs"] == 1 and recipe["teacher_finetune_lr"] == 1e-4
    assert (tmp_path / "cli" / "stages" / STAGE / "done.json").is_file()
    capsys.readouterr()
