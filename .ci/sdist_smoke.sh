#!/usr/bin/env bash
# Install anywhere: the source distribution -> a wheel built from it -> a fresh venv -> a smoke
# test run outside the checkout (so that the installed package, not the sources, is imported):
# `spikeclip info` (the extension loads), a fused `lif` against the reference, and `spikeclip
# classify` on a small checkpoint. Uses the checkout's .venv (README test command) to build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=.venv/bin/python

echo "== sdist"
$py setup.py -q sdist -d "$tmp/dist" >/dev/null 2>&1
sdist=$(ls "$tmp"/dist/spikeclip-*.tar.gz)
tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort > "$tmp/in_sdist"
missing=$(git ls-files csrc | sort | comm -23 - "$tmp/in_sdist")
[ -z "$missing" ] || { echo "sdist lacks: $missing"; exit 1; }
echo "   $(basename "$sdist"): every file under csrc/ ($(git ls-files csrc | wc -l))"

echo "== wheel from the sdist (C++ kernels at -O1: a smoke test, not timed)"
SPIKECLIP_CPU_OPT=-O1 $py -m pip wheel -q --no-build-isolation --no-deps -w "$tmp/wheel" "$sdist"
wheel=$(ls "$tmp"/wheel/spikeclip-*.whl)
# (zipfile, not `unzip | grep -q`: no unzip on a bare machine, and grep -q's early exit makes
# the pipe fail under pipefail)
$py - "$wheel" <<'PY' || { echo "the wheel has no spikeclip/_C"; exit 1; }
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(0 if any(n.startswith("spikeclip/_C") for n in names) else 1)
PY

echo "== fresh venv: torch, the wheel and its declared dependencies (+ the teachers extra)"
python3 -m venv "$tmp/venv"
torch_version=$($py -c "import torch; print(torch.__version__.split('+')[0])")
"$tmp/venv/bin/pip" install -q "torch==$torch_version"
"$tmp/venv/bin/pip" install -q "$wheel[teachers]"

echo "== smoke test (cwd $tmp)"
cd "$tmp"
"$tmp/venv/bin/spikeclip" --version
"$tmp/venv/bin/spikeclip" info | tee info.txt
grep -q "extension spikeclip._C: loaded" info.txt
"$tmp/venv/bin/python" - "$root/tests" <<'PY'
import json, subprocess, sys
import numpy as np, torch
from PIL import Image

import spikeclip
from spikeclip.kernels import lif, lif_reference
from spikeclip.models import SpikeCLIP, SpikeCLIPConfig

assert "site-packages" in spikeclip.__file__, spikeclip.__file__  # the installed wheel
x = torch.randn(8, 3, 1000) + 0.5
spikes = lif(x, backend="cpp")
assert torch.equal(spikes, lif_reference(x)[0]) and 0 < spikes.mean() < 1
print(f"lif cpp == reference on {tuple(x.shape)}, firing {spikes.mean():.3f}")

sys.path.insert(0, sys.argv[1])  # the tests' tiny CLIP tokenizer (no downloads)
from fake_data import make_tiny_clip
from transformers import AutoTokenizer
from spikeclip.teachers import HFTokenizer

clip = make_tiny_clip("clip")
config = SpikeCLIPConfig.named("tiny", width=32, heads=4, image_size=16, vocab_size=400,
                               text_width=24, text_hidden=32, embed_dim=24, context_length=12)
model = SpikeCLIP(config, tokenizer=HFTokenizer(AutoTokenizer.from_pretrained(str(clip)), 12))
model.logit_scale = 10.0
model.save("ckpt")
Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), np.uint8)).save("a.png")
out = subprocess.run([sys.executable, "-m", "spikeclip", "classify", "--checkpoint", "ckpt",
                      "--labels", "cat,dog,car", "--json", "a.png"],
                     check=True, capture_output=True, text=True).stdout
(record,) = json.loads(out)
total = sum(p["probability"] for p in record["predictions"])
assert abs(total - 1) < 1e-5, record
print("classify:", record["predictions"])
PY
echo "== sdist -> wheel -> fresh venv: ok"
