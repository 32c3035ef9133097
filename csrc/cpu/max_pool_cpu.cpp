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
#include <cstring>
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

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("max_pool2x2", &max_pool2x2_cpu);
  m.impl("max_pool2x2_backward", &max_pool2x2_backward_cpu);
}

}  // namespace spikeclip
