// Products of spikes by table lookup, and the LIF that writes its spikes in their packed form:
// the CPU inference path of spike-fed layers (spikeclip/kernels/spike_products/lookup.py).
//
// A product with a 0/1 vector is a sum of weight rows at its ones. Eight inputs packed in a byte
// select one of 256 sums of their eight rows, so a table of those sums per byte of the input
// (tables[byte position][code] = sum over the code's bits j of row 8 g + j) turns the product
// into one row addition per input byte: Cin / 8 additions per output row (per tap of a
// convolution) instead of Cin multiply-adds, whatever the firing rate. The tables are built at
// each call from the weights (256 row additions per input byte: the work of 256 output rows),
// so nothing is cached between calls. The sums run in another order than a dense product's:
// equal up to float rounding.
//
// Packed spikes ("codes") are the layout of pack_spikes: bit j of byte g = spike of channel
// 8 g + j. Convolutions take them per pixel, channels last, with a zero border of one pixel:
// [N, H + 2, W + 2, ceil(Cin / 8)]. Every code is a byte, so every table index is in range
// whatever the codes hold; bits past Cin select zero rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../lif_math.h"
#include "../spike_pack.h"
#include "cpu_simd.h"
#include "dense_handover.h"

namespace spikeclip {
namespace {

constexpr int64_t kCodes = 256;

// Accumulators are generic vectors of kVB bytes, the register width of the level the kernel was
// compiled for (cpu_simd.h's run_widest: 64 with AVX-512, 32 with AVX2, 16 otherwise). Every
// width sums each output in the same order (bias, then the lookups in turn): the same bits.
template <int kVB, typename F>
struct Vec {
  typedef F V __attribute__((vector_size(kVB)));
  static constexpr int64_t kLanes = kVB / static_cast<int64_t>(sizeof(F));
};

// An output tile: up to 4 vectors across, for kTileRows pixels of a convolution at once (AVX2:
// 3, 12 of its 16 registers, measured 3-8% faster than 2 on the demo's stages; else 2).
constexpr int kMaxTileVectors = 4;
template <int kVB>
constexpr int kTileRows = kVB == 32 ? 3 : 2;

// tables[(tap * G + g) * 256 + code][0:Cp] = sum of weight rows at the code's bits, where row
// c of tap k is weight(c, k)[0:Cout] (zero past Cout and for c >= Cin). Each code's sum is the
// sum of the code without its highest bit plus that bit's row.
template <typename F, typename Row>
void build_tables(int64_t taps, int64_t cin, int64_t cout, int64_t cp, Row row, F* tables) {
  const int64_t groups = packed_row_bytes(cin);
  at::parallel_for(0, taps * groups, 1, [&](int64_t i0, int64_t i1) {
    std::vector<F> w(static_cast<size_t>(8 * cp));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t k = i / groups, g = i % groups;
      std::fill(w.begin(), w.end(), F(0));
      for (int64_t j = 0; j < 8 && 8 * g + j < cin; ++j)
        for (int64_t o = 0; o < cout; ++o) w[j * cp + o] = row(8 * g + j, k, o);
      F* t = tables + i * kCodes * cp;
      std::fill(t, t + cp, F(0));
      for (int64_t code = 1; code < kCodes; ++code) {
        const int j = 31 - __builtin_clz(static_cast<unsigned>(code));
        const F* prev = t + (code ^ (1 << j)) * cp;
        F* dst = t + code * cp;
        for (int64_t o = 0; o < cp; ++o) dst[o] = prev[o] + w[j * cp + o];
      }
    }
  });
}

// P output rows of one tile of kV vectors: out_p = bias + sum over k of
// tables[k][base_p[offsets[k]]], base_p = base + p * step.
template <int kVB, int kV, int kP, typename F>
SC_INLINE void lookup_tile(const uint8_t* __restrict base, int64_t step,
                           const int64_t* __restrict offsets, int64_t lookups,
                           const F* __restrict tables, int64_t cp, const F* __restrict bias,
                           F* __restrict out, int64_t out_step, int64_t valid) {
  using V = typename Vec<kVB, F>::V;
  constexpr int64_t L = Vec<kVB, F>::kLanes;
  V acc[kP][kV];
#pragma GCC unroll 8
  for (int p = 0; p < kP; ++p)
    for (int v = 0; v < kV; ++v) std::memcpy(&acc[p][v], bias + v * L, sizeof(V));
  for (int64_t k = 0; k < lookups; ++k) {
    const F* t = tables + k * kCodes * cp;
    const uint8_t* c = base + offsets[k];
#pragma GCC unroll 4
    for (int p = 0; p < kP; ++p) {
      const F* row = t + static_cast<int64_t>(c[p * step]) * cp;
#pragma GCC unroll 8
      for (int v = 0; v < kV; ++v) {
        V x;
        std::memcpy(&x, row + v * L, sizeof(V));
        acc[p][v] += x;
      }
    }
  }
  for (int p = 0; p < kP; ++p) {
    if (valid == kV * L) {
#pragma GCC unroll 8
      for (int v = 0; v < kV; ++v) std::memcpy(out + p * out_step + v * L, &acc[p][v], sizeof(V));
    } else {
      F buf[kV * L];
      std::memcpy(buf, acc[p], sizeof(buf));
      std::memcpy(out + p * out_step, buf, valid * sizeof(F));
    }
  }
}

// All tiles of P output rows (tiles of up to kMaxTileVectors vectors across cp).
template <int kVB, int kP, typename F>
SC_INLINE void lookup_rows(const uint8_t* base, int64_t step, const int64_t* offsets,
                           int64_t lookups, const F* tables, int64_t cp, const F* bias, F* out,
                           int64_t out_step, int64_t cout) {
  constexpr int64_t L = Vec<kVB, F>::kLanes;
  for (int64_t o = 0; o < cp; o += kMaxTileVectors * L) {
    const int64_t vectors = std::min<int64_t>(kMaxTileVectors, (cp - o) / L);
    const int64_t valid = std::min<int64_t>(vectors * L, cout - o);
    const F* t = tables + o;
    switch (vectors) {
#define SC_TILE(n)                                                                           \
  case n:                                                                                    \
    lookup_tile<kVB, n, kP>(base, step, offsets, lookups, t, cp, bias + o, out + o, out_step, \
                            valid);                                                          \
    break;
      SC_TILE(1) SC_TILE(2) SC_TILE(3) SC_TILE(4)
#undef SC_TILE
    }
  }
}

// Row h of image n of a convolution's output, [W, Cout] at dst: each pixel's codes read at the
// tap offsets from its window's corner in the padded codes [N, H + 2, W + 2, G].
template <int kVB, typename F>
SC_INLINE void conv_row(const uint8_t* codes, const int64_t* offsets, int64_t lookups,
                        const F* tables, int64_t cp, const F* bias, int64_t H, int64_t W,
                        int64_t G, int64_t cout, int64_t n, int64_t h, F* dst) {
  const uint8_t* corner = codes + (n * (H + 2) + h) * (W + 2) * G;
  constexpr int kP = kTileRows<kVB>;
  int64_t w = 0;
  for (; w + kP <= W; w += kP)
    lookup_rows<kVB, kP>(corner + w * G, G, offsets, lookups, tables, cp, bias, dst + w * cout,
                         cout, cout);
  for (; w < W; ++w)
    lookup_rows<kVB, 1>(corner + w * G, G, offsets, lookups, tables, cp, bias, dst + w * cout,
                        cout, cout);
}

// Rows r0..r1 of a convolution's output [N, H, W, Cout] (row r = n * H + h).
template <int kVB>
struct ConvRows {
  template <typename F>
  static SC_INLINE void run(const uint8_t* codes, const int64_t* offsets, int64_t lookups,
                            const F* tables, int64_t cp, const F* bias, F* out, int64_t H,
                            int64_t W, int64_t G, int64_t cout, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      conv_row<kVB>(codes, offsets, lookups, tables, cp, bias, H, W, G, cout, r / H, r % H,
                    out + r * W * cout);
  }
};

template <int kVB>
struct LinearRows {
  template <typename F>
  static SC_INLINE void run(const uint8_t* codes, const int64_t* offsets, int64_t G,
                            const F* tables, int64_t cp, const F* bias, F* out, int64_t cout,
                            int64_t r0, int64_t r1) {
    int64_t r = r0;
    for (; r + 2 <= r1; r += 2)
      lookup_rows<kVB, 2>(codes + r * G, G, offsets, G, tables, cp, bias, out + r * cout, cout,
                          cout);
    for (; r < r1; ++r)
      lookup_rows<kVB, 1>(codes + r * G, G, offsets, G, tables, cp, bias, out + r * cout, cout,
                          cout);
  }
};

int64_t padded_width(int64_t cout, at::ScalarType t) {
  const int64_t lanes = t == at::kDouble ? 8 : 16;
  return (cout + lanes - 1) / lanes * lanes;
}

void check_codes(const at::Tensor& codes, int64_t dim, const char* op) {
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.dim() == dim, op,
              ": codes must be a uint8 tensor of ", dim, " dimensions, got ", codes.sizes(), " ",
              codes.scalar_type());
}

