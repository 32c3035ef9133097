// Sums of listed rows, accumulated in registers: the inner loop of every product with spikes
// on the CPU (a product with a 0/1 vector is the sum of the rows at its ones).
//   SpikeLists:      the set bits of a packed [rows, cols] block, by row or by column
//   sum_listed_rows: out[0:width] = sum over listed rows j of rows[j * width + 0:width]
// The sums run in list order, so each element sees the same additions in the same order as when
// the rows are added one by one into a zeroed row (results equal bit for bit).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../spike_pack.h"

namespace spikeclip {

typedef float Vec32f __attribute__((vector_size(32)));
typedef double Vec32d __attribute__((vector_size(32)));
template <typename F>
using Vec32 = std::conditional_t<std::is_same_v<F, float>, Vec32f, Vec32d>;
template <typename F>
constexpr int64_t kLanes = static_cast<int64_t>(32 / sizeof(F));

// A tile of kV vectors of 32 bytes (AVX2 registers in the AVX2 clones) of an output row; with
// kAdd the sums start from what the tile holds (out += the listed rows) instead of zero.
template <int kV, bool kAdd, typename F>
SC_INLINE void sum_listed_tile(const F* __restrict rows, int64_t stride,
                               const int32_t* __restrict list, int64_t m, F* __restrict out) {
  using V = Vec32<F>;
  V acc[kV];
#pragma GCC unroll 8
  for (int64_t v = 0; v < kV; ++v) {
    acc[v] = V{};
    if constexpr (kAdd) std::memcpy(&acc[v], out + v * kLanes<F>, sizeof(V));
  }
  for (int64_t s = 0; s < m; ++s) {
    const F* w = rows + list[s] * stride;
    for (int64_t v = 0; v < kV; ++v) {
      V x;
      std::memcpy(&x, w + v * kLanes<F>, sizeof(V));
      acc[v] += x;
    }
  }
  // Stored vector by vector from the registers: a memcpy of the whole array makes GCC keep acc
  // on the stack, zero it there first (a rep stos per call) and copy it out in a loop, more
  // than the sums themselves cost at a few rows.
#pragma GCC unroll 8
  for (int64_t v = 0; v < kV; ++v) std::memcpy(out + v * kLanes<F>, &acc[v], sizeof(V));
}

// The last len (< one vector) elements of an output row.
template <bool kAdd, typename F>
SC_INLINE void sum_listed_part(const F* __restrict rows, int64_t stride,
                               const int32_t* __restrict list, int64_t m, F* __restrict out,
                               int64_t len) {
  F acc[kLanes<F>] = {};
  if constexpr (kAdd) std::memcpy(acc, out, len * sizeof(F));
  for (int64_t s = 0; s < m; ++s) {
    const F* w = rows + list[s] * stride;
    for (int64_t i = 0; i < len; ++i) acc[i] += w[i];
  }
  std::memcpy(out, acc, len * sizeof(F));
}

// out[0:width] = sum over the m listed rows j of rows[j * width + 0:width] (kAdd: out += that
// sum): tiles of 8 vectors, then one tile of the 1 to 7 vectors left (48 floats: one pass of
// 6), then the rest. Each tile walks the list once, so the fewer tiles the better.
template <typename F, bool kAdd = false>
SC_INLINE void sum_listed_rows(const F* rows, const int32_t* list, int64_t m, int64_t width,
                               F* out) {
  constexpr int64_t L = kLanes<F>;
  int64_t c = 0;
  for (; c + 8 * L <= width; c += 8 * L)
    sum_listed_tile<8, kAdd, F>(rows + c, width, list, m, out + c);
  const int64_t vectors = (width - c) / L;
  switch (vectors) {
    case 7: sum_listed_tile<7, kAdd, F>(rows + c, width, list, m, out + c); break;
    case 6: sum_listed_tile<6, kAdd, F>(rows + c, width, list, m, out + c); break;
    case 5: sum_listed_tile<5, kAdd, F>(rows + c, width, list, m, out + c); break;
    case 4: sum_listed_tile<4, kAdd, F>(rows + c, width, list, m, out + c); break;
    case 3: sum_listed_tile<3, kAdd, F>(rows + c, width, list, m, out + c); break;
    case 2: sum_listed_tile<2, kAdd, F>(rows + c, width, list, m, out + c); break;
    case 1: sum_listed_tile<1, kAdd, F>(rows + c, width, list, m, out + c); break;
    default: break;
  }
  c += vectors * L;
  if (c < width) sum_listed_part<kAdd, F>(rows + c, width, list, m, out + c, width - c);
}

// rows[j * stride + 0:width] += g[0:width] for each of the m listed rows j: the transpose of
// sum_listed_rows (a weight gradient's scatter), g held in registers a tile of up to 8 vectors at
// a time while the listed rows take it.
template <int kV, typename F>
SC_INLINE void add_to_listed_tile(F* __restrict rows, int64_t stride,
                                  const int32_t* __restrict list, int64_t m,
                                  const F* __restrict g) {
  using V = Vec32<F>;
  V tile[kV];
#pragma GCC unroll 8
  for (int64_t v = 0; v < kV; ++v) std::memcpy(&tile[v], g + v * kLanes<F>, sizeof(V));
  for (int64_t s = 0; s < m; ++s) {
    F* r = rows + list[s] * stride;
#pragma GCC unroll 8
    for (int64_t v = 0; v < kV; ++v) {
      V x;
      std::memcpy(&x, r + v * kLanes<F>, sizeof(V));
      x += tile[v];
      std::memcpy(r + v * kLanes<F>, &x, sizeof(V));
    }
  }
}

template <typename F>
SC_INLINE void add_to_listed_rows(F* rows, int64_t stride, const int32_t* list, int64_t m,
                                  const F* g, int64_t width) {
  constexpr int64_t L = kLanes<F>;
  int64_t c = 0;
  for (; c + 8 * L <= width; c += 8 * L) add_to_listed_tile<8, F>(rows + c, stride, list, m, g + c);
  const int64_t vectors = (width - c) / L;
  switch (vectors) {
    case 7: add_to_listed_tile<7, F>(rows + c, stride, list, m, g + c); break;
    case 6: add_to_listed_tile<6, F>(rows + c, stride, list, m, g + c); break;
    case 5: add_to_listed_tile<5, F>(rows + c, stride, list, m, g + c); break;
    case 4: add_to_listed_tile<4, F>(rows + c, stride, list, m, g + c); break;
    case 3: add_to_listed_tile<3, F>(rows + c, stride, list, m, g + c); break;
    case 2: add_to_listed_tile<2, F>(rows + c, stride, list, m, g + c); break;
    case 1: add_to_listed_tile<1, F>(rows + c, stride, list, m, g + c); break;
    default: break;
  }
  c += vectors * L;
  for (int64_t s = 0; s < m; ++s)
    for (int64_t i = c; i < width; ++i) rows[list[s] * stride + i] += g[i];
}

// The set bits of a packed [rows, cols] block (rows of packed_row_bytes(cols) bytes), listed by
// row (list(r): the columns set in row r) or by column (list(c): the rows where column c is
// set), in increasing order. Buffers are kept between calls.
struct SpikeLists {
  std::vector<int32_t> idx, start;
  std::vector<uint64_t> words;  // by_col's bit words

