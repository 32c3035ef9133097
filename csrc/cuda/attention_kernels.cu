// Spiking attention on CUDA, fused with its LIF: SDSA and SSA forward and backward.
//
// SDSA: one block per (head, 32 columns of D); 8 warps share the tokens. Per step the block sums
// k * v over the tokens, reduces in shared memory, charges the LIF of its 32 columns (state in
// registers of warp 0) and writes out = q * spikes: kv never leaves the chip. The forward packs
// q, k, v for the backward with warp ballots (32 columns -> 4 bytes) as it reads them.
// SSA: A = k^T v per (step, head) first ([D, D] float32, exact integer counts for spikes; k and
// v packed on the way); then one block per (head, 8 tokens, 32 columns) sweeps t with the LIF
// state of its elements in registers: y = q A * scale is computed, charged and dropped.
// Backward SSA: A again (from the packed bits), the LIF backward over t (gy, float32), then
// small row-times-matrix products: gq = gy A^T, gA = q^T gy, gk = v gA^T, gv = k gA.
// Formulas: csrc/lif_math.h; spec: spikeclip/kernels/attention/reference.py. No torch headers here:
// CI compile-checks this file with `nvcc -ptx`; csrc/cuda/attention_cuda.cpp is the glue.
#include <cuda_runtime.h>

#include <algorithm>

#include "../attention_launch.h"
#include "device_types.cuh"

namespace spikeclip {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // blockDim.y of the (32 columns x 8 rows) blocks
constexpr int kThreads = 256;     // 1-d blocks
constexpr int kEntriesPerThread = 16;

__host__ __device__ __forceinline__ int64_t row_bytes(int64_t D) { return (D + 7) / 8; }

// Rows of a [rows, D] operand, read as float: dense storage, or packed spikes.
template <typename S>
struct DenseRows {
  const S* x;
  int64_t D;
  __device__ __forceinline__ float operator()(int64_t row, int64_t c) const {
    return load_f(x[row * D + c]);
  }
};

struct BitRows {
  const uint8_t* bits;
  int64_t nb;
  __device__ __forceinline__ float operator()(int64_t row, int64_t c) const {
    return static_cast<float>((bits[row * nb + (c >> 3)] >> (c & 7)) & 1);
  }
};

// Packs the ballot of 32 columns (bit tx = column c0 + tx is non-zero) into the row's bytes;
// lane 0 writes the up to 4 bytes that exist. Flags values that are neither 0 nor 1.
__device__ __forceinline__ void pack_warp(float x, bool in_range, uint8_t* row_bits, int64_t c0,
                                          int64_t nb, int* not_spikes) {
  const unsigned ones = __ballot_sync(0xffffffffu, in_range && x != 0.0f);
  const unsigned bad = __ballot_sync(0xffffffffu, in_range && x != 0.0f && x != 1.0f);
  if ((threadIdx.x & 31) == 0) {
    const int64_t b0 = c0 >> 3;
    for (int j = 0; j < 4 && b0 + j < nb; ++j) row_bits[b0 + j] = (ones >> (8 * j)) & 0xffu;
    if (bad) atomicOr(not_spikes, 1);
  }
}

// ---- SDSA ---------------------------------------------------------------------------------

template <typename S>
__global__ void __launch_bounds__(kWarp* kRowsPerBlock)
    sdsa_forward_kernel(const S* __restrict__ q, const S* __restrict__ k,
                        const S* __restrict__ v, S* __restrict__ out, float* __restrict__ h_out,
                        uint8_t* __restrict__ qb, uint8_t* __restrict__ kb,
                        uint8_t* __restrict__ vb, int* not_spikes, Heads s,
                        LifOptions<float> o) {
  __shared__ float partial[kRowsPerBlock][kWarp];
  __shared__ float spikes[kWarp];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t bh = blockIdx.x, c0 = static_cast<int64_t>(blockIdx.y) * kWarp, d = c0 + tx;
  const bool in_range = d < s.D;
  const int64_t nb = row_bytes(s.D);
  const bool save = qb != nullptr;
  const float rest = charge_rest(o);
  float state = rest;  // meaningful in warp 0
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t base = s.block(t, bh), row0 = base / s.D;
    float acc = 0.0f;
    for (int64_t n = ty; n < s.N; n += kRowsPerBlock) {
      const float kk = in_range ? load_f(k[base + n * s.D + d]) : 0.0f;
      const float vv = in_range ? load_f(v[base + n * s.D + d]) : 0.0f;
      acc += kk * vv;
      if (save) {
        pack_warp(kk, in_range, kb + (row0 + n) * nb, c0, nb, not_spikes);
        pack_warp(vv, in_range, vb + (row0 + n) * nb, c0, nb, not_spikes);
      }
    }
    partial[ty][tx] = acc;
    __syncthreads();
    if (ty == 0) {
      float kv = 0.0f;
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r) kv += partial[r][tx];
      const float h = lif_charge(state, kv, o.inv_tau, rest, true);
      const float sp = h >= o.v_th ? 1.0f : 0.0f;
      if (in_range && h_out) h_out[(t * s.BH + bh) * s.D + d] = h;
      state = lif_reset(h, sp, o);
      spikes[tx] = h >= o.v_th ? 1.0f : 0.0f;
    }
    __syncthreads();
    const float sp = spikes[tx];
    for (int64_t n = ty; n < s.N; n += kRowsPerBlock) {
      const float qq = in_range ? load_f(q[base + n * s.D + d]) : 0.0f;
      if (in_range) out[base + n * s.D + d] = store_f<S>(qq * sp);
      if (save) pack_warp(qq, in_range, qb + (row0 + n) * nb, c0, nb, not_spikes);
    }
    __syncthreads();  // partial and spikes are rewritten by the next step
  }
}

