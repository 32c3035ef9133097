// 3x3 convolutions (stride 1, padding 1: F.conv2d(x, w, padding=1)) by Winograd's minimal
// filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
// 2016): each 4x4 block of outputs is A^T [(G g G^T) . (B^T d B)] A from its 6x6 block of
// inputs d, so the multiply-adds become 36 matrix products (one per point of the 6x6 transform
// domain) over channels: V[xi] [tiles, C_in] @ U[xi] [C_in, C_out], 4x fewer multiply-adds than
// the direct convolution's 9 per output and input channel. The products go to at::bmm (BLAS
// speed); the transforms are adds and small multiples, vectorised over 8 channels (4 in double).
//
// Spike-fed convolutions use it for their dense 3x3 work (winograd_cpu.h): the input gradient
// (a 3x3 convolution of grad_y by the flipped, transposed kernels), which no firing rate makes
// sparse, and the product and the weight gradient (the forward's adjoint, below) past the rates
// where summing stops paying. Tiles go a chunk of tile
// rows at a time (V about 4 MiB) so that V and M stay in the last-level cache and are
// allocated once per call. The transforms' constants (1/4, 1/6, 1/24, 2, 4, 8) cost float32
// about 1e-5 of the output's scale where a direct sum costs 1e-6; float64 stays near 1e-15.
//
//   conv3x3_winograd(x [N, C_in, H, W], w [C_out, C_in, 3, 3]) -> y [N, C_out, H, W]
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_simd.h"
#include "dense_handover.h"
#include "listed_sums.h"
#include "transpose8.h"
#include "winograd_cpu.h"

