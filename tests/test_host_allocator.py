"""keep_freed_buffers: large CPU buffers come from glibc's heap (reused) instead of fresh mmaps."""

import os
import subprocess
import sys

import pytest

from spikeclip.host_allocator import keep_freed_buffers

# In a fresh process: bytes glibc holds in mmapped chunks while a 64 MiB tensor is alive.
PROBE = """
import ctypes, sys, torch
from spikeclip.host_allocator import keep_freed_buffers
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
applied = keep_freed_buffers() if sys.argv[1] == "1" else False
before = libc.mallinfo2().hblkhd
x = torch.ones(16 << 20)  # 64 MiB
during = libc.mallinfo2().hblkhd
del x
y = torch.ones(16 << 20)
print(int(applied), during - before, float(y.sum()))
"""

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc only",
)


def _probe(apply: bool, env=None) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if apply else "0"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    ).stdout.split()
    assert float(out[2]) == 16 << 20
    return int(out[0]), int(out[1])


@glibc
def test_large_buffers_come_from_the_heap():
    applied, mmapped = _probe(apply=False)
    assert not applied and mmapped >= 64 << 20  # glibc's default: a fresh mapping
    applied, mmapped = _probe(apply=True)
    assert applied and mmapped == 0


@glibc
def test_opt_out():
    applied, mmapped = _probe(apply=True, env={"SPIKECLIP_KEEP_FREED": "0"})
    assert not applied and mmapped >= 64 << 20


@pytest.mark.parametrize("limit", [0, -1, 1 << 31, 2.5, True, "1"])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match="limit"):
        keep_freed_buffers(limit)