template <int kSurr, typename S>
__global__ void __launch_bounds__(kWarp* kRowsPerBlock)
    sdsa_backward_kernel(const S* __restrict__ go, const float* __restrict__ h_in,
                         const uint8_t* __restrict__ qb, const uint8_t* __restrict__ kb,
                         const uint8_t* __restrict__ vb, S* __restrict__ gq, S* __restrict__ gk,
                         S* __restrict__ gv, Heads s, LifOptions<float> o) {
  __shared__ float partial[kRowsPerBlock][kWarp];
  __shared__ float grad_kv[kWarp], spikes[kWarp];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t bh = blockIdx.x, d = static_cast<int64_t>(blockIdx.y) * kWarp + tx;
  const bool in_range = d < s.D;
  const BitRows qr{qb, row_bytes(s.D)}, kr{kb, row_bytes(s.D)}, vr{vb, row_bytes(s.D)};
  const float leak = 1.0f - o.inv_tau;
  float carry = 0.0f;  // meaningful in warp 0
  for (int64_t t = s.T - 1; t >= 0; --t) {
    const int64_t base = s.block(t, bh), row0 = base / s.D;
    float acc = 0.0f;  // dL/dspikes(kv) = sum over tokens of grad_out * q
    if (in_range)
      for (int64_t n = ty; n < s.N; n += kRowsPerBlock)
        acc += load_f(go[base + n * s.D + d]) * qr(row0 + n, d);
    partial[ty][tx] = acc;
    __syncthreads();
    if (ty == 0) {
      float gs = 0.0f;
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r) gs += partial[r][tx];
      const float h = in_range ? h_in[(t * s.BH + bh) * s.D + d] : 0.0f;
      const float dh = lif_dh<kSurr>(h, gs, carry, o);
      carry = dh * leak;
      grad_kv[tx] = dh * o.inv_tau;
      spikes[tx] = h >= o.v_th ? 1.0f : 0.0f;
    }
    __syncthreads();
    const float gkv = grad_kv[tx], sp = spikes[tx];
    if (in_range)
      for (int64_t n = ty; n < s.N; n += kRowsPerBlock) {
        const int64_t i = base + n * s.D + d;
        gq[i] = store_f<S>(load_f(go[i]) * sp);
        gk[i] = store_f<S>(vr(row0 + n, d) * gkv);
        gv[i] = store_f<S>(kr(row0 + n, d) * gkv);
      }
    __syncthreads();
  }
}

