// Transposes of float blocks in registers, shared by the CPU kernels that move between
// channels-first planes and channels-last rows (spike_layers_cpu.cpp, winograd_cpu.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu_simd.h"
#include "listed_sums.h"

namespace spikeclip {

// The 8 x 8 floats r[0..7][0..7] transposed in registers (unpack, shuffle, then 128-bit halves).
SC_INLINE void transpose8x8(Vec32f r[8]) {
  Vec32f t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int h = 0; h < 2; ++h) {
      u[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * h + 1] =
          __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int j = 0; j < 4; ++j) {
    r[j] = __builtin_shufflevector(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[j + 4] = __builtin_shufflevector(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols: between a channels-
// last band and y's channel planes, both ways. Floats in 8 x 8 blocks transposed in registers
// (a scalar copy with the channels' stride ran ~2 cycles an element and took a third of the
// product at 5% firing, half of the weight gradient); the edges and double one at a time.
template <typename F>
SC_INLINE void transpose_into(const F* __restrict src, int64_t src_stride, int64_t rows,
                              int64_t cols, F* __restrict dst, int64_t dst_stride) {
  int64_t i0 = 0;
  if constexpr (std::is_same_v<F, float>) {
    for (; i0 + 8 <= rows; i0 += 8) {
      int64_t j0 = 0;
      for (; j0 + 8 <= cols; j0 += 8) {
        Vec32f r[8];
        for (int i = 0; i < 8; ++i)
          std::memcpy(&r[i], src + (i0 + i) * src_stride + j0, sizeof(Vec32f));
        transpose8x8(r);
        for (int j = 0; j < 8; ++j)
          std::memcpy(dst + (j0 + j) * dst_stride + i0, &r[j], sizeof(Vec32f));
      }
      for (int64_t i = i0; i < i0 + 8; ++i)  // the columns past the last whole block
        for (int64_t j = j0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
    }
  }
  for (int64_t i = i0; i < rows; ++i)  // the rows past the last whole block (all, for double)
    for (int64_t j = 0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
}

}  // namespace spikeclip