namespace spikeclip {
namespace {

// The 6-point transforms of a row (or column) of vectors: B^T d (input) and A^T m (output).
template <typename F>
struct InputPoints {
  using V = Vec32<F>;
  SC_INLINE void operator()(const V d[6], V t[6]) const {
    const F two = 2, four = 4, five = 5;
    t[0] = four * d[0] - five * d[2] + d[4];
    t[1] = d[3] + d[4] - four * (d[1] + d[2]);
    t[2] = four * (d[1] - d[2]) - d[3] + d[4];
    t[3] = two * (d[3] - d[1]) - d[2] + d[4];
    t[4] = two * (d[1] - d[3]) - d[2] + d[4];
    t[5] = four * d[1] - five * d[3] + d[5];
  }
};

template <typename F>
struct OutputPoints {
  using V = Vec32<F>;
  SC_INLINE void operator()(const V m[6], V o[4]) const {
    const F two = 2, four = 4, eight = 8;
    const V s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    o[0] = m[0] + s12 + s34;
    o[1] = d12 + two * d34;
    o[2] = s12 + four * s34;
    o[3] = d12 + eight * d34 + m[5];
  }
};

// A g of a row (or column) of 4 vectors (A = (A^T)^T, 6 x 4): the weight gradient's transform
// of grad_y, the adjoint of OutputPoints.
template <typename F>
struct GradPoints {
  using V = Vec32<F>;
  SC_INLINE void operator()(const V g[4], V t[6]) const {
    const F two = 2, four = 4, eight = 8;
    const V s02 = g[0] + g[2], s13 = g[1] + g[3];
    const V f02 = g[0] + four * g[2], f13 = two * g[1] + eight * g[3];
    t[0] = g[0];
    t[1] = s02 + s13;
    t[2] = s02 - s13;
    t[3] = f02 + f13;
    t[4] = f02 - f13;
    t[5] = g[3];
  }
};

// out = T block T^T for the point transform T (In points to Out, `points`): along each row of
// the block, then along each column; out[i][j] is point (i, j).
template <int In, int Out, typename V, typename Points>
SC_INLINE void transform_block(const V block[In][In], V out[Out][Out], Points points) {
  V half[In][Out];
  for (int a = 0; a < In; ++a) points(block[a], half[a]);
  for (int j = 0; j < Out; ++j) {
    V col[In], res[Out];
    for (int a = 0; a < In; ++a) col[a] = half[a][j];
    points(col, res);
    for (int i = 0; i < Out; ++i) out[i][j] = res[i];
  }
}

// Rows h0..h1 of the planes [C, H, W] of one image into channels-last rows: row h to
// rows + (h - h0) * row_len, pixel w at w * stride, channel c at c. 8 channels' planes through
// all the rows at a time, so each plane is read front to back (a row of every plane at a time
// ran at a third of this speed, the loads waiting on memory).
template <typename F>
SC_INLINE void planes_to_rows(const F* planes, int64_t C, int64_t H, int64_t W, int64_t h0,
                              int64_t h1, F* rows, int64_t row_len, int64_t stride) {
  for (int64_t c = 0; c < C; c += 8)
    for (int64_t h = h0; h < h1; ++h)
      transpose_into(planes + c * H * W + h * W, H * W, std::min<int64_t>(8, C - c), W,
                     rows + (h - h0) * row_len + c, stride);
}

// The inverse: channels-last rows (as planes_to_rows lays them) into rows h0..h1 of the planes.
template <typename F>
SC_INLINE void rows_to_planes(const F* rows, int64_t row_len, int64_t stride, int64_t C,
                              int64_t H, int64_t W, int64_t h0, int64_t h1, F* planes) {
  for (int64_t c = 0; c < C; c += 8)
    for (int64_t h = h0; h < h1; ++h)
      transpose_into(rows + (h - h0) * row_len + c, stride, W, std::min<int64_t>(8, C - c),
                     planes + c * H * W + h * W, H * W);
}

struct Tiles {
  int64_t N, C, K, H, W, th, tw, Cp, Kp;
  int64_t padded_width() const { return 4 * tw + 2; }
};

// The tiles of tile rows r0..r1 (r = n * th + ty; tile p = (r - first) * tw + tx of the chunk
// that starts at tile row `first`, P tiles long) to V [36, P, Cp]: the row's 6 input rows
// (4 ty - 1 .. 4 ty + 4, zero outside the image) go channels last into `rows` [6, 4 tw + 2, Cp]
// (8 x 8 register transposes), then each tile's 6x6 block d to B^T d B, point (i, j) to
// V[6 i + j].
template <typename F>
SC_CPU_CLONES void transform_inputs(const F* __restrict x, F* __restrict v, F* __restrict rows,
                                    const Tiles& s, int64_t first, int64_t P, int64_t r0,
                                    int64_t r1) {
  using V = Vec32<F>;
  constexpr int64_t L = kLanes<F>;
  const int64_t Wp = s.padded_width(), row_len = Wp * s.Cp;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / s.th, ty = r % s.th;
    std::fill(rows, rows + 6 * row_len, F(0));
    const int64_t h0 = std::max<int64_t>(0, 4 * ty - 1), h1 = std::min(s.H, 4 * ty + 5);
    planes_to_rows(x + n * s.C * s.H * s.W, s.C, s.H, s.W, h0, h1,
                   rows + (h0 - 4 * ty + 1) * row_len + s.Cp, row_len, s.Cp);
    for (int64_t tx = 0; tx < s.tw; ++tx) {
      const int64_t p = (r - first) * s.tw + tx;
      const F* corner = rows + 4 * tx * s.Cp;
      for (int64_t c = 0; c < s.Cp; c += L) {
        V d[6][6], out[6][6];
        for (int a = 0; a < 6; ++a)
          for (int b = 0; b < 6; ++b)
            std::memcpy(&d[a][b], corner + a * row_len + b * s.Cp + c, sizeof(V));
        transform_block<6, 6>(d, out, InputPoints<F>{});
        for (int i = 0; i < 6; ++i)
          for (int j = 0; j < 6; ++j)
            std::memcpy(v + ((6 * i + j) * P + p) * s.Cp + c, &out[i][j], sizeof(V));
      }
    }
  }
}

// The outputs of tile rows r0..r1 from M [36, P, Kp] (the chunk from tile row `first`): each
// tile's A^T m A into `rows` [4, 4 tw, Kp] (channels last), then the rows inside the image to
// y [N, K, H, W] by register transposes.
template <typename F>
SC_CPU_CLONES void transform_outputs(const F* __restrict m, F* __restrict y, F* __restrict rows,
                                     const Tiles& s, int64_t first, int64_t P, int64_t r0,
                                     int64_t r1) {
  using V = Vec32<F>;
  constexpr int64_t L = kLanes<F>;
  const int64_t row_len = 4 * s.tw * s.Kp;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / s.th, ty = r % s.th;
    for (int64_t tx = 0; tx < s.tw; ++tx) {
      const int64_t p = (r - first) * s.tw + tx;
      for (int64_t k = 0; k < s.Kp; k += L) {
        V mb[6][6], out[4][4];
        for (int i = 0; i < 6; ++i)
          for (int j = 0; j < 6; ++j)
            std::memcpy(&mb[i][j], m + ((6 * i + j) * P + p) * s.Kp + k, sizeof(V));
        transform_block<6, 4>(mb, out, OutputPoints<F>{});
        for (int a = 0; a < 4; ++a)
          for (int q = 0; q < 4; ++q)
            std::memcpy(rows + a * row_len + (4 * tx + q) * s.Kp + k, &out[a][q], sizeof(V));
      }
    }
    rows_to_planes(rows, row_len, s.Kp, s.K, s.H, s.W, 4 * ty,
                   std::min<int64_t>(s.H, 4 * ty + 4), y + n * s.K * s.H * s.W);
  }
}