void check_bias(const at::Tensor& bias, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0) &&
                  bias.scalar_type() == weight.scalar_type() && bias.device() == weight.device(),
              op, ": bias must be [C_out] = [", weight.size(0), "] of the weight's dtype, got ",
              bias.sizes(), " ", bias.scalar_type());
}

at::Tensor padded_bias(const at::Tensor& bias, int64_t cp) {
  at::Tensor b = at::zeros({cp}, bias.options());
  b.narrow(0, 0, bias.size(0)).copy_(bias);
  return b;
}

// A 3x3 'same' convolution's operands, checked: codes [N, H + 2, W + 2, G] (G = ceil(Cin / 8),
// a zero border), weight [Cout, Cin, 3, 3], bias [Cout]; the tables' space and tap offsets.
struct ConvLookup {
  at::Tensor codes, weight, bias, tables;
  int64_t N, H, W, G, cin, cout, cp;
  std::vector<int64_t> offsets;

  ConvLookup(const at::Tensor& c, const at::Tensor& w, const at::Tensor& b, const char* op) {
    check_codes(c, 4, op);
    TORCH_CHECK(w.dim() == 4 && w.size(2) == 3 && w.size(3) == 3 &&
                    (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble),
                op, ": weight must be float32 or float64 [C_out, C_in, 3, 3], got ", w.sizes(),
                " ", w.scalar_type());
    check_bias(b, w, op);
    cout = w.size(0), cin = w.size(1), G = packed_row_bytes(cin);
    TORCH_CHECK(cin >= 1 && c.size(3) == G && c.size(1) >= 3 && c.size(2) >= 3, op,
                ": codes must be [N, H + 2, W + 2, ceil(C_in / 8)] = [N, H + 2, W + 2, ", G,
                "] with H, W >= 1, got ", c.sizes());
    codes = c.contiguous(), weight = w.contiguous();
    N = codes.size(0), H = codes.size(1) - 2, W = codes.size(2) - 2;
    cp = padded_width(cout, weight.scalar_type());
    bias = padded_bias(b, cp);
    offsets.resize(9 * G);
    for (int64_t k = 0; k < 9; ++k)
      for (int64_t g = 0; g < G; ++g) offsets[k * G + g] = ((k / 3) * (W + 2) + k % 3) * G + g;
  }

