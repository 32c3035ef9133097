"""LIF benchmark table: forward and forward+backward for every backend available here, the
reference, SpikingJelly (when installed) and a copy of the same bytes, ratios from one run.

    python benchmarks/bench_lif.py                       # CPU: T 4 8 16, N 1M 4M, float32
    python benchmarks/bench_lif.py --device cuda --T 8 --N 16777216 --dtype float32 bfloat16
Same as `spikeclip bench lif ...` (all its options apply).
"""

import sys

from spikeclip.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "lif", *sys.argv[1:]]))