// ---- SSA ----------------------------------------------------------------------------------

// P[tb] = X[tb]^T Y[tb] ([D, D] float32) for each (step, head) tb; X, Y: [N, D] rows. Tokens
// are staged `chunk` rows at a time in shared memory; each thread accumulates up to
// kEntriesPerThread entries per pass over the tokens. When xb_out is set, X and Y are also
// packed (their values are staged anyway): k and v in the forward.
template <typename XRows, typename YRows>
__global__ void __launch_bounds__(kThreads)
    transposed_product_kernel(XRows X, YRows Y, float* __restrict__ P, int64_t N, int64_t D,
                              int chunk, uint8_t* xb_out, uint8_t* yb_out, int* not_spikes) {
  extern __shared__ float tile[];  // X rows [chunk, D], then Y rows [chunk, D]
  float* xs = tile;
  float* ys = tile + static_cast<int64_t>(chunk) * D;
  const int64_t tb = blockIdx.x, nb = row_bytes(D);
  for (int64_t e0 = 0; e0 < D * D; e0 += static_cast<int64_t>(kThreads) * kEntriesPerThread) {
    float acc[kEntriesPerThread];
#pragma unroll
    for (int r = 0; r < kEntriesPerThread; ++r) acc[r] = 0.0f;
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t rows = N - n0 < chunk ? N - n0 : chunk;
      for (int64_t i = threadIdx.x; i < rows * D; i += kThreads) {
        const int64_t row = tb * N + n0 + i / D, c = i % D;
        xs[i] = X(row, c);
        ys[i] = Y(row, c);
      }
      __syncthreads();
      if (xb_out && e0 == 0) {
        for (int64_t i = threadIdx.x; i < rows * nb; i += kThreads) {
          const int64_t r = i / nb, b = i % nb;
          unsigned xbyte = 0, ybyte = 0;
          bool bad = false;
          for (int j = 0; j < 8 && b * 8 + j < D; ++j) {
            const float xv = xs[r * D + b * 8 + j], yv = ys[r * D + b * 8 + j];
            bad |= (xv != 0.0f && xv != 1.0f) || (yv != 0.0f && yv != 1.0f);
            xbyte |= static_cast<unsigned>(xv != 0.0f) << j;
            ybyte |= static_cast<unsigned>(yv != 0.0f) << j;
          }
          const int64_t at = (tb * N + n0 + r) * nb + b;
          xb_out[at] = static_cast<uint8_t>(xbyte);
          yb_out[at] = static_cast<uint8_t>(ybyte);
          if (bad) atomicOr(not_spikes, 1);
        }
      }
#pragma unroll
      for (int r = 0; r < kEntriesPerThread; ++r) {
        const int64_t e = e0 + static_cast<int64_t>(r) * kThreads + threadIdx.x;
        if (e < D * D) {
          const int64_t a = e / D, b = e % D;
          float sum = acc[r];
          for (int64_t n = 0; n < rows; ++n) sum += xs[n * D + a] * ys[n * D + b];
          acc[r] = sum;
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < kEntriesPerThread; ++r) {
      const int64_t e = e0 + static_cast<int64_t>(r) * kThreads + threadIdx.x;
      if (e < D * D) P[tb * D * D + e] = acc[r];
    }
  }
}

// Stages rows n0 .. n0 + kRowsPerBlock of X[tb] as float in xs [kRowsPerBlock, D] (zeros
// past N). Called by all threads of a (32 x 8) block.
template <typename XRows>
__device__ __forceinline__ void stage_rows(XRows X, float* xs, int64_t tb, int64_t n0, int64_t N,
                                           int64_t D) {
  const int tid = threadIdx.y * kWarp + threadIdx.x;
  for (int64_t i = tid; i < kRowsPerBlock * D; i += kWarp * kRowsPerBlock) {
    const int64_t n = n0 + i / D;
    xs[i] = n < N ? X(tb * N + n, i % D) : 0.0f;
  }
}

// sum over r of x[r] * M[r, c] (or M[c, r] when kTransM); zeros of x skipped (warp-uniform:
// a warp reads one row of x), in ascending r like the CPU kernels.
template <bool kTransM>
__device__ __forceinline__ float row_times(const float* x, const float* __restrict__ M,
                                           int64_t c, int64_t D) {
  float y = 0.0f;
  for (int64_t r = 0; r < D; ++r) {
    const float xv = x[r];
    if (xv != 0.0f) y += xv * __ldg(M + (kTransM ? c * D + r : r * D + c));
  }
  return y;
}

// SSA forward: per element (n, d) of a head, the LIF over t of y = (q A)[n, d] * scale.
// q is packed (when saving) from the staged rows by the blocks of the first 32 columns.
template <typename S, bool kSave>
__global__ void __launch_bounds__(kWarp* kRowsPerBlock)
    ssa_forward_kernel(const S* __restrict__ q, const float* __restrict__ A, S* __restrict__ out,
                       S* __restrict__ h_out, uint8_t* __restrict__ qb, int* not_spikes, Heads s,
                       float scale, LifOptions<float> o) {
  extern __shared__ float qs[];  // [kRowsPerBlock, D]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t bh = blockIdx.x, n0 = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  const int64_t n = n0 + ty, d = static_cast<int64_t>(blockIdx.z) * kWarp + tx;
  const bool active = n < s.N && d < s.D;
  const int64_t nb = row_bytes(s.D);
  const float rest = charge_rest(o);
  float state = rest;
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t tb = t * s.BH + bh;
    stage_rows(DenseRows<S>{q, s.D}, qs, tb, n0, s.N, s.D);
    __syncthreads();
    if (kSave && blockIdx.z == 0) {
      for (int64_t i = ty * kWarp + tx; i < kRowsPerBlock * nb; i += kWarp * kRowsPerBlock) {
        const int64_t r = i / nb, b = i % nb;
        if (n0 + r >= s.N) continue;
        unsigned byte = 0;
        bool bad = false;
        for (int j = 0; j < 8 && b * 8 + j < s.D; ++j) {
          const float x = qs[r * s.D + b * 8 + j];
          bad |= x != 0.0f && x != 1.0f;
          byte |= static_cast<unsigned>(x != 0.0f) << j;
        }
        qb[(tb * s.N + n0 + r) * nb + b] = static_cast<uint8_t>(byte);
        if (bad) atomicOr(not_spikes, 1);
      }
    }
    if (active) {
      const float y = row_times<false>(qs + ty * s.D, A + tb * s.D * s.D, d, s.D);
      const float h = lif_charge(state, y * scale, o.inv_tau, rest, true);
      const float sp = h >= o.v_th ? 1.0f : 0.0f;
      const int64_t i = (tb * s.N + n) * s.D + d;
      out[i] = store_f<S>(sp);
      if (kSave) h_out[i] = store_f<S>(h);
      state = lif_reset(h, sp, o);
    }
    __syncthreads();  // qs is restaged by the next step
  }
}

