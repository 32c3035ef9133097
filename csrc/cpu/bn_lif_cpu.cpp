// BatchNorm followed by a multi-step LIF, fused on the CPU (spikeclip/kernels/bn_lif: the op,
// its autograd and the reference, which is the spec).
//
// y is a spiking unit's conv / linear output seen as [T, B, C, inner] (time-major outer
// dimension T * B; inner: the positions of one channel, H * W or a token count). Three ops:
//   bn_stats:   the batch mean and (biased) variance of each channel, one read of y, summed in
//               double around the channel's first value (robust where the mean is far from 0).
//   bn_lif_fwd: z = y * a + b per channel (a = invstd * weight, b = bias - mean * a: the linear
//               form F.batch_norm's CPU kernel uses), then the LIF over T, in one pass: the
//               normalised z never goes to memory. Writes the spikes (and the final membrane if asked).
//   bn_lif_bwd: recomputes a run's membrane h from y (the backward keeps y alone, as BatchNorm
//               does: no membrane is saved), then the LIF's backward sweep gives dL/dz; the same
//               pass sums, per channel, dL/dz and dL/dz * xhat (BatchNorm's weight and bias
//               gradients); a second pass turns dL/dz into dL/dy with BatchNorm's backward
//               formula (batch statistics in training, running ones in eval).
// Work is cut into runs: kRun positions of one channel of one sample, swept over T with the
// membrane (or the gradient carry) in a local array, neurons inside, t outside, so that the
// inner loops are contiguous and vectorise (as csrc/cpu/lif_cpu.cpp). Per-run partial sums are
// added per channel in a fixed order: the results do not depend on the thread count.
// The LIF formulas are csrc/lif_math.h's, the ones of every LIF kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../lif_common.h"
#include "../lif_math.h"
#include "batch_norm_cpu.h"
#include "cpu_simd.h"

namespace spikeclip {
namespace {

using namespace batch_norm;

constexpr int64_t kRun = 512;

// y as [T, B, C, inner]; runs r = (b * C + c) * segs + s cover positions s * kRun.. of channel c
// of sample b, at every step.
struct Layout {
  int64_t T, B, C, inner, segs;

  Layout(const at::Tensor& y, int64_t T_) : T(T_) {
    TORCH_CHECK(y.dim() >= 2, "spikeclip bn_lif: y must be [T * B, C, ...], got ", y.sizes());
    TORCH_CHECK(T > 0 && y.size(0) % T == 0, "spikeclip bn_lif: y's first dimension (",
                y.size(0), ") must be a multiple of T=", T);
    TORCH_CHECK(y.is_contiguous(), "spikeclip bn_lif: y must be contiguous");
    B = y.size(0) / T;
    C = y.size(1);
    inner = C == 0 || y.size(0) == 0 ? 0 : y.numel() / (y.size(0) * C);
    segs = (inner + kRun - 1) / kRun;
  }
  int64_t step() const { return B * C * inner; }
  int64_t runs() const { return B * C * segs; }
  int64_t channel(int64_t r) const { return (r / segs) % C; }
  int64_t offset(int64_t r) const { return (r / segs) * inner + (r % segs) * kRun; }
  int64_t length(int64_t r) const { return std::min(kRun, inner - (r % segs) * kRun); }
};

// Sums of n values of a contiguous row into kLanes lanes: d = x - shift, (sum d, sum d^2).
template <typename S>
SC_CPU_CLONES void add_shifted(const S* __restrict x, int64_t n, double shift,
                               double* __restrict sum, double* __restrict sq) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const double d = static_cast<double>(x[i + k]) - shift;
      sum[k] += d;
      sq[k] += d * d;
    }
  for (; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - shift;
    sum[0] += d;
    sq[0] += d * d;
  }
}

