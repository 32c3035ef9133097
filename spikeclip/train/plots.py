"""The run's figures (PNG, matplotlib without a display): training curves from metrics.jsonl,
firing rates of the SNN's neurons, and accuracy against energy per image."""

from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# The loss each stage of the recipe minimises (stage names as metrics.jsonl has them, an
# "ann-" prefix for the ANN counterpart's).
STAGE_LOSSES = {
    "text-alignment": "1 - cos(student, teacher text feature)",
    "image-alignment": "1 - cos(student, teacher image feature)",
    "finetune": "dual loss: CE(labels) + KL(teacher || student)",
}


def stage_loss_name(stage: str) -> str:
    return STAGE_LOSSES.get(stage.removeprefix("ann-"), "loss")


def training_curves(metrics: Path, path: Path) -> None:
    curves: dict[str, list[tuple[int, float]]] = {}
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec and "step" in rec:
            curves.setdefault(rec["stage"], []).append((rec["step"], rec["loss"]))
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(4 * max(1, len(curves)), 3.2))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, (stage, points) in zip(axes, curves.items(), strict=False):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1)
        ax.set_title(stage, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(stage_loss_name(stage), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_vs_energy(results: dict, path: Path) -> None:
    """Top-1 against energy per image on a log axis (the two lie an order of magnitude
    apart), each point labelled with its figures, the energy ratio in the title."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    points = [("SpikeCLIP (SNN)", results["energy_snn_mJ"], results["spikeclip_acc"])]
    if results.get("ann_acc") is not None:
        points.append(("ANN counterpart", results["energy_ann_mJ"], results["ann_acc"]))
    for label, energy, acc in points:
        ax.scatter([energy], [100 * acc], label=label, zorder=3)
        ax.annotate(f"{label}\n{100 * acc:.1f}%, {energy:.4f} mJ", (energy, 100 * acc),
                    textcoords="offset points", xytext=(6, -14), fontsize=7)  # fmt: skip
    ax.axhline(100 * results["teacher_acc"], ls="--", c="gray", lw=1, label="teacher")
    ax.set_xscale("log")
    energies = [p[1] for p in points]
    ax.set_xlim(min(energies) / 3, max(energies) * 6)
    if len(points) == 2 and points[0][1] > 0:
        ax.set_title(f"the SNN uses {points[1][1] / points[0][1]:.1f}x less energy per image",
                     fontsize=9)  # fmt: skip
    ax.set_xlabel("energy per image (mJ, log scale)")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(out: Path, results: dict, energy: dict) -> list[Path]:
    out = Path(out)
    paths = []
    if (out / "metrics.jsonl").is_file():
        paths.append(out / "training_curves.png")
        training_curves(out / "metrics.jsonl", paths[-1])
    if "spikeclip" in energy and energy["spikeclip"].firing_rates:
        paths.append(out / "firing_rates.png")
        energy["spikeclip"].plot_firing_rates(paths[-1])
    paths.append(out / "accuracy_vs_energy.png")
    accuracy_vs_energy(results, paths[-1])
    return paths
