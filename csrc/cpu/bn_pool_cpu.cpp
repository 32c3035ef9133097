// BatchNorm followed by a max-pool (2x2 stride 2, or 3x3 stride 2 padding 1), fused on the CPU
// (spikeclip/kernels/bn_pool: the op, its autograd and the reference, which is the spec): the
// conv -> BatchNorm -> pool of a Spikformer stem stage without BatchNorm's output in memory.
// y [N, C, H, W] (N = T * B, a conv's output), per-channel mean and invstd (batch or running
// statistics, from bn_stats or the running ones: the caller's choice).
//   bn_max_pool:          per plane (sample, channel): z = y * a + b (the linear form of
//                         bn_lif_cpu.cpp and F.batch_norm's CPU kernel) into a plane of scratch
//                         (L1 at these sizes), then the pool's plane kernel (max_pool_planes.h):
//                         the pooled z and a byte per window, the values and the winners of
//                         max_pool2d(batch_norm(y)).
//   bn_max_pool_backward: from dL/d(pooled z) and the bytes: (1) per plane, the sums of dL/dz
//                         and dL/dz * xhat over its windows at their winners' y (BatchNorm's bias
//                         and weight gradients; summed in double, planes added per channel in a
//                         fixed order: the bits do not depend on the thread count); (2) per
//                         plane, the pool's backward into dL/dy's plane, then BatchNorm's input
//                         gradient formula over it in place.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <tuple>
#include <vector>

#include "batch_norm_cpu.h"
#include "cpu_simd.h"
#include "max_pool_planes.h"

namespace spikeclip {
namespace {

using namespace batch_norm;
using namespace pool_planes;

constexpr const char* kOp = "bn_max_pool";

// y's planes and the pool's geometry (window 2: 2x2 stride 2, floor; 3: 3x3 stride 2 padding 1).
struct Planes {
  int64_t N, C, H, W, Ho, Wo, window;

  Planes(const at::Tensor& y, int64_t window_) : window(window_) {
    TORCH_CHECK_VALUE(window == 2 || window == 3, "spikeclip bn_max_pool: window must be 2 "
                      "(2x2, stride 2) or 3 (3x3, stride 2, padding 1), got ", window);
    TORCH_CHECK_VALUE(y.dim() == 4, "spikeclip bn_max_pool: y must be [N, C, H, W], got ",
                      y.sizes());
    TORCH_CHECK_VALUE(y.is_contiguous(), "spikeclip bn_max_pool: y must be contiguous");
    N = y.size(0);
    C = y.size(1);
    H = y.size(2);
    W = y.size(3);
    const int64_t smallest = window == 2 ? 2 : 1;
    TORCH_CHECK_VALUE(H >= smallest && W >= smallest, "spikeclip bn_max_pool: a ", window, "x",
                      window, " pool needs H, W >= ", smallest, ", got ", y.sizes());
    Ho = window == 2 ? H / 2 : pool3_size(H);
    Wo = window == 2 ? W / 2 : pool3_size(W);
  }
  int64_t planes() const { return N * C; }
  int64_t in() const { return H * W; }
  int64_t out() const { return Ho * Wo; }

