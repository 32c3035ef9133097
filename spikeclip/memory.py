"""Memory of training: what a forward pass keeps for its backward (bytes of the tensors autograd
saves, each storage counted once, parameters left out: they exist anyway), peak device memory,
and the low-memory mode's bfloat16 saves."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

# Saved-tensor hooks do not nest (the innermost pair alone sees a tensor): hooks inside a
# saved_tensor_bytes block (bf16_saves) report what they keep to its counter instead.
_COUNTERS: list[Callable[[torch.Tensor], None]] = []


def _report_saved(t: torch.Tensor) -> None:
    if _COUNTERS:
        _COUNTERS[-1](t)


def saved_tensor_bytes(fn: Callable, *args, **kwargs) -> tuple[object, int]:
    """Run fn(*args, **kwargs) with grad enabled; return (its result, bytes saved for backward).

    Counts every tensor autograd saves (torch.autograd.graph.saved_tensors_hooks), by storage,
    once each; nn.Parameters are left out. Keep the result alive while you need the count to
    mean something: it is what the backward would free.
    """
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        if isinstance(t, torch.nn.Parameter):
            return t
        storage = t.untyped_storage()
        key = storage.data_ptr() if storage.nbytes() else id(t)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
        return t

    _COUNTERS.append(pack)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(*args, **kwargs)
    finally:
        _COUNTERS.pop()
    return out, total


# What a model keeps for its backward (spikeclip.models.set_memory):
#   plain     no recomputation: float copies, as plain PyTorch layers keep them (the reference
#             path), except that spike-fed linears on the cpp backend keep their input's bits;
#   lossless  spiking linear/conv units keep their input spikes packed 1 bit each and recompute
#             themselves; neurons keep h in the input dtype: the same gradients;
#   low       as lossless, and neurons / attention keep h in bfloat16 (gradients within ~1e-2).
MEMORY_MODES = ("plain", "lossless", "low")


def check_memory_mode(memory: str) -> str:
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    return memory


def low_memory_saves(memory: str, shape: torch.Size, v_th: float | None = None):
    """bf16_saves(shape, v_th) in the low mode, else nothing."""
    return bf16_saves(shape, v_th) if memory == "low" else contextlib.nullcontext()


@functools.lru_cache(maxsize=16)
def _bf16_below(v_th: float) -> torch.Tensor:
    """The largest bfloat16 value below v_th."""
    b = torch.tensor(v_th, dtype=torch.bfloat16)
    step = -1 if v_th > 0 else 1  # on the bit pattern: towards zero for positives
    while float(b) >= v_th:
        if float(b) == 0.0:
            return torch.tensor(-1e-38, dtype=torch.bfloat16)
        b = (b.view(torch.int16) + step).view(torch.bfloat16)
    return b


def to_bf16_keeping_spikes(h: torch.Tensor, v_th: float | None) -> torch.Tensor:
    """h rounded to nearest bfloat16, except that a membrane below the threshold never lands on
    or above it: spikes recomputed from the saved h (h >= v_th) are the forward's. (Truncating
    instead would keep them too, but doubles the rounding error: gradients then missed 1e-2.)"""
    hb = h.to(torch.bfloat16)
    if v_th is not None:
        crossed = (hb >= v_th) & (h < v_th)
        hb.masked_fill_(crossed, _bf16_below(v_th))
    return hb


@contextlib.contextmanager
def bf16_saves(shape: torch.Size, v_th: float | None = None):
    """Within the block, floating tensors of `shape` that autograd saves are kept in bfloat16
    and restored to their dtype for the backward (the low-memory mode's LIF membranes: h of a
    neuron layer has its input's shape; `v_th` keeps their spikes exact). Other saved tensors
    are left alone."""

    def pack(t: torch.Tensor):
        if t.shape == shape and t.dtype in (torch.float32, torch.float16):
            t = (t.dtype, to_bf16_keeping_spikes(t, v_th))
        _report_saved(t[1] if isinstance(t, tuple) else t)
        return t

    def unpack(saved):
        if isinstance(saved, tuple):
            dtype, t = saved
            return t.to(dtype)
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def peak_device_memory(fn: Callable, *args, device: torch.device | str = "cuda", **kwargs):
    """Run fn(*args, **kwargs) on a CUDA device; return (its result, peak bytes allocated
    during the call above what was allocated before it)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("peak_device_memory measures CUDA devices (CPU: saved_tensor_bytes)")
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn(*args, **kwargs)
    torch.cuda.synchronize(device)
    return out, torch.cuda.max_memory_allocated(device) - base
