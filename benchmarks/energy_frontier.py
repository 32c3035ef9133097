"""The energy frontier: top-1 against energy per image of the demo's SpikeCLIP under every
setting tried, with its ANN twin and the teacher as reference lines.

Each point is the demo's base recipe (DEMO_BASE in spikeclip/train/commands.py: Fashion-MNIST,
tiny, 6,000 training images) with a few settings changed; `spikeclip demo` runs the base with
DEMO_POINT's settings, the SNN learning from the run's own twin. A point that changes
fine-tuning alone (the firing-rate term) starts from the teacher and alignment stages of the
run it differs from only there (the base run, or a finished point), copied into its directory
(the recipe resumes past finished stages, so they are the same weights, not retrained); any
other point trains every stage. The ANN twin is the base
run's, but for a point that changes the twin's own training ("ann": True): it trains its own
twin first and is measured against it ("own_ann"). Points already finished in --out are read,
not rerun.

    python benchmarks/energy_frontier.py --out spikeclip_out/frontier \\
        --base <a DEMO_BASE run> --json benchmarks/results/energy_frontier_epyc_cpu_2core.json

writes the JSON (every point: its settings, SpikeCLIP and replace top-1, mJ per image, its ratio
to the ANN twin's, mean firing rate, and whether it meets the goal: within 1.5 points of the ANN
twin at no more than 0.10 of its energy) and the plot beside it (.png).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from spikeclip.bench.machine import cpu_name
from spikeclip.train.commands import DEMO_BASE
from spikeclip.train.config import RecipeConfig
from spikeclip.train.recipe import RECIPE_JSON, RESUMABLE_CHANGES, TWIN, run_recipe

# The goal (issue 32): within GOAL_POINTS of the ANN twin at no more than GOAL_ENERGY of its energy.
GOAL_POINTS, GOAL_ENERGY = 1.5, 0.10
# RecipeConfig fields that only fine-tuning reads: a point changing nothing else shares alignment.
FINETUNE_ONLY = {"firing_weight", "firing_target", "distill_from", "kd_temperature"}
# distill_from's and init_from's value for "the base run's ANN twin" (its ann_checkpoint,
# resolved per run)
ANN_TWIN = "the base run's ANN twin"


def fewer_steps_name(time_steps: int, firing: float, seed: int) -> str:
    firing_part = f", firing w={firing}" if firing else ""
    seed_part = f", seed {seed}" if seed else ""
    return f"start from the ANN twin, distil from it, T={time_steps}{firing_part}{seed_part}"


def fewer_steps_changes(time_steps: int, firing: float, seed: int) -> dict:
    """A point started from the base run's twin and distilled from it at `time_steps`, with a
    firing term of weight `firing` (0: none), seed `seed` (0: the base's)."""
    return {
        "init_from": ANN_TWIN,
        "distill_from": ANN_TWIN,
        "model_options": {"time_steps": time_steps},
        **({"firing_weight": float(firing)} if firing else {}),
        **({"seed": seed} if seed else {}),
    }


# name -> RecipeConfig changes over the demo's (model_options: SpikeCLIPConfig fields)
POINTS = {
    "demo": {},
    "firing w=0.3": {"firing_weight": 0.3},
    "firing w=1": {"firing_weight": 1.0},
    "firing w=3": {"firing_weight": 3.0},
    "firing w=10": {"firing_weight": 10.0},
    "firing w=30": {"firing_weight": 30.0},
    "firing w=10 target 0.1": {"firing_weight": 10.0, "firing_target": 0.1},
    "v_th 0.75": {"model_options": {"v_th": 0.75}},
    "v_th 1": {"model_options": {"v_th": 1.0}},
    "paper neurons (v_th 1, fixed tau)": {"model_options": {"v_th": 1.0, "learnable_tau": False}},
    "learnable v_th": {"model_options": {"learnable_v_th": True}},
    **{
        f"learnable v_th, firing w={w}": {
            "model_options": {"learnable_v_th": True},
            "firing_weight": float(w),
        }
        for w in ("0.3", "1", "3")
    },
    "v_th 1, learnable v_th": {"model_options": {"v_th": 1.0, "learnable_v_th": True}},
    **{
        f"v_th 1, learnable v_th, firing w={w}": {
            "model_options": {"v_th": 1.0, "learnable_v_th": True},
            "firing_weight": float(w),
        }
        for w in ("0.3", "0.6", "1")
    },
    "v_th 1, learnable v_th, attention v_th 1": {
        "model_options": {"v_th": 1.0, "learnable_v_th": True, "attn_v_th": 1.0}
    },
    "v_th 1.25, learnable v_th": {"model_options": {"v_th": 1.25, "learnable_v_th": True}},
    "v_th 1.5, learnable v_th": {"model_options": {"v_th": 1.5, "learnable_v_th": True}},
    # soft reset (v -= threshold on a spike): what lay above the threshold is kept, not lost
    "soft reset": {"model_options": {"v_reset": None}},
    "soft reset, firing w=1": {"model_options": {"v_reset": None}, "firing_weight": 1.0},
    "soft reset, firing w=3": {"model_options": {"v_reset": None}, "firing_weight": 3.0},
    "soft reset, v_th 1": {"model_options": {"v_reset": None, "v_th": 1.0}},
    "soft reset, learnable v_th": {"model_options": {"v_reset": None, "learnable_v_th": True}},
    "soft reset, learnable v_th, firing w=1": {
        "model_options": {"v_reset": None, "learnable_v_th": True},
        "firing_weight": 1.0,
    },
    "T=2, soft reset": {"model_options": {"time_steps": 2, "v_reset": None}},
    "T=2, soft reset, firing w=0.3": {
        "model_options": {"time_steps": 2, "v_reset": None},
        "firing_weight": 0.3,
    },
    "v_th 1, learnable v_th, soft reset": {
        "model_options": {"v_th": 1.0, "learnable_v_th": True, "v_reset": None}
    },
    "v_th 1, learnable v_th, soft reset, firing w=0.3": {
        "model_options": {"v_th": 1.0, "learnable_v_th": True, "v_reset": None},
        "firing_weight": 0.3,
    },
    # the firing term from image alignment on (firing_in_alignment), not fine-tuning alone
    "firing w=0.3 in alignment too": {"firing_weight": 0.3, "firing_in_alignment": True},
    "learnable v_th, firing w=0.3 in alignment too": {
        "model_options": {"learnable_v_th": True},
        "firing_weight": 0.3,
        "firing_in_alignment": True,
    },
    **{
        f"v_th 1, learnable v_th, firing w={w} in alignment too": {
            "model_options": {"v_th": 1.0, "learnable_v_th": True},
            "firing_weight": float(w),
            "firing_in_alignment": True,
        }
        for w in ("0.1", "0.3")
    },
    "T=2": {"model_options": {"time_steps": 2}},
    "T=2, firing w=1": {"model_options": {"time_steps": 2}, "firing_weight": 1.0},
    "T=2, learnable v_th": {"model_options": {"time_steps": 2, "learnable_v_th": True}},
    "T=2, learnable v_th, firing w=0.3": {
        "model_options": {"time_steps": 2, "learnable_v_th": True},
        "firing_weight": 0.3,
    },
    "T=2, v_th 1, learnable v_th": {
        "model_options": {"time_steps": 2, "v_th": 1.0, "learnable_v_th": True}
    },
    "T=1": {"model_options": {"time_steps": 1}},
    "T=1, learnable v_th": {"model_options": {"time_steps": 1, "learnable_v_th": True}},
    "T=1, v_th 0.35": {"model_options": {"time_steps": 1, "v_th": 0.35}},
    "T=1, v_th 0.75": {"model_options": {"time_steps": 1, "v_th": 0.75}},
    "T=1, fixed tau": {"model_options": {"time_steps": 1, "learnable_tau": False}},
    "T=1, alpha 2": {"model_options": {"time_steps": 1, "alpha": 2.0}},
    "T=1, alpha 8": {"model_options": {"time_steps": 1, "alpha": 8.0}},
    # a second seed (the teacher's fit changes with it; the ANN twin is the base run's)
    "demo, seed 1": {"seed": 1},
    "T=1, seed 1": {"model_options": {"time_steps": 1}, "seed": 1},
    "v_th 1, learnable v_th, seed 1": {
        "model_options": {"v_th": 1.0, "learnable_v_th": True},
        "seed": 1,
    },
    "v_th 1, learnable v_th, firing w=0.3, seed 1": {
        "model_options": {"v_th": 1.0, "learnable_v_th": True},
        "seed": 1,
        "firing_weight": 0.3,
    },
    "soft reset, seed 1": {"model_options": {"v_reset": None}, "seed": 1},
    "soft reset, firing w=1, seed 1": {
        "model_options": {"v_reset": None},
        "seed": 1,
        "firing_weight": 1.0,
    },
    # the SNN's fine-tuning distils from the ANN twin's logits instead of the teacher's
    # (ANN-to-SNN knowledge distillation; the twin stands above the teacher)
    "distil from the ANN twin": {"distill_from": ANN_TWIN},
    # the SNN's image encoder starts from the ANN twin's weights (hybrid training), then the
    # demo's alignment and fine-tuning
    "start from the ANN twin": {"init_from": ANN_TWIN},
    "start from the ANN twin, firing w=1": {"init_from": ANN_TWIN, "firing_weight": 1.0},
    "start from the ANN twin, firing w=1.5": {"init_from": ANN_TWIN, "firing_weight": 1.5},
    "start from the ANN twin, v_th 1, learnable v_th": {
        "init_from": ANN_TWIN,
        "model_options": {"v_th": 1.0, "learnable_v_th": True},
    },
    "start from the ANN twin, firing w=1.2": {"init_from": ANN_TWIN, "firing_weight": 1.2},
    "start from the ANN twin, learnable v_th, firing w=1": {
        "init_from": ANN_TWIN,
        "model_options": {"learnable_v_th": True},
        "firing_weight": 1.0,
    },
    "start from the ANN twin, soft reset, firing w=1": {
        "init_from": ANN_TWIN,
        "model_options": {"v_reset": None},
        "firing_weight": 1.0,
    },
    "start from the ANN twin, distil from it, firing w=1.2": {
        "init_from": ANN_TWIN,
        "distill_from": ANN_TWIN,
        "firing_weight": 1.2,
    },
    "start from the ANN twin, distil from it, firing w=1.3": {
        "init_from": ANN_TWIN,
        "distill_from": ANN_TWIN,
        "firing_weight": 1.3,
    },
    "start from the ANN twin, distil from it, firing w=1.5": {
        "init_from": ANN_TWIN,
        "distill_from": ANN_TWIN,
        "firing_weight": 1.5,
    },
    "start from the ANN twin, distil from it at temperature 2, firing w=1.2": {
        "init_from": ANN_TWIN,
        "distill_from": ANN_TWIN,
        "kd_temperature": 2.0,
        "firing_weight": 1.2,
    },
    # the firing term already in image alignment (which starts from the twin's weights), so
    # fine-tuning starts from a sparser network
    "start from the ANN twin, distil from it, firing w=1.2 in alignment too": {
        "init_from": ANN_TWIN,
        "distill_from": ANN_TWIN,
        "firing_weight": 1.2,
        "firing_in_alignment": True,
    },
    "start from the ANN twin, distil from it, firing w=1 in alignment too": {
        "init_from": ANN_TWIN,
        "distill_from": ANN_TWIN,
        "firing_weight": 1.0,
        "firing_in_alignment": True,
    },
    # a change the twin's own training reads (its fine-tuning epochs): the point trains its
    # own twin first ("ann": True, ANN_TWIN is that twin) and is measured against it
    "start from the ANN twin, distil from it, firing w=1.2, 8 fine-tuning epochs (its own)": {
        "ann": True,
        "init_from": ANN_TWIN,
        "distill_from": ANN_TWIN,
        "firing_weight": 1.2,
        "finetune_epochs": 8,
    },
    "start from the ANN twin, T=2": {"init_from": ANN_TWIN, "model_options": {"time_steps": 2}},
    "start from the ANN twin, T=1": {"init_from": ANN_TWIN, "model_options": {"time_steps": 1}},
    "start from the ANN twin, firing w=1, seed 1": {
        "init_from": ANN_TWIN,
        "firing_weight": 1.0,
        "seed": 1,
    },
    "start from the ANN twin, distil from it, firing w=1.2, seed 1": {
        "init_from": ANN_TWIN,
        "distill_from": ANN_TWIN,
        "firing_weight": 1.2,
        "seed": 1,
    },
    # fewer time steps from the twin, distilled: less synaptic work before any firing term
    **{
        fewer_steps_name(T, w, seed): fewer_steps_changes(T, w, seed)
        for T, w, seed in (
            (2, 0, 0),
            (2, 0.3, 0),
            (2, 0.6, 0),
            (2, 0.3, 1),
            (2, 0.3, 2),
            (3, 0.6, 0),
            (3, 0.9, 0),
            (3, 0.6, 1),
            (3, 0.6, 2),
        )
    },
}
# the point `spikeclip demo` runs (spikeclip.train.commands.DEMO: its twin the run's own)
DEMO_POINT = "start from the ANN twin, distil from it, T=3, firing w=0.6"
SHARED = ("teacher", "stages/text-alignment", "stages/image-alignment")
# the plot's colours: each point's family by its name (the table names every point)
FAMILIES = ("demo", "firing term", "fixed thresholds", "learned threshold",
            "threshold learned from 1 or more", "T=2", "T=1", "second seed",
            "soft reset", "distilled from the ANN twin", "started from the ANN twin")  # fmt: skip


def family(name: str) -> str:
    if "seed" in name:
        return "second seed"
    if name.startswith("start from the ANN twin"):
        return "started from the ANN twin"
    if "distil" in name:
        return "distilled from the ANN twin"
    if "soft reset" in name:
        return "soft reset"
    if name.startswith("v_th 1") and "learnable v_th" in name:
        return FAMILIES[4]
    for prefix, fam in (("T=1", "T=1"), ("T=2", "T=2"),
                        ("learnable", "learned threshold"), ("firing", "firing term"),
                        ("demo", "demo")):  # fmt: skip
        if name.startswith(prefix):
            return fam
    return "fixed thresholds"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".=" else "-" for c in name).strip("-")


