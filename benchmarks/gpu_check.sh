#!/usr/bin/env bash
# One-shot GPU check for the device machine (an H200 here), run from the repository root:
#   bash benchmarks/gpu_check.sh            # results under $OUT (or ./gpu_out)
# The device tool brings back at most 8 files: run it as
#   OUT=/tmp/res bash benchmarks/gpu_check.sh; tar czf $OUT/results.tgz -C /tmp/res .
# 1. builds spikeclip._C with the CUDA kernels (sm_90 only, to keep the build short);
# 2. runs the test suite with real Triton on CUDA (TRITON_INTERPRET=0): cuda and triton
#    backends on CUDA tensors, every option and dtype, against the reference;
# 3. measures the copy bandwidth and the LIF kernels' achieved bandwidth (T=8, N=16M and
#    T=4, N=4M; fp32 and bf16), against the reference and SpikingJelly when its wheel is
#    carried in .whl/ (2.0.0; 0.0.0.0.14 adds its cupy backend);
# 4. times SDSA / SSA (cuda, triton) against the reference at SpikeCLIP's shape and N = 196, 1024;
# 5. times a training step of SpikeCLIP's paper image encoder (batch 16): reference vs cuda vs
#    triton vs a no-cost stand-in for neurons and attention;
# 6. the memory benchmark on CUDA (saved bytes and peak device memory per sample, step time).
# Budget: under 10 minutes. Everything it prints also lands in $OUT/*.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
status=0
step() { echo; echo "== $* ($(date +%T))"; }

step "machine"
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt" | head -15
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" 2>&1 | tee "$OUT/versions.txt"

step "build (CUDA)"
rm -rf build spikeclip/_C*.so
if ! SPIKECLIP_CUDA=1 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
$PY -m spikeclip info 2>&1 | tee "$OUT/info.txt"

step "tests on CUDA (the CUDA-device cases; CI runs the CPU ones)"
timeout 200 $PY -m pytest tests -q -n 12 -k cuda --maxfail=60 -p no:cacheprovider -rf \
  2>&1 | tee "$OUT/tests.log" | tail -60
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "attention (cuda and triton vs reference)"
timeout 100 $PY -m spikeclip bench attention --device cuda --rounds 10 \
  --json "$OUT/bench_attention.json" 2>&1 | tee "$OUT/bench_attention.log" || status=1

step "peers"
SJ_PATHS=()
for whl in .whl/spikingjelly-*.whl; do
  [ -e "$whl" ] || continue
  dir=/tmp/sj-$(basename "$whl" .whl)
  $PY -m pip install -q --no-index --no-deps --target "$dir" "$whl" && SJ_PATHS+=("$dir")
done
echo "spikingjelly builds carried: ${#SJ_PATHS[@]}"

step "bandwidth"
bench() {  # $1: label, rest: extra PYTHONPATH entries
  local label=$1; shift
  PYTHONPATH="$(IFS=:; echo "$*")${PYTHONPATH:+:$PYTHONPATH}" timeout 90 $PY -m spikeclip bench lif \
    --device cuda --T 8 4 --N 16777216 4194304 --dtype float32 bfloat16 --rounds 20 \
    --json "$OUT/bench_lif_$label.json" 2>&1 | tee "$OUT/bench_lif_$label.log"
}
if [ ${#SJ_PATHS[@]} -eq 0 ]; then
  bench nopeer || status=1
else
  for p in "${SJ_PATHS[@]}"; do bench "$(basename "$p")" "$p" || status=1; done
fi

step "training step of the paper image encoder"
timeout 90 $PY -m spikeclip bench model --device cuda --batch 16 \
  --json "$OUT/bench_model.json" 2>&1 | tee "$OUT/bench_model.log" || status=1

step "memory of the block stack (saved bytes, peak device memory, step time)"
timeout 90 $PY -m spikeclip bench memory --device cuda \
  --json "$OUT/bench_memory.json" 2>&1 | tee "$OUT/bench_memory.log" || status=1

step "summary"
$PY - "$OUT" <<'PYEOF'
import glob, json, sys
rows = []
for f in glob.glob(f"{sys.argv[1]}/bench_lif_*.json"):
    rows += json.load(open(f))
for r in rows:
    if r["contender"] in ("cuda", "triton") and r["mode"] == "fwd+bwd" and r["N"] == 16777216:
        print(f"{r['contender']:6s} {r['dtype']:8s} T={r['T']} fwd+bwd {r['ms']:.3f} ms "
              f"{r['GB/s']:.0f} GB/s = {100 / r['x copy']:.0f}% of copy bandwidth, "
              f"{r['vs ref']:.1f}x reference")
PYEOF
echo "status=$status"
exit $status
