// Torch-side preparation of a spiking-attention call shared by the CPU and CUDA
// implementations: checks of direct op calls, options, and the packed copies saved for the
// backward.
#pragma once

#include <ATen/ATen.h>

#include "lif_options.h"

#include <string_view>

#include "attention_launch.h"

namespace spikeclip {

Heads check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* op);

// grad_out [T, B, H, N, D] (made contiguous by the caller) and the head layout it implies.
Heads check_grad_out(const at::Tensor& go, int64_t D, const char* op);

// Checks a direct backward call: grad_out as check_grad_out (made contiguous by the caller),
// h as the forward saved it (SDSA: [T, B, H, D] in the compute dtype; SSA: grad_out's shape and
// dtype), and q/k/v bits uint8 [T, B, H, N, ceil(D/8)]; all contiguous and on grad_out's device.
// The kernels index every one of them by grad_out's shape: nothing else may reach them.
Heads check_backward(const at::Tensor& go, const at::Tensor& h, const at::Tensor& q_bits,
                     const at::Tensor& k_bits, const at::Tensor& v_bits, int64_t D, bool sdsa,
                     const char* op);

LifOptionsView attn_options(SPIKECLIP_ATTN_LIF_PARAMS);

void raise_if_not_spikes(bool ok, const char* op);

// Packed copies [T, B, H, N, ceil(D/8)] of q, k, v for the backward (empty when not saving).
struct Saved {
  at::Tensor bits[3];
  Saved(const at::Tensor& q, bool save);
  // Data pointers, or null when not saving.
  void pointers(uint8_t** out);
};

}  // namespace spikeclip
