"""1-bit packing of spikes in Triton: bit j of byte b holds x[..., 8 b + j] (as csrc/spike_pack.h;
spec: reference.pack_spikes_reference)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pack_kernel(x_ptr, bits_ptr, bad_ptr, rows, n, nb, BLOCK_R: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    j = tl.arange(0, 8)
    rmask = r < rows
    bad = tl.zeros([BLOCK_R], dtype=tl.int32)
    for b in range(nb):
        col = b * 8 + j
        m = rmask[:, None] & (col < n)[None, :]
        x = tl.load(x_ptr + r[:, None] * n + col[None, :], mask=m, other=0.0).to(tl.float32)
        nz = (x != 0.0).to(tl.int32)
        bad += tl.sum(((x != 0.0) & (x != 1.0)).to(tl.int32), axis=1)
        byte = tl.sum(nz << j[None, :], axis=1)
        tl.store(bits_ptr + r * nb + b, byte.to(tl.uint8), mask=rmask)
    tl.store(bad_ptr + tl.program_id(0), tl.sum(bad, axis=0))


def pack_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bits uint8 [..., ceil(n/8)], count of non-0/1 values as a 0-d int32 tensor)."""
    n = x.shape[-1]
    nb = (n + 7) // 8
    bits = x.new_empty((*x.shape[:-1], nb), dtype=torch.uint8)
    rows = x.numel() // n if n else 0
    block = 64
    bad = x.new_zeros(max(1, triton.cdiv(rows, block)), dtype=torch.int32)
    if rows and nb:
        _pack_kernel[(triton.cdiv(rows, block),)](
            x.contiguous(), bits, bad, rows, n, nb, BLOCK_R=block
        )
    return bits, bad.sum()


@triton.jit
def _spike_tile(bits_ptr, rows, cols, nb, mask):
    """0/1 float32 tile of x[rows, cols] read from its packed bits."""
    byte = tl.load(bits_ptr + rows[:, None] * nb + (cols // 8)[None, :], mask=mask, other=0)
    return ((byte.to(tl.int32) >> (cols % 8)[None, :]) & 1).to(tl.float32)


@triton.jit
def _unpack_kernel(bits_ptr, x_ptr, total, n, nb, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    row, col = i // n, i % n
    byte = tl.load(bits_ptr + row * nb + col // 8, mask=mask, other=0)
    x = (byte.to(tl.int32) >> (col % 8).to(tl.int32)) & 1
    tl.store(x_ptr + i, x.to(tl.float32).to(x_ptr.dtype.element_ty), mask=mask)


def unpack_triton(bits: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    x = bits.new_empty((*bits.shape[:-1], n), dtype=dtype)
    if x.numel():
        block = 1024
        _unpack_kernel[(triton.cdiv(x.numel(), block),)](
            bits.contiguous(), x, x.numel(), n, bits.shape[-1], BLOCK=block
        )
    return x
