// 2x2 max-pool, stride 2, on the CPU: nn.MaxPool2d(2)'s values and gradients, with one byte per
// window (which of its four inputs won, 0..3 in row-major order) kept for the backward instead
// of an int64 index. The winner is chosen as PyTorch chooses it: scanning the window in
// row-major order from -inf, an input wins if it is greater than the maximum so far or NaN
// (so ties go to the first, NaNs to the last NaN). Odd heights and widths drop their last row
// or column (floor), and those inputs get zero gradient.
// x [..., H, W] (any leading dims, taken as planes) -> y [..., H/2, W/2], where (uint8, same).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace spikeclip {
namespace {

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
void pool_rows(const F* x, F* y, uint8_t* where, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
               int64_t r0, int64_t r1) {
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
void unpool_rows(const F* gy, const uint8_t* where, F* gx, int64_t H, int64_t W, int64_t Ho,
                 int64_t Wo, int64_t r0, int64_t r1) {
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

void check_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() >= 2 && x.size(-2) >= 2 && x.size(-1) >= 2, op,
              ": x must be [..., H, W] with H, W >= 2, got ", x.sizes());
}

std::tuple<at::Tensor, at::Tensor> max_pool2x2_cpu(const at::Tensor& x) {
  check_input(x, "max_pool2x2");
  const at::Tensor xc = x.contiguous();
  const int64_t H = x.size(-2), W = x.size(-1), Ho = H / 2, Wo = W / 2;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[shape.size() - 2] = Ho;
  shape.back() = Wo;
  at::Tensor y = at::empty(shape, x.options());
  at::Tensor where = at::empty(shape, x.options().dtype(at::kByte));
  const int64_t rows = x.numel() / (H * W) * Ho;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "max_pool2x2", [&] {
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      pool_rows<scalar_t>(xc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                          where.data_ptr<uint8_t>(), H, W, Ho, Wo, r0, r1);
    });
  });
  return {y, where};
}

at::Tensor max_pool2x2_backward_cpu(const at::Tensor& grad_y, const at::Tensor& where,
                                    int64_t height, int64_t width) {
  TORCH_CHECK(where.scalar_type() == at::kByte && grad_y.sizes() == where.sizes() &&
                  grad_y.dim() >= 2 && grad_y.size(-2) == height / 2 &&
                  grad_y.size(-1) == width / 2 && height >= 2 && width >= 2,
              "max_pool2x2_backward: grad_y and where (uint8) must be [..., height / 2, "
              "width / 2], got ",
              grad_y.sizes(), " and ", where.sizes(), " for height ", height, ", width ", width);
  const at::Tensor g = grad_y.contiguous(), w = where.contiguous();
  const int64_t Ho = height / 2, Wo = width / 2;
  std::vector<int64_t> shape(g.sizes().begin(), g.sizes().end());
  shape[shape.size() - 2] = height;
  shape.back() = width;
  at::Tensor gx = at::empty(shape, g.options());
  const int64_t rows = g.numel() / (Ho * Wo) * Ho;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(),
                                  "max_pool2x2_backward", [&] {
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      unpool_rows<scalar_t>(g.data_ptr<scalar_t>(), w.data_ptr<uint8_t>(),
                            gx.data_ptr<scalar_t>(), height, width, Ho, Wo, r0, r1);
    });
  });
  return gx;
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
  float best = -std::numeric_limits<float>::infinity();
  int64_t win_r = r0, win_c = c0;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) {
      const float v = static_cast<float>(x[r * W + c]);
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
// Four neighbouring windows j..j+3 of one output row at once (their columns 2j-1..2j+7 all
// inside the row): for each of the window's rows, its columns 2j-1, 2j, 2j+1 are the even and
// odd lanes of two unaligned loads, scanned in row-major order by the same rule.
inline void pool3_four(const float* x, float* y, uint8_t* where, int64_t W, int64_t r0,
                       int64_t r1, int64_t i, int64_t j) {
  __m128 best = _mm_set1_ps(-std::numeric_limits<float>::infinity());
  __m128i k = _mm_set1_epi32(static_cast<int32_t>((r0 - (2 * i - 1)) * 3));
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = x + r * W + 2 * j;
    const __m128 a0 = _mm_loadu_ps(row - 1), a1 = _mm_loadu_ps(row + 3);  // cols 2j-1 .. 2j+6
    const __m128 b0 = _mm_loadu_ps(row), b1 = _mm_loadu_ps(row + 4);      // cols 2j .. 2j+7
    const int32_t base = static_cast<int32_t>((r - (2 * i - 1)) * 3);
    take4_if_wins(_mm_shuffle_ps(a0, a1, _MM_SHUFFLE(2, 0, 2, 0)), base, best, k);
    take4_if_wins(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0)), base + 1, best, k);
    take4_if_wins(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1)), base + 2, best, k);
  }
  _mm_storeu_ps(y, best);
  const __m128i k16 = _mm_packs_epi32(k, k);
  const int32_t k8 = _mm_cvtsi128_si32(_mm_packus_epi16(k16, k16));
  std::memcpy(where, &k8, 4);
}
#endif

