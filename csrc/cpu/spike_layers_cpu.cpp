// Linear and convolution layers fed by packed spikes, on the CPU: products with 0/1 inputs are
// sums of weight rows at the spikes, so the work scales with the firing rate instead of the
// input width (SpikeCLIP's hidden layers fire at a few percent).
//   spike_linear:             y[r, :]  = sum over spikes j of row r of weight_t[j, :]
//   spike_linear_weight_grad: gw_t[j, :] = sum over rows r that spike at j of grad_y[r, :]
//   spike_conv2d:             y[b, :, oh, ow] = sum over the spikes (ci, ih, iw) of the pixel's
//                             receptive field of w[:, ci, kh, kw] (a row of w as [kh, kw, ci, :])
//   spike_conv2d_weight_grad: gw[co, ci, kh, kw] = sum over the spikes (b, ci, h, w) of
//                             gy[b, co, h + p - kh, w + p - kw] (image by image)
// weight_t / gw_t are [n, C_out] (the transpose of nn.Linear's weight). Sums run in ascending
// order of j (forward) or r (weight gradient), in the tensor's dtype (float32 or float64).
// Above kDenseRate spikes per input the rows are unpacked and BLAS takes over: measured here
// (4096 x 384 -> 1536, 2 cores), summing rows wins below about 20% (4.5x at 1%, 1.7x at 10%)
// and loses above it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../spike_pack.h"
#include "cpu_simd.h"
#include "listed_sums.h"

namespace spikeclip {
namespace {

template <typename F>
SC_INLINE void add_row(F* __restrict dst, const F* __restrict row, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += row[i];
}

// Rows r0..r1 of y: the row's spike indices are listed once, then each tile of y's row is summed
// in registers over them (1.3-1.4x the speed of adding whole weight rows into y's row).
template <typename F>
SC_CPU_CLONES void spike_rows_times(const uint8_t* bits, const F* wt, F* y, int64_t r0, int64_t r1,
                                    int64_t n, int64_t cout) {
  const int64_t nb = packed_row_bytes(n);
  std::vector<int32_t> list(static_cast<size_t>(n));
  for (int64_t r = r0; r < r1; ++r) {
    int64_t m = 0;
    for_each_spike(bits + r * nb, n, [&](int64_t j) { list[m++] = static_cast<int32_t>(j); });
    sum_listed_rows<F>(wt, list.data(), m, cout, y + r * cout);
  }
}

template <typename F>
SC_CPU_CLONES void spike_weight_grad_range(const F* gy, const uint8_t* bits, F* gwt, int64_t rows,
                                           int64_t n, int64_t cout, int64_t b0, int64_t b1) {
  const int64_t nb = packed_row_bytes(n);
  std::fill(gwt + b0 * 8 * cout, gwt + std::min(b1 * 8, n) * cout, F(0));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row_bits = bits + r * nb;
    const F* g = gy + r * cout;
    for (int64_t b = b0; b < b1; ++b) {
      const unsigned mask = b == nb - 1 ? last_byte_mask(n) : 0xFFu;  // padding bits ignored
      for (unsigned byte = row_bits[b] & mask; byte; byte &= byte - 1)
        add_row(gwt + (b * 8 + __builtin_ctz(byte)) * cout, g, cout);
    }
  }
}

constexpr double kDenseRate = 0.2;
// The convolution's product (k x k x C_in rows per output pixel): measured here (B 64, the
// paper encoder's 3x3 layers), summing wins up to about 25% firing (1.3-2.3x at 15%, 2-4x at 5%).
// With few inputs per output pixel the pixel's own costs (listing 9 neighbours' spikes, a short
// sum) outweigh the product: at B 512, 28 px, 5-20% firing, C_in 8 sums at 0.2-1.1x the dense
// speed, C_in 16 at 1.0-1.1x, C_in 32 at 2.1-2.6x.
constexpr double kConvProductDenseRate = 0.25;
constexpr int64_t kConvProductMinInputs = 144;
// The convolution's weight gradient sums a row of the zero-padded, channels-last copy of gy per
// spike and tap: that copy costs about as much memory traffic as a dense gradient with k x k x
// C_in = 432 inputs per output. Measured here at 5-30% firing (3x3): with C_in 48..384 (B 64,
// the paper encoder) summing wins 1.6-3.8x up to 20% and breaks even near 30%; with C_in 8..32
// (B 512, 28 px, the tiny encoder) it loses 0.5-0.9x at any rate.
constexpr double kConvDenseRate = 0.2;
constexpr int64_t kConvMinInputs = 432;

double firing_rate(const at::Tensor& bits, int64_t n) {
  const int64_t total = bits.numel();
  const uint8_t* p = bits.data_ptr<uint8_t>();
  int64_t ones = 0;
  int64_t i = 0;
  for (; i + 8 <= total; i += 8) {
    uint64_t word;
    std::memcpy(&word, p + i, 8);
    ones += __builtin_popcountll(word);
  }
  for (; i < total; ++i) ones += __builtin_popcount(p[i]);
  const int64_t nb = packed_row_bytes(n);
  if (n % 8 && nb)  // padding bits past n in each row's last byte are not spikes
    for (int64_t r = nb - 1; r < total; r += nb) ones -= __builtin_popcount(p[r] & ~last_byte_mask(n));
  const int64_t elements = bits.size(0) * n;
  return elements ? static_cast<double>(ones) / static_cast<double>(elements) : 0.0;
}

at::Tensor unpack_to(const at::Tensor& bits, int64_t n, at::ScalarType dtype) {
  at::Tensor x = at::empty({bits.size(0), n}, bits.options().dtype(dtype));
  const int64_t nb = packed_row_bytes(n);
  AT_DISPATCH_FLOATING_TYPES(dtype, "spike_linear_unpack", [&] {
    const uint8_t* src = bits.data_ptr<uint8_t>();
    scalar_t* dst = x.data_ptr<scalar_t>();
    at::parallel_for(0, bits.size(0), 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) unpack_row(src + r * nb, dst + r * n, n);
    });
  });
  return x;
}

