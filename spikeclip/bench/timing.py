"""Timing that survives noisy shared machines: contenders are timed in interleaved rounds and
compared by their medians; CUDA work is timed with events after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call of fn (device work included)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cuda_graphed(fn: Callable[[], object], device: torch.device, warmup: int = 3):
    """fn captured in a CUDA graph: a function that replays it (the same kernels without the
    host's work between them), or None where fn cannot be captured. Warm-up runs on a side
    stream first, as capture requires (allocator pools, lazy inits, autograd's streams)."""
    if device.type != "cuda":
        return None
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    try:
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:  # a contender that cannot be captured is left out, said why
        print(f"# not captured in a CUDA graph: {type(exc).__name__}: {exc}")
        return None
    return graph.replay


def median_times(
    contenders: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    rounds: int = 15,
    warmup: int = 2,
    budget_s: float = 20.0,
) -> dict[str, float]:
    """Median seconds per contender, timed round-robin so that drifts hit all alike.

    Stops adding rounds (after at least 3) once `budget_s` is spent, so a slow contender
    cannot stall a sweep.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    t_start = time.perf_counter()
    for r in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(time_once(fn, device))
        if r >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in samples.items()}


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table of `rows` (dicts) over `columns`."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])
