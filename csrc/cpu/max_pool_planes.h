// The plane kernels of the byte-per-window max-pools (csrc/cpu/max_pool_cpu.cpp's ops, and
// csrc/cpu/bn_pool_cpu.cpp's BatchNorm + pool): values and winners exactly as PyTorch's CPU
// pooling chooses them (rules below).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace spikeclip {
namespace pool_planes {

// ---- 2x2 max-pool, stride 2 ----------------------------------------------------------
// 2x2 max-pool, stride 2, on the CPU: nn.MaxPool2d(2)'s values and gradients, with one byte per
// window (which of its four inputs won, 0..3 in row-major order) kept for the backward instead
// of an int64 index. The winner is chosen as PyTorch chooses it: scanning the window in
// row-major order from -inf, an input wins if it is greater than the maximum so far or NaN
// (so ties go to the first, NaNs to the last NaN). Odd heights and widths drop their last row
// or column (floor), and those inputs get zero gradient.
// x [..., H, W] (any leading dims, taken as planes) -> y [..., H/2, W/2], where (uint8, same).


// One window, any type: the running maximum (best, k) takes candidate v at position c if v
// wins, i.e. is greater or NaN (v != v). Starting from the window's first input instead of -inf
// picks the same value and position (-inf never wins over -inf; NaN wins either way).
template <typename F>
inline void take_if_wins(F v, int32_t c, F& best, int32_t& k) {
  const bool w = (v > best) | (v != v);
  best = w ? v : best;
  k = w ? c : k;
}

template <typename F>
inline void pool_window(const F* top, const F* bottom, F* out, uint8_t* idx) {
  F best = top[0];
  int32_t k = 0;
  take_if_wins(top[1], 1, best, k);
  take_if_wins(bottom[0], 2, best, k);
  take_if_wins(bottom[1], 3, best, k);
  *out = best;
  *idx = static_cast<uint8_t>(k);
}

template <typename F>
inline void unpool_window(F g, uint8_t k, F* top, F* bottom) {
  top[0] = k == 0 ? g : F(0);
  top[1] = k == 1 ? g : F(0);
  bottom[0] = k == 2 ? g : F(0);
  bottom[1] = k == 3 ? g : F(0);
}

#if defined(__SSE2__)
// Four float windows at once, the same rules in SSE registers: the even and odd columns of
// both rows are split apart by shuffles, and `where` is built and read as four bytes. GCC's
// own vectorisation of the window loops ran slower than scalar code at these short rows.
inline void take4_if_wins(__m128 v, int32_t c, __m128& best, __m128i& k) {
  const __m128 w = _mm_or_ps(_mm_cmpgt_ps(v, best), _mm_cmpunord_ps(v, v));
  best = _mm_or_ps(_mm_and_ps(w, v), _mm_andnot_ps(w, best));
  const __m128i wi = _mm_castps_si128(w);
  k = _mm_or_si128(_mm_and_si128(wi, _mm_set1_epi32(c)), _mm_andnot_si128(wi, k));
}

inline void pool4(const float* top, const float* bottom, float* out, uint8_t* idx) {
  const __m128 t0 = _mm_loadu_ps(top), t1 = _mm_loadu_ps(top + 4);
  const __m128 b0 = _mm_loadu_ps(bottom), b1 = _mm_loadu_ps(bottom + 4);
  __m128 best = _mm_shuffle_ps(t0, t1, _MM_SHUFFLE(2, 0, 2, 0));
  __m128i k = _mm_setzero_si128();
  take4_if_wins(_mm_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)), 1, best, k);
  take4_if_wins(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0)), 2, best, k);
  take4_if_wins(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1)), 3, best, k);
  _mm_storeu_ps(out, best);
  const __m128i k16 = _mm_packs_epi32(k, k);
  const int32_t k8 = _mm_cvtsi128_si32(_mm_packus_epi16(k16, k16));
  std::memcpy(idx, &k8, 4);
}

inline void unpool4(const float* g, const uint8_t* idx, float* top, float* bottom) {
  int32_t k8;
  std::memcpy(&k8, idx, 4);
  const __m128i zero = _mm_setzero_si128();
  const __m128i k = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(k8), zero), zero);
  const __m128 v = _mm_loadu_ps(g);
  __m128 p[4];
  for (int c = 0; c < 4; ++c)
    p[c] = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(c))), v);
  _mm_storeu_ps(top, _mm_unpacklo_ps(p[0], p[1]));
  _mm_storeu_ps(top + 4, _mm_unpackhi_ps(p[0], p[1]));
  _mm_storeu_ps(bottom, _mm_unpacklo_ps(p[2], p[3]));
  _mm_storeu_ps(bottom + 4, _mm_unpackhi_ps(p[2], p[3]));
}
#endif