void check_bits(const at::Tensor& bits, int64_t n, const char* op) {
  TORCH_CHECK(bits.scalar_type() == at::kByte && bits.dim() == 2 &&
                  bits.size(1) == packed_row_bytes(n),
              op, ": bits must be uint8 [rows, ceil(n / 8)] = [rows, ", packed_row_bytes(n),
              "], got ", bits.sizes(), " ", bits.scalar_type());
}

at::Tensor spike_linear_cpu(const at::Tensor& bits, const at::Tensor& weight_t, int64_t n) {
  check_bits(bits, n, "spike_linear");
  TORCH_CHECK(weight_t.dim() == 2 && weight_t.size(0) == n,
              "spike_linear: weight_t must be [n, C_out] with n = ", n, ", got ", weight_t.sizes());
  const at::Tensor b = bits.contiguous(), w = weight_t.contiguous();
  const int64_t rows = b.size(0), cout = w.size(1);
  if (firing_rate(b, n) > kDenseRate) return at::mm(unpack_to(b, n, w.scalar_type()), w);
  at::Tensor y = at::empty({rows, cout}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "spike_linear", [&] {
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      spike_rows_times<scalar_t>(b.data_ptr<uint8_t>(), w.data_ptr<scalar_t>(),
                                 y.data_ptr<scalar_t>(), r0, r1, n, cout);
    });
  });
  return y;
}

at::Tensor spike_linear_weight_grad_cpu(const at::Tensor& grad_y, const at::Tensor& bits,
                                        int64_t n) {
  check_bits(bits, n, "spike_linear_weight_grad");
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.size(0) == bits.size(0),
              "spike_linear_weight_grad: grad_y must be [rows, C_out] with the rows of bits");
  const at::Tensor b = bits.contiguous(), g = grad_y.contiguous();
  const int64_t rows = b.size(0), cout = g.size(1), nb = packed_row_bytes(n);
  if (firing_rate(b, n) > kDenseRate) return at::mm(unpack_to(b, n, g.scalar_type()).t(), g);
  at::Tensor gwt = at::empty({n, cout}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "spike_linear_weight_grad", [&] {
    // Threads own disjoint ranges of input features (bytes of the packed rows).
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      spike_weight_grad_range<scalar_t>(g.data_ptr<scalar_t>(), b.data_ptr<uint8_t>(),
                                        gwt.data_ptr<scalar_t>(), rows, n, cout, b0, b1);
    });
  });
  return gwt;
}