template <typename F>
void pool3_plane(const F* x, F* y, uint8_t* where, int64_t H, int64_t W, int64_t Ho,
                 int64_t Wo) {
  for (int64_t i = 0; i < Ho; ++i) {
    int64_t j = 0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<F, float>) {
      // window 0 reaches the padding; windows j..j+3 need columns up to 2j+7 < W
      const int64_t r0 = std::max<int64_t>(2 * i - 1, 0), r1 = std::min<int64_t>(2 * i + 2, H);
      pool3_window(x, y + i * Wo, where + i * Wo, H, W, i, 0);
      for (j = 1; j + 3 < Wo && 2 * j + 7 < W; j += 4)
        pool3_four(x, y + i * Wo + j, where + i * Wo + j, W, r0, r1, i, j);
    }
#endif
    for (; j < Wo; ++j) pool3_window(x, y + i * Wo + j, where + i * Wo + j, H, W, i, j);
  }
}

// Returns false (and writes nothing more) at a byte that names a place outside the input:
// `where` is the caller's tensor, and the backward must never write outside gx.
template <typename F>
bool unpool3_plane(const F* gy, const uint8_t* where, F* gx, int64_t H, int64_t W, int64_t Ho,
                   int64_t Wo) {
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

int64_t pool3_size(int64_t n) { return (n - 1) / 2 + 1; }

std::tuple<at::Tensor, at::Tensor> max_pool3x3s2_cpu(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 2 && x.size(-2) >= 1 && x.size(-1) >= 1,
                    "max_pool3x3s2: x must be [..., H, W] with H, W >= 1, got ", x.sizes());
  const at::Tensor xc = x.contiguous();
  const int64_t H = x.size(-2), W = x.size(-1), Ho = pool3_size(H), Wo = pool3_size(W);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[shape.size() - 2] = Ho;
  shape.back() = Wo;
  at::Tensor y = at::empty(shape, x.options());
  at::Tensor where = at::empty(shape, x.options().dtype(at::kByte));
  const int64_t planes = H * W ? x.numel() / (H * W) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "max_pool3x3s2", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    uint8_t* wp = where.data_ptr<uint8_t>();
    at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        pool3_plane<scalar_t>(xp + p * H * W, yp + p * Ho * Wo, wp + p * Ho * Wo, H, W, Ho, Wo);
    });
  });
  return {y, where};
}

at::Tensor max_pool3x3s2_backward_cpu(const at::Tensor& grad_y, const at::Tensor& where,
                                      int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(where.scalar_type() == at::kByte && grad_y.sizes() == where.sizes() &&
                        grad_y.dim() >= 2 && height >= 1 && width >= 1 &&
                        grad_y.size(-2) == pool3_size(height) &&
                        grad_y.size(-1) == pool3_size(width),
                    "max_pool3x3s2_backward: grad_y and where (uint8) must be [..., (height - 1) "
                    "/ 2 + 1, (width - 1) / 2 + 1], got ",
                    grad_y.sizes(), " and ", where.sizes(), " for height ", height, ", width ",
                    width);
  const at::Tensor g = grad_y.contiguous(), w = where.contiguous();
  const int64_t Ho = pool3_size(height), Wo = pool3_size(width);
  std::vector<int64_t> shape(g.sizes().begin(), g.sizes().end());
  shape[shape.size() - 2] = height;
  shape.back() = width;
  at::Tensor gx = at::empty(shape, g.options());
  const int64_t planes = g.numel() / (Ho * Wo);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(),
                                  "max_pool3x3s2_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const uint8_t* wp = w.data_ptr<uint8_t>();
    scalar_t* xp = gx.data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        if (!unpool3_plane<scalar_t>(gp + p * Ho * Wo, wp + p * Ho * Wo,
                                     xp + p * height * width, height, width, Ho, Wo))
          bad.store(true, std::memory_order_relaxed);
    });
  });
  TORCH_CHECK_VALUE(!bad.load(), "max_pool3x3s2_backward: `where` names a place outside the "
                    "input (it must come from max_pool3x3s2 of a [..., ", height, ", ", width,
                    "] input)");
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("max_pool2x2", &max_pool2x2_cpu);
  m.impl("max_pool2x2_backward", &max_pool2x2_backward_cpu);
  m.impl("max_pool3x3s2", &max_pool3x3s2_cpu);
  m.impl("max_pool3x3s2_backward", &max_pool3x3s2_backward_cpu);
}

}  // namespace spikeclip
