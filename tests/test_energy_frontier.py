"""benchmarks/energy_frontier.py: every point is a valid run of the demo's recipe, points that
change fine-tuning alone start from the right alignment, and the results file it wrote is
well-formed and agrees with its own goal."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from spikeclip.models import SpikeCLIPConfig
from spikeclip.train.config import RecipeConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import energy_frontier as frontier  # noqa: E402


def test_every_point_is_a_valid_demo_run_with_its_own_directory(tmp_path):
    slugs = set()
    for name, changes in frontier.POINTS.items():
        cfg = replace(frontier.base_config(tmp_path / "x", tmp_path / "c"), **changes)
        SpikeCLIPConfig.named(cfg.config, **cfg.model_options)  # the model options are fields
        slugs.add(frontier.slug(name))
    assert len(slugs) == len(frontier.POINTS)


def test_the_demo_is_the_base_with_the_point_it_names():
    """`spikeclip demo` runs DEMO_BASE (every point's base) with DEMO_POINT's changes, the twin
    it learns from its own (trained first)."""
    from spikeclip.train.commands import DEMO, DEMO_BASE

    own = {
        k: "ann" if v == frontier.ANN_TWIN else v
        for k, v in frontier.POINTS[frontier.DEMO_POINT].items()
    }
    assert own and {**DEMO_BASE, **own} == DEMO
    RecipeConfig(**DEMO)  # a valid run


def test_the_twin_a_point_learns_from(tmp_path):
    """ANN_TWIN is the base run's saved twin, or "ann" (the run's own, trained first) in a
    point that trains its own twin; every point resolves to a valid run."""
    base = tmp_path / "base"
    changes = {"init_from": frontier.ANN_TWIN, "distill_from": frontier.ANN_TWIN}
    twin = str(base / "ann_checkpoint")
    assert frontier.resolved(changes, base) == {"init_from": twin, "distill_from": twin}
    own = frontier.resolved({**changes, "ann": True}, base)
    assert own == {"init_from": "ann", "distill_from": "ann", "ann": True}
    for changes in frontier.POINTS.values():
        replace(frontier.base_config(tmp_path / "x", tmp_path / "c"),
                **frontier.resolved(changes, base))  # fmt: skip
    assert any(c.get("ann") for c in frontier.POINTS.values())


def test_alignment_is_shared_only_where_fine_tuning_alone_differs(tmp_path):
    base, out = tmp_path / "base", tmp_path / "out"
    assert frontier.alignment_source({"firing_weight": 1.0}, base, out) == base
    threshold = {"model_options": {"v_th": 1.0, "learnable_v_th": True}}
    assert frontier.alignment_source({**threshold, "firing_weight": 0.3}, base, out) is None
    done = out / frontier.slug("v_th 1, learnable v_th")
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    assert frontier.alignment_source({**threshold, "firing_weight": 0.3}, base, out) == done
    assert frontier.alignment_source(threshold, base, out) is None  # its own alignment
    assert frontier.alignment_source({"seed": 1}, base, out) is None


def test_same_settings_ignores_what_does_not_change_a_result():
    cfg = frontier.base_config(Path("a"), Path("c")).to_dict()
    assert frontier.same_settings({**cfg, "resume": True, "out": "b", "progress": True}, cfg)
    assert not frontier.same_settings({**cfg, "firing_weight": 1.0}, cfg)
    older = {k: v for k, v in cfg.items() if k != "firing_in_alignment"}  # saved before it
    assert frontier.same_settings(older, cfg)
    assert not frontier.same_settings(older, {**cfg, "firing_in_alignment": True})


def test_points_are_named_with_their_commas():
    """--points separates names by ';' (names hold commas): only the unknown one is refused."""
    with pytest.raises(SystemExit, match=r"unknown points \['nope'\]"):
        frontier.main(["--json", "x.json", "--points", "v_th 1, learnable v_th; nope"])


RESULTS = sorted((ROOT / "benchmarks" / "results").glob("energy_frontier_*.json"))


def test_the_first_machines_file_holds_every_setting_but_distillation():
    """The AVX-512 machine's file holds every setting tried there; the AVX2 one (another base
    run: its ANN twin differs) the settings run on it, in the same order."""
    (every,) = [p for p in RESULTS if p.name == "energy_frontier_epyc_cpu_2core.json"]
    names = [p["name"] for p in json.loads(every.read_text())["points"]]
    newer = ("distil", "start from the ANN twin")  # settings added after it was measured
    assert names == [n for n in frontier.POINTS if not any(w in n for w in newer)]


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_the_results_file(path):
    data = json.loads(path.read_text())
    names = [p["name"] for p in data["points"]]
    assert names == [n for n in frontier.POINTS if n in names] and "demo" in names
    for p in data["points"]:
        assert p["changes"] == frontier.POINTS[p["name"]]
        # a point that trains its own twin is measured against it, the others the base's
        assert ("own_ann" in p) == bool(p["changes"].get("ann"))
        ann = p.get("own_ann", data["ann"])
        assert p["energy_vs_ann"] == pytest.approx(p["energy_mJ"] / ann["energy_mJ"])
        assert p["points_below_ann"] == pytest.approx((ann["top1"] - p["top1"]) * 100)
        meets = p["points_below_ann"] <= 1.5 and p["energy_vs_ann"] <= 0.10
        assert p["meets_goal"] == meets
    assert data["any_meets_goal"] == any(p["meets_goal"] for p in data["points"])
    assert (path.with_suffix(".png")).stat().st_size > 10_000
