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
// and loses above it. BLAS also takes a weight (product) or grad_y (weight gradient) holding inf
// or NaN: the dense product meets them at the zeros too (dense_handover.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../spike_pack.h"
#include "cpu_simd.h"
#include "dense_handover.h"
#include "listed_sums.h"
#include "transpose8.h"
#include "winograd_cpu.h"

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
// The convolution's product and weight gradient (k x k row additions per spike, plus one pass
// over the codes and the output or gy) against oneDNN's dense ones, measured on a 2-core AMD
// EPYC (AVX2), 2026-12-05 (x [B, C_in, H, W] at 2-40% iid firing): with k x k x C_in from 72
// (C_in 8, B 512, 28 px) to 3456 (384 -> 384 @ 8 px, B 64) and 1x1 ones with 128-512 inputs
// (B 64, 64 tokens). The weight gradient wins up to about 20% firing (1.5-4x at 5%), breaks
// even near 20-30% by shape, and loses above. The k x k product (band to y by register
// transposes) wins up to 30% at every shape tried (1.07-1.41x at 30%, 16 -> 32 @ 32 px to
// 384 -> 384 @ 8 px; 0.88-1.29x at 35%); the 1x1 product up to about 20% (0.91-1.12x at 30%).
// With fewer inputs per output the pixel's own costs outweigh the sums.
constexpr double kConvDenseRate = 0.2;         // the weight gradient, and the 1x1 product
constexpr double kConvProductDenseRate = 0.3;  // the k x k product, k > 1
constexpr int64_t kConvMinInputs = 72;
constexpr int64_t kBandBytes = 64 << 10;
constexpr int64_t kWeightGradChunks = 16;
// The scatter weight gradient while gw fits here (a 2-core EPYC's L2 is 512 KiB, and the scatter
// beat the gather up to 96 -> 192 3x3, 663 KB; above, at 192 -> 384 and 384 -> 384, it lost).
constexpr int64_t kScatterGradBytes = 1 << 20;

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
  // BLAS past the rate the sums pay, and for weights with inf or NaN (dense_handover.h)
  if (firing_rate(b, n) > kDenseRate || !all_finite(w))
    return at::mm(unpack_to(b, n, w.scalar_type()), w);
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
  // BLAS past the rate the sums pay, and for a grad_y with inf or NaN (dense_handover.h)
  if (firing_rate(b, n) > kDenseRate || !all_finite(g))
    return at::mm(unpack_to(b, n, g.scalar_type()).t(), g);
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
// ([B, H, W, ceil(Cin/8)]). The output is made band by band (a few rows of one image, kept in
// a channels-last scratch near the core): each input pixel that reaches the band lists its
// spikes once, and for each tap that lands in the band their rows of the weight (laid out as
// [kh, kw, Cin, Cout]) are summed in registers and added at the output pixel the tap reaches
// (sum_listed_rows<kAdd>). The scratch has a border of p columns on each side, where the taps
// past the image's edge land and are dropped. Work: one pass over the input's codes (each
// pixel listed once per band it reaches) and k x k row sums per pixel that spikes, none for a
// pixel that does not: it scales with the firing rate. The band is then stored channel by
// channel into y [B, Cout, H, W].

// Packs image b of x [B, Cin, HW] per pixel: bit c % 8 of byte c / 8 of pixel p = x[b, c, p].
// False if x holds anything but 0 and 1. Blocks of kPackBlock pixels: each channel's run of
// them is read contiguously (vectorised) into the block's bytes, which then go out strided.
constexpr int64_t kPackBlock = 64;
template <typename F>
SC_CPU_CLONES bool pack_pixels(const F* __restrict x, uint8_t* __restrict out, int64_t Cin,
                               int64_t HW, int64_t b) {
  const int64_t nbc = packed_row_bytes(Cin);
  int bad = 0;
  for (int64_t g = 0; g < nbc; ++g) {
    const int64_t c0 = g * 8, cn = std::min<int64_t>(8, Cin - c0);
    const F* xc = x + (b * Cin + c0) * HW;
    uint8_t* o = out + b * HW * nbc + g;
    for (int64_t p0 = 0; p0 < HW; p0 += kPackBlock) {
      const int64_t n = std::min(kPackBlock, HW - p0);
      uint32_t bytes[kPackBlock] = {};
      for (int64_t i = 0; i < cn; ++i) {
        const F* v = xc + i * HW + p0;
        for (int64_t q = 0; q < n; ++q) {
          bad |= (v[q] != F(0)) & (v[q] != F(1));
          bytes[q] |= static_cast<uint32_t>(v[q] != F(0)) << i;
        }
      }
      for (int64_t q = 0; q < n; ++q) o[(p0 + q) * nbc] = static_cast<uint8_t>(bytes[q]);
    }
  }
  return !bad;
}

