"""Spike tensors packed 8 per byte along the last dimension: `pack_spikes` / `unpack_spikes`.

Bit j of byte b holds x[..., 8 b + j]; lengths that are not a multiple of 8 are zero-padded.
"""

from __future__ import annotations

import torch

from spikeclip._ext import extension_loaded
from spikeclip.kernels.common.backends import resolve_backend
from spikeclip.kernels.common.options import check_sequence
from spikeclip.kernels.spike_products.reference import (
    pack_spikes_reference,
    unpack_spikes_reference,
)


def pack_spikes(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """0/1 tensor `[..., n]` (any float dtype) -> uint8 `[..., ceil(n / 8)]`.

    Raises ValueError if x holds anything but 0 and 1."""
    check_sequence(x)
    backend = resolve_backend(backend, x.device, op="pack_spikes")
    if backend == "torch":
        if not ((x == 0) | (x == 1)).all():
            raise ValueError("pack_spikes: x must hold spikes (only 0 and 1)")
        return pack_spikes_reference(x)
    if backend == "triton":
        from spikeclip.kernels.common.pack_triton import pack_triton

        bits, bad = pack_triton(x)
        if int(bad):
            raise ValueError("pack_spikes: x must hold spikes (only 0 and 1)")
        return bits
    return torch.ops.spikeclip.pack_spikes(x)  # ValueError from the kernel for non-spikes


def unpack_spikes(
    bits: torch.Tensor, n: int, dtype: torch.dtype = torch.float32, *, backend: str = "auto"
) -> torch.Tensor:
    """uint8 `[..., ceil(n / 8)]` -> `[..., n]` of 0/1 in dtype (inverse of pack_spikes)."""
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8:
        raise TypeError(f"bits must be a uint8 tensor, got {getattr(bits, 'dtype', type(bits))}")
    if isinstance(n, bool) or not isinstance(n, int | torch.SymInt):  # SymInt: traced shapes
        raise TypeError(f"n must be an int, got {n!r}")
    if n < 0:  # every backend alike (the reference would give an empty tensor, cpp a crash)
        raise ValueError(f"n must be >= 0, got {n}")
    if bits.dim() == 0 or bits.shape[-1] != (n + 7) // 8:
        raise ValueError(
            f"bits must have a last dimension of ceil(n / 8) = {(n + 7) // 8}, got "
            f"shape {tuple(bits.shape)}"
        )
    backend = resolve_backend(backend, bits.device, op="unpack_spikes")
    if backend == "torch":
        return unpack_spikes_reference(bits, n, dtype)
    if backend == "triton":
        from spikeclip.kernels.common.pack_triton import unpack_triton

        return unpack_triton(bits, n, dtype)
    return torch.ops.spikeclip.unpack_spikes(bits, n, dtype)


if extension_loaded():  # fakes of spikeclip._C's ops (torch.compile, opcheck)

    @torch.library.register_fake("spikeclip::pack_spikes")
    def _pack_fake(x):
        return x.new_empty((*x.shape[:-1], (x.shape[-1] + 7) // 8), dtype=torch.uint8)

    @torch.library.register_fake("spikeclip::unpack_spikes")
    def _unpack_fake(bits, n, dtype):
        return bits.new_empty((*bits.shape[:-1], n), dtype=dtype)