// Output rows [r0, r1) of all planes, rows numbered plane * Ho + i.
template <typename F>
inline void pool_rows(const F* x, F* y, uint8_t* where, int64_t H, int64_t W, int64_t Ho,
                      int64_t Wo, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t plane = r / Ho, i = r % Ho;
    const F* top = x + (plane * H + 2 * i) * W;
    const F* bottom = top + W;
    F* out = y + r * Wo;
    uint8_t* idx = where + r * Wo;
    int64_t j = 0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<F, float>)
      for (; j + 4 <= Wo; j += 4) pool4(top + 2 * j, bottom + 2 * j, out + j, idx + j);
#endif
    for (; j < Wo; ++j) pool_window(top + 2 * j, bottom + 2 * j, out + j, idx + j);
  }
}

template <typename F>
inline void unpool_rows(const F* gy, const uint8_t* where, F* gx, int64_t H, int64_t W,
                        int64_t Ho, int64_t Wo, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t plane = r / Ho, i = r % Ho;
    F* top = gx + (plane * H + 2 * i) * W;
    F* bottom = top + W;
    const F* g = gy + r * Wo;
    const uint8_t* idx = where + r * Wo;
    int64_t j = 0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<F, float>)
      for (; j + 4 <= Wo; j += 4) unpool4(g + j, idx + j, top + 2 * j, bottom + 2 * j);
#endif
    for (; j < Wo; ++j) unpool_window(g[j], idx[j], top + 2 * j, bottom + 2 * j);
    if (W % 2) top[W - 1] = bottom[W - 1] = F(0);
    if (i == Ho - 1 && H % 2) std::fill(bottom + W, bottom + 2 * W, F(0));
  }
}

// ---- 3x3 max-pool, stride 2, padding 1 --------------------------------------------------
// nn.MaxPool2d(3, 2, 1)'s values and gradients. Output (i, j) reads rows 2i-1..2i+1 and columns
// 2j-1..2j+1 clipped to the input (the padding never wins). As PyTorch's CPU kernel: the scan
// starts from -inf with the window's first input as the winner, and in row-major order an input
// wins if it is greater or NaN, so an all -inf window gives -inf from its first input. `where`
// keeps the winner's place in the 3x3 window (0..8, row-major, counted from row 2i-1 and column
// 2j-1): one byte instead of an int64. Windows overlap on odd rows and columns, so the backward
// adds each output's gradient to its winner in the forward's order (output rows, then columns:
// PyTorch's order, so the float sums round alike).

template <typename F>
inline void pool3_window(const F* x, F* y, uint8_t* where, int64_t H, int64_t W, int64_t i,
                         int64_t j) {
  const int64_t r0 = std::max<int64_t>(2 * i - 1, 0), r1 = std::min<int64_t>(2 * i + 2, H);
  const int64_t c0 = std::max<int64_t>(2 * j - 1, 0), c1 = std::min<int64_t>(2 * j + 2, W);
  using Cmp = std::conditional_t<std::is_same_v<F, double>, double, float>;  // half, bf16: float
  Cmp best = -std::numeric_limits<Cmp>::infinity();
  int64_t win_r = r0, win_c = c0;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) {
      const Cmp v = static_cast<Cmp>(x[r * W + c]);
      if (v > best || v != v) {
        best = v;
        win_r = r;
        win_c = c;
      }
    }
  *y = x[win_r * W + win_c];
  *where = static_cast<uint8_t>((win_r - (2 * i - 1)) * 3 + (win_c - (2 * j - 1)));
}

