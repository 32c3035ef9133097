"""Spike-fed linear products in Triton that read the spikes as packed bits (1 bit per input,
as pack_spikes writes them) and multiply on tensor cores:

- forward  y = x W^T   [rows, C_out]: tiles of x are unpacked to 0/1 in registers and fed to
  tl.dot beside tiles of W (x never exists as floats in memory);
- weight gradient  dW = grad_y^T x   [C_out, n]: the same, with the sum over rows.

0 and 1 are exact in every dot format, so the products lose nothing to the spikes: half
precision weights multiply in their own format (float32 accumulation); float32 weights in
3xTF32 (the weight split into a high and a low TF32 part, float32-level error). Bits past n in
a row's last byte are masked, never read as spikes. Spec: x @ W^T of the unpacked bits
(spike_linear's "torch" backend).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spikeclip.kernels.common.backends import triton_interpreting
from spikeclip.kernels.common.pack_triton import _spike_tile

# Tiles of 64 rows x 64 outputs, summed 32 inputs deep, by 8 warps: no spills on sm_90 in any
# dtype (64 deep by 4 warps spilled 580 B in float32, 1.4 KB on sm_80; 8 B are left there in
# float32): benchmarks/triton_compile_check.py
_BLOCK, _DEPTH = 64, 32


@triton.jit
def _forward_kernel(
    bits_ptr,
    w_ptr,
    y_ptr,
    rows,
    n,
    cout,
    nb,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    o = tl.program_id(1).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_R, BLOCK_O], dtype=tl.float32)
    for k0 in range(0, n, BLOCK_K):
        k = k0 + kk
        x = _spike_tile(bits_ptr, r, k, nb, (r < rows)[:, None] & (k < n)[None, :])
        wm = (k < n)[:, None] & (o < cout)[None, :]
        w = tl.load(w_ptr + o[None, :] * n + k[:, None], mask=wm, other=0.0)  # W^T tile
        if UPCAST:
            w = w.to(tl.float32)
        acc += tl.dot(x.to(w.dtype), w, input_precision=PREC)
    ym = (r < rows)[:, None] & (o < cout)[None, :]
    tl.store(y_ptr + r[:, None] * cout + o[None, :], acc.to(y_ptr.dtype.element_ty), mask=ym)


@triton.jit
def _weight_grad_kernel(
    gy_ptr,
    bits_ptr,
    gw_ptr,
    rows,
    n,
    cout,
    nb,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    o = tl.program_id(0).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    rr = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_O, BLOCK_K], dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + rr
        gm = (r < rows)[:, None] & (o < cout)[None, :]
        gy = tl.load(gy_ptr + r[:, None] * cout + o[None, :], mask=gm, other=0.0)
        if UPCAST:
            gy = gy.to(tl.float32)
        x = _spike_tile(bits_ptr, r, k, nb, (r < rows)[:, None] & (k < n)[None, :])
        acc += tl.dot(tl.trans(gy), x.to(gy.dtype), input_precision=PREC)
    gwm = (o < cout)[:, None] & (k < n)[None, :]
    tl.store(gw_ptr + o[:, None] * n + k[None, :], acc.to(gw_ptr.dtype.element_ty), mask=gwm)


def _upcast(dtype: torch.dtype) -> bool:
    """Multiply bfloat16 tiles as float32 (exact: they are float32 values) under the Triton
    interpreter, whose bfloat16 dot is wrong (Triton 3.7.1: off by orders of magnitude)."""
    return dtype == torch.bfloat16 and triton_interpreting()


def _precision(dtype: torch.dtype) -> str:
    # float32: 3xTF32; half precision multiplies in its own format (the setting is for float32)
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _launch(kernel, grid, a, b, out, rows, n, cout):
    """kernel[grid](a, b, out, ...); the output's dtype sets the dot's precision."""
    dtype = out.dtype
    kernel[grid](
        a.contiguous(),
        b.contiguous(),
        out,
        rows,
        n,
        cout,
        (n + 7) // 8,
        PREC=_precision(dtype),
        UPCAST=_upcast(dtype),
        BLOCK_R=_BLOCK,
        BLOCK_O=_BLOCK,
        BLOCK_K=_DEPTH,
        num_warps=8,
    )


def _check(bits: torch.Tensor, rows: int, n: int, name: str, other: torch.Tensor) -> None:
    """bits uint8 [rows, ceil(n/8)] on other's device; other (the float operand) a 2-d
    float32 / float16 / bfloat16 tensor: anything else is refused before a kernel reads it."""
    if bits.dim() != 2 or bits.dtype != torch.uint8 or tuple(bits.shape) != (rows, (n + 7) // 8):
        raise ValueError(
            f"{name}: bits must be uint8 [{rows}, {(n + 7) // 8}], got {bits.dtype} "
            f"{tuple(bits.shape)}"
        )
    if other.dim() != 2 or other.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(
            f"{name}: the float operand must be a 2-d float32, float16 or bfloat16 tensor, got "
            f"{other.dtype} {tuple(other.shape)}"
        )
    if bits.device != other.device:
        raise ValueError(f"{name}: bits are on {bits.device}, the float operand on {other.device}")


@torch.library.custom_op(
    "spikeclip::spike_linear_triton", mutates_args=(), device_types=("cuda", "cpu")
)
def spike_linear_triton(bits: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
    """x @ weight^T for x given by its bits `[rows, ceil(n/8)]`; weight `[C_out, n]` (float32,
    float16 or bfloat16). Returns `[rows, C_out]` in weight's dtype."""
    rows = bits.shape[0] if bits.dim() else 0
    _check(bits, rows, n, "spike_linear_triton", weight)
    cout = weight.shape[0]
    if weight.shape[1] != n:
        raise ValueError(f"spike_linear_triton: weight must be [C_out, {n}]")
    y = weight.new_empty((rows, cout))
    if y.numel() == 0:
        return y
    if n == 0:
        return y.zero_()
    grid = (triton.cdiv(rows, _BLOCK), triton.cdiv(cout, _BLOCK))
    _launch(_forward_kernel, grid, bits, weight, y, rows, n, cout)
    return y


@spike_linear_triton.register_fake
def _(bits, weight, n):
    return weight.new_empty((bits.shape[0], weight.shape[0]))


@torch.library.custom_op(
    "spikeclip::spike_linear_weight_grad_triton", mutates_args=(), device_types=("cuda", "cpu")
)
def spike_linear_weight_grad_triton(
    grad_y: torch.Tensor, bits: torch.Tensor, n: int
) -> torch.Tensor:
    """grad_y^T @ x `[C_out, n]` for x given by its bits `[rows, ceil(n/8)]`, in grad_y's
    dtype."""
    if grad_y.dim() != 2:
        raise ValueError(
            f"spike_linear_weight_grad_triton: grad_y must be 2-d, got {grad_y.dim()}-d"
        )
    rows, cout = grad_y.shape
    _check(bits, rows, n, "spike_linear_weight_grad_triton", grad_y)
    gw = grad_y.new_empty((cout, n))
    if gw.numel() == 0:
        return gw
    if rows == 0:
        return gw.zero_()
    grid = (triton.cdiv(cout, _BLOCK), triton.cdiv(n, _DEPTH))
    _launch(_weight_grad_kernel, grid, grad_y, bits, gw, rows, n, cout)
    return gw


@spike_linear_weight_grad_triton.register_fake
def _(grad_y, bits, n):
    return grad_y.new_empty((grad_y.shape[1], n))
