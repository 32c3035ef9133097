// BatchNorm's pieces shared by the CPU kernels that fuse it (bn_lif_cpu.cpp: BN + LIF;
// bn_pool_cpu.cpp: BN + max-pool): the per-channel linear form of the forward, the backward's
// input-gradient formula, and the checks of the per-channel tensors.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

#include "cpu_simd.h"

namespace spikeclip {
namespace batch_norm {

constexpr int kLanes = 8;  // independent partial sums: vectorised, and no serial add chain

inline double lanes_total(const double* lanes) {
  double total = 0.0;
  for (int k = 0; k < kLanes; ++k) total += lanes[k];
  return total;
}

// Per-channel (a, b) of z = y * a + b, in y's dtype: a = invstd * weight, b = bias - mean * a
// (the linear form F.batch_norm's CPU kernel uses).
inline std::pair<at::Tensor, at::Tensor> linear_terms(const at::Tensor& mean,
                                                      const at::Tensor& invstd,
                                                      const std::optional<at::Tensor>& weight,
                                                      const std::optional<at::Tensor>& bias) {
  at::Tensor a = weight ? invstd * weight->to(invstd.scalar_type()) : invstd.clone();
  at::Tensor shift = bias ? bias->to(invstd.scalar_type()) : at::zeros_like(mean);
  return {a.contiguous(), (shift - mean * a).contiguous()};
}

// dL/dy from dL/dz (in place) over T steps `step` apart of `len` positions of one channel:
// BatchNorm's backward. Training: (gz - k1 - xhat * k2) * scale, xhat = (y - mean) * invstd,
// k1 = mean of gz, k2 = mean of gz * xhat over the channel; eval: gz * scale (scale = a).
template <typename S, typename F, bool kTraining>
SC_CPU_CLONES void input_grad_run(S* __restrict g, const S* __restrict y, int64_t T, int64_t step,
                                  int64_t len, F mean, F invstd, F scale, F k1, F k2) {
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = t * step;
    for (int64_t i = 0; i < len; ++i) {
      const F gz = static_cast<F>(g[off + i]);
      if constexpr (kTraining) {
        const F xhat = (static_cast<F>(y[off + i]) - mean) * invstd;
        g[off + i] = static_cast<S>((gz - k1 - xhat * k2) * scale);
      } else {
        g[off + i] = static_cast<S>(gz * scale);
      }
    }
  }
}

// Per-channel sums kept in double (a backward's weight and bias gradients) as a [C] tensor of
// y's dtype.
inline at::Tensor channel_sums(const std::vector<double>& sums, at::ScalarType dtype) {
  return at::tensor(sums, at::TensorOptions().dtype(at::kDouble)).to(dtype);
}

// A per-channel tensor `name` of op `op`: [C], on y's device, of dtype `dtype`.
inline void check_channels(const char* op, const at::Tensor& t, const char* name,
                           const at::Tensor& y, int64_t C, at::ScalarType dtype) {
  TORCH_CHECK(t.device() == y.device(), "spikeclip ", op, ": ", name, " is on ", t.device(),
              ", y on ", y.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C, "spikeclip ", op, ": ", name, " must be [", C,
              "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "spikeclip ", op, ": ", name, " must be ", dtype,
              ", got ", t.scalar_type());
}

// y float32 / float64 (the fused kernels' dtypes).
inline void check_float(const char* op, const at::Tensor& y) {
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble, "spikeclip ", op,
              " (cpp): y must be float32 or float64, got ", y.scalar_type());
}

}  // namespace batch_norm
}  // namespace spikeclip
