"""`spikeclip train --model-option FIELD=VALUE` (RecipeConfig.model_options): SpikeCLIPConfig
fields over the named config's, recorded in the checkpoint; bad ones refused before any work."""

import json

import pytest
from fake_data import fake_idx_dataset

from spikeclip.cli import main as cli
from spikeclip.train import RecipeConfig
from spikeclip.train.commands import model_options


def test_values_read_as_json_else_strings():
    got = model_options(["learnable_tau=true", "v_th=0.5", "tokenizer_pool=2x2", "x= 3"])
    assert got == {"learnable_tau": True, "v_th": 0.5, "tokenizer_pool": "2x2", "x": 3}


def test_options_reach_the_checkpoint_and_bad_ones_are_usage_errors(tmp_path, clip_dir, capsys):
    data = tmp_path / "data"
    data.mkdir()
    fake_idx_dataset(data, n=24, n_test=8, seed=3)
    base = ["train", "--teacher", f"clip:{clip_dir}", "--data-dir", str(data), "--stages",
            "text", "--text-epochs", "1", "--vocabulary", "4", "--no-ann", "--no-progress",
            "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    out = tmp_path / "run"
    args = [*base, "--out", str(out), "--model-option", "learnable_tau=true",
            "--model-option", "text_v_th=0.5"]  # fmt: skip
    assert cli(args) == 0
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert json.dumps(config).count('"learnable_tau": true') == 1
    assert '"text_v_th": 0.5' in json.dumps(config)
    recipe = json.loads((out / "checkpoint" / "recipe.json").read_text())
    assert recipe["model_options"] == {"learnable_tau": True, "text_v_th": 0.5}
    capsys.readouterr()
    for bad, message in ((["--model-option", "nope=1"], "unknown SpikeCLIPConfig fields"),
                         (["--model-option", "embed_dim=8"], "model_options"),
                         (["--model-option", "v_th"], "FIELD=VALUE"),
                         (["--model-option", "tokenizer_pool=4x4"], "tokenizer_pool")):  # fmt: skip
        assert cli([*base, "--out", str(tmp_path / "bad"), *bad]) == 2, bad
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad" / "stages").exists()  # refused before any work
    with pytest.raises(ValueError, match="model_options"):
        RecipeConfig(model_options={"image_neuron": "relu"})