// SSA backward, LIF part: per element, sweep t in reverse; gy = dL/d(q k^T v) (float32).
template <int kSurr, typename S>
__global__ void __launch_bounds__(kThreads)
    ssa_lif_backward_kernel(const S* __restrict__ go, const S* __restrict__ h_in,
                            float* __restrict__ gy, int64_t T, int64_t per_step, float out_scale,
                            LifOptions<float> o) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= per_step) return;
  const float leak = 1.0f - o.inv_tau;
  float carry = 0.0f;
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t i = t * per_step + e;
    const float h = load_f(h_in[i]);
    const float dh = lif_dh<kSurr>(h, load_f(go[i]), carry, o);
    carry = dh * leak;
    gy[i] = dh * out_scale;
  }
}

// out[tb, n, c] = sum over r of X[tb, n, r] * M[tb, r, c] (M[tb, c, r] when kTransM).
template <typename XRows, bool kTransM, typename S>
__global__ void __launch_bounds__(kWarp* kRowsPerBlock)
    rows_times_matrix_kernel(XRows X, const float* __restrict__ M, S* __restrict__ out, int64_t N,
                             int64_t D) {
  extern __shared__ float xs[];  // [kRowsPerBlock, D]
  const int64_t tb = blockIdx.x, n0 = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  const int64_t n = n0 + threadIdx.y, c = static_cast<int64_t>(blockIdx.z) * kWarp + threadIdx.x;
  stage_rows(X, xs, tb, n0, N, D);
  __syncthreads();
  if (n < N && c < D)
    out[(tb * N + n) * D + c] =
        store_f<S>(row_times<kTransM>(xs + threadIdx.y * D, M + tb * D * D, c, D));
}