  template <typename F>
  const F* build() {
    tables = at::empty({9 * G * kCodes * cp}, weight.options());
    const F* wp = weight.data_ptr<F>();
    const int64_t ci = cin;
    build_tables<F>(9, cin, cout, cp, [&](int64_t c, int64_t k, int64_t o) {
      return wp[(o * ci + c) * 9 + k];
    }, tables.data_ptr<F>());  // fmt: skip
    return tables.data_ptr<F>();
  }
};

at::Tensor lif_spike_codes_cpu(const at::Tensor& x, int64_t T, bool pool, int64_t pad,
                               double tau, double input_scale, double v_th, double v_reset,
                               bool soft_reset, bool decay_input);

// The dense products the lookups replace (their spec), for weights holding inf or NaN
// (dense_handover.h: a table sums rows at the ones only, where the dense product's 0 x inf at
// the zeros is NaN). Bits past C_in are ignored, as the lookups ignore them; the convolution's
// border is the zero padding it must be (F.conv2d's padding=1: no product there). The spikes go
// in channels last, as the codes hold them, so the dense path's layout does not depend on the
// codes' border.
at::Tensor dense_conv3x3(const ConvLookup& p) {  // [N, H, W, Cout]
  const at::Tensor x = unpack_to(p.codes.view({-1, p.G}), p.cin, p.weight.scalar_type())
                           .view({p.N, p.H + 2, p.W + 2, p.cin})
                           .slice(1, 1, p.H + 1)
                           .slice(2, 1, p.W + 1)
                           .permute({0, 3, 1, 2})
                           .contiguous(at::MemoryFormat::ChannelsLast);
  return at::conv2d(x, p.weight, p.bias.narrow(0, 0, p.cout), 1, 1)
      .permute({0, 2, 3, 1})
      .contiguous();
}

// y [N, H, W, Cout] = 3x3 'same' convolution of the spikes in codes [N, H + 2, W + 2, G]
// (G = ceil(Cin / 8), a zero border) by weight [Cout, Cin, 3, 3], plus bias.
at::Tensor spike_conv3x3_lookup_cpu(const at::Tensor& codes, const at::Tensor& weight,
                                    const at::Tensor& bias) {
  ConvLookup p(codes, weight, bias, "spike_conv3x3_lookup");
  at::Tensor y = at::empty({p.N, p.H, p.W, p.cout}, p.weight.options());
  if (y.numel() == 0) return y;
  if (!all_finite(p.weight)) return dense_conv3x3(p);
  AT_DISPATCH_FLOATING_TYPES(p.weight.scalar_type(), "spike_conv3x3_lookup", [&] {
    const scalar_t* tables = p.build<scalar_t>();
    at::parallel_for(0, p.N * p.H, 1, [&](int64_t r0, int64_t r1) {
      run_widest<ConvRows>(p.codes.data_ptr<uint8_t>(), p.offsets.data(), 9 * p.G, tables, p.cp,
                           p.bias.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), p.H, p.W, p.G,
                           p.cout, r0, r1);
    });
  });
  return y;
}