// The grad_y tiles of tile rows r0..r1 to Gh [36, P, Kp] (the chunk from tile row `first`):
// each tile row's 4 rows of grad_y [N, K, H, W] go channels last into `rows` [4, 4 tw, Kp]
// (zero past the image and past K), then each tile's 4x4 block g to A g A^T, point (i, j) to
// Gh[6 i + j].
template <typename F>
SC_CPU_CLONES void transform_grads(const F* __restrict gy, F* __restrict gh, F* __restrict rows,
                                   const Tiles& s, int64_t first, int64_t P, int64_t r0,
                                   int64_t r1) {
  using V = Vec32<F>;
  constexpr int64_t L = kLanes<F>;
  const int64_t row_len = 4 * s.tw * s.Kp;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / s.th, ty = r % s.th;
    std::fill(rows, rows + 4 * row_len, F(0));
    planes_to_rows(gy + n * s.K * s.H * s.W, s.K, s.H, s.W, 4 * ty,
                   std::min<int64_t>(s.H, 4 * ty + 4), rows, row_len, s.Kp);
    for (int64_t tx = 0; tx < s.tw; ++tx) {
      const int64_t p = (r - first) * s.tw + tx;
      for (int64_t k = 0; k < s.Kp; k += L) {
        V g[4][4], out[6][6];
        for (int a = 0; a < 4; ++a)
          for (int q = 0; q < 4; ++q)
            std::memcpy(&g[a][q], rows + a * row_len + (4 * tx + q) * s.Kp + k, sizeof(V));
        transform_block<4, 6>(g, out, GradPoints<F>{});
        for (int i = 0; i < 6; ++i)
          for (int j = 0; j < 6; ++j)
            std::memcpy(gh + ((6 * i + j) * P + p) * s.Kp + k, &out[i][j], sizeof(V));
      }
    }
  }
}

// G (6 x 3) of F(4x4, 3x3): a kernel's transform G g G^T, and the weight gradient's G^T dU G.
constexpr double kG[6][3] = {{1. / 4, 0, 0},           {-1. / 6, -1. / 6, -1. / 6},
                             {-1. / 6, 1. / 6, -1. / 6}, {1. / 24, 1. / 12, 1. / 6},
                             {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};

// U [36, Cp, Kp] = G g G^T of each 3x3 kernel g = w[k, c] (zero rows and columns past C, K).
template <typename F>
at::Tensor transform_weights(const at::Tensor& w, const Tiles& s) {
  at::Tensor u = at::zeros({36, s.Cp, s.Kp}, w.options());
  const F* pw = w.const_data_ptr<F>();
  F* pu = u.mutable_data_ptr<F>();
  at::parallel_for(0, s.K, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t c = 0; c < s.C; ++c) {
        const F* g = pw + (k * s.C + c) * 9;
        double gg[6][3];  // G g
        for (int i = 0; i < 6; ++i)
          for (int b = 0; b < 3; ++b)
            gg[i][b] = kG[i][0] * g[b] + kG[i][1] * g[3 + b] + kG[i][2] * g[6 + b];
        for (int i = 0; i < 6; ++i)
          for (int j = 0; j < 6; ++j)
            pu[((6 * i + j) * s.Cp + c) * s.Kp + k] =
                static_cast<F>(gg[i][0] * kG[j][0] + gg[i][1] * kG[j][1] + gg[i][2] * kG[j][2]);
      }
  });
  return u;
}

