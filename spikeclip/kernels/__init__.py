"""Functional spiking ops: one public function per op, `backend=` chooses the implementation.

    lif(x, tau=2.0, ...)   multi-step LIF over x [T, *]
Backends: spikeclip.kernels.backends; the reference (spec): spikeclip.kernels.reference.
"""

from spikeclip.kernels import lif_cpp  # noqa: F401  (registers fake + autograd of the _C ops)
from spikeclip.kernels.backends import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    resolve_backend,
)
from spikeclip.kernels.lif_op import lif
from spikeclip.kernels.reference import SURROGATES, lif_reference

__all__ = [
    "BACKENDS",
    "SURROGATES",
    "BackendUnavailableError",
    "available_backends",
    "lif",
    "lif_reference",
    "resolve_backend",
]