// A linear map's operands, checked: codes [rows, G] (G = ceil(Cin / 8)), weight [Cout, Cin],
// bias [Cout]; the tables' space.
struct LinearLookup {
  at::Tensor codes, weight, bias, tables;
  int64_t rows, G, cin, cout, cp;
  std::vector<int64_t> offsets;

  LinearLookup(const at::Tensor& c, const at::Tensor& w, const at::Tensor& b, const char* op) {
    check_codes(c, 2, op);
    TORCH_CHECK(w.dim() == 2 && w.size(1) >= 1 &&
                    (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble),
                op, ": weight must be float32 or float64 [C_out, C_in], got ", w.sizes(), " ",
                w.scalar_type());
    check_bias(b, w, op);
    cout = w.size(0), cin = w.size(1), G = packed_row_bytes(cin);
    TORCH_CHECK(c.size(1) == G, op, ": codes must be [rows, ceil(C_in / 8)] = [rows, ", G,
                "], got ", c.sizes());
    codes = c.contiguous(), weight = w.contiguous();
    rows = codes.size(0), cp = padded_width(cout, weight.scalar_type());
    bias = padded_bias(b, cp);
    offsets.resize(G);
    for (int64_t g = 0; g < G; ++g) offsets[g] = g;
  }

  template <typename F>
  const F* build() {
    tables = at::empty({G * kCodes * cp}, weight.options());
    const F* wp = weight.data_ptr<F>();
    const int64_t ci = cin;
    build_tables<F>(1, cin, cout, cp, [&](int64_t c, int64_t, int64_t o) {
      return wp[o * ci + c];
    }, tables.data_ptr<F>());  // fmt: skip
    return tables.data_ptr<F>();
  }
};

at::Tensor dense_linear(const LinearLookup& p) {  // [rows, Cout]
  return at::addmm(p.bias.narrow(0, 0, p.cout), unpack_to(p.codes, p.cin, p.weight.scalar_type()),
                   p.weight.t());
}

// y [rows, Cout] = spikes (codes [rows, ceil(Cin / 8)]) times weight [Cout, Cin]^T, plus bias.
at::Tensor spike_linear_lookup_cpu(const at::Tensor& codes, const at::Tensor& weight,
                                   const at::Tensor& bias) {
  LinearLookup p(codes, weight, bias, "spike_linear_lookup");
  at::Tensor y = at::empty({p.rows, p.cout}, p.weight.options());
  if (y.numel() == 0) return y;
  if (!all_finite(p.weight)) return dense_linear(p);
  AT_DISPATCH_FLOATING_TYPES(p.weight.scalar_type(), "spike_linear_lookup", [&] {
    const scalar_t* tables = p.build<scalar_t>();
    at::parallel_for(0, p.rows, 16, [&](int64_t r0, int64_t r1) {
      run_widest<LinearRows>(p.codes.data_ptr<uint8_t>(), p.offsets.data(), p.G, tables, p.cp,
                             p.bias.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), p.cout, r0,
                             r1);
    });
  });
  return y;
}

// ---- the LIF, writing packed spikes -------------------------------------------------------

// m = max(m, v) elementwise as F.max_pool2d takes it: a NaN wins (and stays).
template <typename F>
SC_INLINE void max_into(F* __restrict m, const F* __restrict v, int64_t n) {
  for (int64_t c = 0; c < n; ++c) m[c] = (v[c] > m[c] || v[c] != v[c]) ? v[c] : m[c];
}

// The columns' half of the 3x3 stride-2 max-pool (padding 1) of one row [W, C]: out[j] = max
// over columns 2j - 1 .. 2j + 1 (within the row). With the rows' half after it, the pool's
// value (NaN if the window holds one, else its maximum; the order of the comparisons moves only
// the sign of a zero maximum, which no LIF step tells apart).
template <typename F>
SC_INLINE void pool_columns(const F* __restrict row, int64_t W, int64_t C, int64_t Wo,
                            F* __restrict out) {
  for (int64_t j = 0; j < Wo; ++j) {
    const int64_t x0 = std::max<int64_t>(2 * j - 1, 0), x1 = std::min<int64_t>(2 * j + 1, W - 1);
    std::memcpy(out + j * C, row + x0 * C, C * sizeof(F));
    for (int64_t x = x0 + 1; x <= x1; ++x) max_into(out + j * C, row + x * C, C);
  }
}

// The window rows y0..y1 of pooled row i (3x3, stride 2, padding 1) of H rows.
SC_INLINE int64_t pool_first_row(int64_t i) { return std::max<int64_t>(2 * i - 1, 0); }
SC_INLINE int64_t pool_last_row(int64_t i, int64_t H) { return std::min<int64_t>(2 * i + 1, H - 1); }

