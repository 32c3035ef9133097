// Spike tensors packed 8 per byte along the last dimension, on CUDA: one thread per byte.
// Bit j of byte b holds x[..., 8 b + j]; the last byte of a row is zero-padded.
// Spec: spikeclip/kernels/spike_products/reference.py. No torch headers (glue: spike_pack_cuda.cpp).
#include <cuda_runtime.h>

#include "../spike_pack.h"
#include "device_types.cuh"

namespace spikeclip {
namespace {

constexpr int kThreads = 256;

template <typename S>
__global__ void __launch_bounds__(kThreads)
    pack_kernel(const S* __restrict__ x, uint8_t* __restrict__ bits, int64_t rows, int64_t n,
                int* not_spikes) {
  const int64_t nb = packed_row_bytes(n);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= rows * nb) return;
  const int64_t r = i / nb, c0 = (i % nb) * 8;
  unsigned byte = 0;
  bool bad = false;
  for (int j = 0; j < 8 && c0 + j < n; ++j) {
    const float v = load_f(x[r * n + c0 + j]);
    bad |= v != 0.0f && v != 1.0f;
    byte |= static_cast<unsigned>(v != 0.0f) << j;
  }
  bits[i] = static_cast<uint8_t>(byte);
  if (bad) atomicOr(not_spikes, 1);
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
    unpack_kernel(const uint8_t* __restrict__ bits, S* __restrict__ x, int64_t rows, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= rows * n) return;
  const int64_t r = i / n, c = i % n;
  x[i] = store_f<S>(static_cast<float>((bits[r * packed_row_bytes(n) + (c >> 3)] >> (c & 7)) & 1));
}

unsigned blocks_of(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void pack_spikes_cuda(DType dtype, const void* x, uint8_t* bits, int64_t rows, int64_t n,
                      int* not_spikes, void* stream) {
  if (rows * n == 0) return;
  dispatch_storage(dtype, [&](auto zero) {
    using S = decltype(zero);
    pack_kernel<S><<<blocks_of(rows * packed_row_bytes(n)), kThreads, 0,
                     static_cast<cudaStream_t>(stream)>>>(static_cast<const S*>(x), bits, rows,
                                                          n, not_spikes);
  });
}

void unpack_spikes_cuda(DType dtype, const uint8_t* bits, void* x, int64_t rows, int64_t n,
                        void* stream) {
  if (rows * n == 0) return;
  dispatch_storage(dtype, [&](auto zero) {
    using S = decltype(zero);
    unpack_kernel<S><<<blocks_of(rows * n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        bits, static_cast<S*>(x), rows, n);
  });
}

}  // namespace spikeclip
