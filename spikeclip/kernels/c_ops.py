"""Everything registered for the ops of spikeclip._C (csrc/ops.cpp), in one place, once it
loads: fake (meta) implementations for torch.compile and opcheck, and autograd where the op is
a fused forward (LIF, attention). The Triton ops register their own beside their kernels.
"""

from __future__ import annotations

import torch

from spikeclip._ext import extension_loaded
from spikeclip.kernels.attention_autograd import register_attention_ops
from spikeclip.kernels.lif_autograd import register_lif_pair


def _register_fakes() -> None:
    @torch.library.register_fake("spikeclip::pack_spikes")
    def _pack_fake(x):
        return x.new_empty((*x.shape[:-1], (x.shape[-1] + 7) // 8), dtype=torch.uint8)

    @torch.library.register_fake("spikeclip::unpack_spikes")
    def _unpack_fake(bits, n, dtype):
        return bits.new_empty((*bits.shape[:-1], n), dtype=dtype)

    @torch.library.register_fake("spikeclip::spike_linear")
    def _linear_fake(bits, weight_t, n):
        return weight_t.new_empty((bits.shape[0], weight_t.shape[1]))

    @torch.library.register_fake("spikeclip::spike_linear_weight_grad")
    def _linear_wgrad_fake(grad_y, bits, n):
        return grad_y.new_empty((n, grad_y.shape[1]))

    @torch.library.register_fake("spikeclip::spike_conv2d")
    def _conv_fake(x, weight, padding):
        return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))

    @torch.library.register_fake("spikeclip::spike_conv2d_weight_grad")
    def _conv_wgrad_fake(grad_y, bits, width, kernel_size, padding):
        return grad_y.new_empty((grad_y.shape[1], bits.shape[1], kernel_size, kernel_size))

    @torch.library.register_fake("spikeclip::max_pool2x2")
    def _pool_fake(x):
        shape = (*x.shape[:-2], x.shape[-2] // 2, x.shape[-1] // 2)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)

    @torch.library.register_fake("spikeclip::max_pool2x2_backward")
    def _pool_bwd_fake(grad_y, where, height, width):
        return grad_y.new_empty((*grad_y.shape[:-2], height, width))

    @torch.library.register_fake("spikeclip::max_pool3x3s2")
    def _pool3_fake(x):
        shape = (*x.shape[:-2], (x.shape[-2] - 1) // 2 + 1, (x.shape[-1] - 1) // 2 + 1)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)

    torch.library.register_fake("spikeclip::max_pool3x3s2_backward")(_pool_bwd_fake)


if extension_loaded():
    register_lif_pair("spikeclip::lif_fwd", "spikeclip::lif_bwd", torch.ops.spikeclip.lif_bwd)
    register_attention_ops()
    _register_fakes()