def base_config(out: Path, cache_dir: Path) -> RecipeConfig:
    return RecipeConfig(**DEMO_BASE, out=str(out), cache_dir=str(cache_dir), progress=False,
                        ann=False)  # fmt: skip


def same_settings(a: dict, b: dict) -> bool:
    """Whether two runs' settings give the same result (resume, progress, ... aside); a
    setting a run's saved settings predate counts as its default (as the recipe's --resume)."""
    a = {**RecipeConfig().to_dict(), **a}
    return all(a.get(k) == v for k, v in b.items() if k not in RESUMABLE_CHANGES | {"out"})


def check_base(base: Path) -> dict:
    """The base run's results; it must be the demo's base recipe (DEMO_BASE: the demo before
    it took the frontier's setting), with its ANN twin."""
    saved = {**RecipeConfig().to_dict(), **json.loads((base / RECIPE_JSON).read_text())}
    if not same_settings(saved, RecipeConfig(**DEMO_BASE).to_dict()):
        raise SystemExit(f"--base {base}: not the demo's base recipe ({base / RECIPE_JSON})")
    results = json.loads((base / "results.json").read_text())
    if results.get("ann_acc") is None:
        raise SystemExit(f"--base {base}: has no ANN twin (run it with the ANN)")
    return results


def alignment_source(changes: dict, base: Path, out: Path) -> Path | None:
    """The finished run whose teacher and alignment stages a point can start from: the base
    for a point that changes fine-tuning alone, else the point with the same changes but the
    fine-tuning ones (when it has finished); None: the point trains every stage."""
    upstream = {k: v for k, v in changes.items() if k not in FINETUNE_ONLY}
    if upstream == changes:  # nothing of fine-tuning alone: its own alignment
        return None
    if not upstream:
        return base
    for name, other in POINTS.items():
        if other == upstream and (out / slug(name) / "results.json").is_file():
            return out / slug(name)
    return None


