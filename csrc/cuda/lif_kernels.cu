// Multi-step LIF on CUDA: one thread per VEC neighbouring neurons, looping over T.
//
// Consecutive threads own consecutive neurons, so every load and store of a time step is
// coalesced; with VEC * sizeof(storage) = 16 bytes each access is one 128-bit transaction.
// The membrane stays in registers for the whole sweep; float32 math, storage in its own dtype.
// Formulas: csrc/lif_math.h (spec: spikeclip/kernels/lif/reference.py). No torch headers here:
// CI compile-checks this file with `nvcc -ptx -arch=sm_90`; csrc/cuda/lif_cuda.cpp is the glue.
#include <cuda_runtime.h>

#include "../lif_launch.h"
#include "device_types.cuh"

namespace spikeclip {
namespace {

constexpr int kThreads = 256;

// VEC elements moved as one aligned access.
template <typename S, int VEC>
struct alignas(sizeof(S) * VEC) Pack {
  S v[VEC];
};

// 16-byte packs move as one 128-bit access (ld.global.nc.v4 / st.global.v4).
template <typename S, int VEC>
__device__ __forceinline__ Pack<S, VEC> load_pack(const S* p) {
  Pack<S, VEC> out;
  if constexpr (sizeof(out) == 16) {
    const uint4 bits = __ldg(reinterpret_cast<const uint4*>(p));
    memcpy(&out, &bits, 16);
  } else {
    out = *reinterpret_cast<const Pack<S, VEC>*>(p);
  }
  return out;
}

__device__ __forceinline__ uint32_t bits_of(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint32_t bits_of(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t bits_of(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// The 32-bit word k of a 16-byte pack.
template <typename S, int VEC>
__device__ __forceinline__ uint32_t pack_word(const Pack<S, VEC>& v, int k) {
  if constexpr (sizeof(S) == 4) return bits_of(v.v[k]);
  else return bits_of(v.v[2 * k]) | (bits_of(v.v[2 * k + 1]) << 16);
}

template <typename S, int VEC>
__device__ __forceinline__ void store_pack(S* p, const Pack<S, VEC>& v) {
  if constexpr (sizeof(v) == 16) {
    // Inline PTX: LLVM otherwise splits the store when it cannot prove 16-byte alignment
    // through the pointer arithmetic (pick_vec() guarantees it).
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(pack_word(v, 0)),
                 "r"(pack_word(v, 1)), "r"(pack_word(v, 2)), "r"(pack_word(v, 3))
                 : "memory");
  } else {
    *reinterpret_cast<Pack<S, VEC>*>(p) = v;
  }
}

template <typename S, int VEC, bool kDecay, bool kSoft, bool kSaveH>
__global__ void __launch_bounds__(kThreads)
    lif_forward_kernel(const S* __restrict__ x, const float* __restrict__ v0,
                       const float* __restrict__ tau_ptr, S* __restrict__ spikes,
                       S* __restrict__ h_out, float* __restrict__ v_last, int64_t T, int64_t N,
                       LifOptions<float> o) {
  const int64_t n = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * VEC;
  if (n >= N) return;
  o.tau = *tau_ptr;
  o.inv_tau = 1.0f / o.tau;
  o.decay_input = kDecay;
  o.soft_reset = kSoft;
  const float rest = charge_rest(o);
  float v[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) v[j] = v0 ? v0[n + j] : rest;
  // x[t + 1] is loaded before step t is computed and stored: a load stays in flight while
  // the thread works (the loop is not unrolled for runtime T).
  Pack<S, VEC> xin;
  if (T > 0) xin = load_pack<S, VEC>(x + n);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = t * N + n;
    Pack<S, VEC> x_next;
    if (t + 1 < T) x_next = load_pack<S, VEC>(x + off + N);
    Pack<S, VEC> s_out, h_pack;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float h = lif_charge(v[j], load_f(xin.v[j]), o.inv_tau, rest, kDecay);
      const float s = h >= o.v_th ? 1.0f : 0.0f;
      s_out.v[j] = store_f<S>(s);
      h_pack.v[j] = store_f<S>(h);
      v[j] = lif_reset(h, s, o);
    }
    store_pack<S, VEC>(spikes + off, s_out);
    if (kSaveH) store_pack<S, VEC>(h_out + off, h_pack);
    xin = x_next;
  }
  if (v_last) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) v_last[n + j] = v[j];
  }
}

