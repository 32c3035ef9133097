// Plain views of one spiking-attention call (raw pointers, sizes, options) for the kernels of
// every device, free of torch headers so that the CUDA sources compile without torch.
#pragma once

#include <cstdint>

#include "lif_launch.h"

namespace spikeclip {

// q, k, v: [T, B, H, N, D] contiguous; heads are the B * H pairs.
struct Heads {
  int64_t T, BH, N, D;
  SC_INLINE int64_t block(int64_t t, int64_t bh) const { return (t * BH + bh) * N * D; }
};

// Forward. h, null unless saving: SDSA's [T, BH, D] float32 (its LIF runs per head and
// column), SSA's [T, BH, N, D] in the storage dtype (per token and column).
// bits: packed copies [T, BH, N, ceil(D/8)] of q, k, v, null unless saving; not_spikes: an int
// on the device, set non-zero when a value packed is neither 0 nor 1.
struct AttentionForwardView {
  DType dtype;
  Heads s;
  const void *q, *k, *v;
  void* out;
  void* h;
  uint8_t* bits[3];
  int* not_spikes;
  double scale;  // SSA only
  LifOptionsView opts;
};

// Backward. workspace: ssa_cuda_workspace_floats() floats (SSA; unused by SDSA).
struct AttentionBackwardView {
  DType dtype;
  Heads s;
  const void* grad_out;
  const void* h;
  const uint8_t* bits[3];
  void *gq, *gk, *gv;
  float* workspace;
  double scale;  // SSA only
  LifOptionsView opts;
};

#if defined(SPIKECLIP_WITH_CUDA) || defined(__CUDACC__)
// csrc/cuda/attention_kernels.cu; `stream` is a cudaStream_t.
int64_t ssa_cuda_workspace_floats(const Heads& s);
void sdsa_cuda_forward(const AttentionForwardView& view, void* stream);
void sdsa_cuda_backward(const AttentionBackwardView& view, void* stream);
void ssa_cuda_forward(const AttentionForwardView& view, float* workspace, void* stream);
void ssa_cuda_backward(const AttentionBackwardView& view, void* stream);
#endif

}  // namespace spikeclip