// The input of one output row of the LIF at step t, into in [Wo, C]: x's row i, or with kPool
// the pooled row i of x [H, W, C] (cols: room for one row's column maxima); scaled.
template <bool kPool, typename F>
SC_INLINE void lif_input_row(const F* __restrict x, int64_t H, int64_t W, int64_t C, int64_t i,
                             int64_t Wo, F scale, F* __restrict in, F* __restrict cols) {
  if constexpr (!kPool) {
    std::memcpy(in, x + i * W * C, Wo * C * sizeof(F));
  } else {
    const int64_t y0 = pool_first_row(i), y1 = pool_last_row(i, H);
    pool_columns(x + y0 * W * C, W, C, Wo, in);
    for (int64_t y = y0 + 1; y <= y1; ++y) {
      pool_columns(x + y * W * C, W, C, Wo, cols);
      max_into(in, cols, Wo * C);
    }
  }
  for (int64_t e = 0; e < Wo * C; ++e) in[e] *= scale;
}

// One LIF step over n inputs: the membrane v updated, the spikes (0/1) into s.
template <typename F>
SC_INLINE void lif_step(const F* __restrict in, F* __restrict v, F* __restrict s, int64_t n,
                        const LifOptions<F>& o) {
  const F rest = charge_rest(o);
  for (int64_t e = 0; e < n; ++e) {
    const F h = lif_charge(v[e], in[e], o.inv_tau, rest, o.decay_input);
    const F spike = h >= o.v_th ? F(1) : F(0);
    s[e] = spike;
    v[e] = lif_reset(h, spike, o);
  }
}

// The spikes s of n / C pixels of C channels, packed: ceil(C / 8) bytes per pixel.
template <typename F>
SC_INLINE void pack_pixels(const F* __restrict s, int64_t n, int64_t C, uint8_t* __restrict out) {
  const int64_t G = packed_row_bytes(C);
  bool bad = false;  // s holds 0 and 1 only
  for (int64_t j = 0; j < n / C; ++j)
    for (int64_t g = 0; g < G; ++g)
      out[j * G + g] = pack8(s + j * C + 8 * g, std::min<int64_t>(8, C - 8 * g), &bad);
}

template <typename F>
SC_INLINE void lif_step_codes(const F* __restrict in, F* __restrict v, F* __restrict s, int64_t n,
                              int64_t C, const LifOptions<F>& o, uint8_t* __restrict out) {
  lif_step(in, v, s, n, o);
  pack_pixels(s, n, C, out);
}

// Rows r0..r1 (r = b * Ho + i) of the LIF over T steps of x [T', B, H, W, C] (T' = 1: the same
// input at every step), spikes packed into codes [T, B, Ho + 2 pad, Wo + 2 pad, G].
template <typename F, bool kPool>
SC_CPU_CLONES void lif_code_rows(const F* x, uint8_t* codes, int64_t T, bool constant,
                                 int64_t B, int64_t H, int64_t W, int64_t C, int64_t pad,
                                 LifOptions<F> o, F scale, int64_t r0, int64_t r1) {
  const int64_t Ho = kPool ? (H - 1) / 2 + 1 : H, Wo = kPool ? (W - 1) / 2 + 1 : W;
  const int64_t G = packed_row_bytes(C), Hp = Ho + 2 * pad, Wp = Wo + 2 * pad;
  const F rest = charge_rest(o);
  std::vector<F> v(Wo * C), in(Wo * C), s(Wo * C), cols(kPool ? Wo * C : 0);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / Ho, i = r % Ho;
    std::fill(v.begin(), v.end(), rest);
    for (int64_t t = 0; t < T; ++t) {
      if (t == 0 || !constant)
        lif_input_row<kPool>(x + ((constant ? 0 : t) * B + b) * H * W * C, H, W, C, i, Wo,
                             scale, in.data(), cols.data());
      lif_step_codes(in.data(), v.data(), s.data(), Wo * C, C, o,
                     codes + (((t * B + b) * Hp + i + pad) * Wp + pad) * G);
    }
  }
}

// Rows r0..r1 (r = b * Ho + i) of a convolution fused with the LIF after it: at each step t
// the convolution's row i goes through one LIF step, the spikes packed into out [T, B, H + 2,
// W + 2, ceil(Cout / 8)]. Image t * B + b of the codes is step t of sample b.
template <int kVB>
struct ConvLifRows {
  template <typename F>
  static SC_INLINE void run(const uint8_t* codes, const int64_t* offsets, int64_t lookups,
                            const F* tables, int64_t cp, const F* bias, int64_t T, int64_t B,
                            int64_t H, int64_t W, int64_t G, int64_t cout, LifOptions<F> o,
                            F scale, uint8_t* out, int64_t r0, int64_t r1) {
    const int64_t Gout = packed_row_bytes(cout), n = W * cout;
    std::vector<F> row(n), v(n), s(n);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, i = r % H;
      std::fill(v.begin(), v.end(), charge_rest(o));
      for (int64_t t = 0; t < T; ++t) {
        conv_row<kVB>(codes, offsets, lookups, tables, cp, bias, H, W, G, cout, t * B + b, i,
                      row.data());
        for (int64_t e = 0; e < n; ++e) row[e] *= scale;
        lif_step_codes(row.data(), v.data(), s.data(), n, cout, o,
                       out + (((t * B + b) * (H + 2) + i + 1) * (W + 2) + 1) * Gout);
      }
    }
  }
};

