"""Linear layers fed by packed spikes: y = x W^T from x's bits (8 per byte, as pack_spikes
writes them), with autograd.

With 0/1 inputs the products are sums of rows of W^T at the spikes, and the weight gradient
W^T's rows are sums of grad_y rows at the spikes: the `cpp` kernels do that work, which scales
with the firing rate (SpikeCLIP's hidden layers fire at a few percent) rather than the width;
above 20% firing they unpack and hand over to BLAS (csrc/cpu/spike_layers_cpu.cpp), as they do
for a weight (or grad_y) holding inf or NaN, which the dense product meets at the zeros too.
The `triton` backend (CUDA; auto there) reads the bits inside tensor-core products
(linear_triton.py): no float copy of x, in any dtype. The `torch` backend unpacks and uses
dense matrix products (the spec). The sums run in another order than a dense product's: equal
up to float rounding.
"""

from __future__ import annotations

import torch

from spikeclip._ext import extension_loaded
from spikeclip.kernels.common.backends import autocast_operands, spike_product_backend
from spikeclip.kernels.spike_products.pack import unpack_spikes


def _forward(bits, n, weight, backend):
    if backend == "torch":
        return unpack_spikes(bits, n, weight.dtype, backend="torch") @ weight.t()
    if backend == "triton":
        from spikeclip.kernels.spike_products import linear_triton  # noqa: F401  (registers the ops)

        return torch.ops.spikeclip.spike_linear_triton(bits, weight, n)
    return torch.ops.spikeclip.spike_linear(bits, weight.t().contiguous(), n)


def _weight_grad(grad_y, bits, n, backend):
    if backend == "torch":
        return grad_y.t() @ unpack_spikes(bits, n, grad_y.dtype, backend="torch")
    if backend == "triton":
        return torch.ops.spikeclip.spike_linear_weight_grad_triton(grad_y.contiguous(), bits, n)
    return torch.ops.spikeclip.spike_linear_weight_grad(grad_y.contiguous(), bits, n).t()


class _SpikeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, weight, backend):
        ctx.save_for_backward(bits, weight)
        ctx.backend = backend
        return _forward(bits, x.shape[-1], weight, backend)

    @staticmethod
    def backward(ctx, grad_y):
        bits, weight = ctx.saved_tensors
        grad_x = grad_y @ weight if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[2]:
            grad_w = _weight_grad(grad_y, bits, weight.shape[1], ctx.backend)
        return grad_x, None, grad_w, None


def spike_linear(
    x: torch.Tensor, bits: torch.Tensor, weight: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """x @ weight^T for spikes x `[rows, n]` given by their bits `[rows, ceil(n/8)]` (uint8).

    x's values are not read (it may be a zero-stride stand-in): it carries the gradient
    grad_y @ weight back to whatever x came from. weight: `[C_out, n]`. Returns `[rows, C_out]`.
    """
    if x.dim() != 2 or bits.dim() != 2 or bits.shape[0] != x.shape[0]:
        raise ValueError(
            f"spike_linear: x must be [rows, n] and bits [rows, ceil(n/8)], got "
            f"{tuple(x.shape)} and {tuple(bits.shape)}"
        )
    if bits.dtype != torch.uint8 or bits.shape[1] != (x.shape[1] + 7) // 8:
        raise ValueError(f"spike_linear: bits must be uint8 [rows, {(x.shape[1] + 7) // 8}]")
    if not weight.is_floating_point():
        raise TypeError(f"spike_linear: weight must be a floating tensor, got {weight.dtype}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"spike_linear: weight must be [C_out, {x.shape[1]}], got {tuple(weight.shape)}"
        )
    (weight,) = autocast_operands(weight)
    backend = spike_product_backend("spike_linear", backend, weight.device, weight.dtype)
    return _SpikeLinear.apply(x, bits, weight, backend)


if extension_loaded():  # fakes of spikeclip._C's ops (torch.compile, opcheck)

    @torch.library.register_fake("spikeclip::spike_linear")
    def _linear_fake(bits, weight_t, n):
        return weight_t.new_empty((bits.shape[0], weight_t.shape[1]))

    @torch.library.register_fake("spikeclip::spike_linear_weight_grad")
    def _linear_wgrad_fake(grad_y, bits, n):
        return grad_y.new_empty((n, grad_y.shape[1]))
