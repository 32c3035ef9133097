"""Which backends each op has (OP_BACKENDS, the one table), which of them run on this machine,
and how `backend=` resolves for a tensor.

| backend | runs on | what |
| torch   | anywhere | the reference (each op's reference.py), autograd backward |
| triton  | CUDA; CPU only under TRITON_INTERPRET=1 (tests) | Triton kernels |
| cuda    | CUDA, when spikeclip._C was built with CUDA | csrc/cuda |
| cpp     | CPU, when spikeclip._C was built | csrc/cpu |
| auto    | cuda, else triton on CUDA tensors; cpp on CPU tensors; torch when nothing is built |
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from spikeclip._ext import (
    EXTENSION_ERROR,
    EXTENSION_LOAD_FAILED,
    extension_has_cuda,
    extension_loaded,
)

BACKENDS = ("auto", "torch", "triton", "cuda", "cpp")

# The one table: each public op and the concrete backends that have kernels for it. Every op
# resolves `backend=` through it (resolve_backend(..., op=)); the model layer asks it too.
OP_BACKENDS: dict[str, tuple[str, ...]] = {
    "lif": ("torch", "cpp", "cuda", "triton"),
    "sdsa": ("torch", "cpp", "cuda", "triton"),
    "ssa": ("torch", "cpp", "cuda", "triton"),
    "pack_spikes": ("torch", "cpp", "cuda", "triton"),
    "unpack_spikes": ("torch", "cpp", "cuda", "triton"),
    "spike_linear": ("torch", "cpp", "triton"),
    "spike_conv2d": ("torch", "cpp"),
    "bn_lif": ("torch", "cpp", "triton"),
    "bn_max_pool": ("torch", "cpp"),
    "max_pool2x2": ("torch", "cpp"),
    "max_pool3x3s2": ("torch", "cpp"),
}


class BackendUnavailableError(RuntimeError):
    """The requested kernel backend cannot run here (not built, not installed, wrong device)."""


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def why_unavailable(backend: str, device: torch.device) -> str | None:
    """None if `backend` can run on tensors of `device`, else the reason."""
    if backend == "torch":
        return None
    if backend == "cpp":
        if not extension_loaded():
            return f"spikeclip._C is not built or failed to load ({EXTENSION_ERROR})"
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got a {device.type} tensor"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a {device.type} tensor"
        if not extension_loaded():
            return f"spikeclip._C is not built or failed to load ({EXTENSION_ERROR})"
        if not extension_has_cuda():
            return (
                "spikeclip._C was built without CUDA (rebuild where nvcc and a CUDA build "
                "of torch are present)"
            )
        return None
    if backend == "triton":
        if not triton_installed():
            return "triton is not installed (pip install triton)"
        if device.type == "cpu" and not triton_interpreting():
            return "triton runs on CPU tensors only under TRITON_INTERPRET=1 (for tests)"
        if device.type not in ("cpu", "cuda"):
            return f"triton does not run on {device.type} tensors"
        return None
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(
    backend: str,
    device: torch.device,
    *,
    op: str = "lif",
    only: tuple[tuple[str, ...], str] | None = None,
) -> str:
    """The concrete backend `backend` means for tensors of `op` on `device`, or a clear error.

    `op`: a key of OP_BACKENDS, whose backends are the candidates. `only`: (backends, why) when
    one call narrows them (a LIF with a callable surrogate: (("torch",), "callable surrogate"))."""
    if op not in OP_BACKENDS:
        raise ValueError(f"op must be one of {tuple(OP_BACKENDS)}, got {op!r}")
    supported = OP_BACKENDS[op]
    if only is not None:
        supported = tuple(b for b in supported if b in only[0])
        op = f"{op} ({only[1]})"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        order = ("cuda", "triton") if device.type == "cuda" else ("cpp",)
        for candidate in order:
            if candidate in supported and why_unavailable(candidate, device) is None:
                return candidate
        if EXTENSION_LOAD_FAILED and not torch.compiler.is_compiling():
            _warn_extension_failed()
        return "torch"
    if backend not in supported:
        raise BackendUnavailableError(
            f"backend={backend!r} has no {op} kernel yet (available for {op}: "
            f"{', '.join(supported)})"
        )
    reason = why_unavailable(backend, device)
    if reason is not None:
        raise BackendUnavailableError(f"backend={backend!r} is not available: {reason}")
    return backend


_warned_extension = False


def _warn_extension_failed() -> None:
    """Once per process: _C exists but does not load, so `auto` runs the slow reference."""
    global _warned_extension
    if not _warned_extension:
        _warned_extension = True
        warnings.warn(
            f"spikeclip._C is built but failed to load ({EXTENSION_ERROR}); backend='auto' "
            "falls back to the pure-PyTorch reference (slow). Rebuild it against this torch: "
            "pip install --no-build-isolation --force-reinstall --no-deps spikeclip "
            "(or python setup.py build_ext --inplace in a checkout)",
            RuntimeWarning,
            stacklevel=3,
        )


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Concrete backends that can run on `device` here."""
    device = torch.device(device)
    return [b for b in BACKENDS[1:] if why_unavailable(b, device) is None]


# Backends whose kernels store float64 (the others compute in float32 only).
FLOAT64_BACKENDS = ("torch", "cpp")


def check_dtype_for_backend(x: torch.Tensor, backend: str, name: str = "x") -> None:
    """float64 runs on FLOAT64_BACKENDS only (a TypeError naming them elsewhere)."""
    if x.dtype == torch.float64 and backend not in FLOAT64_BACKENDS:
        raise TypeError(
            f"{name} is float64, which the {backend} backend does not take "
            f"(float64 runs on {', '.join(FLOAT64_BACKENDS)})"
        )


# The dtypes each spike-fed product's kernels compute in (cpp sums in the tensor's dtype;
# Triton has no float64 tensor-core products).
SPIKE_PRODUCT_DTYPES = {
    "cpp": (torch.float32, torch.float64),
    "triton": (torch.float32, torch.float16, torch.bfloat16),
}


def spike_product_backend(op: str, backend: str, device: torch.device, dtype) -> str:
    """The backend a spike-fed product runs on: `backend` resolved for the device. A dtype the
    kernels do not compute in: with "auto" the dense reference, asked for by name a TypeError
    (never a quiet fallback)."""
    resolved = resolve_backend(backend, device, op=op)
    if dtype in SPIKE_PRODUCT_DTYPES.get(resolved, (dtype,)):
        return resolved
    if backend == "auto":
        return "torch"
    names = ", ".join(str(d).replace("torch.", "") for d in SPIKE_PRODUCT_DTYPES[resolved])
    raise TypeError(
        f"{op}: backend={backend!r} computes in {names}, not "
        f"{str(dtype).replace('torch.', '')} (backend='auto' or 'torch' takes any dtype)"
    )


def autocast_operands(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The floating tensors among `tensors` in the autocast dtype where autocast is on for
    their device (as torch casts a matmul's or convolution's operands), else unchanged. For ops
    that run inside their own autograd.Function, which autocast does not see into; the casts
    themselves are differentiable, so float32 parameters get float32 gradients."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)