// The same with the 3x3 stride-2 max-pool (padding 1) between the convolution and the LIF.
// Task r covers pooled rows i0..i1 (chunks of `chunk`) of sample r / chunks; within it the
// convolution's row 2i + 1, shared by pooled rows i and i + 1, is computed once (its column
// maxima kept per step in carry).
template <int kVB>
struct ConvPoolLifRows {
  template <typename F>
  static SC_INLINE void run(const uint8_t* codes, const int64_t* offsets, int64_t lookups,
                            const F* tables, int64_t cp, const F* bias, int64_t T, int64_t B,
                            int64_t H, int64_t W, int64_t G, int64_t cout, LifOptions<F> o,
                            F scale, uint8_t* out, int64_t chunk, int64_t r0, int64_t r1) {
    const int64_t Ho = (H - 1) / 2 + 1, Wo = (W - 1) / 2 + 1, chunks = (Ho + chunk - 1) / chunk;
    const int64_t Gout = packed_row_bytes(cout), n = Wo * cout;
    std::vector<F> row(W * cout), carry(T * n), mid(n), low(n), v(n), s(n);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / chunks, i0 = (r % chunks) * chunk, i1 = std::min(i0 + chunk, Ho);
      for (int64_t i = i0; i < i1; ++i) {
        std::fill(v.begin(), v.end(), charge_rest(o));
        for (int64_t t = 0; t < T; ++t) {
          const int64_t image = t * B + b;
          F* top = carry.data() + t * n;  // column maxima of row 2i - 1, if there is one
          if (i > 0 && i == i0) {
            conv_row<kVB>(codes, offsets, lookups, tables, cp, bias, H, W, G, cout, image,
                          2 * i - 1, row.data());
            pool_columns(row.data(), W, cout, Wo, top);
          }
          conv_row<kVB>(codes, offsets, lookups, tables, cp, bias, H, W, G, cout, image, 2 * i,
                        row.data());
          pool_columns(row.data(), W, cout, Wo, mid.data());
          const bool below = 2 * i + 1 < H;
          if (below) {
            conv_row<kVB>(codes, offsets, lookups, tables, cp, bias, H, W, G, cout, image,
                          2 * i + 1, row.data());
            pool_columns(row.data(), W, cout, Wo, low.data());
          }
          F* m = i > 0 ? top : mid.data();  // the window's rows in order, first one as the start
          if (i > 0) max_into(m, mid.data(), n);
          if (below) max_into(m, low.data(), n);
          for (int64_t e = 0; e < n; ++e) m[e] *= scale;
          lif_step_codes(m, v.data(), s.data(), n, cout, o,
                         out + (((t * B + b) * (Ho + 2) + i + 1) * (Wo + 2) + 1) * Gout);
          if (below) std::memcpy(top, low.data(), n * sizeof(F));  // the next row's top
        }
      }
    }
  }
};

// Samples m0..m1 of a linear map of codes [T * M, G] (row t * M + m: step t of sample m)
// fused with the LIF after it: T lookup rows per sample (two samples at a time) through the
// LIF, the spikes packed [T * M, ceil(Cout / 8)] (packed), or written as floats in heads
// layout: row r = tb * N + n of [T * M, Cout] (N tokens) to [T * M / N, H, N, Cout / H] (spikes).
template <int kVB>
struct LinearLifRows {
  template <typename F>
  static SC_INLINE void run(const uint8_t* codes, const int64_t* offsets, int64_t G,
                            const F* tables, int64_t cp, const F* bias, int64_t T, int64_t M,
                            int64_t cout, int64_t heads, int64_t tokens, LifOptions<F> o,
                            F scale, F* spikes, uint8_t* packed, int64_t m0, int64_t m1) {
    std::vector<F> row(2 * cout), v(2 * cout), s(2 * cout);
    const int64_t Gout = packed_row_bytes(cout), d = cout / heads;
    for (int64_t m = m0; m < m1; m += 2) {
      const int64_t rows = m + 1 < m1 ? 2 : 1, n = rows * cout;
      std::fill(v.begin(), v.begin() + n, charge_rest(o));
      for (int64_t t = 0; t < T; ++t) {
        const int64_t r = t * M + m;
        if (rows == 2)
          lookup_rows<kVB, 2>(codes + r * G, G, offsets, G, tables, cp, bias, row.data(), cout,
                              cout);
        else
          lookup_rows<kVB, 1>(codes + r * G, G, offsets, G, tables, cp, bias, row.data(), cout,
                              cout);
        for (int64_t e = 0; e < n; ++e) row[e] *= scale;
        lif_step(row.data(), v.data(), s.data(), n, o);
        if (packed) {
          pack_pixels(s.data(), n, cout, packed + r * Gout);
          continue;
        }
        for (int64_t q = 0; q < rows; ++q) {
          const int64_t tb = (r + q) / tokens, token = (r + q) % tokens;
          for (int64_t h = 0; h < heads; ++h)
            std::memcpy(spikes + ((tb * heads + h) * tokens + token) * d,
                        s.data() + q * cout + h * d, d * sizeof(F));
        }
      }
    }
  }
};