struct ConvShape {
  int64_t H, W, Cin, cout, k, pad;
  int64_t padded_width() const { return W + 2 * pad; }
};

// Output rows r0..r1 of image b; band: [r1 - r0, W + 2 pad, Cout] scratch, list: Cin entries.
template <typename F>
SC_CPU_CLONES void spike_conv_band(const uint8_t* pix, const F* wr, F* y, F* band, int32_t* list,
                                   const ConvShape& s, int64_t b, int64_t r0, int64_t r1) {
  const int64_t nbc = packed_row_bytes(s.Cin), Wp = s.padded_width(), cout = s.cout;
  std::fill(band, band + (r1 - r0) * Wp * cout, F(0));
  const int64_t ih0 = std::max<int64_t>(0, r0 - s.pad), ih1 = std::min(s.H, r1 + s.pad);
  for (int64_t ih = ih0; ih < ih1; ++ih) {
    // the taps kh with oh = ih + pad - kh in [r0, r1)
    const int64_t kh0 = std::max<int64_t>(0, ih + s.pad - r1 + 1);
    const int64_t kh1 = std::min(s.k, ih + s.pad - r0 + 1);
    for (int64_t iw = 0; iw < s.W; ++iw) {
      int64_t m = 0;
      for_each_spike(pix + ((b * s.H + ih) * s.W + iw) * nbc, s.Cin,
                     [&](int64_t c) { list[m++] = static_cast<int32_t>(c); });
      if (m == 0) continue;
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        F* row = band + (ih + s.pad - kh - r0) * Wp * cout;
        for (int64_t kw = 0; kw < s.k; ++kw)  // ow + pad = iw + 2 pad - kw, in [0, Wp)
          sum_listed_rows<F, true>(wr + (kh * s.k + kw) * s.Cin * cout, list, m, cout,
                                   row + (iw + 2 * s.pad - kw) * cout);
      }
    }
  }
  for (int64_t oh = r0; oh < r1; ++oh)  // [rows, W, Cout] -> y[b, :, r0:r1, :]
    transpose_into(band + ((oh - r0) * Wp + s.pad) * cout, cout, s.W, cout,
                   y + (b * cout * s.H + oh) * s.W, s.H * s.W);
}

// x [B, Cin, H, W] packed per pixel: codes [B, H, W, ceil(Cin / 8)]; a ValueError if x holds
// anything but 0 and 1.
at::Tensor pack_pixel_codes(const at::Tensor& xc, const char* op) {
  const int64_t B = xc.size(0), Cin = xc.size(1), H = xc.size(2), W = xc.size(3);
  at::Tensor codes = at::empty({B, H, W, packed_row_bytes(Cin)}, xc.options().dtype(at::kByte));
  std::atomic<bool> all_ok{true};
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "spike_conv2d_pack", [&] {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      bool ok = true;
      for (int64_t b = b0; b < b1; ++b)
        ok &= pack_pixels<scalar_t>(xc.data_ptr<scalar_t>(), codes.data_ptr<uint8_t>(), Cin,
                                    H * W, b);
      if (!ok) all_ok = false;
    });
  });
  TORCH_CHECK_VALUE(all_ok, op, ": x must hold spikes (only 0 and 1)");
  return codes;
}