// The tiles of a call and their chunks: whole tile rows (r = n * th + ty), each chunk's V about
// kChunkBytes, so that its buffers stay in the last-level cache and are allocated once (fresh
// memory page-faults; a whole call's V was 38 MB at 64 x 64 x 32 x 32).
struct Plan {
  static constexpr int64_t kChunkBytes = 4 << 20;
  Tiles s;
  int64_t tile_rows, chunk_rows;

  Plan(int64_t N, int64_t C, int64_t K, int64_t H, int64_t W, int64_t element_size) {
    const int64_t L = 32 / element_size;
    const auto up = [L](int64_t v) { return (v + L - 1) / L * L; };
    s = Tiles{N, C, K, H, W, (H + 3) / 4, (W + 3) / 4, up(C), up(K)};
    tile_rows = N * s.th;
    chunk_rows = std::clamp<int64_t>(kChunkBytes / (36 * s.tw * s.Cp * element_size), 1, tile_rows);
  }

  // A buffer for a chunk's points: [36, chunk_rows * tw, width].
  at::Tensor buffer(int64_t width, const at::TensorOptions& options) const {
    return at::empty({36, chunk_rows * s.tw, width}, options);
  }

  // fn(first, last, P, view): each chunk of tile rows first..last (P tiles), view(buffer) its
  // [36, P, width] at the buffer's start, contiguous.
  template <typename Fn>
  void for_each_chunk(Fn&& fn) const {
    for (int64_t first = 0; first < tile_rows; first += chunk_rows) {
      const int64_t last = std::min(tile_rows, first + chunk_rows), P = (last - first) * s.tw;
      fn(first, last, P, [P](const at::Tensor& buffer) {
        return buffer.view(-1).narrow(0, 0, 36 * P * buffer.size(2)).view({36, P, buffer.size(2)});
      });
    }
  }
};

void check_operands(const at::Tensor& x, const at::Tensor& other, const char* op,
                    const char* what) {
  TORCH_CHECK_VALUE(x.scalar_type() == other.scalar_type() &&
                        (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
                        x.device() == other.device(),
                    op, ": x and ", what, " must be float32 or float64 alike, got ",
                    x.scalar_type(), " and ", other.scalar_type());
}

}  // namespace

at::Tensor conv3x3_winograd_cpu(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK_VALUE(x.dim() == 4 && w.dim() == 4 && w.size(1) == x.size(1) && w.size(2) == 3 &&
                        w.size(3) == 3,
                    "conv3x3_winograd: x [N, C_in, H, W] and w [C_out, C_in, 3, 3], got ",
                    x.sizes(), " and ", w.sizes());
  check_operands(x, w, "conv3x3_winograd", "w");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = w.size(0);
  // PyTorch's direct convolution for empty operands (its answer or its error), and where an inf
  // or NaN would spread: the
  // transforms add each input into all 36 points of its tiles and each point into all 16
  // outputs (inf - inf is NaN), where the direct sums keep it to the outputs it reaches
  if (N == 0 || C == 0 || K == 0 || H == 0 || W == 0 || !all_finite(w) || !all_finite(x))
    return at::conv2d(x, w, {}, 1, 1);
  const Plan plan(N, C, K, H, W, x.element_size());
  const Tiles& s = plan.s;
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty({N, K, H, W}, x.options());
  const at::Tensor v = plan.buffer(s.Cp, x.options()), m = plan.buffer(s.Kp, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_winograd", [&] {
    using F = scalar_t;
    const at::Tensor u = transform_weights<F>(w.contiguous(), s);
    plan.for_each_chunk([&](int64_t first, int64_t last, int64_t P, auto view) {
      at::Tensor vc = view(v), mc = view(m);
      at::parallel_for(first, last, 1, [&](int64_t r0, int64_t r1) {
        std::vector<F> rows(static_cast<size_t>(6 * s.padded_width() * s.Cp));
        transform_inputs<F>(xc.const_data_ptr<F>(), vc.data_ptr<F>(), rows.data(), s, first, P,
                            r0, r1);
      });
      at::bmm_out(mc, vc, u);
      at::parallel_for(first, last, 1, [&](int64_t r0, int64_t r1) {
        std::vector<F> rows(static_cast<size_t>(4 * 4 * s.tw * s.Kp));
        transform_outputs<F>(mc.const_data_ptr<F>(), out.mutable_data_ptr<F>(), rows.data(), s,
                             first, P, r0, r1);
      });
    });
  });
  return out;
}