template <typename F>
LifOptions<F> forward_options(double tau, double v_th, double v_reset, bool soft_reset,
                              bool decay_input) {
  const F t = static_cast<F>(tau);
  return LifOptions<F>{t, F(1) / t, static_cast<F>(v_th), static_cast<F>(v_reset),
                       soft_reset, decay_input, false, F(0)};
}

// The spikes of the LIF over T steps of the convolution (spike_conv3x3_lookup of codes
// [T * B, H + 2, W + 2, G], image t * B + b = step t of sample b) times input_scale, with pool
// its 3x3 stride-2 max-pool (padding 1) first: codes [T, B, Ho + 2, Wo + 2, ceil(Cout / 8)].
at::Tensor spike_conv3x3_lookup_lif_cpu(const at::Tensor& codes, const at::Tensor& weight,
                                        const at::Tensor& bias, int64_t T, bool pool,
                                        double tau, double input_scale, double v_th,
                                        double v_reset, bool soft_reset, bool decay_input) {
  const char* op = "spike_conv3x3_lookup_lif";
  ConvLookup p(codes, weight, bias, op);
  TORCH_CHECK(T >= 1 && p.N % T == 0, op, ": codes must hold T = ", T,
              " steps of each sample, got ", p.N, " images");
  TORCH_CHECK(tau > 1.0, op, ": tau must be > 1, got ", tau);
  const int64_t B = p.N / T, Ho = pool ? (p.H + 1) / 2 : p.H, Wo = pool ? (p.W + 1) / 2 : p.W;
  at::Tensor out = at::zeros({T, B, Ho + 2, Wo + 2, packed_row_bytes(p.cout)},
                             p.codes.options());
  if (B == 0) return out;
  if (!all_finite(p.weight))
    return lif_spike_codes_cpu(dense_conv3x3(p).view({T, B, p.H, p.W, p.cout}), T, pool, 1, tau,
                               input_scale, v_th, v_reset, soft_reset, decay_input);
  AT_DISPATCH_FLOATING_TYPES(p.weight.scalar_type(), "spike_conv3x3_lookup_lif", [&] {
    using F = scalar_t;
    const F* tables = p.build<F>();
    const auto o = forward_options<F>(tau, v_th, v_reset, soft_reset, decay_input);
    const F scale = static_cast<F>(input_scale);
    // Pooled: a task per sample when there are enough of them, else per pair of rows.
    const int64_t chunk = B >= 8 * at::get_num_threads() ? Ho : 2, chunks = (Ho + chunk - 1) / chunk;
    at::parallel_for(0, B * (pool ? chunks : p.H), 1, [&](int64_t r0, int64_t r1) {
      if (pool)
        run_widest<ConvPoolLifRows>(p.codes.data_ptr<uint8_t>(), p.offsets.data(), 9 * p.G,
                                    tables, p.cp, p.bias.data_ptr<F>(), T, B, p.H, p.W, p.G,
                                    p.cout, o, scale, out.data_ptr<uint8_t>(), chunk, r0, r1);
      else
        run_widest<ConvLifRows>(p.codes.data_ptr<uint8_t>(), p.offsets.data(), 9 * p.G, tables,
                                p.cp, p.bias.data_ptr<F>(), T, B, p.H, p.W, p.G, p.cout, o, scale,
                                out.data_ptr<uint8_t>(), r0, r1);
    });
  });
  return out;
}