// codes [B, H, W, ceil(Cin / 8)] back to 0/1 floats [B, Cin, H, W] (for the dense paths).
at::Tensor unpack_pixel_codes(const at::Tensor& codes, int64_t Cin, at::ScalarType dtype) {
  const int64_t B = codes.size(0), HW = codes.size(1) * codes.size(2);
  return unpack_to(codes.reshape({B * HW, codes.size(3)}), Cin, dtype)
      .view({B, codes.size(1), codes.size(2), Cin})
      .permute({0, 3, 1, 2})
      .contiguous();
}

std::tuple<at::Tensor, at::Tensor> spike_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                    int64_t padding) {
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
  const int64_t cout = weight.size(0), k = weight.size(2);
  const at::Tensor codes = pack_pixel_codes(xc, "spike_conv2d");
  const double dense_rate = k > 1 ? kConvProductDenseRate : kConvDenseRate;
  // oneDNN's product past the rates the sums pay, and for weights with inf or NaN (a dense
  // product meets them at the zeros too: 0 x inf is NaN there, and the sums skip the zeros)
  if (xc.numel() == 0 || cout == 0 || Cin * k * k < kConvMinInputs ||
      firing_rate(codes.view({-1, codes.size(3)}), Cin) > dense_rate ||
      !all_finite(weight))
    return {k == 3 ? conv3x3_dense(xc, weight) : at::conv2d(xc, weight, {}, 1, padding), codes};
  const at::Tensor wr = weight.permute({2, 3, 1, 0}).contiguous();  // [k, k, Cin, Cout]
  at::Tensor y = at::empty({B, cout, H, W}, x.options());
  const ConvShape shape{H, W, Cin, cout, k, padding};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spike_conv2d", [&] {
    // bands of about kBandBytes of scratch: the rows they add into stay in L1 / L2
    const int64_t row_bytes = shape.padded_width() * cout * int64_t{sizeof(scalar_t)};
    const int64_t rows = std::clamp<int64_t>(kBandBytes / std::max<int64_t>(row_bytes, 1), 1, H);
    const int64_t bands = (H + rows - 1) / rows;
    at::parallel_for(0, B * bands, 1, [&](int64_t u0, int64_t u1) {
      std::vector<scalar_t> band(static_cast<size_t>(rows * shape.padded_width() * cout));
      std::vector<int32_t> list(static_cast<size_t>(Cin));
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t b = u / bands, r0 = (u % bands) * rows;
        spike_conv_band<scalar_t>(codes.data_ptr<uint8_t>(), wr.data_ptr<scalar_t>(),
                                  y.data_ptr<scalar_t>(), band.data(), list.data(), shape, b, r0,
                                  std::min(H, r0 + rows));
      }
    });
  });
  return {y, codes};
}

// ---- 2-d convolution fed by spikes: the weight gradient -----------------------------------
// gw[co, ci, kh, kw] = sum over b, oh, ow of gy[b, co, oh, ow] x[b, ci, oh - p + kh, ow - p + kw]
// (stride 1, zero padding p): the spike (b, ci, ih, iw) meets at tap (kh, kw) the gradient of
// output pixel (ih + p - kh, iw + p - kw). gy is copied image by image channels last with a zero
// border of p ([H + 2p, W + 2p, Cout]; taps past the edge read the border). Two ways, by the
// size of the gradient:
// - scatter (gw up to kScatterGradBytes, near the core): each pixel that spikes lists its
//   channels once; per tap, the gy row it meets is held in registers and added into the rows
//   [ci, kh, kw, :] of its listed channels (add_to_listed_rows): k x k row additions per spike.
//   The images are split into a fixed number of chunks, each summed into its own gradient, and
//   the chunks' gradients are added in order.
// - gather (larger gw): threads own disjoint channels; each image's spikes of a channel are
//   listed, and each tap sums the gy rows at them in registers (sum_listed_rows), then the sums
//   are added into the channel's rows: gw is written once per channel and image.
// Either way each element's sum runs in an order fixed by the shapes: the same bits on any
// number of threads.