// ---- 2-d convolution fed by spikes: the product ---------------------------------------------
// Stride 1, 'same' zero padding. The input's spikes are packed per pixel over the channels
// ([B, H, W, ceil(Cin/8)]); each output pixel lists the spikes of its k x k receptive field as
// rows (kh k + kw) Cin + ci of the weight laid out as [kh, kw, Cin, Cout], sums those rows in
// registers (sum_listed_rows), and a row of output pixels is stored channel by channel.

// Packs image b of x [B, Cin, HW] per pixel: bit c % 8 of byte c / 8 of pixel p = x[b, c, p].
// False if x holds anything but 0 and 1.
template <typename F>
bool pack_pixels(const F* x, uint8_t* out, int64_t Cin, int64_t HW, int64_t b) {
  const int64_t nbc = packed_row_bytes(Cin);
  bool ok = true;
  for (int64_t g = 0; g < nbc; ++g) {
    const int64_t c0 = g * 8, cn = std::min<int64_t>(8, Cin - c0);
    const F* xc = x + (b * Cin + c0) * HW;
    uint8_t* o = out + b * HW * nbc + g;
    for (int64_t p = 0; p < HW; ++p) {
      unsigned byte = 0;
      for (int64_t i = 0; i < cn; ++i) {
        const F v = xc[i * HW + p];
        ok &= (v == F(0)) | (v == F(1));
        byte |= static_cast<unsigned>(v != F(0)) << i;
      }
      o[p * nbc] = static_cast<uint8_t>(byte);
    }
  }
  return ok;
}

// Output rows r0..r1 of the B * H rows (b, oh); row: [W, Cout] scratch.
template <typename F>
SC_CPU_CLONES void spike_conv_rows(const uint8_t* pix, const F* wr, F* y, int64_t H, int64_t W,
                                   int64_t Cin, int64_t cout, int64_t k, int64_t pad, int64_t r0,
                                   int64_t r1) {
  const int64_t nbc = packed_row_bytes(Cin);
  std::vector<int32_t> list(static_cast<size_t>(k * k * Cin));
  std::vector<F> row(static_cast<size_t>(W * cout));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / H, oh = r % H;
    for (int64_t ow = 0; ow < W; ++ow) {
      int64_t m = 0;
      for (int64_t kh = 0; kh < k; ++kh) {
        const int64_t ih = oh - pad + kh;
        if (ih < 0 || ih >= H) continue;
        for (int64_t kw = 0; kw < k; ++kw) {
          const int64_t iw = ow - pad + kw;
          if (iw < 0 || iw >= W) continue;
          const int64_t base = (kh * k + kw) * Cin;
          for_each_spike(pix + ((b * H + ih) * W + iw) * nbc, Cin,
                         [&](int64_t c) { list[m++] = static_cast<int32_t>(base + c); });
        }
      }
      sum_listed_rows<F>(wr, list.data(), m, cout, row.data() + ow * cout);
    }
    for (int64_t co = 0; co < cout; ++co) {  // [W, Cout] -> y[b, co, oh, :]
      F* dst = y + ((b * cout + co) * H + oh) * W;
      for (int64_t ow = 0; ow < W; ++ow) dst[ow] = row[ow * cout + co];
    }
  }
}

// Whether x[0:n] holds only 0 and 1.
template <typename F>
SC_CPU_CLONES bool only_spikes(const F* x, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= (x[i] == F(0)) | (x[i] == F(1));
  return ok;
}

