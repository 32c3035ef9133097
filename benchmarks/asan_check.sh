#!/usr/bin/env bash
# The C++ kernels under AddressSanitizer: builds a copy of this checkout with SPIKECLIP_ASAN=1
# (against the active venv's torch) and runs the tests of every op that reads user-given
# buffers with libasan preloaded; an out-of-bounds access stops the run with ASan's report.
# About 6 minutes on 2 idle cores, most of it the build. ASAN_WORK=DIR keeps the build there
# (and reuses it on the next run).
#   . .venv/bin/activate && bash benchmarks/asan_check.sh [extra pytest args]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${ASAN_WORK:-}" ]; then
  work=$ASAN_WORK
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
git -C "$src" ls-files -z | (cd "$src" && xargs -0 cp --parents --preserve=timestamps -t "$work")
cd "$work"
if ! ls spikeclip/_C*.so > /dev/null 2>&1 || [ -n "$(find csrc -newer spikeclip/_C*.so)" ]; then
  SPIKECLIP_ASAN=1 python setup.py build_ext --inplace > build.log 2>&1 || { tail -30 build.log; exit 1; }
fi
# libstdc++ preloaded too: ASan must find the real __cxa_throw when our checks throw
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
# Only our library is instrumented: leaks at exit are Python's, and torch's own allocations
# and frees (across the exceptions our checks throw) are not ours to judge.
export ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0
PYTHONPATH="$work" python -c "import torch, spikeclip._C as c; assert c.__file__.startswith('$work'), c.__file__"
# --capture=sys: ASan writes its report to file descriptor 2, which pytest must not swallow
PYTHONPATH="$work" TRITON_INTERPRET=1 python -m pytest -q -p no:cacheprovider --capture=sys \
  tests/test_packed_bits_fuzz.py tests/test_spike_linear.py tests/test_spike_conv.py \
  tests/test_max_pool.py tests/test_bn_pool.py tests/test_bn_lif.py tests/test_attention.py \
  tests/test_lif_backends.py \
  tests/test_spike_lookup.py tests/test_inference_path.py tests/test_winograd.py -k "not triton" "$@"
