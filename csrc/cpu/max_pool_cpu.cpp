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
#include <cmath>
#include <limits>
#include <tuple>

#include "cpu_simd.h"

namespace spikeclip {
namespace {

template <typename F>
inline bool wins(F v, F best) {
  return v > best || v != v;  // v != v: NaN
}

// Output rows [r0, r1) of all planes, rows numbered plane * Ho + i.
template <typename F>
SC_CPU_CLONES void pool_rows(const F* x, F* y, uint8_t* where, int64_t H, int64_t W, int64_t Ho,
                             int64_t Wo, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t plane = r / Ho, i = r % Ho;
    const F* top = x + (plane * H + 2 * i) * W;
    const F* bottom = top + W;
    F* out = y + r * Wo;
    uint8_t* idx = where + r * Wo;
    for (int64_t j = 0; j < Wo; ++j) {
      const F a[4] = {top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]};
      F best = -std::numeric_limits<F>::infinity();
      uint8_t k = 0;
      for (uint8_t c = 0; c < 4; ++c)
        if (wins(a[c], best)) best = a[c], k = c;
      out[j] = best;
      idx[j] = k;
    }
  }
}

template <typename F>
SC_CPU_CLONES void unpool_rows(const F* gy, const uint8_t* where, F* gx, int64_t H, int64_t W,
                               int64_t Ho, int64_t Wo, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t plane = r / Ho, i = r % Ho;
    F* top = gx + (plane * H + 2 * i) * W;
    F* bottom = top + W;
    const F* g = gy + r * Wo;
    const uint8_t* idx = where + r * Wo;
    for (int64_t j = 0; j < Wo; ++j) {
      const uint8_t k = idx[j];
      top[2 * j] = k == 0 ? g[j] : F(0);
      top[2 * j + 1] = k == 1 ? g[j] : F(0);
      bottom[2 * j] = k == 2 ? g[j] : F(0);
      bottom[2 * j + 1] = k == 3 ? g[j] : F(0);
    }
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