// ---- launch helpers -----------------------------------------------------------------------

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

unsigned blocks_of(int64_t n, int64_t per) { return static_cast<unsigned>((n + per - 1) / per); }

// Shared memory beyond the default 48 KiB must be opted into per kernel.
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(bytes));
}

// Tokens staged per pass of transposed_product_kernel: 32, fewer for wide heads.
int product_chunk(int64_t D) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(32, 12288 / D)));
}

template <typename XRows, typename YRows>
void transposed_product(XRows X, YRows Y, float* P, const Heads& s, uint8_t* xb, uint8_t* yb,
                        int* not_spikes, cudaStream_t stream) {
  const int chunk = product_chunk(s.D);
  const size_t shared = 2 * sizeof(float) * chunk * s.D;
  auto kernel = transposed_product_kernel<XRows, YRows>;
  allow_shared(kernel, shared);
  kernel<<<static_cast<unsigned>(s.T * s.BH), kThreads, shared, stream>>>(
      X, Y, P, s.N, s.D, chunk, xb, yb, not_spikes);
}

dim3 row_grid(int64_t heads, const Heads& s) {
  return dim3(static_cast<unsigned>(heads), blocks_of(s.N, kRowsPerBlock),
              blocks_of(s.D, kWarp));
}

template <bool kTransM, typename XRows, typename S>
void rows_times_matrix(XRows X, const float* M, S* out, const Heads& s, cudaStream_t stream) {
  const size_t shared = sizeof(float) * kRowsPerBlock * s.D;
  auto kernel = rows_times_matrix_kernel<XRows, kTransM, S>;
  allow_shared(kernel, shared);
  kernel<<<row_grid(s.T * s.BH, s), dim3(kWarp, kRowsPerBlock), shared, stream>>>(X, M, out,
                                                                                    s.N, s.D);
}

}  // namespace

int64_t ssa_cuda_workspace_floats(const Heads& s) {
  return 2 * s.T * s.BH * s.D * s.D + s.T * s.BH * s.N * s.D;  // A, gA, gy
}

void sdsa_cuda_forward(const AttentionForwardView& a, void* stream) {
  const Heads& s = a.s;
  if (s.T * s.BH * s.N * s.D == 0) return;
  const LifOptions<float> o = a.opts.as<float>();
  dispatch_storage(a.dtype, [&](auto zero) {
    using S = decltype(zero);
    const dim3 grid(static_cast<unsigned>(s.BH), blocks_of(s.D, kWarp));
    sdsa_forward_kernel<S><<<grid, dim3(kWarp, kRowsPerBlock), 0, as_stream(stream)>>>(
        static_cast<const S*>(a.q), static_cast<const S*>(a.k), static_cast<const S*>(a.v),
        static_cast<S*>(a.out), static_cast<float*>(a.h), a.bits[0], a.bits[1], a.bits[2],
        a.not_spikes, s, o);
  });
}