// Image gy [Cout, H, W] into out [H + 2p, W + 2p, Cout] (channels last, zero border); whether
// every value copied is finite.
template <typename F>
SC_CPU_CLONES bool pad_channels_last(const F* __restrict gy, F* __restrict out, int64_t cout,
                                     int64_t H, int64_t W, int64_t p) {
  const bool finite = all_finite(gy, cout * H * W);
  const int64_t Wp = W + 2 * p, row_len = Wp * cout;
  std::fill(out, out + p * row_len, F(0));
  for (int64_t h = 0; h < H; ++h) {
    F* row = out + (h + p) * row_len;
    std::fill(row, row + p * cout, F(0));
    std::fill(row + (p + W) * cout, row + row_len, F(0));
    transpose_into(gy + h * W, H * W, cout, W, row + p * cout, cout);
  }
  std::fill(out + (H + p) * row_len, out + (H + 2 * p) * row_len, F(0));
  return finite;
}

// Images b0..b1 into gwt [Cin, k, k, Cout] (zeroed here); gyp: [H + 2p, W + 2p, Cout] scratch,
// list: Cin entries. False (and gwt unfinished) at an image whose gy is not all finite.
template <typename F>
SC_CPU_CLONES bool spike_conv_weight_grad_images(const F* gy, const uint8_t* pix, F* gwt, F* gyp,
                                                 int32_t* list, const ConvShape& s, int64_t b0,
                                                 int64_t b1) {
  const int64_t nbc = packed_row_bytes(s.Cin), Wp = s.padded_width(), taps = s.k * s.k;
  const int64_t cout = s.cout, stride = taps * cout;
  std::fill(gwt, gwt + s.Cin * stride, F(0));
  for (int64_t b = b0; b < b1; ++b) {
    if (!pad_channels_last(gy + b * cout * s.H * s.W, gyp, cout, s.H, s.W, s.pad)) return false;
    for (int64_t ih = 0; ih < s.H; ++ih) {
      for (int64_t iw = 0; iw < s.W; ++iw) {
        int64_t m = 0;
        for_each_spike(pix + ((b * s.H + ih) * s.W + iw) * nbc, s.Cin,
                       [&](int64_t c) { list[m++] = static_cast<int32_t>(c); });
        if (m == 0) continue;
        for (int64_t kh = 0; kh < s.k; ++kh)
          for (int64_t kw = 0; kw < s.k; ++kw)
            add_to_listed_rows<F>(gwt + (kh * s.k + kw) * cout, stride, list, m,
                                  gyp + ((ih + 2 * s.pad - kh) * Wp + iw + 2 * s.pad - kw) * cout,
                                  cout);
      }
    }
  }
  return true;
}

// Channels c0..c1 over all images into gwt [Cin, k, k, Cout] (their rows zeroed here); gyp: gy
// of every image channels last with the border, [B, H + 2p, W + 2p, Cout].
template <typename F>
SC_CPU_CLONES void spike_conv_weight_grad_channels(const F* gyp, const uint8_t* pix, F* gwt,
                                                   const ConvShape& s, int64_t B, int64_t c0,
                                                   int64_t c1) {
  const int64_t nbc = packed_row_bytes(s.Cin), HW = s.H * s.W, Wp = s.padded_width();
  const int64_t taps = s.k * s.k, cout = s.cout;
  std::fill(gwt + c0 * taps * cout, gwt + c1 * taps * cout, F(0));
  std::vector<int32_t> lists(static_cast<size_t>(8 * HW));  // a group's 8 channels' pixels
  std::vector<F> sums(static_cast<size_t>(taps * cout));
  for (int64_t b = 0; b < B; ++b) {
    const F* image = gyp + b * (s.H + 2 * s.pad) * Wp * cout;
    for (int64_t g = c0 / 8; g * 8 < c1; ++g) {  // c0 is a multiple of 8
      int64_t count[8] = {};
      const unsigned mask = (1u << std::min<int64_t>(8, c1 - g * 8)) - 1u;  // channels < c1
      for (int64_t q = 0; q < HW; ++q) {
        const int32_t at = static_cast<int32_t>((q / s.W) * Wp + q % s.W);
        for (unsigned byte = pix[(b * HW + q) * nbc + g] & mask; byte; byte &= byte - 1) {
          const int j = __builtin_ctz(byte);
          lists[j * HW + count[j]++] = at;
        }
      }
      for (int64_t j = 0; j < 8; ++j) {
        if (count[j] == 0) continue;
        for (int64_t kh = 0; kh < s.k; ++kh)
          for (int64_t kw = 0; kw < s.k; ++kw)
            sum_listed_rows<F>(image + ((2 * s.pad - kh) * Wp + 2 * s.pad - kw) * cout,
                               lists.data() + j * HW, count[j], cout,
                               sums.data() + (kh * s.k + kw) * cout);
        add_row(gwt + (g * 8 + j) * taps * cout, sums.data(), taps * cout);
      }
    }
  }
}

