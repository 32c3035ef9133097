"""Loads the compiled extension spikeclip._C (torch custom ops) if it was built.

The package works without it (backend="torch"); asking for a fused backend that needs it
raises a clear error instead (see spikeclip.kernels.common.backends).
"""

from __future__ import annotations

import importlib.util

import torch

try:
    from spikeclip import _C  # noqa: F401

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"

# Built but not loadable (typically: compiled against another torch, an ABI mismatch). The
# first fused op asked for with backend="auto" warns once with the reason (backends.py).
EXTENSION_LOAD_FAILED: bool = (
    EXTENSION_ERROR is not None and importlib.util.find_spec("spikeclip._C") is not None
)


# Read once, here: backend resolution runs inside torch.compile'd code, where dynamo cannot
# trace the dispatcher query but reads a module constant.
EXTENSION_HAS_CUDA: bool = (
    EXTENSION_ERROR is None
    and torch._C._dispatch_has_kernel_for_dispatch_key("spikeclip::lif_fwd", "CUDA")
)


def extension_loaded() -> bool:
    return EXTENSION_ERROR is None


def extension_status() -> str:
    """One line for `spikeclip info`: loaded, not built, or built but failing to load (why)."""
    if EXTENSION_ERROR is None:
        return "loaded" + (" (with CUDA kernels)" if EXTENSION_HAS_CUDA else " (CPU kernels)")
    if EXTENSION_LOAD_FAILED:
        return (
            f"built but FAILS TO LOAD: {EXTENSION_ERROR} -- fused ops fall back to the "
            "reference; rebuild against this torch (README: building against another torch)"
        )
    return "not built (fused CPU/CUDA kernels unavailable; pip install builds it)"


def extension_has_cuda() -> bool:
    """True if _C was built with the CUDA kernels."""
    return EXTENSION_HAS_CUDA
