// Scalar math of the multi-step LIF neuron, shared by the C++ (CPU) and CUDA kernels.
//
// The spec is spikeclip/kernels/lif/reference.py; every formula here mirrors it, in the same
// order of operations where the forward is concerned, so that fused forwards produce the
// same spikes as the reference bit for bit (no fused multiply-adds: see setup.py).
// Free of torch headers: the CUDA kernels that include it are compile-checked without torch.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SC_INLINE __host__ __device__ __forceinline__
#else
#define SC_INLINE inline __attribute__((always_inline))
#endif

namespace spikeclip {

// Order fixed: the Python side passes these codes (spikeclip/kernels/common/options.py).
enum Surrogate : int { kSigmoid = 0, kAtan = 1, kTriangle = 2, kErf = 3 };

// Options of one LIF call, in the compute type F (float, or double for float64 tensors).
template <typename F>
struct LifOptions {
  F tau;
  F inv_tau;          // 1 / tau, rounded once: the charge multiplies by it (as the reference)
  F v_th;
  F v_reset;          // reset value (hard reset); ignored by soft reset
  bool soft_reset;    // v = h - v_th * s instead of v = s ? v_reset : h
  bool decay_input;   // input divided by tau in the charge
  bool detach_reset;  // no gradient through the reset's dependence on the spike
  F alpha;            // surrogate sharpness
};

// Charge: h[t] = v[t-1] + (x[t] - (v[t-1] - rest)) * (1 / tau)   (decay_input)
//         h[t] = v[t-1] - (v[t-1] - rest) * (1 / tau) + x[t]     (otherwise)
// rest = v_reset, or 0 for soft reset (see charge_rest()).
template <typename F>
SC_INLINE F lif_charge(F v, F x, F inv_tau, F rest, bool decay_input) {
  return decay_input ? v + (x - (v - rest)) * inv_tau : v - (v - rest) * inv_tau + x;
}

// The potential the charge leaks towards.
template <typename F>
SC_INLINE F charge_rest(const LifOptions<F>& o) {
  return o.soft_reset ? F(0) : o.v_reset;
}

// Reset after firing, given the spike as 0/1 in F: the reference's formulas as it writes them,
// so that inf and NaN go where they go there (reference.lif_reference: a hard reset from
// h = +inf gives NaN, as inf * 0 does). The LIF kernels make soft_reset a compile-time constant
// (the select folds away and the loops vectorise).
template <typename F>
SC_INLINE F lif_reset(F h, F s, const LifOptions<F>& o) {
  return o.soft_reset ? h - o.v_th * s : h * (F(1) - s) + o.v_reset * s;
}

// exp(x) for x <= 0, written for the CPU vectoriser: GCC does not vectorise calls to expf
// without -ffast-math, so the surrogates use a branch-free Cody-Waite reduction + degree-6
// polynomial (rel. error < 2e-7; flushes below e^-87). Rounding to nearest uses the 1.5*2^23
// trick, not floorf (SSE4.1) or a select (which stops GCC's AVX2 if-conversion). Every caller
// passes a non-positive argument. On the device the hardware expf is used.
SC_INLINE float sc_expf(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  x = x > -87.0f ? x : -87.0f;
  const float t = x * 1.44269504088896341f;    // x / ln 2
  const float n = (t + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;              // ln 2 split in two for exactness
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
#endif
}

SC_INLINE double sc_exp(double x) { return exp(x); }
SC_INLINE float sc_exp(float x) { return sc_expf(x); }

// Surrogate derivative g(u) of the Heaviside step at u = h - v_th (kernels/common/surrogates.py: SURROGATES).
//   sigmoid:  alpha * sig(alpha u) * (1 - sig(alpha u))  = alpha e / (1 + e)^2, e = exp(-|alpha u|)
//   atan:     (alpha / 2) / (1 + (pi/2 * alpha * u)^2)
//   triangle: alpha * max(0, 1 - alpha |u|)
//   erf:      alpha / sqrt(pi) * exp(-(alpha u)^2)
template <int S, typename F>
SC_INLINE F surrogate_grad(F u, F alpha) {
  if constexpr (S == kSigmoid) {
    const F e = sc_exp(-std::fabs(alpha * u));  // symmetric form: exp of a non-positive value
    const F d = F(1) + e;
    return alpha * e / (d * d);
  } else if constexpr (S == kAtan) {
    const F w = F(1.57079632679489661923) * alpha * u;
    return alpha / F(2) / (F(1) + w * w);
  } else if constexpr (S == kTriangle) {
    const F tri = F(1) - std::fabs(alpha * u);
    return alpha * ((tri + std::fabs(tri)) * F(0.5));  // max(tri, 0), exactly, without a select
  } else {
    const F au = alpha * u;
    return alpha * F(0.56418958354775628695) * sc_exp(-au * au);
  }
}

// d v[t] / d h[t] through the reset, given the spike s and its surrogate derivative g.
// Branch-free like lif_reset, so that CPU loops vectorise.
template <typename F>
SC_INLINE F reset_grad(F h, F s, F g, const LifOptions<F>& o) {
  const F through_spike = o.detach_reset ? F(0) : F(1);
  const F w = o.soft_reset ? F(1) : F(0);
  const F soft = F(1) - through_spike * (o.v_th * g);
  const F hard = (F(1) - s) + through_spike * ((o.v_reset - h) * g);
  return w * soft + (F(1) - w) * hard;
}

// dL/dh[t] from dL/dspikes[t] (grad_s) and the gradient `carry` reaching v[t] from later
// steps: the one backward formula of every LIF sweep (CPU, CUDA; Triton: kernels/common/triton_math.py).
template <int S, typename F>
SC_INLINE F lif_dh(F h, F grad_s, F carry, const LifOptions<F>& o) {
  const F s = h >= o.v_th ? F(1) : F(0);
  const F g = surrogate_grad<S>(h - o.v_th, o.alpha);
  return grad_s * g + carry * reset_grad(h, s, g, o);
}

// d h[t] / d tau, with v_prev = v[t-1].
template <typename F>
SC_INLINE F charge_grad_tau(F h, F v_prev, const LifOptions<F>& o) {
  return o.decay_input ? -(h - v_prev) * o.inv_tau
                       : (v_prev - charge_rest(o)) * (o.inv_tau * o.inv_tau);
}

}  // namespace spikeclip
