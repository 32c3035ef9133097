"""What a results file says about the machine that measured it."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name with its widest vector extension, e.g. "AMD EPYC (AVX2)": one model
    name covers machines whose figures differ (an AVX2 and an AVX-512 EPYC have been seen
    here), so results files say which. From /proc/cpuinfo (or `cpuinfo`, its text), else what
    platform reports."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    name, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name is None:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    if name is None:
        return platform.processor() or platform.machine() or "unknown CPU"
    isa = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"))
                if flag in flags), None)  # fmt: skip
    return f"{name} ({isa})" if isa else name