at::Tensor spike_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight, int64_t padding) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(1) == x.size(1) &&
                  weight.size(2) == weight.size(3) && 2 * padding == weight.size(2) - 1,
              "spike_conv2d: x [B, C_in, H, W] and weight [C_out, C_in, k, k] with padding "
              "(k - 1) / 2 (stride 1), got ",
              x.sizes(), ", ", weight.sizes(), ", padding ", padding);
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "spike_conv2d: x and weight must both be float32 or float64");
  const at::Tensor xc = x.contiguous();
  const int64_t B = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t cout = weight.size(0), k = weight.size(2), nbc = packed_row_bytes(Cin);
  std::atomic<bool> all_ok{true};
  if (Cin * k * k < kConvProductMinInputs) {  // dense: x is only checked, not packed
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spike_conv2d_check", [&] {
      at::parallel_for(0, xc.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
        if (!only_spikes<scalar_t>(xc.data_ptr<scalar_t>() + i0, i1 - i0)) all_ok = false;
      });
    });
    TORCH_CHECK_VALUE(all_ok, "spike_conv2d: x must hold spikes (only 0 and 1)");
    return at::conv2d(xc, weight, {}, 1, padding);
  }
  at::Tensor pix = at::empty({B * H * W, nbc}, x.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spike_conv2d_pack", [&] {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      bool ok = true;
      for (int64_t b = b0; b < b1; ++b)
        ok &= pack_pixels<scalar_t>(xc.data_ptr<scalar_t>(), pix.data_ptr<uint8_t>(), Cin,
                                    H * W, b);
      if (!ok) all_ok = false;
    });
  });
  TORCH_CHECK_VALUE(all_ok, "spike_conv2d: x must hold spikes (only 0 and 1)");
  if (firing_rate(pix, Cin) > kConvProductDenseRate) return at::conv2d(xc, weight, {}, 1, padding);
  const at::Tensor wr = weight.permute({2, 3, 1, 0}).contiguous();  // [k, k, Cin, Cout]
  at::Tensor y = at::empty({B, cout, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spike_conv2d", [&] {
    at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
      spike_conv_rows<scalar_t>(pix.data_ptr<uint8_t>(), wr.data_ptr<scalar_t>(),
                                y.data_ptr<scalar_t>(), H, W, Cin, cout, k, padding, r0, r1);
    });
  });
  return y;
}

// ---- 2-d convolution fed by spikes: the weight gradient -----------------------------------
// gw[co, ci, kh, kw] = sum over b, oh, ow of gy[b, co, oh, ow] x[b, ci, oh - p + kh, ow - p + kw]
// (stride 1, zero padding p). With gy channels last and zero-padded by p on every side
// ([B, H + 2p, W + 2p, Cout]), the spike (b, ci, h, w) meets at tap (kh, kw) the gy row
// (b, h + 2p - kh, w + 2p - kw): the row (b, h, w) shifted by (2p - kh, 2p - kw). So each
// image's spikes of channel ci are listed once, every tap sums its shifted rows in registers
// (sum_listed_rows; the zero border stands for taps that fall outside), and the image's sums
// are added into gw. Threads own disjoint input channels; an image's gy rows stay in cache
// while the thread's channels read them.

// Image b of gy [B, Cout, H, W] into out [B, H + 2p, W + 2p, Cout] (channels last, zero border).
template <typename F>
void pad_channels_last(const F* gy, F* out, int64_t cout, int64_t H, int64_t W, int64_t p,
                       int64_t b) {
  const int64_t Wp = W + 2 * p, row_len = Wp * cout;
  F* image = out + b * (H + 2 * p) * row_len;
  std::fill(image, image + p * row_len, F(0));
  for (int64_t h = 0; h < H; ++h) {
    F* row = image + (h + p) * row_len;
    std::fill(row, row + p * cout, F(0));
    std::fill(row + (p + W) * cout, row + row_len, F(0));
    for (int64_t co = 0; co < cout; ++co) {
      const F* src = gy + ((b * cout + co) * H + h) * W;
      for (int64_t w = 0; w < W; ++w) row[(p + w) * cout + co] = src[w];
    }
  }
  std::fill(image + (H + p) * row_len, image + (H + 2 * p) * row_len, F(0));
}

