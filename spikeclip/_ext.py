"""Loads the compiled extension spikeclip._C (torch custom ops) if it was built.

The package works without it (backend="torch"); asking for a fused backend that needs it
raises a clear error instead (see spikeclip.kernels.backends).
"""

from __future__ import annotations

import torch

try:
    from spikeclip import _C  # noqa: F401

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"


# Read once, here: backend resolution runs inside torch.compile'd code, where dynamo cannot
# trace the dispatcher query but reads a module constant.
EXTENSION_HAS_CUDA: bool = (
    EXTENSION_ERROR is None
    and torch._C._dispatch_has_kernel_for_dispatch_key("spikeclip::lif_fwd", "CUDA")
)


def extension_loaded() -> bool:
    return EXTENSION_ERROR is None


def extension_has_cuda() -> bool:
    """True if _C was built with the CUDA kernels."""
    return EXTENSION_HAS_CUDA
