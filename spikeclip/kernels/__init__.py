"""Functional spiking ops: one public function per op, `backend=` chooses the implementation.

    lif(x, tau=2.0, ...)   multi-step LIF over x [T, *]
    sdsa(q, k, v, ...)     spike-driven self-attention, fused with its LIF
    ssa(q, k, v, ...)      Spikformer / SpikeCLIP spiking self-attention, fused with its LIF
    pack_spikes(x), unpack_spikes(bits, n)   0/1 tensors 8 per byte
    spike_linear(x, bits, weight)           x @ weight^T for spikes given packed
    spike_conv2d(x, weight, padding=)       a convolution of spikes that keeps their bits
    max_pool2x2(x)                          2x2 max-pool, stride 2 (one byte per window saved)
    max_pool3x3s2(x)                        3x3 max-pool, stride 2, padding 1 (the same)
    spike_products.lookup                   inference (CPU): products of packed spikes by
                                            table lookup, fused with the LIF firing them

One folder per op (lif/, attention/, spike_products/, bn_lif/, bn_pool/, max_pool/), each
with its op, its autograd, its Triton kernels and its reference (the spec); common/ holds what
they share: the one {op: backends} table (common/backends.py), argument checks, BatchNorm's
arguments and statistics, the surrogates, the eager autograd helper, the Triton LIF math and
the Triton bit tiles. spikeclip._C's kernels live in
csrc/ and register beside the op that calls them.
"""

from spikeclip.kernels.attention.op import sdsa, ssa
from spikeclip.kernels.attention.reference import sdsa_reference, ssa_reference
from spikeclip.kernels.common.backends import (
    BACKENDS,
    OP_BACKENDS,
    BackendUnavailableError,
    available_backends,
    resolve_backend,
)
from spikeclip.kernels.common.surrogates import SURROGATES
from spikeclip.kernels.lif.op import lif
from spikeclip.kernels.lif.reference import lif_reference
from spikeclip.kernels.max_pool.op import max_pool2x2, max_pool3x3s2
from spikeclip.kernels.spike_products.conv import spike_conv2d
from spikeclip.kernels.spike_products.linear import spike_linear
from spikeclip.kernels.spike_products.pack import pack_spikes, unpack_spikes

__all__ = [
    "BACKENDS",
    "OP_BACKENDS",
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
