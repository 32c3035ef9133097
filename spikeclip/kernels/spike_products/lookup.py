"""Inference products of packed spikes by table lookup, and the LIF that writes packed spikes
(csrc/cpu/spike_lookup_cpu.cpp; CPU, float32 / float64, no autograd).

A product with 0/1 inputs sums weight rows at the ones. Eight inputs packed in a byte select
one of 256 precomputed sums of their eight rows, so the product costs one row addition per
input byte, whatever the firing rate (a dense product: one multiply-add per input). The
tables are built from the weights at every call; they hold 256 rows per input byte (and per
tap of a convolution), so `lookup_fits` keeps them to a size the caches serve. The kernels
accumulate in vectors of the CPU's register width (`cpu_vector_bytes`: 64 bytes with AVX-512,
32 with AVX2, else 16), each output summed in the same order at every width: the same bits.

    codes = lif_spike_codes(x, T, **neuron.forward_options(x.dtype))  # [T, B, H+2, W+2, C/8]
    y = spike_conv3x3_lookup(codes.flatten(0, 1), weight, bias)  # [T*B, H, W, C_out]
    # or the convolution and the next LIF in one pass (no float output), pooled between:
    codes = spike_conv3x3_lookup_lif(codes.flatten(0, 1), weight, bias, T, pool=True, **options)

Codes are pack_spikes's layout (bit j of byte g = channel 8 g + j), per pixel, channels last.
The spec of each op is the dense computation it replaces (tests/test_spike_lookup.py): equal up
to float rounding (the sums run in another order), spikes equal bit for bit given the same
input. Weights holding inf or NaN are computed densely (the dense product meets them at the
zeros too, 0 x inf = NaN, where a table of sums at the ones would not).
"""

from __future__ import annotations

import torch

from spikeclip._ext import extension_loaded

# The tables of one call at most this large (bytes): they are read at random, a row per input
# byte, so they must stay near the core (a 2-core EPYC's L2 is 1 MiB, its L3 32 MiB).
TABLE_BUDGET = 16 << 20


