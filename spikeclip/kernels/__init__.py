"""Functional spiking ops: one public function per op, `backend=` chooses the implementation.

    lif(x, tau=2.0, ...)   multi-step LIF over x [T, *]
    sdsa(q, k, v, ...)     spike-driven self-attention, fused with its LIF
    ssa(q, k, v, ...)      Spikformer / SpikeCLIP spiking self-attention, fused with its LIF
    pack_spikes(x), unpack_spikes(bits, n)   0/1 tensors 8 per byte
    spike_linear(x, bits, weight)           x @ weight^T for spikes given packed
    spike_conv2d(x, weight, padding=)       a stride-1 'same' convolution of spikes
    max_pool2x2(x)                          2x2 max-pool, stride 2 (one byte per window saved)
    max_pool3x3s2(x)                        3x3 max-pool, stride 2, padding 1 (the same)
Backends: spikeclip.kernels.backends; the reference (spec): spikeclip.kernels.reference.
"""

from spikeclip.kernels import c_ops  # noqa: F401  (fakes and autograd of the _C ops)
from spikeclip.kernels.attention_op import sdsa, ssa
from spikeclip.kernels.backends import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    resolve_backend,
)
from spikeclip.kernels.lif_op import lif
from spikeclip.kernels.max_pool import max_pool2x2, max_pool3x3s2
from spikeclip.kernels.reference import (
    SURROGATES,
    lif_reference,
    sdsa_reference,
    ssa_reference,
)
from spikeclip.kernels.spike_conv import spike_conv2d
from spikeclip.kernels.spike_linear import spike_linear
from spikeclip.kernels.spike_pack import pack_spikes, unpack_spikes

__all__ = [
    "BACKENDS",
    "SURROGATES",
    "BackendUnavailableError",
    "available_backends",
    "lif",
    "lif_reference",
    "max_pool2x2",
    "max_pool3x3s2",
    "pack_spikes",
    "resolve_backend",
    "sdsa",
    "sdsa_reference",
    "spike_conv2d",
    "spike_linear",
    "ssa",
    "ssa_reference",
    "unpack_spikes",
]
