"""The recipe on a GPU, end to end, in a minute: `spikeclip train --device cuda` (fp32, then
--amp bf16) on generated Fashion-MNIST-format data with a small random Hugging Face CLIP as the
teacher (the offline towers need not be on the device machine). Checks that every stage, the
evaluation and the checkpoint run on CUDA with whichever kernel backend `auto` picks there.

    python benchmarks/gpu_recipe_check.py [OUT_DIR]
"""

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fake_data import fake_idx_dataset, make_tiny_clip  # noqa: E402

from spikeclip.cli import main  # noqa: E402


def run(out: Path) -> int:
    work = Path(tempfile.mkdtemp())
    (work / "data").mkdir()
    fake_idx_dataset(work / "data", n=256, n_test=128, seed=1)
    clip = make_tiny_clip(work / "clip")
    summary = {}
    for amp in ([], ["--amp", "bf16"]):
        name = "bf16" if amp else "fp32"
        t0 = time.perf_counter()
        rc = main(["train", "--data-dir", str(work / "data"), "--teacher", f"clip:{clip}",
                   "--text-epochs", "2", "--epochs", "2", "--vocabulary", "20", "--batch", "64",
                   "--device", "cuda", "--no-progress", "--out", str(work / name),
                   "--cache-dir", str(work / "cache"), *amp])  # fmt: skip
        results = json.loads((work / name / "results.json").read_text())
        keys = ("spikeclip_acc", "ann_acc", "backend", "energy_snn_mJ", "mean_firing_rate")
        summary[name] = {"rc": rc, "seconds": time.perf_counter() - t0}
        summary[name].update({k: results[k] for k in keys})
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_recipe_check.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return max(s["rc"] for s in summary.values())


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_out")))