def lookup_fits(c_in: int, c_out: int, taps: int, dtype: torch.dtype) -> bool:
    """Whether a product of c_in packed inputs (per tap) into c_out outputs has tables within
    TABLE_BUDGET."""
    size = torch.empty((), dtype=dtype).element_size()
    lanes = 64 // size
    padded = -(-c_out // lanes) * lanes
    return taps * -(-c_in // 8) * 256 * padded * size <= TABLE_BUDGET


def lookup_available(x: torch.Tensor) -> bool:
    """Whether these ops run on x: the extension loaded, x a float32 / float64 CPU tensor."""
    return (
        extension_loaded() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
    )


def cpu_vector_bytes() -> int:
    """The vector width in bytes the lookup kernels run at in this process: 64 where the CPU
    has AVX-512F, 32 with AVX2, else 16. SPIKECLIP_CPU_VECTOR_BYTES=16 or 32 in the environment
    (read at the first call) lowers it, never past what the CPU has."""
    return int(torch.ops.spikeclip.cpu_vector_bytes())


def spike_conv3x3_lookup(codes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """codes `[N, H + 2, W + 2, ceil(C_in / 8)]` (a zero border of one pixel), weight
    `[C_out, C_in, 3, 3]`, bias `[C_out]` -> `[N, H, W, C_out]`: F.conv2d(spikes, weight, bias,
    padding=1) channels last."""
    return torch.ops.spikeclip.spike_conv3x3_lookup(codes, weight, bias)


def spike_linear_lookup(codes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """codes `[rows, ceil(C_in / 8)]`, weight `[C_out, C_in]`, bias `[C_out]` -> `[rows, C_out]`:
    F.linear(spikes, weight, bias)."""
    return torch.ops.spikeclip.spike_linear_lookup(codes, weight, bias)


def lif_spike_codes(x: torch.Tensor, time_steps: int, *, pool: bool = False, pad: int = 1,
                    tau: float, input_scale: float = 1.0, v_th: float, v_reset: float | None,
                    decay_input: bool) -> torch.Tensor:  # fmt: skip
    """The spikes of a multi-step LIF (v0 = rest) over x `[T or 1, B, H, W, C]` times
    input_scale (one step: the same input at every step), with pool the 3x3 stride-2 max-pool
    (padding 1, F.max_pool2d's) of each step first, packed: uint8 `[T, B, H' + 2 pad,
    W' + 2 pad, ceil(C / 8)]`, the border zero. v_reset None: soft reset."""
    soft = v_reset is None
    return torch.ops.spikeclip.lif_spike_codes(
        x, time_steps, pool, pad, float(tau), float(input_scale), float(v_th),
        0.0 if soft else float(v_reset), soft, decay_input,
    )  # fmt: skip


def spike_conv3x3_lookup_lif(codes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             time_steps: int, *, pool: bool = False, tau: float,
                             input_scale: float = 1.0, v_th: float, v_reset: float | None,
                             decay_input: bool) -> torch.Tensor:  # fmt: skip
    """lif_spike_codes(spike_conv3x3_lookup(codes, weight, bias) as `[T, B, H, W, C_out]`, ...)
    in one pass, without the convolution's float output: codes `[T * B, H + 2, W + 2,
    ceil(C_in / 8)]` (image t * B + b: step t of sample b) -> codes `[T, B, H' + 2, W' + 2,
    ceil(C_out / 8)]`."""
    soft = v_reset is None
    return torch.ops.spikeclip.spike_conv3x3_lookup_lif(
        codes, weight, bias, time_steps, pool, float(tau), float(input_scale), float(v_th),
        0.0 if soft else float(v_reset), soft, decay_input,
    )  # fmt: skip


def spike_linear_lookup_lif(codes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            time_steps: int, *, packed: bool = False, heads: int = 1,
                            tokens: int = 1, tau: float, input_scale: float = 1.0, v_th: float,
                            v_reset: float | None, decay_input: bool) -> torch.Tensor:  # fmt: skip
    """The spikes of a multi-step LIF over spike_linear_lookup(codes, weight, bias) in one pass:
    codes `[T * M, ceil(C_in / 8)]` (row t * M + m: step t of sample m) -> with packed, codes
    `[T * M, ceil(C_out / 8)]`; else spikes in the weight's dtype, in heads layout `[T * M /
    tokens, heads, tokens, C_out / heads]` (rows of `tokens` tokens each, the channels split
    into heads; heads = tokens = 1: `[T * M, 1, 1, C_out]`)."""
    soft = v_reset is None
    return torch.ops.spikeclip.spike_linear_lookup_lif(
        codes, weight, bias, time_steps, packed, heads, tokens, float(tau), float(input_scale),
        float(v_th), 0.0 if soft else float(v_reset), soft, decay_input,
    )  # fmt: skip


def _conv_fake(codes, weight, bias):
    N, Hp, Wp, _ = codes.shape
    return weight.new_empty(N, Hp - 2, Wp - 2, weight.shape[0])


def _linear_fake(codes, weight, bias):
    return weight.new_empty(codes.shape[0], weight.shape[0])


def _codes_fake(x, T, pool, pad, *options):
    _, B, H, W, C = x.shape
    if pool:
        H, W = (H + 1) // 2, (W + 1) // 2
    return x.new_empty(T, B, H + 2 * pad, W + 2 * pad, (C + 7) // 8, dtype=torch.uint8)


def _conv_lif_fake(codes, weight, bias, T, pool, *options):
    N, Hp, Wp, _ = codes.shape
    H, W = Hp - 2, Wp - 2
    if pool:
        H, W = (H + 1) // 2, (W + 1) // 2
    return codes.new_empty(T, N // T, H + 2, W + 2, (weight.shape[0] + 7) // 8)


def _linear_lif_fake(codes, weight, bias, T, packed, heads, tokens, *options):
    if packed:
        return codes.new_empty(codes.shape[0], (weight.shape[0] + 7) // 8)
    return weight.new_empty(codes.shape[0] // tokens, heads, tokens, weight.shape[0] // heads)


if extension_loaded():
    torch.library.register_fake("spikeclip::spike_linear_lookup_lif")(_linear_lif_fake)
    torch.library.register_fake("spikeclip::spike_conv3x3_lookup_lif")(_conv_lif_fake)
    torch.library.register_fake("spikeclip::spike_conv3x3_lookup")(_conv_fake)
    torch.library.register_fake("spikeclip::spike_linear_lookup")(_linear_fake)
    torch.library.register_fake("spikeclip::lif_spike_codes")(_codes_fake)
