#!/usr/bin/env bash
# The GPU check, for the device machine (an H200 here), run from the repository root:
#   bash benchmarks/gpu_check.sh                    # every step, in this order
#   bash benchmarks/gpu_check.sh model profile      # some steps (a kept build is reused)
# Steps: build tests lif attention layers model compile profile memcheck model64 sj014 peers
# (~10 min).
# Results go to $RAW (default /tmp/gpu_raw) and are re-packed into $OUT/gpu_results.tgz (default
# OUT ./gpu_out) after every step, so a run cut short still brings back what it did;
# $OUT/summary.txt has the tables. (The device tool brings back at most 8 files from $OUT.)
# Peers: carry wheels in .whl/ (spikingjelly-2.0.0, spikingjelly-0.0.0.0.14, loguru, and h5py
# for 2.0's model zoo, which the peers step builds; torchvision is not needed): 2.0.0 runs
# its Triton LIF kernels (SJ_LIF_CUDA_IMPLEMENTATION=triton), 0.0.0.0.14 its CuPy ones.
#  build     spikeclip._C with the CUDA kernels, sm_90 only, the CPU kernels at -O1 (not timed)
#  tests     the CUDA test cases (cuda and triton backends on CUDA tensors) vs the reference
#  lif       LIF fwd and fwd+bwd, T 8 4 x N 16M 4M x fp32 bf16, eager and from CUDA graphs, vs
#            the reference, SpikingJelly 2.0 and a copy of the same bytes
#  attention SDSA / SSA at five shapes vs the reference (head dims 48 to 256: the tiled SSA)
#  layers    the encoder's spike-fed linears at batch 128: Triton's bit-reading products vs
#            dense F.linear vs unpack + dense
#  model     the paper image encoder's training step, batch 128, bf16 autocast: the reference,
#            SpikingJelly 2.0, ours (cuda, triton; plain, lossless, low), the no-cost stand-in,
#            with peak device memory
#  compile   the same step: torch.compile of the reference beside the reference, ours, stand-in
#  profile   where that step's device time goes (torch.profiler, top kernels)
#  memcheck  compute-sanitizer memcheck over the CUDA-kernel test cases (no caching allocator)
#  model64   the step at batch 64 (fp32, bf16) and at 128 in fp32, without torch.compile
#  sj014     the step and LIF with SpikingJelly 0.0.0.0.14 (CuPy)
#  peers     SpikingJelly 2.0's Spikformer, Spike-driven Transformer, SEW-ResNet training steps
#            as shipped (its Triton LIF) vs after spikeclip.accelerate, batch 64, fp32 and bf16
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
RAW=${RAW:-/tmp/gpu_raw}
mkdir -p "$RAW" "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
status=0
T0=$(date +%s)
say() { echo "$*" | tee -a "$RAW/steps.txt"; }
pack() {  # atomic: a run killed while packing keeps the previous archive
  tar czf "$OUT/gpu_results.part" -C "$RAW" . 2>/dev/null && mv "$OUT/gpu_results.part" \
    "$OUT/gpu_results.tgz"
}
fail() { say "FAILED: $*"; status=1; }

# SpikingJelly builds carried in .whl/, each installed into its own folder.
SJ2="" SJ14=""
for whl in .whl/spikingjelly-*.whl; do
  [ -e "$whl" ] || continue
  dir=/tmp/sj-$(basename "$whl" .whl)
  [ -d "$dir" ] || $PY -m pip install -q --no-index --no-deps --target "$dir" "$whl" \
    .whl/loguru-*.whl $(ls .whl/h5py-*.whl 2>/dev/null) || continue
  case $whl in *spikingjelly-2.*) SJ2=$dir;; *spikingjelly-0.*) SJ14=$dir;; esac
done
export SJ_LIF_CUDA_IMPLEMENTATION=triton  # 2.0: its Triton kernels (no native build carried)

run_build() {
  rm -rf build spikeclip/_C*.so
  if ! SPIKECLIP_CUDA=1 SPIKECLIP_CPU_OPT=-O1 $PY setup.py build_ext --inplace \
      > "$RAW/build.log" 2>&1; then
    tail -40 "$RAW/build.log"; fail "build"; pack; exit 1
  fi
  $PY -m spikeclip info 2>&1 | tee "$RAW/info.txt"
}

run_tests() {
  PYTHONPATH=$SJ2 timeout 240 $PY -m pytest tests -q -n 12 -k "cuda or spikingjelly" \
    --maxfail=60 -p no:cacheprovider -rfs > "$RAW/tests.log" 2>&1 || fail "tests"
  tail -25 "$RAW/tests.log"
}

lif_bench() {  # $1: label, $2: PYTHONPATH with the peer
  PYTHONPATH=$2 timeout 120 $PY -m spikeclip bench lif --device cuda --T 8 4 \
    --N 16777216 4194304 --dtype float32 bfloat16 --rounds 10 --graphs \
    --json "$RAW/bench_lif_$1.json" > "$RAW/bench_lif_$1.log" 2>&1 || fail "bench lif $1"
}

