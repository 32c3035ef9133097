"""The spike-fed products' reference: the bit layout of packed spikes (pack / unpack), and the
products themselves, which are the dense product of the unpacked spikes (the `torch` backend of
spike_linear / spike_conv2d: unpack, then matmul / F.conv2d).
"""

from __future__ import annotations

import torch


def pack_spikes_reference(x: torch.Tensor) -> torch.Tensor:
    """0/1 values `[..., n]` -> uint8 `[..., ceil(n / 8)]`, bit j of byte b = x[..., 8 b + j]."""
    n = x.shape[-1]
    nb = (n + 7) // 8
    xb = torch.nn.functional.pad(x.detach(), (0, nb * 8 - n)).reshape(*x.shape[:-1], nb, 8)
    weights = (1 << torch.arange(8, device=x.device)).to(torch.uint8)
    return (xb.to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def unpack_spikes_reference(bits: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of pack_spikes_reference: uint8 `[..., ceil(n / 8)]` -> `[..., n]` of dtype."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    x = (bits.unsqueeze(-1) >> shifts) & 1
    return x.reshape(*bits.shape[:-1], bits.shape[-1] * 8)[..., :n].to(dtype)
