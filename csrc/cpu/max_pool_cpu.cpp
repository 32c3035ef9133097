// The byte-per-window max-pools' ops on the CPU (2x2 stride 2; 3x3 stride 2 padding 1): their
// checks, outputs and threads; the plane kernels and the rules they follow (PyTorch's values
// and winners) are csrc/cpu/max_pool_planes.h's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <tuple>
#include <vector>

#include "max_pool_planes.h"

namespace spikeclip {
namespace {

using namespace pool_planes;

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