void sdsa_cuda_backward(const AttentionBackwardView& a, void* stream) {
  const Heads& s = a.s;
  if (s.T * s.BH * s.N * s.D == 0) return;
  const LifOptions<float> o = a.opts.as<float>();
  dispatch_storage(a.dtype, [&](auto zero) {
    using S = decltype(zero);
    dispatch_surrogate(a.opts.surrogate, [&](auto G) {
      const dim3 grid(static_cast<unsigned>(s.BH), blocks_of(s.D, kWarp));
      sdsa_backward_kernel<decltype(G)::value, S>
          <<<grid, dim3(kWarp, kRowsPerBlock), 0, as_stream(stream)>>>(
              static_cast<const S*>(a.grad_out), static_cast<const float*>(a.h), a.bits[0],
              a.bits[1], a.bits[2], static_cast<S*>(a.gq), static_cast<S*>(a.gk),
              static_cast<S*>(a.gv), s, o);
    });
  });
}

void ssa_cuda_forward(const AttentionForwardView& a, float* A, void* stream) {
  const Heads& s = a.s;
  if (s.T * s.BH * s.N * s.D == 0) return;
  const LifOptions<float> o = a.opts.as<float>();
  const cudaStream_t st = as_stream(stream);
  dispatch_storage(a.dtype, [&](auto zero) {
    using S = decltype(zero);
    const DenseRows<S> K{static_cast<const S*>(a.k), s.D}, V{static_cast<const S*>(a.v), s.D};
    transposed_product(K, V, A, s, a.bits[1], a.bits[2], a.not_spikes, st);
    dispatch_bool(a.h != nullptr, [&](auto SAVE) {
      const size_t shared = sizeof(float) * kRowsPerBlock * s.D;
      auto kernel = ssa_forward_kernel<S, decltype(SAVE)::value>;
      allow_shared(kernel, shared);
      kernel<<<row_grid(s.BH, s), dim3(kWarp, kRowsPerBlock), shared, st>>>(
          static_cast<const S*>(a.q), A, static_cast<S*>(a.out), static_cast<S*>(a.h),
          a.bits[0], a.not_spikes, s, static_cast<float>(a.scale), o);
    });
  });
}

void ssa_cuda_backward(const AttentionBackwardView& a, void* stream) {
  const Heads& s = a.s;
  if (s.T * s.BH * s.N * s.D == 0) return;
  const LifOptions<float> o = a.opts.as<float>();
  const cudaStream_t st = as_stream(stream);
  float* A = a.workspace;
  float* gA = A + s.T * s.BH * s.D * s.D;
  float* gy = gA + s.T * s.BH * s.D * s.D;
  const int64_t nb = row_bytes(s.D), per_step = s.BH * s.N * s.D;
  const BitRows Q{a.bits[0], nb}, K{a.bits[1], nb}, V{a.bits[2], nb};
  transposed_product(K, V, A, s, nullptr, nullptr, nullptr, st);
  dispatch_storage(a.dtype, [&](auto zero) {
    using S = decltype(zero);
    dispatch_surrogate(a.opts.surrogate, [&](auto G) {
      ssa_lif_backward_kernel<decltype(G)::value, S>
          <<<blocks_of(per_step, kThreads), kThreads, 0, st>>>(
              static_cast<const S*>(a.grad_out), static_cast<const S*>(a.h), gy, s.T, per_step,
              o.inv_tau * static_cast<float>(a.scale), o);
    });
    const DenseRows<float> GY{gy, s.D};
    rows_times_matrix<true>(GY, A, static_cast<S*>(a.gq), s, st);  // gq = gy A^T
    transposed_product(Q, GY, gA, s, nullptr, nullptr, nullptr, st);  // gA = q^T gy
    rows_times_matrix<true>(V, gA, static_cast<S*>(a.gk), s, st);   // gk = v gA^T
    rows_times_matrix<false>(K, gA, static_cast<S*>(a.gv), s, st);  // gv = k gA
  });
}

}  // namespace spikeclip
