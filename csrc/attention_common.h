// Torch-side preparation of a spiking-attention call shared by the CPU and CUDA
// implementations: checks of direct op calls, options, and the packed copies saved for the
// backward.
#pragma once

#include <ATen/ATen.h>

#include <string_view>

#include "attention_launch.h"

namespace spikeclip {

Heads check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* op);

// grad_out [T, B, H, N, D] (made contiguous by the caller) and the head layout it implies.
Heads check_grad_out(const at::Tensor& go, int64_t D, const char* op);

LifOptionsView attn_options(double tau, double v_th, double v_reset, bool soft_reset,
                            bool detach_reset, c10::string_view surrogate, double alpha);

void raise_if_not_spikes(bool ok, const char* op);

// Packed copies [T, B, H, N, ceil(D/8)] of q, k, v for the backward (empty when not saving).
struct Saved {
  at::Tensor bits[3];
  Saved(const at::Tensor& q, bool save);
  // Data pointers, or null when not saving.
  void pointers(uint8_t** out);
};

}  // namespace spikeclip