  void by_row(const uint8_t* bits, int64_t rows, int64_t cols) {
    const int64_t nb = packed_row_bytes(cols);
    idx.resize(static_cast<size_t>(rows * cols));
    start.resize(static_cast<size_t>(rows + 1));
    int32_t m = 0;
    for (int64_t r = 0; r < rows; ++r) {
      start[r] = m;
      for_each_spike(bits + r * nb, cols, [&](int64_t c) { idx[m++] = static_cast<int32_t>(c); });
    }
    start[rows] = m;
  }

  // By column, from the same block listed by row (no second reading of the bits): the rows of
  // each column are first set as bits of words (ceil(rows / 64) per column), then listed.
  void by_col(const SpikeLists& by_rows, int64_t rows, int64_t cols) {
    const int64_t W = (rows + 63) / 64;
    words.assign(static_cast<size_t>(cols * W), 0);
    for (int64_t r = 0; r < rows; ++r) {
      uint64_t* row_words = words.data() + r / 64;
      const uint64_t bit = uint64_t{1} << (r % 64);
      for (int32_t i = by_rows.start[r]; i < by_rows.start[r + 1]; ++i)
        row_words[by_rows.idx[i] * W] |= bit;
    }
    idx.resize(static_cast<size_t>(rows * cols));
    start.resize(static_cast<size_t>(cols + 1));
    int32_t m = 0;
    for (int64_t c = 0; c < cols; ++c) {
      start[c] = m;
      for (int64_t w = 0; w < W; ++w)
        for (uint64_t x = words[c * W + w]; x; x &= x - 1)
          idx[m++] = static_cast<int32_t>(w * 64 + __builtin_ctzll(x));
    }
    start[cols] = m;
  }

  const int32_t* list(int64_t i) const { return idx.data() + start[i]; }
  int64_t size(int64_t i) const { return start[i + 1] - start[i]; }
};

}  // namespace spikeclip
