#!/usr/bin/env bash
# The C++ kernels under AddressSanitizer: builds a copy of this checkout with SPIKECLIP_ASAN=1
# (in a temporary folder, against the active venv's torch) and runs the tests of every op that
# reads user-given buffers with libasan preloaded. Any out-of-bounds access aborts the run with
# ASan's report. About 6 minutes on 2 cores (most of it the build).
#   . .venv/bin/activate && bash benchmarks/asan_check.sh [extra pytest args]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$src" ls-files -z | (cd "$src" && xargs -0 cp --parents -t "$work")
cd "$work"
SPIKECLIP_ASAN=1 python setup.py build_ext --inplace > build.log 2>&1 || { tail -30 build.log; exit 1; }
PYTHONPATH="$work" python -c "import torch, spikeclip._C as c; assert c.__file__.startswith('$work'), c.__file__"
export LD_PRELOAD=$(gcc -print-file-name=libasan.so)
# torch's own allocations are not instrumented; leaks at exit are Python's, not ours
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
PYTHONPATH="$work" TRITON_INTERPRET=1 python -m pytest -q -p no:cacheprovider \
  tests/test_packed_bits_fuzz.py tests/test_spike_linear.py tests/test_spike_conv.py \
  tests/test_max_pool.py tests/test_attention.py tests/test_lif_backends.py -k "not triton" "$@"