def resolved(changes: dict, base: Path) -> dict:
    """changes with ANN_TWIN as the base run's ann_checkpoint, or as the point's own twin
    ("ann", trained first) where the point trains one."""
    twin = TWIN if changes.get("ann") else str(base / "ann_checkpoint")
    return {k: twin if v == ANN_TWIN else v for k, v in changes.items()}


def run_point(name: str, changes: dict, base: Path, out: Path, cache_dir: Path) -> dict:
    point_dir = out / slug(name)
    done = point_dir / "results.json"
    cfg = replace(base_config(point_dir, cache_dir), **resolved(changes, base))
    if done.is_file():
        results = json.loads(done.read_text())
        if same_settings(results["config"], cfg.to_dict()):
            return results
        shutil.rmtree(point_dir)
    aligned = alignment_source(changes, base, out)
    if aligned is not None:
        point_dir.mkdir(parents=True, exist_ok=True)
        for part in SHARED:
            if (point_dir / part).exists():
                shutil.rmtree(point_dir / part)
            shutil.copytree(aligned / part, point_dir / part)
        (point_dir / RECIPE_JSON).write_text(json.dumps(cfg.to_dict()))
        cfg = replace(cfg, resume=True)
    else:
        cfg = replace(cfg, overwrite=True)
    print(f"[frontier] {name}: {point_dir}", flush=True)
    results = run_recipe(cfg)
    return json.loads(done.read_text()) if done.is_file() else results


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ann, teacher = result["ann"], result["teacher"]
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    tab20 = plt.get_cmap("tab20").colors  # its strong shades first, then the light ones
    colors = dict(zip(FAMILIES, tab20[::2] + tab20[1::2], strict=False))
    shown = set()
    for p in result["points"]:
        fam = family(p["name"])
        ax.scatter(p["energy_mJ"] * 1e3, p["top1"] * 100, color=colors[fam],
                   marker="*" if p["meets_goal"] else "o", s=60 if p["meets_goal"] else 28,
                   label=None if fam in shown else fam)  # fmt: skip
        shown.add(fam)
    ax.scatter(ann["energy_mJ"] * 1e3, ann["top1"] * 100, color="#b5452f", marker="s")
    ax.axhline(ann["top1"] * 100, color="#b5452f", lw=0.8, ls="--", label="ANN twin")
    ax.axhline(teacher["top1"] * 100, color="#666666", lw=0.8, ls=":", label="teacher")
    goal_x, goal_y = ann["energy_mJ"] * GOAL_ENERGY * 1e3, (ann["top1"] * 100 - GOAL_POINTS)
    ax.axvline(goal_x, color="#2e8b57", lw=0.8)
    ax.axhline(goal_y, color="#2e8b57", lw=0.8, label="goal (upper left of both)")
    ax.set_xscale("log")
    ticks = [2, 3, 5, 10, 20, 40, 60]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("energy per image (uJ, log scale)")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title("SpikeCLIP tiny on Fashion-MNIST: accuracy vs energy (every setting tried)")
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="spikeclip_out/frontier", help="the points' run directories")
    p.add_argument("--base", help="a finished run of the demo's base recipe (DEMO_BASE; "
                   "default: run it in OUT/demo)")  # fmt: skip
    p.add_argument("--json", required=True, help="results file (the plot goes beside it, .png)")
    p.add_argument("--points", help="names of POINTS to run, separated by ';' (names hold "
                   "commas; default: all)")  # fmt: skip
    args = p.parse_args(argv)
    out = Path(args.out)
    cache_dir = out / "cache"
    names = list(POINTS) if not args.points else [n.strip() for n in args.points.split(";")]
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        raise SystemExit(f"unknown points {unknown}; choose from {list(POINTS)}")
    started = time.perf_counter()
    if args.base:
        base = Path(args.base)
    else:
        base = out / "demo"
        if not (base / "results.json").is_file():
            run_recipe(replace(base_config(base, cache_dir), ann=True, overwrite=True))
    base_results = check_base(base)
    ann_mJ = base_results["energy_ann_mJ"]
    points = []
    for name in POINTS:
        if name not in names:
            continue
        r = base_results if name == "demo" else run_point(name, POINTS[name], base, out, cache_dir)
        twin = r if POINTS[name].get("ann") else base_results  # what the point is measured by
        own_twin = (
            {}
            if twin is base_results
            else {"own_ann": {"top1": r["ann_acc"], "energy_mJ": r["energy_ann_mJ"]}}
        )
        top1 = r["spikeclip_acc"]
        ratio = r["energy_snn_mJ"] / twin["energy_ann_mJ"]
        gap = (twin["ann_acc"] - top1) * 100
        points.append({
            "name": name,
            "changes": POINTS[name],
            "top1": top1,
            "replace_top1": r["replace_acc"],
            "energy_mJ": r["energy_snn_mJ"],
            "energy_vs_ann": ratio,
            "points_below_ann": gap,
            "mean_firing_rate": r["mean_firing_rate"],
            **own_twin,
            "meets_goal": gap <= GOAL_POINTS and ratio <= GOAL_ENERGY,
            "run": str(base if name == "demo" else out / slug(name)),
        })  # fmt: skip
        print(f"[frontier] {name}: top-1 {top1:.2%}, {r['energy_snn_mJ']:.4f} mJ "
              f"({ratio:.2f} of the ANN's), firing {r['mean_firing_rate']:.3f}")  # fmt: skip
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "cpu": f"{cpu_name()} ({os.cpu_count()} cores)",
        "goal": {"points_below_ann": GOAL_POINTS, "energy_vs_ann": GOAL_ENERGY},
        "ann": {"top1": base_results["ann_acc"], "energy_mJ": ann_mJ},
        "teacher": {"top1": base_results["teacher_acc"]},
        "points": points,
        "any_meets_goal": any(p["meets_goal"] for p in points),
        "seconds": time.perf_counter() - started,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, path.with_suffix(".png"))
    print(f"[frontier] {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