// dL/dx [B, C_in, H, W] of the stride-1 'same' convolution by weight [C_out, C_in, k, k], from
// grad_y [B, C_out, H, W]: the transposed convolution (x's values do not enter). For 3x3 kernels
// the convolution of grad_y by the kernels flipped, in and out channels swapped, by Winograd
// where it pays; else oneDNN's backward (a little faster than its forward of the flipped
// kernels here) given a never written stand-in for x (its expanded stand-in from conv2d_input
// took 1.2-1.4x longer on the AVX2 EPYC).
at::Tensor spike_conv2d_input_grad_cpu(const at::Tensor& grad_y, const at::Tensor& weight,
                                       int64_t padding) {
  TORCH_CHECK(grad_y.dim() == 4 && weight.dim() == 4 && weight.size(0) == grad_y.size(1) &&
                  weight.size(2) == weight.size(3) && 2 * padding == weight.size(2) - 1,
              "spike_conv2d_input_grad: grad_y [B, C_out, H, W] and weight [C_out, C_in, k, k] "
              "with padding (k - 1) / 2, got ",
              grad_y.sizes(), ", ", weight.sizes(), ", padding ", padding);
  TORCH_CHECK(grad_y.scalar_type() == weight.scalar_type() &&
                  (grad_y.scalar_type() == at::kFloat || grad_y.scalar_type() == at::kDouble),
              "spike_conv2d_input_grad: grad_y and weight must both be float32 or float64");
  if (weight.size(2) == 3 &&
      winograd_pays(weight.size(0), weight.size(1), grad_y.size(2), grad_y.size(3)))
    return conv3x3_winograd_cpu(grad_y, weight.flip({2, 3}).transpose(0, 1));
  const at::Tensor stand_in = grad_y.new_empty(
      {grad_y.size(0), weight.size(1), grad_y.size(2), grad_y.size(3)});
  return std::get<0>(at::convolution_backward(grad_y, stand_in, weight, std::nullopt, {1, 1},
                                              {padding, padding}, {1, 1}, false, {0, 0}, 1,
                                              {true, false, false}));
}

