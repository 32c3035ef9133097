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

// A tile of kV vectors of 32 bytes (AVX2 registers in the AVX2 clones) of an output row.
template <int kV, typename F>
SC_INLINE void sum_listed_tile(const F* __restrict rows, int64_t stride,
                               const int32_t* __restrict list, int64_t m, F* __restrict out) {
  using V = Vec32<F>;
  V acc[kV] = {};
  for (int64_t s = 0; s < m; ++s) {
    const F* w = rows + list[s] * stride;
    for (int64_t v = 0; v < kV; ++v) {
      V x;
      std::memcpy(&x, w + v * kLanes<F>, sizeof(V));
      acc[v] += x;
    }
  }
  std::memcpy(out, acc, sizeof(acc));
}

// The last len (< one vector) elements of an output row.
template <typename F>
SC_INLINE void sum_listed_part(const F* __restrict rows, int64_t stride,
                               const int32_t* __restrict list, int64_t m, F* __restrict out,
                               int64_t len) {
  F acc[kLanes<F>] = {};
  for (int64_t s = 0; s < m; ++s) {
    const F* w = rows + list[s] * stride;
    for (int64_t i = 0; i < len; ++i) acc[i] += w[i];
  }
  std::memcpy(out, acc, len * sizeof(F));
}

// out[0:width] = sum over the m listed rows j of rows[j * width + 0:width]: tiles of 8 vectors,
// then one each of 4, 2 and 1 as the width needs (48 floats = 4 + 2), then the rest.
template <typename F>
SC_INLINE void sum_listed_rows(const F* rows, const int32_t* list, int64_t m, int64_t width,
                               F* out) {
  constexpr int64_t L = kLanes<F>;
  int64_t c = 0;
  for (; c + 8 * L <= width; c += 8 * L) sum_listed_tile<8, F>(rows + c, width, list, m, out + c);
  if (c + 4 * L <= width) {
    sum_listed_tile<4, F>(rows + c, width, list, m, out + c);
    c += 4 * L;
  }
  if (c + 2 * L <= width) {
    sum_listed_tile<2, F>(rows + c, width, list, m, out + c);
    c += 2 * L;
  }
  if (c + L <= width) {
    sum_listed_tile<1, F>(rows + c, width, list, m, out + c);
    c += L;
  }
  if (c < width) sum_listed_part<F>(rows + c, width, list, m, out + c, width - c);
}

// The set bits of a packed [rows, cols] block (rows of packed_row_bytes(cols) bytes), listed by
// row (list(r): the columns set in row r) or by column (list(c): the rows where column c is
// set), in increasing order. Buffers are kept between calls.
struct SpikeLists {
  std::vector<int32_t> idx, start, next;

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

  // By column, from the same block listed by row (no second reading of the bits).
  void by_col(const SpikeLists& by_rows, int64_t rows, int64_t cols) {
    const int32_t nnz = by_rows.start[rows];
    idx.resize(static_cast<size_t>(rows * cols));
    start.assign(static_cast<size_t>(cols + 1), 0);
    for (int32_t i = 0; i < nnz; ++i) ++start[by_rows.idx[i] + 1];
    for (int64_t c = 0; c < cols; ++c) start[c + 1] += start[c];
    next.assign(start.begin(), start.end() - 1);
    for (int64_t r = 0; r < rows; ++r)
      for (int32_t i = by_rows.start[r]; i < by_rows.start[r + 1]; ++i)
        idx[next[by_rows.idx[i]]++] = static_cast<int32_t>(r);
  }

  const int32_t* list(int64_t i) const { return idx.data() + start[i]; }
  int64_t size(int64_t i) const { return start[i + 1] - start[i]; }
};

}  // namespace spikeclip
