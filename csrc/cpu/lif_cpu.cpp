// Multi-step LIF on the CPU: forward and backward sweeps over [T, N].
//
// Layout of the work: neurons are cut into chunks of kChunk; each thread takes whole chunks,
// keeps the chunk's membrane (or gradient carry) in a small local array, and sweeps t outside,
// neurons inside. The inner loop is contiguous and branch-free, so GCC vectorises it; the
// chunk keeps the state in L1. A per-neuron loop with t inside does not vectorise (10x slower).
// Formulas: csrc/lif_math.h, which mirrors the spec in spikeclip/kernels/lif/reference.py.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../lif_common.h"
#include "../lif_math.h"
#include "cpu_simd.h"

namespace spikeclip {
namespace {

constexpr int64_t kChunk = 512;

// Compute type: float for float/half/bfloat16 storage, double for double.
template <typename S>
using compute_t = at::opmath_type<S>;

template <typename S, typename F, bool kDecay, bool kSoft, bool kSaveH>
SC_CPU_CLONES void forward_chunk(const S* __restrict x, S* __restrict spikes, S* __restrict h_out,
                                 const F* __restrict v0, F* __restrict v_last, int64_t T,
                                 int64_t N, int64_t len, LifOptions<F> o, bool stream) {
  o.decay_input = kDecay;
  o.soft_reset = kSoft;
  const F rest = charge_rest(o);
  F v[kChunk];
  S s_buf[kChunk], h_buf[kChunk];  // a step's outputs, streamed out from L1
  for (int64_t i = 0; i < len; ++i) v[i] = v0 ? v0[i] : rest;
  for (int64_t t = 0; t < T; ++t) {
    const S* __restrict xt = x + t * N;
    for (int64_t i = 0; i < len; ++i) {
      const F h = lif_charge(v[i], static_cast<F>(xt[i]), o.inv_tau, rest, kDecay);
      const F s = h >= o.v_th ? F(1) : F(0);
      s_buf[i] = static_cast<S>(s);
      if constexpr (kSaveH) h_buf[i] = static_cast<S>(h);
      v[i] = lif_reset(h, s, o);
    }
    stream_out(spikes + t * N, s_buf, len, stream);
    if constexpr (kSaveH) stream_out(h_out + t * N, h_buf, len, stream);
  }
  if (v_last)
    for (int64_t i = 0; i < len; ++i) v_last[i] = v[i];
}

// One time step of the backward sweep over a chunk. v_prev (only read with kTauGrad) is
// v[t-1]: recomputed from h[t-1] when kFromH, else the initial membrane.
template <int kSurr, typename S, typename F, bool kDecay, bool kSoft, bool kTauGrad, bool kFromH>
SC_INLINE void backward_step(const S* __restrict ht, const S* __restrict gst, S* __restrict gxt,
                             const S* __restrict hp, const F* __restrict v_init,
                             F* __restrict carry, F* __restrict tau_acc, int64_t len, F leak,
                             const LifOptions<F>& o) {
  for (int64_t i = 0; i < len; ++i) {
    const F h = static_cast<F>(ht[i]);
    const F dh = lif_dh<kSurr>(h, static_cast<F>(gst[i]), carry[i], o);
    gxt[i] = static_cast<S>(kDecay ? dh * o.inv_tau : dh);
    carry[i] = dh * leak;
    if constexpr (kTauGrad) {
      F v_prev;
      if constexpr (kFromH) {
        const F hprev = static_cast<F>(hp[i]);
        v_prev = lif_reset(hprev, hprev >= o.v_th ? F(1) : F(0), o);
      } else {
        v_prev = v_init[i];
      }
      tau_acc[i] += dh * charge_grad_tau(h, v_prev, o);
    }
  }
}

template <int kSurr, typename S, typename F, bool kDecay, bool kSoft, bool kTauGrad>
SC_CPU_CLONES void backward_chunk(const S* __restrict grad_spikes, const F* __restrict grad_v_last,
                                  const S* __restrict h_in, const F* __restrict v0,
                                  S* __restrict grad_x, F* __restrict grad_v0,
                                  F* __restrict tau_acc, int64_t T, int64_t N, int64_t len,
                                  LifOptions<F> o, bool stream) {
  o.decay_input = kDecay;
  o.soft_reset = kSoft;
  const F leak = F(1) - o.inv_tau;  // d h[t+1] / d v[t]
  F carry[kChunk];                     // gradient reaching v[t] from the future
  F v_init[kChunk];
  S gx_buf[kChunk];                    // a step's grad_x, streamed out from L1
  for (int64_t i = 0; i < len; ++i) carry[i] = grad_v_last ? grad_v_last[i] : F(0);
  if constexpr (kTauGrad) {
    for (int64_t i = 0; i < len; ++i) tau_acc[i] = F(0);
    for (int64_t i = 0; i < len; ++i) v_init[i] = v0 ? v0[i] : charge_rest(o);
  }
  for (int64_t t = T - 1; t >= 1; --t) {
    backward_step<kSurr, S, F, kDecay, kSoft, kTauGrad, true>(
        h_in + t * N, grad_spikes + t * N, gx_buf, h_in + (t - 1) * N, v_init, carry, tau_acc,
        len, leak, o);
    stream_out(grad_x + t * N, gx_buf, len, stream);
  }
  if (T > 0) {
    backward_step<kSurr, S, F, kDecay, kSoft, kTauGrad, false>(
        h_in, grad_spikes, gx_buf, nullptr, v_init, carry, tau_acc, len, leak, o);
    stream_out(grad_x, gx_buf, len, stream);
  }
  for (int64_t i = 0; i < len; ++i) grad_v0[i] = carry[i];
}

template <typename S>
void forward_cpu(const LifForwardView& a) {
  using F = compute_t<S>;
  const LifOptions<F> o = a.opts.template as<F>();
  const int64_t chunks = (a.N + kChunk - 1) / kChunk;
  const bool stream = a.T * a.N * int64_t(sizeof(S)) >= stream_threshold_bytes();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t n0 = c * kChunk, len = std::min(kChunk, a.N - n0);
      auto* x = static_cast<const S*>(a.x) + n0;
      auto* s = static_cast<S*>(a.spikes) + n0;
      auto* h = a.h ? static_cast<S*>(a.h) + n0 : nullptr;
      auto* v0 = a.v0 ? static_cast<const F*>(a.v0) + n0 : nullptr;
      auto* vl = a.v_last ? static_cast<F*>(a.v_last) + n0 : nullptr;
      dispatch_bools(o.decay_input, o.soft_reset, h != nullptr, [&](auto d, auto r, auto sh) {
        forward_chunk<S, F, decltype(d)::value, decltype(r)::value, decltype(sh)::value>(
            x, s, h, v0, vl, a.T, a.N, len, o, stream);
      });
    }
    stream_fence();
  });
}