model_bench() {  # $1: label, $2: PYTHONPATH with the peer, rest: bench model options
  local label=$1 path=$2; shift 2
  PYTHONPATH=$path timeout 240 $PY -m spikeclip bench model --device cuda --rounds 5 "$@" \
    --json "$RAW/bench_model_$label.json" > "$RAW/bench_model_$label.log" 2>&1 \
    || fail "bench model $label"
  grep -v "^W1\|^I1" "$RAW/bench_model_$label.log" | tail -20
}

run_lif() { lif_bench sj2 "$SJ2"; tail -12 "$RAW/bench_lif_sj2.log"; }

run_attention() {
  timeout 160 $PY -m spikeclip bench attention --device cuda --rounds 10 \
    --json "$RAW/bench_attention.json" > "$RAW/bench_attention.log" 2>&1 \
    || fail "bench attention"
}

run_layers() {
  timeout 120 $PY -m spikeclip bench layers --device cuda --dtype float32 bfloat16 --rounds 10 \
    --json "$RAW/bench_layers.json" > "$RAW/bench_layers.log" 2>&1 || fail "bench layers"
}

run_model() {
  model_bench 128_bf16 "$SJ2" --batch 128 --dtype bfloat16 --memory plain lossless low
}

run_compile() {  # its own run: compiling takes minutes, and a timeout here loses only this
  model_bench 128_bf16_compile "" --batch 128 --dtype bfloat16 --memory plain --compile \
    --no-peers --contenders torch torch.compile cuda "no-cost stand-in"
}

run_profile() {
  timeout 90 $PY benchmarks/gpu_profile_step.py --batch 128 --precision bfloat16 \
    --contenders torch cuda "cuda lossless" "no-cost stand-in" > "$RAW/profile_128_bf16.txt" \
    2>&1 || fail "profile"
  grep "^==" "$RAW/profile_128_bf16.txt"
}

run_memcheck() {
  # Without the caching allocator every tensor is its own allocation: a read past its end is
  # an error, not a read of a neighbour in the same cached block.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool memcheck \
    --error-exitcode 9 --print-limit 20 $PY -m pytest -q -p no:cacheprovider -x \
    tests/test_lif_backends.py tests/test_attention.py tests/test_packed_bits_fuzz.py \
    -k "cuda and not triton" > "$RAW/memcheck.log" 2>&1
  local rc=$?
  say "memcheck rc=$rc (0: no error; 9: errors found; 124: timed out)"
  tail -4 "$RAW/memcheck.log"
  [ $rc -eq 0 ] || fail "memcheck rc=$rc"
}

run_model64() {
  model_bench 64 "$SJ2" --batch 64 --dtype bfloat16 float32 --memory plain lossless
  model_bench 128_fp32 "$SJ2" --batch 128 --dtype float32 --memory plain lossless
}

run_sj014() {
  [ -n "$SJ14" ] || { say "no spikingjelly 0.0.0.0.14 carried"; return; }
  model_bench 128_sj014 "$SJ14" --batch 128 --dtype float32 bfloat16 --memory plain \
    --contenders torch "spikingjelly 0.0.0.0.14 (cupy)" cuda "no-cost stand-in"
  lif_bench sj014 "$SJ14"
}

run_peers() {
  [ -n "$SJ2" ] || { say "no spikingjelly 2.0 carried"; return; }
  PYTHONPATH=$SJ2 timeout 240 $PY -m spikeclip bench peer-models --device cuda --batch 64 \
    --dtype float32 bfloat16 --rounds 5 --json "$RAW/bench_model_peers.json" \
    > "$RAW/bench_model_peers.log" 2>&1 || fail "bench peer-models"
  grep -v "^W1\|^I1" "$RAW/bench_model_peers.log" | tail -20
}

summary() {
  {
    cat "$RAW/steps.txt"
    for f in "$RAW"/bench_model_*.log "$RAW"/bench_attention.log "$RAW"/bench_layers.log \
        "$RAW"/bench_lif_*.log; do
      [ -e "$f" ] && { echo; echo "### $(basename "$f")"; grep -v "^W1\|^I1" "$f"; }
    done
    [ -e "$RAW/tests.log" ] && { echo; echo "### tests"; tail -5 "$RAW/tests.log"; }
    [ -e "$RAW/memcheck.log" ] && { echo; echo "### memcheck"; tail -5 "$RAW/memcheck.log"; }
  } > "$OUT/summary.txt" 2>&1
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(build tests lif attention layers model compile profile memcheck model64 sj014
  peers)
say "# gpu_check: ${steps[*]}; spikingjelly: ${SJ2:-none} ${SJ14:-none}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
  --format=csv 2>&1 | tee -a "$RAW/steps.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  2>&1 | tee -a "$RAW/steps.txt"
for s in "${steps[@]}"; do
  say "== $s (t+$(( $(date +%s) - T0 ))s)"
  "run_$s"
  summary
  pack
done
say "status=$status (t+$(( $(date +%s) - T0 ))s)"
summary
pack
exit $status