template <typename S>
void stats_cpu(const at::Tensor& y, const Layout& l, at::Tensor& mean, at::Tensor& var) {
  using F = S;
  const S* py = y.const_data_ptr<S>();
  F* pm = mean.mutable_data_ptr<F>();
  F* pv = var.mutable_data_ptr<F>();
  const int64_t rows = l.T * l.B;
  const double n = static_cast<double>(rows * l.inner);
  at::parallel_for(0, l.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double first = static_cast<double>(py[c * l.inner]);
      const double shift = std::isfinite(first) ? first : 0.0;
      double sum[kLanes] = {0}, sq[kLanes] = {0};
      for (int64_t r = 0; r < rows; ++r)
        add_shifted(py + (r * l.C + c) * l.inner, l.inner, shift, sum, sq);
      const double m = lanes_total(sum) / n;
      pm[c] = static_cast<F>(shift + m);
      pv[c] = static_cast<F>(std::max(lanes_total(sq) / n - m * m, 0.0));
    }
  });
}

// The LIF over T of z = y * a + b for one run: spikes to `spikes`, the membrane h of every
// step to the local `h_buf` [T, kRun], the final membrane to `v_last` (each when given).
template <typename S, typename F, bool kDecay, bool kSoft>
SC_CPU_CLONES void forward_run(const S* __restrict y, S* __restrict spikes, F* __restrict h_buf,
                               S* __restrict v_last, int64_t T, int64_t step, int64_t len, F a,
                               F b, LifOptions<F> o) {
  o.decay_input = kDecay;
  o.soft_reset = kSoft;
  const F rest = charge_rest(o);
  F v[kRun];
  for (int64_t i = 0; i < len; ++i) v[i] = rest;
  for (int64_t t = 0; t < T; ++t) {
    const S* __restrict yt = y + t * step;
    for (int64_t i = 0; i < len; ++i) {
      const F z = static_cast<F>(yt[i]) * a + b;
      const F h = lif_charge(v[i], z, o.inv_tau, rest, kDecay);
      const F s = h >= o.v_th ? F(1) : F(0);
      if (spikes) spikes[t * step + i] = static_cast<S>(s);
      if (h_buf) h_buf[t * kRun + i] = h;
      v[i] = lif_reset(h, s, o);
    }
  }
  if (v_last)
    for (int64_t i = 0; i < len; ++i) v_last[i] = static_cast<S>(v[i]);
}

// dL/dz of one run (written to gz) and its sums: sums[0] = sum dL/dz, sums[1] = sum dL/dz *
// xhat, xhat = (y - mean) * invstd. h is recomputed from y (the forward keeps no membrane):
// the same function on the same values, so the same h bit for bit.
template <int kSurr, typename S, typename F, bool kDecay, bool kSoft>
SC_CPU_CLONES void backward_run(const S* __restrict grad_s, const S* __restrict grad_v_last,
                                const S* __restrict y, S* __restrict gz, F* __restrict h_buf,
                                int64_t T, int64_t step,
                                int64_t len, F a, F b, F mean, F invstd, LifOptions<F> o,
                                double* __restrict sums) {
  forward_run<S, F, kDecay, kSoft>(y, nullptr, h_buf, nullptr, T, step, len, a, b, o);
  o.decay_input = kDecay;
  o.soft_reset = kSoft;
  const F leak = F(1) - o.inv_tau;  // d h[t+1] / d v[t]
  F carry[kRun], acc_g[kRun], acc_gx[kRun];
  for (int64_t i = 0; i < len; ++i) carry[i] = acc_g[i] = acc_gx[i] = F(0);
  if (grad_v_last)  // the gradient reaching v[T-1] from after the sequence
    for (int64_t i = 0; i < len; ++i) carry[i] = static_cast<F>(grad_v_last[i]);
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t off = t * step;
    const F* __restrict ht = h_buf + t * kRun;
    for (int64_t i = 0; i < len; ++i) {
      const F dh = lif_dh<kSurr>(ht[i], static_cast<F>(grad_s[off + i]), carry[i], o);
      const F g = kDecay ? dh * o.inv_tau : dh;
      carry[i] = dh * leak;
      const F xhat = (static_cast<F>(y[off + i]) - mean) * invstd;
      acc_g[i] += g;
      acc_gx[i] += g * xhat;
      gz[off + i] = static_cast<S>(g);
    }
  }
  double lanes_g[kLanes] = {0}, lanes_gx[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      lanes_g[k] += static_cast<double>(acc_g[i + k]);
      lanes_gx[k] += static_cast<double>(acc_gx[i + k]);
    }
  for (; i < len; ++i) {
    lanes_g[0] += static_cast<double>(acc_g[i]);
    lanes_gx[0] += static_cast<double>(acc_gx[i]);
  }
  sums[0] = lanes_total(lanes_g);
  sums[1] = lanes_total(lanes_gx);
}