template <typename S>
void backward_cpu(const LifBackwardView& a) {
  using F = compute_t<S>;
  const LifOptions<F> o = a.opts.template as<F>();
  const int64_t chunks = (a.N + kChunk - 1) / kChunk;
  const bool stream = a.T * a.N * int64_t(sizeof(S)) >= stream_threshold_bytes();
  // Per-chunk partial sums of dL/dtau, added in double at the end: deterministic.
  std::vector<double> tau_part(a.grad_tau ? chunks : 0, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    F tau_acc[kChunk];
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t n0 = c * kChunk, len = std::min(kChunk, a.N - n0);
      auto* gs = static_cast<const S*>(a.grad_spikes) + n0;
      auto* gvl = a.grad_v_last ? static_cast<const F*>(a.grad_v_last) + n0 : nullptr;
      auto* h = static_cast<const S*>(a.h) + n0;
      auto* v0 = a.v0 ? static_cast<const F*>(a.v0) + n0 : nullptr;
      auto* gx = static_cast<S*>(a.grad_x) + n0;
      auto* gv0 = static_cast<F*>(a.grad_v0) + n0;
      dispatch_surrogate(a.opts.surrogate, [&](auto surr) {
        dispatch_bools(o.decay_input, o.soft_reset, a.grad_tau != nullptr, [&](auto d, auto r, auto tg) {
          backward_chunk<decltype(surr)::value, S, F, decltype(d)::value, decltype(r)::value,
                         decltype(tg)::value>(
              gs, gvl, h, v0, gx, gv0, tau_acc, a.T, a.N, len, o, stream);
        });
      });
      if (a.grad_tau) {
        double sum = 0.0;
        for (int64_t i = 0; i < len; ++i) sum += static_cast<double>(tau_acc[i]);
        tau_part[c] = sum;
      }
    }
    stream_fence();
  });
  if (a.grad_tau) {
    double total = 0.0;
    for (double p : tau_part) total += p;
    *static_cast<F*>(a.grad_tau) = static_cast<F>(total);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_fwd_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& tau,
    SPIKECLIP_LIF_PARAMS, bool save_h, bool return_v) {
  LifForward f =
      prepare_forward(x, v0, tau, SPIKECLIP_LIF_ARGS, save_h, return_v, /*tau_on_host=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_fwd_cpu",
                                  [&] { forward_cpu<scalar_t>(f.view); });
  return {f.spikes, f.h, f.v_last};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_bwd_cpu(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last,
    const at::Tensor& h, const std::optional<at::Tensor>& v0, const at::Tensor& tau,
    SPIKECLIP_LIF_PARAMS, bool need_tau_grad) {
  LifBackward b = prepare_backward(grad_spikes, grad_v_last, h, v0, tau, SPIKECLIP_LIF_ARGS,
                                   need_tau_grad, /*tau_on_host=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "lif_bwd_cpu",
                                  [&] { backward_cpu<scalar_t>(b.view); });
  return {b.grad_x, b.grad_v0, b.grad_tau};
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("lif_fwd", &lif_fwd_cpu);
  m.impl("lif_bwd", &lif_bwd_cpu);
}

}  // namespace spikeclip