template <int kSurr, typename S, int VEC, bool kDecay, bool kSoft, bool kTauGrad>
__global__ void __launch_bounds__(kThreads)
    lif_backward_kernel(const S* __restrict__ grad_spikes, const float* __restrict__ grad_v_last,
                        const S* __restrict__ h_in, const float* __restrict__ v0,
                        const float* __restrict__ tau_ptr, S* __restrict__ grad_x,
                        float* __restrict__ grad_v0, float* __restrict__ tau_partials, int64_t T,
                        int64_t N, LifOptions<float> o) {
  const int64_t n = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * VEC;
  float tau_acc = 0.0f;
  if (n < N && T > 0) {
    o.tau = *tau_ptr;
    o.inv_tau = 1.0f / o.tau;
    o.decay_input = kDecay;
    o.soft_reset = kSoft;
    const float rest = charge_rest(o);
    const float leak = 1.0f - o.inv_tau;
    float carry[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) carry[j] = grad_v_last ? grad_v_last[n + j] : 0.0f;
    // h[t] is loaded once: at step t it is "h_cur"; h[t-1] is loaded alongside for the
    // tau gradient and becomes the next step's h_cur. grad_spikes[t-1] is loaded a step
    // ahead too, so that two loads are in flight while step t is computed and stored.
    Pack<S, VEC> h_cur = load_pack<S, VEC>(h_in + (T - 1) * N + n);
    Pack<S, VEC> gs = load_pack<S, VEC>(grad_spikes + (T - 1) * N + n);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t off = t * N + n;
      Pack<S, VEC> h_prev, gs_prev;
      if (t > 0) {
        h_prev = load_pack<S, VEC>(h_in + off - N);
        gs_prev = load_pack<S, VEC>(grad_spikes + off - N);
      }
      Pack<S, VEC> gx;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float h = load_f(h_cur.v[j]);
        const float dh = lif_dh<kSurr>(h, load_f(gs.v[j]), carry[j], o);
        gx.v[j] = store_f<S>(kDecay ? dh * o.inv_tau : dh);
        carry[j] = dh * leak;
        if (kTauGrad) {
          float v_prev;
          if (t > 0) {
            const float hp = load_f(h_prev.v[j]);
            v_prev = lif_reset(hp, hp >= o.v_th ? 1.0f : 0.0f, o);
          } else {
            v_prev = v0 ? v0[n + j] : rest;
          }
          tau_acc += dh * charge_grad_tau(h, v_prev, o);
        }
      }
      store_pack<S, VEC>(grad_x + off, gx);
      h_cur = h_prev;
      gs = gs_prev;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) grad_v0[n + j] = carry[j];
  } else if (n < N) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) grad_v0[n + j] = grad_v_last ? grad_v_last[n + j] : 0.0f;
  }
  if (kTauGrad) {
    // Block sum of the tau gradient into one partial per block (the glue adds them up).
    __shared__ float warp_sums[kThreads / 32];
    for (int off = 16; off > 0; off >>= 1) tau_acc += __shfl_down_sync(0xffffffffu, tau_acc, off);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = tau_acc;
    __syncthreads();
    if (threadIdx.x < 32) {
      float w = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0f;
      for (int off = 16; off > 0; off >>= 1) w += __shfl_down_sync(0xffffffffu, w, off);
      if (threadIdx.x == 0) tau_partials[blockIdx.x] = w;
    }
  }
}

// 16-byte accesses when the layout allows them (N a multiple of VEC, pointers aligned).
template <typename S>
int pick_vec(int64_t N, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = 16 / sizeof(S);
  if (N % kVec != 0) return 1;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  return kVec;
}

template <typename S, typename Fn>
void dispatch_vec(int vec, Fn&& fn) {
  constexpr int kVec = 16 / sizeof(S);
  if (vec == kVec) fn(std::integral_constant<int, kVec>{});
  else fn(std::integral_constant<int, 1>{});
}

unsigned grid_for(int64_t N, int vec) {
  const int64_t threads = (N + vec - 1) / vec;
  return static_cast<unsigned>((threads + kThreads - 1) / kThreads);
}

}  // namespace

int64_t lif_cuda_tau_partials(int64_t N) { return grid_for(N, 1); }

void lif_cuda_forward(const LifForwardView& a, void* stream) {
  if (a.N == 0) return;
  const LifOptions<float> o = a.opts.as<float>();
  dispatch_storage(a.dtype, [&](auto zero) {
    using S = decltype(zero);
    const int vec = pick_vec<S>(a.N, {a.x, a.spikes, a.h});
    dispatch_vec<S>(vec, [&](auto V) {
      dispatch_bools(o.decay_input, o.soft_reset, a.h != nullptr, [&](auto D, auto R, auto H) {
        lif_forward_kernel<S, decltype(V)::value, decltype(D)::value, decltype(R)::value,
                           decltype(H)::value>
            <<<grid_for(a.N, decltype(V)::value), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
                static_cast<const S*>(a.x), static_cast<const float*>(a.v0),
                static_cast<const float*>(a.tau_ptr), static_cast<S*>(a.spikes),
                static_cast<S*>(a.h), static_cast<float*>(a.v_last), a.T, a.N, o);
      });
    });
  });
}

void lif_cuda_backward(const LifBackwardView& a, void* stream) {
  if (a.N == 0) return;
  const LifOptions<float> o = a.opts.as<float>();
  dispatch_storage(a.dtype, [&](auto zero) {
    using S = decltype(zero);
    const int vec = pick_vec<S>(a.N, {a.grad_spikes, a.h, a.grad_x});
    dispatch_vec<S>(vec, [&](auto V) {
      dispatch_surrogate(a.opts.surrogate, [&](auto G) {
        dispatch_bools(o.decay_input, o.soft_reset, a.grad_tau != nullptr,
                       [&](auto D, auto R, auto TG) {
          lif_backward_kernel<decltype(G)::value, S, decltype(V)::value, decltype(D)::value,
                              decltype(R)::value, decltype(TG)::value>
              <<<grid_for(a.N, decltype(V)::value), kThreads, 0,
                 static_cast<cudaStream_t>(stream)>>>(
                  static_cast<const S*>(a.grad_spikes), static_cast<const float*>(a.grad_v_last),
                  static_cast<const S*>(a.h), static_cast<const float*>(a.v0),
                  static_cast<const float*>(a.tau_ptr), static_cast<S*>(a.grad_x),
                  static_cast<float*>(a.grad_v0), static_cast<float*>(a.grad_tau), a.T, a.N, o);
        });
      });
    });
  });
}

}  // namespace spikeclip