  // The place (row * W + column) of the winner k of window (i, j) in its input plane, or -1
  // where k names none (`where` is the caller's tensor: never trusted to index y).
  int64_t winner_place(int64_t i, int64_t j, int64_t k) const {
    int64_t r, c;
    if (window == 2) {
      if (k > 3) return -1;
      r = 2 * i + k / 2;
      c = 2 * j + k % 2;
    } else {
      if (k > 8) return -1;
      r = 2 * i - 1 + k / 3;
      c = 2 * j - 1 + k % 3;
    }
    return r < 0 || r >= H || c < 0 || c >= W ? -1 : r * W + c;
  }
};

template <typename F>
SC_CPU_CLONES void normalise_plane(const F* __restrict y, F* __restrict z, int64_t n, F a, F b) {
  for (int64_t i = 0; i < n; ++i) z[i] = y[i] * a + b;
}

void check_call(const at::Tensor& y, const Planes& p, const at::Tensor& mean,
                const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                const std::optional<at::Tensor>& bias) {
  check_float(kOp, y);
  check_channels(kOp, mean, "mean", y, p.C, y.scalar_type());
  check_channels(kOp, invstd, "invstd", y, p.C, y.scalar_type());
  if (weight) check_channels(kOp, *weight, "weight", y, p.C, weight->scalar_type());
  if (bias) check_channels(kOp, *bias, "bias", y, p.C, bias->scalar_type());
}

std::tuple<at::Tensor, at::Tensor> bn_max_pool_cpu(const at::Tensor& y, const at::Tensor& mean,
                                                   const at::Tensor& invstd,
                                                   const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& bias,
                                                   int64_t window) {
  const Planes p(y, window);
  check_call(y, p, mean, invstd, weight, bias);
  auto [a, b] = linear_terms(mean, invstd, weight, bias);
  at::Tensor z = at::empty({p.N, p.C, p.Ho, p.Wo}, y.options());
  at::Tensor where = at::empty({p.N, p.C, p.Ho, p.Wo}, y.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "bn_max_pool_cpu", [&] {
    using F = scalar_t;
    const F* py = y.const_data_ptr<F>();
    const F* pa = a.const_data_ptr<F>();
    const F* pb = b.const_data_ptr<F>();
    F* pz = z.mutable_data_ptr<F>();
    uint8_t* pw = where.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, p.planes(), 1, [&](int64_t q0, int64_t q1) {
      std::vector<F> plane(static_cast<size_t>(p.in()));
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t c = q % p.C;
        normalise_plane<F>(py + q * p.in(), plane.data(), p.in(), pa[c], pb[c]);
        if (p.window == 2)
          pool_rows<F>(plane.data(), pz + q * p.out(), pw + q * p.out(), p.H, p.W, p.Ho, p.Wo, 0,
                       p.Ho);
        else
          pool3_plane<F>(plane.data(), pz + q * p.out(), pw + q * p.out(), p.H, p.W, p.Ho, p.Wo);
      }
    });
  });
  return {z, where};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_max_pool_backward_cpu(
    const at::Tensor& grad_z, const at::Tensor& where, const at::Tensor& y,
    const at::Tensor& mean, const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
    int64_t window, bool training) {
  const Planes p(y, window);
  check_call(y, p, mean, invstd, weight, std::nullopt);
  const std::vector<int64_t> pooled{p.N, p.C, p.Ho, p.Wo};
  TORCH_CHECK_VALUE(grad_z.sizes() == at::IntArrayRef(pooled) &&
                        grad_z.scalar_type() == y.scalar_type() && grad_z.is_contiguous() &&
                        grad_z.device() == y.device(),
                    "spikeclip bn_max_pool_backward: grad_z must be contiguous, ",
                    y.scalar_type(), " and ", at::IntArrayRef(pooled), ", got ", grad_z.sizes(),
                    " ", grad_z.scalar_type());
  TORCH_CHECK_VALUE(where.sizes() == at::IntArrayRef(pooled) &&
                        where.scalar_type() == at::kByte && where.is_contiguous() &&
                        where.device() == y.device(),
                    "spikeclip bn_max_pool_backward: where must be contiguous uint8 ",
                    at::IntArrayRef(pooled), ", got ", where.sizes(), " ", where.scalar_type());
  at::Tensor scale = weight ? (invstd * weight->to(invstd.scalar_type())).contiguous() : invstd;
  at::Tensor grad_y = at::empty_like(y);
  std::vector<double> parts(2 * p.planes(), 0.0);
  std::vector<double> sum_g(p.C, 0.0), sum_gx(p.C, 0.0);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "bn_max_pool_backward_cpu", [&] {
    using F = scalar_t;
    const F* py = y.const_data_ptr<F>();
    const F* pg = grad_z.const_data_ptr<F>();
    const uint8_t* pw = where.const_data_ptr<uint8_t>();
    const F* pm = mean.const_data_ptr<F>();
    const F* pi = invstd.const_data_ptr<F>();
    const F* ps = scale.const_data_ptr<F>();
    F* pgy = grad_y.mutable_data_ptr<F>();
    at::parallel_for(0, p.planes(), 1, [&](int64_t q0, int64_t q1) {  // (1) the sums
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t c = q % p.C;
        const F* yq = py + q * p.in();
        const F* gq = pg + q * p.out();
        const uint8_t* wq = pw + q * p.out();
        double s_g = 0.0, s_gx = 0.0;
        for (int64_t i = 0; i < p.Ho; ++i)
          for (int64_t j = 0; j < p.Wo; ++j) {
            const int64_t at = p.winner_place(i, j, wq[i * p.Wo + j]);
            if (at < 0) {
              bad.store(true, std::memory_order_relaxed);
              return;
            }
            const double g = static_cast<double>(gq[i * p.Wo + j]);
            s_g += g;
            s_gx += g * static_cast<double>((yq[at] - pm[c]) * pi[c]);
          }
        parts[2 * q] = s_g;
        parts[2 * q + 1] = s_gx;
      }
    });
    TORCH_CHECK_VALUE(!bad.load(), "spikeclip bn_max_pool_backward: `where` names a place "
                      "outside the input (it must come from bn_max_pool of a [..., ", p.H, ", ",
                      p.W, "] y with window ", p.window, ")");
    for (int64_t q = 0; q < p.planes(); ++q) {  // per channel, in a fixed order
      sum_g[q % p.C] += parts[2 * q];
      sum_gx[q % p.C] += parts[2 * q + 1];
    }
    const double n = static_cast<double>(p.N * p.in());
    at::parallel_for(0, p.planes(), 1, [&](int64_t q0, int64_t q1) {  // (2) dL/dy
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t c = q % p.C;
        F* gq = pgy + q * p.in();
        const F* gz = pg + q * p.out();
        const uint8_t* wq = pw + q * p.out();
        if (p.window == 2)
          unpool_rows<F>(gz, wq, gq, p.H, p.W, p.Ho, p.Wo, 0, p.Ho);
        else
          unpool3_plane<F>(gz, wq, gq, p.H, p.W, p.Ho, p.Wo);  // `where` checked in (1)
        const F k1 = static_cast<F>(sum_g[c] / n), k2 = static_cast<F>(sum_gx[c] / n);
        if (training)
          input_grad_run<F, F, true>(gq, py + q * p.in(), 1, 0, p.in(), pm[c], pi[c], ps[c], k1,
                                     k2);
        else
          input_grad_run<F, F, false>(gq, py + q * p.in(), 1, 0, p.in(), pm[c], pi[c], ps[c], k1,
                                      k2);
      }
    });
  });
  return {grad_y, channel_sums(sum_gx, y.scalar_type()), channel_sums(sum_g, y.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("bn_max_pool", &bn_max_pool_cpu);
  m.impl("bn_max_pool_backward", &bn_max_pool_backward_cpu);
}

}  // namespace spikeclip