template <typename F>
SC_CPU_CLONES void spike_conv_weight_grad_channels(const F* gyp, const uint8_t* bits, F* gwt,
                                                   int64_t B, int64_t Cin, int64_t H,
                                                   int64_t W, int64_t cout, int64_t k,
                                                   int64_t pad, int64_t c0, int64_t c1) {
  const int64_t nb = packed_row_bytes(W), Hp = H + 2 * pad, Wp = W + 2 * pad, taps = k * k;
  std::fill(gwt + c0 * taps * cout, gwt + c1 * taps * cout, F(0));
  std::vector<int32_t> list(static_cast<size_t>(H * W));
  std::vector<F> sums(static_cast<size_t>(taps * cout));
  for (int64_t b = 0; b < B; ++b) {
    const F* image = gyp + b * Hp * Wp * cout;
    for (int64_t ci = c0; ci < c1; ++ci) {
      const uint8_t* channel = bits + (b * Cin + ci) * H * nb;
      int64_t m = 0;
      for (int64_t h = 0; h < H; ++h)
        for_each_spike(channel + h * nb, W,
                       [&](int64_t w) { list[m++] = static_cast<int32_t>(h * Wp + w); });
      if (m == 0) continue;
      for (int64_t kh = 0; kh < k; ++kh)
        for (int64_t kw = 0; kw < k; ++kw)
          sum_listed_rows<F>(image + ((2 * pad - kh) * Wp + 2 * pad - kw) * cout, list.data(), m,
                             cout, sums.data() + (kh * k + kw) * cout);
      add_row(gwt + ci * taps * cout, sums.data(), taps * cout);
    }
  }
}

at::Tensor spike_conv2d_weight_grad_cpu(const at::Tensor& grad_y, const at::Tensor& bits,
                                        int64_t width, int64_t kernel_size, int64_t padding) {
  TORCH_CHECK(grad_y.dim() == 4 && bits.dim() == 4 && bits.scalar_type() == at::kByte,
              "spike_conv2d_weight_grad: grad_y [B, C_out, H, W] and bits [B, C_in, H, "
              "ceil(W/8)] (uint8)");
  const int64_t B = grad_y.size(0), cout = grad_y.size(1), H = grad_y.size(2);
  const int64_t Cin = bits.size(1), k = kernel_size, p = padding;
  TORCH_CHECK(grad_y.size(3) == width && bits.size(0) == B && bits.size(2) == H &&
                  bits.size(3) == packed_row_bytes(width) && 2 * padding == k - 1,
              "spike_conv2d_weight_grad: shapes disagree (stride 1, 'same' padding only)");
  const at::Tensor b = bits.contiguous();
  if (Cin * k * k < kConvMinInputs ||
      firing_rate(b.view({-1, b.size(3)}), width) > kConvDenseRate) {
    const at::Tensor x = unpack_to(b.view({-1, b.size(3)}), width, grad_y.scalar_type())
                             .view({B, Cin, H, width});
    return std::get<1>(at::convolution_backward(
        grad_y, x, at::empty({cout, Cin, k, k}, grad_y.options()), std::nullopt, {1, 1},
        {padding, padding}, {1, 1}, false, {0, 0}, 1, {false, true, false}));
  }
  const at::Tensor gy = grad_y.contiguous();
  at::Tensor gyp = at::empty({B, H + 2 * p, width + 2 * p, cout}, grad_y.options());
  at::Tensor gwt = at::empty({Cin, k, k, cout}, grad_y.options());
  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "spike_conv2d_weight_grad", [&] {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i)
        pad_channels_last<scalar_t>(gy.data_ptr<scalar_t>(), gyp.data_ptr<scalar_t>(), cout, H,
                                    width, p, i);
    });
    at::parallel_for(0, Cin, 1, [&](int64_t c0, int64_t c1) {
      spike_conv_weight_grad_channels<scalar_t>(gyp.data_ptr<scalar_t>(), b.data_ptr<uint8_t>(),
                                                gwt.data_ptr<scalar_t>(), B, Cin, H, width,
                                                cout, k, p, c0, c1);
    });
  });
  return gwt.permute({3, 0, 1, 2}).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("spike_linear", &spike_linear_cpu);
  m.impl("spike_linear_weight_grad", &spike_linear_weight_grad_cpu);
  m.impl("spike_conv2d", &spike_conv2d_cpu);
  m.impl("spike_conv2d_weight_grad", &spike_conv2d_weight_grad_cpu);
}

}  // namespace spikeclip