#if defined(__SSE2__)
// Four neighbouring windows j..j+3 of one output row at once. `rows` points at column 2j of the
// windows' first row inside the input, the next rows `stride` apart, `n` of them (1..3), and
// columns 2j-1..2j+7 of each readable; base: that row's place in the window (0, or 3 at the top
// edge); k: each lane's first place inside the input (its winner unless another input wins).
// For each row, its columns 2j-1, 2j, 2j+1 are the even and odd lanes of two unaligned loads,
// scanned in row-major order by the same rule.
inline void pool3_four(const float* rows, int64_t stride, int64_t n, int32_t base, __m128i k,
                       float* y, uint8_t* where) {
  __m128 best = _mm_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t r = 0; r < n; ++r, base += 3) {
    const float* row = rows + r * stride;
    const __m128 a0 = _mm_loadu_ps(row - 1), a1 = _mm_loadu_ps(row + 3);  // cols 2j-1 .. 2j+6
    const __m128 b0 = _mm_loadu_ps(row), b1 = _mm_loadu_ps(row + 4);      // cols 2j .. 2j+7
    take4_if_wins(_mm_shuffle_ps(a0, a1, _MM_SHUFFLE(2, 0, 2, 0)), base, best, k);
    take4_if_wins(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0)), base + 1, best, k);
    take4_if_wins(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1)), base + 2, best, k);
  }
  _mm_storeu_ps(y, best);
  const __m128i k16 = _mm_packs_epi32(k, k);
  const int32_t k8 = _mm_cvtsi128_si32(_mm_packus_epi16(k16, k16));
  std::memcpy(where, &k8, 4);
}

// A float plane, every window on SSE lanes: each output row's (up to) three input rows are
// copied between columns of -inf (the padding: -inf never wins, and each lane starts from its
// window's first input inside the plane, so the winners are those of the rule above); the
// last group's lanes past Wo are computed on padding and dropped.
inline void pool3_plane_sse(const float* x, float* y, uint8_t* where, int64_t H, int64_t W,
                            int64_t Ho, int64_t Wo) {
  const int64_t stride = W + 10;  // columns -1 .. W + 8: the last group reads up to W + 6
  std::vector<float> rows(3 * stride, -std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < Ho; ++i) {
    const int64_t r0 = std::max<int64_t>(2 * i - 1, 0), r1 = std::min<int64_t>(2 * i + 2, H);
    for (int64_t r = r0; r < r1; ++r)
      std::memcpy(rows.data() + (r - r0) * stride + 1, x + r * W, W * sizeof(float));
    const int32_t base = static_cast<int32_t>((r0 - (2 * i - 1)) * 3);
    for (int64_t j = 0; j < Wo; j += 4) {
      // window 0's first input inside the plane is its column 0 (place base + 1)
      const __m128i k = j == 0 ? _mm_set_epi32(base, base, base, base + 1) : _mm_set1_epi32(base);
      const float* at = rows.data() + 1 + 2 * j;
      if (j + 4 <= Wo) {
        pool3_four(at, stride, r1 - r0, base, k, y + i * Wo + j, where + i * Wo + j);
      } else {
        float out[4];
        uint8_t won[4];
        pool3_four(at, stride, r1 - r0, base, k, out, won);
        std::memcpy(y + i * Wo + j, out, (Wo - j) * sizeof(float));
        std::memcpy(where + i * Wo + j, won, Wo - j);
      }
    }
  }
}
#endif

template <typename F>
inline void pool3_plane(const F* x, F* y, uint8_t* where, int64_t H, int64_t W, int64_t Ho,
                        int64_t Wo) {
#if defined(__SSE2__)
  if constexpr (std::is_same_v<F, float>) return pool3_plane_sse(x, y, where, H, W, Ho, Wo);
#endif
  for (int64_t i = 0; i < Ho; ++i)
    for (int64_t j = 0; j < Wo; ++j)
      pool3_window(x, y + i * Wo + j, where + i * Wo + j, H, W, i, j);
}

// Returns false (and writes nothing more) at a byte that names a place outside the input:
// `where` is the caller's tensor, and the backward must never write outside gx.
template <typename F>
inline bool unpool3_plane(const F* gy, const uint8_t* where, F* gx, int64_t H, int64_t W,
                          int64_t Ho, int64_t Wo) {
  using Acc = std::conditional_t<std::is_same_v<F, double>, double, float>;
  std::fill(gx, gx + H * W, F(0));
  for (int64_t i = 0; i < Ho; ++i)
    for (int64_t j = 0; j < Wo; ++j) {
      const int64_t k = where[i * Wo + j];
      const int64_t r = 2 * i - 1 + k / 3, c = 2 * j - 1 + k % 3;
      if (k > 8 || r < 0 || r >= H || c < 0 || c >= W) return false;
      F& target = gx[r * W + c];
      target = static_cast<F>(static_cast<Acc>(target) + static_cast<Acc>(gy[i * Wo + j]));
    }
  return true;
}

inline int64_t pool3_size(int64_t n) { return (n - 1) / 2 + 1; }

}  // namespace pool_planes
}  // namespace spikeclip
