// Plain views of one LIF call (raw pointers, sizes, options): what the kernels of every device
// need, free of torch headers so that the CUDA sources compile without torch.
#pragma once

#include <cstdint>
#include <type_traits>

#include "lif_math.h"

namespace spikeclip {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

struct LifOptionsView {
  double tau = 2.0;  // host copy of tau; CUDA kernels read tau_ptr instead (no host sync)
  double v_th = 1.0;
  double v_reset = 0.0;
  bool soft_reset = false;
  bool decay_input = true;
  bool detach_reset = false;
  int surrogate = kSigmoid;
  double alpha = 4.0;

  template <typename F>
  LifOptions<F> as() const {
    const F t = F(tau);
    return LifOptions<F>{t,          F(1) / t,     F(v_th), F(v_reset), soft_reset,
                         decay_input, detach_reset, F(alpha)};
  }
};

// x, spikes, h: [T, N] in the storage dtype; v0, v_last: [N] in the compute dtype.
// Optional pointers are null when absent.
struct LifForwardView {
  DType dtype;
  int64_t T, N;
  const void* x;
  const void* v0;       // optional: default is the rest potential
  const void* tau_ptr;  // 0-d compute-dtype tensor on the device of x
  void* spikes;
  void* h;              // optional: written only when the backward will need it
  void* v_last;         // optional
  LifOptionsView opts;
};

// grad_spikes, h, grad_x: [T, N] storage dtype; grad_v_last, v0, grad_v0: [N] compute dtype.
struct LifBackwardView {
  DType dtype;
  int64_t T, N;
  const void* grad_spikes;
  const void* grad_v_last;  // optional
  const void* h;
  const void* v0;           // optional
  const void* tau_ptr;
  void* grad_x;
  void* grad_v0;
  void* grad_tau;           // optional: 0-d compute dtype (CPU) / per-block partials (CUDA)
  LifOptionsView opts;
};

// Turn runtime flags into compile-time constants for the kernels' inner loops.
template <typename Fn>
void dispatch_bool(bool b, Fn&& fn) {
  if (b) fn(std::true_type{});
  else fn(std::false_type{});
}

template <typename Fn>
void dispatch_bools(bool a, bool b, bool c, Fn&& fn) {
  dispatch_bool(a, [&](auto A) {
    dispatch_bool(b, [&](auto B) { dispatch_bool(c, [&](auto C) { fn(A, B, C); }); });
  });
}

template <typename Fn>
void dispatch_surrogate(int surrogate, Fn&& fn) {
  switch (surrogate) {
    case kSigmoid: fn(std::integral_constant<int, kSigmoid>{}); break;
    case kAtan: fn(std::integral_constant<int, kAtan>{}); break;
    case kTriangle: fn(std::integral_constant<int, kTriangle>{}); break;
    default: fn(std::integral_constant<int, kErf>{}); break;
  }
}

#if defined(SPIKECLIP_WITH_CUDA) || defined(__CUDACC__)
// csrc/cuda/lif_kernels.cu. `stream` is a cudaStream_t. grad_tau (if set) must hold
// lif_cuda_tau_partials(N) floats: the caller sums them.
int64_t lif_cuda_tau_partials(int64_t N);
void lif_cuda_forward(const LifForwardView& view, void* stream);
void lif_cuda_backward(const LifBackwardView& view, void* stream);
#endif

}  // namespace spikeclip
