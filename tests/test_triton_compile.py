"""The compile check (benchmarks/triton_compile_check.py) inside the suite: the LIF kernels
compiled for sm_90 without a GPU, and a planted oversized tile seen failing; its verdicts on
figures that break each rule. CI runs the whole check for sm_90 and sm_80 (.ci/run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import triton_compile_check as check  # noqa: E402

# compiling needs Triton's real JIT, not the interpreter the rest of the suite runs under
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _python(args, timeout=900):
    return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_lif_kernels_compile_for_sm90(tmp_path):
    out = tmp_path / "lif.json"
    r = _python([str(BENCH / "triton_compile_check.py"), "--arch", "90", "--cases", "lif",
                 "--jobs", "1", "--out", str(out)])  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    specs = json.loads(out.read_text())["specialisations"]
    assert {s["kernel"] for s in specs} == {"_lif_fwd_kernel", "_lif_bwd_kernel"}
    # every dtype, and each surrogate of the backward, compiled
    assert {s["dtypes"]["x_ptr"] for s in specs if "x_ptr" in s["dtypes"]} == set(check.DTYPES)
    assert {s["constexprs"]["SURR"] for s in specs if "SURR" in s["constexprs"]} == {
        "0", "1", "2", "3"
    }  # fmt: skip
    for s in specs:
        assert s["registers"] > 0 and s["shared"] <= check.TARGETS[90]
        assert s["no_fma_promised"] and s["fma_f32"] == 0, s


PLANTED = """
import json, sys
sys.path.insert(0, {bench!r})
import triton_compile_check as check
from spikeclip.kernels.attention import triton as attention_triton
attention_triton.SSA_TILE, attention_triton.SSA_DEPTH = 128, 128  # 3 x 128 KB of float32 tiles
check.ATTENTION_SHAPES[:] = [(128, 128)]
check.DTYPES = ("float32",)
records = check.run_cases(["attention"], 90, full=False)
print(json.dumps([[r["kernel"], check.failures(r)] for r in records]))
"""


def test_a_planted_oversized_tile_fails_the_check():
    r = _python(["-c", PLANTED.format(bench=str(BENCH))])
    assert r.returncode == 0, r.stdout + r.stderr
    verdicts = json.loads(r.stdout.strip().splitlines()[-1])
    failing = {kernel for kernel, why in verdicts if any("shared memory" in w for w in why)}
    assert "_bmm_kernel" in failing, verdicts
    # SDSA's tiles do not depend on SSA's: they still fit
    assert not any(why for kernel, why in verdicts if kernel.startswith("_sdsa"))


def _record(**changes):
    r = dict(kernel="k", arch=80, shared=1024, num_warps=4, registers=64, spill_stores=0,
             fma_f32=0, no_fma_promised=True)  # fmt: skip
    return r | changes


@pytest.mark.parametrize(
    "changes,reason",
    [
        (dict(shared=check.TARGETS[80] + 1), "shared memory"),
        (dict(num_warps=16, registers=160), "registers"),
        (dict(spill_stores=check.SPILL_LIMIT + 4), "spills"),
        (dict(fma_f32=3), "fma"),
        (dict(error="OutOfResources"), "does not compile"),
    ],
    ids=["shared", "registers", "spills", "fma", "error"],
)
def test_failures_names_each_broken_rule(changes, reason):
    assert check.failures(_record()) == []
    assert check.failures(_record(shared=check.TARGETS[80], fma_f32=2, no_fma_promised=False)) == []
    why = check.failures(_record(**changes))
    assert len(why) == 1 and reason in why[0]