at::Tensor spike_conv2d_weight_grad_cpu(const at::Tensor& grad_y, const at::Tensor& codes,
                                        int64_t channels, int64_t kernel_size, int64_t padding) {
  TORCH_CHECK(grad_y.dim() == 4 && codes.dim() == 4 && codes.scalar_type() == at::kByte,
              "spike_conv2d_weight_grad: grad_y [B, C_out, H, W] and codes [B, H, W, "
              "ceil(C_in/8)] (uint8)");
  TORCH_CHECK(grad_y.scalar_type() == at::kFloat || grad_y.scalar_type() == at::kDouble,
              "spike_conv2d_weight_grad: grad_y must be float32 or float64");
  const int64_t B = grad_y.size(0), cout = grad_y.size(1), H = grad_y.size(2), W = grad_y.size(3);
  const int64_t Cin = channels, k = kernel_size, p = padding;
  TORCH_CHECK(channels >= 0 && k >= 1 && codes.size(0) == B && codes.size(1) == H &&
                  codes.size(2) == W && codes.size(3) == packed_row_bytes(Cin) && 2 * p == k - 1,
              "spike_conv2d_weight_grad: shapes disagree (stride 1, 'same' padding only): "
              "grad_y ", grad_y.sizes(), ", codes ", codes.sizes(), ", C_in ", channels,
              ", kernel ", kernel_size, ", padding ", padding);
  const at::Tensor pix = codes.contiguous();
  // The dense gradient (Winograd's for 3x3 kernels where it pays, else oneDNN's): past the rates
  // the sums pay, and where grad_y holds inf or NaN (a dense product meets them at the zeros
  // too: 0 x inf is NaN there, and the sums skip the zeros)
  const auto dense = [&] {
    const at::Tensor x = unpack_pixel_codes(pix, Cin, grad_y.scalar_type());
    if (k == 3 && winograd_pays(Cin, cout, H, W))
      return conv3x3_winograd_weight_grad_cpu(x, grad_y);
    return std::get<1>(at::convolution_backward(
        grad_y, x, at::empty({cout, Cin, k, k}, grad_y.options()), std::nullopt, {1, 1},
        {padding, padding}, {1, 1}, false, {0, 0}, 1, {false, true, false}));
  };
  if (B * H * W == 0 || cout == 0 || Cin * k * k < kConvMinInputs ||
      firing_rate(pix.view({-1, pix.size(3)}), Cin) > kConvDenseRate)
    return dense();
  const at::Tensor gy = grad_y.contiguous();
  std::atomic<bool> finite{true};
  const ConvShape shape{H, W, Cin, cout, k, p};
  const int64_t size = Cin * k * k * cout;
  if (size * grad_y.element_size() > kScatterGradBytes) {
    at::Tensor gyp = at::empty({B, H + 2 * p, shape.padded_width(), cout}, grad_y.options());
    at::Tensor gwt = at::empty({Cin, k, k, cout}, grad_y.options());
    AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "spike_conv2d_weight_grad", [&] {
      const int64_t image = (H + 2 * p) * shape.padded_width() * cout;
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          if (!pad_channels_last<scalar_t>(gy.data_ptr<scalar_t>() + b * cout * H * W,
                                           gyp.data_ptr<scalar_t>() + b * image, cout, H, W, p))
            finite = false;
      });
      if (!finite) return;
      at::parallel_for(0, packed_row_bytes(Cin), 1, [&](int64_t g0, int64_t g1) {
        spike_conv_weight_grad_channels<scalar_t>(gyp.data_ptr<scalar_t>(),
                                                  pix.data_ptr<uint8_t>(),
                                                  gwt.data_ptr<scalar_t>(), shape, B, g0 * 8,
                                                  std::min(Cin, g1 * 8));
      });
    });
    return finite ? gwt.permute({3, 0, 1, 2}).contiguous() : dense();
  }
  const int64_t chunks = std::min<int64_t>(B, kWeightGradChunks);
  at::Tensor partial = at::empty({std::max<int64_t>(chunks, 1), size}, grad_y.options());
  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "spike_conv2d_weight_grad", [&] {
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      std::vector<scalar_t> gyp(static_cast<size_t>((H + 2 * p) * shape.padded_width() * cout));
      std::vector<int32_t> list(static_cast<size_t>(Cin));
      for (int64_t c = c0; c < c1 && finite; ++c)
        if (!spike_conv_weight_grad_images<scalar_t>(
                gy.data_ptr<scalar_t>(), pix.data_ptr<uint8_t>(),
                partial.data_ptr<scalar_t>() + c * size, gyp.data(), list.data(), shape,
                B * c / chunks, B * (c + 1) / chunks))
          finite = false;
    });
  });
  if (!finite) return dense();
  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "spike_conv2d_weight_grad_sum", [&] {
    scalar_t* acc = partial.data_ptr<scalar_t>();  // chunk 0 += chunk 1, 2, ... in order
    at::parallel_for(0, size, 1 << 12, [&](int64_t i0, int64_t i1) {
      for (int64_t c = 1; c < chunks; ++c) add_row(acc + i0, acc + c * size + i0, i1 - i0);
    });
  });
  return partial[0].view({Cin, k, k, cout}).permute({3, 0, 1, 2}).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("spike_linear", &spike_linear_cpu);
  m.impl("spike_linear_weight_grad", &spike_linear_weight_grad_cpu);
  m.impl("spike_conv2d", &spike_conv2d_cpu);
  m.impl("spike_conv2d_weight_grad", &spike_conv2d_weight_grad_cpu);
  m.impl("spike_conv2d_input_grad", &spike_conv2d_input_grad_cpu);
}

}  // namespace spikeclip