// The weight gradient [C_out, C_in, 3, 3] of F.conv2d(x, w, padding=1) for grad_y [N, C_out, H,
// W]: the adjoint of the forward's algebra, dw = G^T [sum over tiles of (A g A^T) . (B^T d B)] G,
// the sum over tiles a matrix product per point: dU[xi] [C_in, C_out] += V[xi]^T @ Gh[xi].
at::Tensor conv3x3_winograd_weight_grad_cpu(const at::Tensor& x, const at::Tensor& grad_y) {
  TORCH_CHECK_VALUE(x.dim() == 4 && grad_y.dim() == 4 && x.size(0) == grad_y.size(0) &&
                        x.size(2) == grad_y.size(2) && x.size(3) == grad_y.size(3),
                    "conv3x3_winograd_weight_grad: x [N, C_in, H, W] and grad_y [N, C_out, H, "
                    "W], got ",
                    x.sizes(), " and ", grad_y.sizes());
  check_operands(x, grad_y, "conv3x3_winograd_weight_grad", "grad_y");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = grad_y.size(1);
  // PyTorch's own for empty operands (its answer or its error) and, as the forward, where an inf
  // or NaN would spread
  if (N == 0 || C == 0 || K == 0 || H == 0 || W == 0 || !all_finite(x) || !all_finite(grad_y))
    return std::get<1>(at::convolution_backward(grad_y, x, at::empty({K, C, 3, 3}, x.options()),
                                                std::nullopt, {1, 1}, {1, 1}, {1, 1}, false,
                                                {0, 0}, 1, {false, true, false}));
  const Plan plan(N, C, K, H, W, x.element_size());
  const Tiles& s = plan.s;
  const at::Tensor xc = x.contiguous(), gc = grad_y.contiguous();
  const at::Tensor v = plan.buffer(s.Cp, x.options()), gh = plan.buffer(s.Kp, x.options());
  at::Tensor du = at::zeros({36, s.Cp, s.Kp}, x.options());
  at::Tensor gw = at::empty({K, C, 3, 3}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_winograd_weight_grad", [&] {
    using F = scalar_t;
    plan.for_each_chunk([&](int64_t first, int64_t last, int64_t P, auto view) {
      at::Tensor vc = view(v), gc_chunk = view(gh);
      at::parallel_for(first, last, 1, [&](int64_t r0, int64_t r1) {
        std::vector<F> rows(static_cast<size_t>(6 * s.padded_width() * s.Cp));
        transform_inputs<F>(xc.const_data_ptr<F>(), vc.data_ptr<F>(), rows.data(), s, first, P,
                            r0, r1);
        rows.resize(static_cast<size_t>(4 * 4 * s.tw * s.Kp));
        transform_grads<F>(gc.const_data_ptr<F>(), gc_chunk.data_ptr<F>(), rows.data(), s,
                           first, P, r0, r1);
      });
      du.baddbmm_(vc.transpose(1, 2), gc_chunk);
    });
    const F* pu = du.const_data_ptr<F>();
    F* pw = gw.mutable_data_ptr<F>();
    at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t c = 0; c < C; ++c) {
          double ug[6][3] = {};  // dU G
          for (int i = 0; i < 6; ++i)
            for (int j = 0; j < 6; ++j) {
              const double d = static_cast<double>(pu[((6 * i + j) * s.Cp + c) * s.Kp + k]);
              for (int b = 0; b < 3; ++b) ug[i][b] += d * kG[j][b];
            }
          for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) {
              double sum = 0.0;
              for (int i = 0; i < 6; ++i) sum += kG[i][a] * ug[i][b];
              pw[((k * C + c) * 3 + a) * 3 + b] = static_cast<F>(sum);
            }
        }
    });
  });
  return gw;
}

bool winograd_pays(int64_t c_in, int64_t c_out, int64_t height, int64_t width) {
  return std::min(c_in, c_out) >= kWinogradMinChannels &&
         std::min(height, width) >= kWinogradMinSide;
}

at::Tensor conv3x3_dense(const at::Tensor& x, const at::Tensor& w) {
  if (winograd_pays(w.size(1), w.size(0), x.size(2), x.size(3)))
    return conv3x3_winograd_cpu(x, w);
  return at::conv2d(x, w, {}, 1, 1);
}

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("conv3x3_winograd", &conv3x3_winograd_cpu);
  m.impl("conv3x3_winograd_weight_grad", &conv3x3_winograd_weight_grad_cpu);
}

}  // namespace spikeclip