// The checks of a forward or backward call (sizes, devices, dtypes: everything the kernels
// index by), and the LIF's options.
LifOptionsView check_call(const at::Tensor& y, const Layout& l, const at::Tensor& mean,
                          const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double tau,
                          SPIKECLIP_LIF_PARAMS) {
  check_float("bn_lif", y);
  check_channels("bn_lif", mean, "mean", y, l.C, y.scalar_type());
  check_channels("bn_lif", invstd, "invstd", y, l.C, y.scalar_type());
  if (weight) check_channels("bn_lif", *weight, "weight", y, l.C, weight->scalar_type());
  if (bias) check_channels("bn_lif", *bias, "bias", y, l.C, bias->scalar_type());
  TORCH_CHECK(tau > 1.0, "spikeclip bn_lif: tau must be > 1, got ", tau);
  return lif_options_view(tau, SPIKECLIP_LIF_ARGS);
}

std::tuple<at::Tensor, at::Tensor> bn_stats_cpu(const at::Tensor& y) {
  check_float("bn_stats", y);
  const Layout l(y, 1);
  TORCH_CHECK(l.B * l.inner > 1 || l.C == 0,
              "spikeclip bn_stats: more than 1 value per channel is needed, got y of shape ",
              y.sizes());
  at::Tensor mean = at::empty({l.C}, y.options()), var = at::empty({l.C}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "bn_stats_cpu",
                             [&] { stats_cpu<scalar_t>(y, l, mean, var); });
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> bn_lif_fwd_cpu(const at::Tensor& y, const at::Tensor& mean,
                                                  const at::Tensor& invstd,
                                                  const std::optional<at::Tensor>& weight,
                                                  const std::optional<at::Tensor>& bias,
                                                  int64_t T, double tau, SPIKECLIP_LIF_PARAMS,
                                                  bool return_v) {
  const Layout l(y, T);
  const LifOptionsView ov = check_call(y, l, mean, invstd, weight, bias, tau, SPIKECLIP_LIF_ARGS);
  at::Tensor spikes = at::empty_like(y);
  std::vector<int64_t> step_shape(y.sizes().begin(), y.sizes().end());
  step_shape[0] /= T;
  at::Tensor v_last = at::empty(return_v ? at::IntArrayRef(step_shape) : at::IntArrayRef({0}),
                                y.options());
  auto [a, b] = linear_terms(mean, invstd, weight, bias);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "bn_lif_fwd_cpu", [&] {
    using F = scalar_t;
    const LifOptions<F> o = ov.as<F>();
    const scalar_t* py = y.const_data_ptr<scalar_t>();
    scalar_t* ps = spikes.mutable_data_ptr<scalar_t>();
    scalar_t* pv = return_v ? v_last.mutable_data_ptr<scalar_t>() : nullptr;
    const F* pa = a.const_data_ptr<F>();
    const F* pb = b.const_data_ptr<F>();
    at::parallel_for(0, l.runs(), 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t c = l.channel(r), off = l.offset(r);
        dispatch_bool(o.decay_input, [&](auto d) {
          dispatch_bool(o.soft_reset, [&](auto s) {
            forward_run<scalar_t, F, decltype(d)::value, decltype(s)::value>(
                py + off, ps + off, nullptr, pv ? pv + off : nullptr, l.T, l.step(),
                l.length(r), pa[c], pb[c], o);
          });
        });
      }
    });
  });
  return {spikes, v_last};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_lif_bwd_cpu(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last,
    const at::Tensor& y, const at::Tensor& mean,
    const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, int64_t T, double tau, SPIKECLIP_LIF_PARAMS,
    bool training) {
  const Layout l(y, T);
  const LifOptionsView ov = check_call(y, l, mean, invstd, weight, bias, tau, SPIKECLIP_LIF_ARGS);
  TORCH_CHECK(grad_spikes.sizes() == y.sizes() && grad_spikes.scalar_type() == y.scalar_type() &&
                  grad_spikes.is_contiguous() && grad_spikes.device() == y.device(),
              "spikeclip bn_lif_bwd: grad_spikes must be contiguous and like y ", y.sizes(), " ",
              y.scalar_type());
  if (grad_v_last) {
    std::vector<int64_t> step_shape(y.sizes().begin(), y.sizes().end());
    step_shape[0] /= T;
    TORCH_CHECK(grad_v_last->sizes() == at::IntArrayRef(step_shape) &&
                    grad_v_last->scalar_type() == y.scalar_type() &&
                    grad_v_last->is_contiguous() && grad_v_last->device() == y.device(),
                "spikeclip bn_lif_bwd: grad_v_last must be contiguous, ", y.scalar_type(),
                " and ", at::IntArrayRef(step_shape), " (y without its T steps)");
  }
  auto [a, b] = linear_terms(mean, invstd, weight, bias);
  at::Tensor grad_y = at::empty_like(y);
  std::vector<double> parts(2 * l.runs(), 0.0);
  std::vector<double> sum_g(l.C, 0.0), sum_gx(l.C, 0.0);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "bn_lif_bwd_cpu", [&] {
    using F = scalar_t;
    const LifOptions<F> o = ov.as<F>();
    const scalar_t* pgs = grad_spikes.const_data_ptr<scalar_t>();
    const scalar_t* pgv = grad_v_last ? grad_v_last->const_data_ptr<scalar_t>() : nullptr;
    const F* pa = a.const_data_ptr<F>();
    const F* pb = b.const_data_ptr<F>();
    const scalar_t* py = y.const_data_ptr<scalar_t>();
    scalar_t* pg = grad_y.mutable_data_ptr<scalar_t>();
    const F* pm = mean.const_data_ptr<F>();
    const F* pi = invstd.const_data_ptr<F>();
    at::parallel_for(0, l.runs(), 1, [&](int64_t r0, int64_t r1) {
      std::vector<F> h_buf(static_cast<size_t>(l.T * kRun));  // one run's membrane, all steps
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t c = l.channel(r), off = l.offset(r);
        dispatch_surrogate(ov.surrogate, [&](auto surr) {
          dispatch_bool(o.decay_input, [&](auto d) {
            dispatch_bool(o.soft_reset, [&](auto s) {
              backward_run<decltype(surr)::value, scalar_t, F, decltype(d)::value,
                           decltype(s)::value>(pgs + off, pgv ? pgv + off : nullptr,
                                               py + off, pg + off, h_buf.data(), l.T,
                                               l.step(), l.length(r), pa[c], pb[c], pm[c], pi[c],
                                               o, parts.data() + 2 * r);
            });
          });
        });
      }
    });
    for (int64_t r = 0; r < l.runs(); ++r) {  // per channel, in a fixed order
      sum_g[l.channel(r)] += parts[2 * r];
      sum_gx[l.channel(r)] += parts[2 * r + 1];
    }
    const double n = static_cast<double>(l.T * l.B * l.inner);
    at::parallel_for(0, l.runs(), 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t c = l.channel(r), off = l.offset(r);
        const F k1 = static_cast<F>(sum_g[c] / n), k2 = static_cast<F>(sum_gx[c] / n);
        dispatch_bool(training, [&](auto tr) {
          input_grad_run<scalar_t, F, decltype(tr)::value>(pg + off, py + off, l.T, l.step(),
                                                            l.length(r), pm[c], pi[c], pa[c],
                                                            k1, k2);
        });
      }
    });
  });
  return {grad_y, channel_sums(sum_gx, y.scalar_type()), channel_sums(sum_g, y.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("bn_stats", &bn_stats_cpu);
  m.impl("bn_lif_fwd", &bn_lif_fwd_cpu);
  m.impl("bn_lif_bwd", &bn_lif_bwd_cpu);
}

}  // namespace spikeclip