// The spikes of the LIF over T steps of the linear map (spike_linear_lookup of codes
// [T * M, G], row t * M + m: step t of sample m) times input_scale: floats [T * M, Cout], or
// with packed the codes [T * M, ceil(Cout / 8)].
at::Tensor spike_linear_lookup_lif_cpu(const at::Tensor& codes, const at::Tensor& weight,
                                       const at::Tensor& bias, int64_t T, bool packed,
                                       int64_t heads, int64_t tokens, double tau,
                                       double input_scale, double v_th, double v_reset,
                                       bool soft_reset, bool decay_input) {
  const char* op = "spike_linear_lookup_lif";
  LinearLookup p(codes, weight, bias, op);
  TORCH_CHECK(T >= 1 && p.rows % T == 0, op, ": codes must hold T = ", T,
              " steps of each sample, got ", p.rows, " rows");
  TORCH_CHECK(tau > 1.0, op, ": tau must be > 1, got ", tau);
  TORCH_CHECK(heads >= 1 && tokens >= 1 && p.cout % heads == 0 && (p.rows / T) % tokens == 0 &&
                  (!packed || heads == 1),
              op, ": heads must divide C_out = ", p.cout, " and tokens the samples (",
              p.rows / T, "), packed spikes take heads = 1; got heads ", heads, ", tokens ",
              tokens);
  const int64_t M = p.rows / T;
  at::Tensor out =
      packed ? at::empty({p.rows, packed_row_bytes(p.cout)}, p.codes.options())
             : at::empty({p.rows / tokens, heads, tokens, p.cout / heads}, p.weight.options());
  if (p.rows == 0) return out;
  if (!all_finite(p.weight)) {
    const at::Tensor spikes =
        lif_spike_codes_cpu(dense_linear(p).view({T, M, 1, 1, p.cout}), T, false, 0, tau,
                            input_scale, v_th, v_reset, soft_reset, decay_input)
            .view({p.rows, packed_row_bytes(p.cout)});
    if (packed) return spikes;
    return unpack_to(spikes, p.cout, p.weight.scalar_type())
        .view({p.rows / tokens, tokens, heads, p.cout / heads})
        .permute({0, 2, 1, 3})
        .contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(p.weight.scalar_type(), "spike_linear_lookup_lif", [&] {
    using F = scalar_t;
    const F* tables = p.build<F>();
    const auto o = forward_options<F>(tau, v_th, v_reset, soft_reset, decay_input);
    const F scale = static_cast<F>(input_scale);
    at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
      run_widest<LinearLifRows>(p.codes.data_ptr<uint8_t>(), p.offsets.data(), p.G, tables,
                                p.cp, p.bias.data_ptr<F>(), T, M, p.cout, heads, tokens, o, scale,
                                packed ? nullptr : out.data_ptr<F>(),
                                packed ? out.data_ptr<uint8_t>() : nullptr, m0, m1);
    });
  });
  return out;
}

// codes [T, B, Ho + 2 pad, Wo + 2 pad, ceil(C / 8)] (border zero) of the spikes of a LIF over
// T steps of x [T or 1, B, H, W, C] (1: the same input at every step) times input_scale, with
// pool the 3x3 stride-2 max-pool (padding 1) of each step's [H, W, C] first.
at::Tensor lif_spike_codes_cpu(const at::Tensor& x, int64_t T, bool pool, int64_t pad,
                               double tau, double input_scale, double v_th, double v_reset,
                               bool soft_reset, bool decay_input) {
  const char* op = "lif_spike_codes";
  TORCH_CHECK(x.dim() == 5 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              op, ": x must be float32 or float64 [T, B, H, W, C], got ", x.sizes(), " ",
              x.scalar_type());
  TORCH_CHECK(T >= 1 && (x.size(0) == T || x.size(0) == 1), op,
              ": x must hold T = ", T, " steps or one, got ", x.size(0));
  TORCH_CHECK(pad == 0 || pad == 1, op, ": pad must be 0 or 1, got ", pad);
  TORCH_CHECK(tau > 1.0, op, ": tau must be > 1, got ", tau);
  const at::Tensor xc = x.contiguous();
  const int64_t B = xc.size(1), H = xc.size(2), W = xc.size(3), C = xc.size(4);
  const int64_t Ho = pool ? (H + 1) / 2 : H, Wo = pool ? (W + 1) / 2 : W;
  at::Tensor codes =
      at::zeros({T, B, Ho + 2 * pad, Wo + 2 * pad, packed_row_bytes(C)}, xc.options().dtype(at::kByte));
  if (B == 0 || H == 0 || W == 0 || C == 0) return codes;
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "lif_spike_codes", [&] {
    using F = scalar_t;
    const auto o = forward_options<F>(tau, v_th, v_reset, soft_reset, decay_input);
    const F scale = static_cast<F>(input_scale);
    at::parallel_for(0, B * Ho, 1, [&](int64_t r0, int64_t r1) {
      if (pool)
        lif_code_rows<F, true>(xc.data_ptr<F>(), codes.data_ptr<uint8_t>(), T, x.size(0) == 1,
                               B, H, W, C, pad, o, scale, r0, r1);
      else
        lif_code_rows<F, false>(xc.data_ptr<F>(), codes.data_ptr<uint8_t>(), T, x.size(0) == 1,
                                B, H, W, C, pad, o, scale, r0, r1);
    });
  });
  return codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("spike_conv3x3_lookup", &spike_conv3x3_lookup_cpu);
  m.impl("spike_linear_lookup", &spike_linear_lookup_cpu);
  m.impl("lif_spike_codes", &lif_spike_codes_cpu);
  m.impl("spike_conv3x3_lookup_lif", &spike_conv3x3_lookup_lif_cpu);
  m.impl("spike_linear_lookup_lif", &spike_linear_lookup_lif_cpu);
}

}  // namespace spikeclip
