// Spiking attention on the CPU, fused with its LIF: SDSA and SSA forward and backward.
//
// q, k, v: [T, B, H, N, D], contiguous. Work is split over the B*H heads; each thread sweeps t
// for its head with the LIF state in a local buffer, so the membrane input (kv for SDSA, y for
// SSA) is computed, charged and dropped without a round trip through memory.
// Spikes are 0/1: products with spikes are accumulated as row additions that skip zeros (exact
// integer counts; a few times fewer operations at typical firing rates). Non-spike values still
// compute the right forward (they multiply), but the backward reads q, k, v from the packed
// copies the forward saves, so grad-requiring inputs must be spikes (checked while packing).
// Spec: spikeclip/kernels/attention/reference.py (sdsa_reference, ssa_reference); LIF math: lif_math.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "../attention_common.h"
#include "../spike_pack.h"
#include "cpu_simd.h"
#include "listed_sums.h"

namespace spikeclip {
namespace {

template <typename S>
bool pack_rows(const S* src, uint8_t* dst, int64_t rows, int64_t D) {
  const int64_t nb = packed_row_bytes(D);
  bool ok = true;
  for (int64_t r = 0; r < rows; ++r) ok &= pack_row(src + r * D, dst + r * nb, D);
  return ok;
}

template <typename F>
void unpack_rows(const uint8_t* src, F* dst, int64_t rows, int64_t D) {
  const int64_t nb = packed_row_bytes(D);
  for (int64_t r = 0; r < rows; ++r) unpack_row(src + r * nb, dst + r * D, D);
}

// Small loops over one row, written with restrict pointers so that GCC vectorises them.
template <typename F, typename R>
SC_INLINE void axpy(F* __restrict dst, F a, const R* __restrict row, int64_t D) {  // dst += a row
  for (int64_t j = 0; j < D; ++j) dst[j] += a * static_cast<F>(row[j]);
}

template <typename F, typename A, typename B>
SC_INLINE void add_product(F* __restrict acc, const A* __restrict a, const B* __restrict b,
                           int64_t D) {  // acc += a * b
  for (int64_t j = 0; j < D; ++j) acc[j] += static_cast<F>(a[j]) * static_cast<F>(b[j]);
}

template <typename S, typename F, typename A>
SC_INLINE void store_product(S* __restrict out, const A* __restrict a, const F* __restrict b,
                             int64_t D) {  // out = a * b
  for (int64_t j = 0; j < D; ++j) out[j] = static_cast<S>(static_cast<F>(a[j]) * b[j]);
}

template <typename S, typename F>
SC_INLINE void store_scaled(S* __restrict out, F a, const F* __restrict b, int64_t D) {
  for (int64_t j = 0; j < D; ++j) out[j] = static_cast<S>(a * b[j]);
}

template <typename S, typename F>
SC_INLINE void store_row(S* __restrict out, const F* __restrict b, int64_t D) {
  for (int64_t j = 0; j < D; ++j) out[j] = static_cast<S>(b[j]);
}

// sum_listed_rows into a row of S: straight into it when S is F, else through `row` (D of F).
template <typename S, typename F>
SC_INLINE void sum_listed_rows_to(const F* rows, const int32_t* list, int64_t m, int64_t D, S* out,
                                  F* row) {
  if constexpr (std::is_same_v<S, F>) {
    sum_listed_rows(rows, list, m, D, out);
  } else {
    sum_listed_rows(rows, list, m, D, row);
    store_row(out, row, D);
  }
}

// One LIF step over n neurons whose input is y * scale; writes spikes (and h when asked).
template <bool kSaveH, typename S, typename H, typename F>
SC_INLINE void lif_step(F* __restrict state, const F* __restrict y, F scale, S* __restrict spikes,
                        H* __restrict h_out, int64_t n, const LifOptions<F> o) {
  const F rest = charge_rest(o);
  for (int64_t i = 0; i < n; ++i) {
    const F h = lif_charge(state[i], y[i] * scale, o.inv_tau, rest, true);
    const F s = h >= o.v_th ? F(1) : F(0);
    spikes[i] = static_cast<S>(s);
    if constexpr (kSaveH) h_out[i] = static_cast<H>(h);
    state[i] = lif_reset(h, s, o);
  }
}

// One backward LIF step over n neurons: from dL/dspikes and h to dL/d(input) * out_scale.
template <int kSurr, typename G, typename H, typename F>
SC_INLINE void lif_step_backward(const G* __restrict grad_spikes, const H* __restrict h_in,
                                 F* __restrict carry, F* __restrict grad_in, F out_scale,
                                 int64_t n, const LifOptions<F> o) {
  const F leak = F(1) - o.inv_tau;
  for (int64_t i = 0; i < n; ++i) {
    const F h = static_cast<F>(h_in[i]);
    const F dh = lif_dh<kSurr>(h, static_cast<F>(grad_spikes[i]), carry[i], o);
    carry[i] = dh * leak;
    grad_in[i] = dh * out_scale;
  }
}

// A[D, D] = k^T v for one head and step (k, v: [N, D]); zeros of k are skipped.
template <typename F, typename R>
SC_INLINE void kt_v(const R* k, const R* v, int64_t N, int64_t D, F* A) {
  std::fill(A, A + D * D, F(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d1 = 0; d1 < D; ++d1) {
      const F kk = static_cast<F>(k[n * D + d1]);
      if (kk != F(0)) axpy(A + d1 * D, kk, v + n * D, D);
    }
}

// out[n, :] = sum over d1 of a[n, d1] * B[d1, :] for n < N (zeros of a skipped).
template <typename F, typename R>
SC_INLINE void sparse_row_times(const R* a, const F* B, int64_t D, F* __restrict out) {
  std::fill(out, out + D, F(0));
  for (int64_t d1 = 0; d1 < D; ++d1) {
    const F aa = static_cast<F>(a[d1]);
    if (aa != F(0)) axpy(out, aa, B + d1 * D, D);
  }
}

// At = A^T for a row-major [rows, cols] block, cast to At's type. float to float goes by 4 x 4
// tiles through SSE registers (a scalar transpose is a store per element, at strides that the
// store buffer handles badly); the edges and other types element by element.
// GCC (12, -O3 -fwrapv as torch builds extensions) warned 160 times that some iteration
// ~2^62 of these loops "invokes undefined behavior" in instantiations where it cannot bound
// rows / cols: with -fwrapv it may not assume the index never wraps. The loops run rows x cols
// times, a head's tokens x channels. A bound stated with __builtin_unreachable did not quiet
// it, so the warning is switched off for this function alone.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"
template <typename F, typename S>
SC_INLINE void transpose(const F* A, S* At, int64_t rows, int64_t cols) {
  int64_t a0 = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<F, float> && std::is_same_v<S, float>) {
    for (; a0 + 4 <= rows; a0 += 4) {
      const float* src = A + a0 * cols;
      int64_t b = 0;
      for (; b + 4 <= cols; b += 4) {
        __m128 r0 = _mm_loadu_ps(src + b), r1 = _mm_loadu_ps(src + cols + b),
               r2 = _mm_loadu_ps(src + 2 * cols + b), r3 = _mm_loadu_ps(src + 3 * cols + b);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        _mm_storeu_ps(At + b * rows + a0, r0);
        _mm_storeu_ps(At + (b + 1) * rows + a0, r1);
        _mm_storeu_ps(At + (b + 2) * rows + a0, r2);
        _mm_storeu_ps(At + (b + 3) * rows + a0, r3);
      }
      for (; b < cols; ++b)
        for (int64_t a = a0; a < a0 + 4; ++a) At[b * rows + a] = A[a * cols + b];
    }
  }
#endif
  for (int64_t a = a0; a < rows; ++a)
    for (int64_t b = 0; b < cols; ++b) At[b * rows + a] = static_cast<S>(A[a * cols + b]);
}
#pragma GCC diagnostic pop

// Per-thread scratch of one head.
template <typename F>
struct Scratch {
  std::vector<F> buf;
  F* take(int64_t n) {  // call in a fixed order after reserve()
    F* p = buf.data() + used;
    used += n;
    return p;
  }
  void reserve(int64_t n) {  // keeps what the buffer holds: callers clear what they accumulate
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
    used = 0;
  }
  int64_t used = 0;
};

// ---- SDSA ---------------------------------------------------------------------------------

template <typename S, typename F>
SC_CPU_CLONES void sdsa_forward_head(const S* q, const S* k, const S* v, S* out, F* h_out,
                                     uint8_t* const* bits, int64_t bh, const Heads s,
                                     const LifOptions<F> o, bool save, F* state, F* kv, F* spk,
                                     bool* ok) {
  std::fill(state, state + s.D, charge_rest(o));
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t base = s.block(t, bh), D = s.D;
    std::fill(kv, kv + D, F(0));
    for (int64_t n = 0; n < s.N; ++n) add_product(kv, k + base + n * D, v + base + n * D, D);
    lif_step<true>(state, kv, F(1), spk, h_out + (t * s.BH + bh) * D, D, o);
    for (int64_t n = 0; n < s.N; ++n) store_product(out + base + n * D, q + base + n * D, spk, D);
    if (save) {
      const int64_t off = base / D * packed_row_bytes(D);
      *ok &= pack_rows(q + base, bits[0] + off, s.N, D) & pack_rows(k + base, bits[1] + off, s.N, D) &
             pack_rows(v + base, bits[2] + off, s.N, D);
    }
  }
}

// ---- SSA ----------------------------------------------------------------------------------

// dst[0:D] += row[0:D]
template <typename F>
SC_INLINE void add_row(F* __restrict dst, const F* __restrict row, int64_t D) {
  for (int64_t j = 0; j < D; ++j) dst[j] += row[j];
}

template <int kSurr, typename S, typename F>
SC_CPU_CLONES void sdsa_backward_head(const S* go, const F* h, const uint8_t* const* bits,
                                      S* gq, S* gk, S* gv, int64_t bh, const Heads s,
                                      const LifOptions<F> o, Scratch<F>& scratch) {
  const int64_t N = s.N, D = s.D, nb = packed_row_bytes(D);
  scratch.reserve(6 * D);
  F *carry = scratch.take(D), *gs = scratch.take(D), *gkv = scratch.take(D),
    *spk = scratch.take(D), *krow = scratch.take(D), *vrow = scratch.take(D);
  std::fill(carry, carry + D, F(0));
  for (int64_t t = s.T - 1; t >= 0; --t) {
    const int64_t base = s.block(t, bh), off = base / D * nb;
    const uint8_t *qb = bits[0] + off, *kb = bits[1] + off, *vb = bits[2] + off;
    std::fill(gs, gs + D, F(0));
    for (int64_t n = 0; n < N; ++n) {  // dL/dspikes(kv) = sum over tokens of grad_out * q
      const S* go_row = go + base + n * D;
      for_each_spike(qb + n * nb, D, [&](int64_t d) { gs[d] += static_cast<F>(go_row[d]); });
    }
    const F* h_row = h + (t * s.BH + bh) * D;
    lif_step_backward<kSurr>(gs, h_row, carry, gkv, o.inv_tau, D, o);
    for (int64_t d = 0; d < D; ++d) spk[d] = h_row[d] >= o.v_th ? F(1) : F(0);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = base + n * D;
      store_product(gq + i, go + i, spk, D);
      unpack_row(vb + n * nb, vrow, D);
      store_product(gk + i, vrow, gkv, D);
      unpack_row(kb + n * nb, krow, D);
      store_product(gv + i, krow, gkv, D);
    }
  }
}

// SSA forward of one head. kD as for the backward below. Spike inputs are packed first (into
// the saved copies, or scratch) and the products sum over their set bits; other values (a
// forward without grad may take any) use the float path, which multiplies.
template <bool kSaveH, int kD, typename S, typename F>
SC_CPU_CLONES void ssa_forward_head(const S* q, const S* k, const S* v, S* out, S* h_out,
                                    uint8_t* const* bits, int64_t bh, const Heads s,
                                    const LifOptions<F> o, F scale, Scratch<F>& scratch,
                                    std::vector<uint8_t>& bit_scratch, SpikeLists& q_rows,
                                    bool* ok) {
  const int64_t N = s.N, D = kD ? kD : s.D, nb = packed_row_bytes(D);
  scratch.reserve(N * D + D * D + D);
  F *state = scratch.take(N * D), *A = scratch.take(D * D), *y = scratch.take(D);
  bit_scratch.resize(2 * N * nb);
  std::fill(state, state + N * D, charge_rest(o));
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t base = s.block(t, bh), off = base / D * nb;
    uint8_t* qb = kSaveH ? bits[0] + off : bit_scratch.data();
    uint8_t* kb = kSaveH ? bits[1] + off : bit_scratch.data() + N * nb;
    const bool binary = pack_rows(q + base, qb, N, D) & pack_rows(k + base, kb, N, D);
    if (kSaveH) *ok &= binary & pack_rows(v + base, bits[2] + off, N, D);
    std::fill(A, A + D * D, F(0));
    if (binary) {  // A = k^T v: for each spike (n, d1) of k, A[d1] += v[n]
      for (int64_t n = 0; n < N; ++n)
        for_each_spike(kb + n * nb, D, [&](int64_t d1) { axpy(A + d1 * D, F(1), v + base + n * D, D); });
    } else {
      kt_v(k + base, v + base, N, D, A);
    }
    if (binary) q_rows.by_row(qb, N, D);
    for (int64_t n = 0; n < N; ++n) {
      if (binary) {  // y = q[n] A: the rows of A at q's spikes
        sum_listed_rows(A, q_rows.list(n), q_rows.size(n), D, y);
      } else {
        sparse_row_times(q + base + n * D, A, D, y);
      }
      lif_step<kSaveH>(state + n * D, y, scale, out + base + n * D,
                       kSaveH ? h_out + base + n * D : nullptr, D, o);
    }
  }
}

// The spike lists one SSA backward step reads (listed_sums.h), kept per thread.
struct SsaLists {
  SpikeLists q_rows, q_cols, k_rows, k_cols, v_rows;
};

// kD: the head width as a compile-time constant (0: read from s.D), so that the row loops of
// SpikeCLIP's D = 48 and the common D = 64 unroll without loop set-up on every row.
// q, k, v are read from their packed bits: products with them are sums over their spikes,
// each output row summed in registers over a list of input rows (sum_listed_rows).
template <int kSurr, int kD, typename S, typename F>
SC_CPU_CLONES void ssa_backward_head(const S* go, const S* h, const uint8_t* const* bits, S* gq,
                                     S* gk, S* gv, int64_t bh, const Heads s,
                                     const LifOptions<F> o, F scale, Scratch<F>& scratch,
                                     SsaLists& L) {
  const int64_t N = s.N, D = kD ? kD : s.D, ND = N * D, nb = packed_row_bytes(D);
  scratch.reserve(5 * ND + N * N + 3 * D * D + D);
  F *vf = scratch.take(ND), *carry = scratch.take(ND), *gy = scratch.take(ND),
    *gyt = scratch.take(ND), *gqt = scratch.take(ND), *Gt = scratch.take(N * N);
  F *A = scratch.take(D * D), *gA = scratch.take(D * D), *gAt = scratch.take(D * D),
    *row = scratch.take(D);
  std::fill(carry, carry + ND, F(0));
  for (int64_t t = s.T - 1; t >= 0; --t) {
    const int64_t base = s.block(t, bh), off = base / D * nb;
    const uint8_t *qb = bits[0] + off, *kb = bits[1] + off, *vb = bits[2] + off;
    // dL/d(q k^T v): the LIF's input gradient times scale
    lif_step_backward<kSurr>(go + base, h + base, carry, gy, o.inv_tau * scale, ND, o);
    L.k_rows.by_row(kb, N, D);
    L.v_rows.by_row(vb, N, D);
    // gq = gy (k^T v)^T, by whichever route costs fewer row additions:
    //   sparse: gq = (gy v^T) k, both products summing over spikes   ((nnz v + nnz k) N)
    //   dense:  gq[n] = sum_d2 gy[n, d2] A[:, d2], A = k^T v           (N D D + nnz k D)
    const int64_t nnz_k = L.k_rows.start[N], nnz_v = L.v_rows.start[N];
    if ((nnz_k + nnz_v) * N < N * D * D + nnz_k * D) {
      transpose(gy, gyt, N, D);
      for (int64_t m = 0; m < N; ++m)  // Gt[m, :] = sum over spikes d2 of v[m]: gy[:, d2]
        sum_listed_rows(gyt, L.v_rows.list(m), L.v_rows.size(m), N, Gt + m * N);
      L.k_cols.by_col(L.k_rows, N, D);
      for (int64_t d1 = 0; d1 < D; ++d1)  // gq^T[d1, :] = sum over m with k[m, d1]: Gt[m, :]
        sum_listed_rows(Gt, L.k_cols.list(d1), L.k_cols.size(d1), N, gqt + d1 * N);
      transpose(gqt, gq + base, D, N);
    } else {
      unpack_rows(vb, vf, N, D);
      std::fill(A, A + D * D, F(0));
      for (int64_t n = 0; n < N; ++n)
        for_each_spike(kb + n * nb, D, [&](int64_t d1) { add_row(A + d1 * D, vf + n * D, D); });
      // A dense [N, D] x [D, D] product: BLAS does it best (single-threaded here, inside
      // the parallel region); gqt serves as its [N, D] output.
      const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<F>::value);
      at::Tensor out = at::from_blob(gqt, {N, D}, opts);
      at::mm_out(out, at::from_blob(gy, {N, D}, opts), at::from_blob(A, {D, D}, opts).t());
      for (int64_t n = 0; n < N; ++n) store_row(gq + base + n * D, gqt + n * D, D);
    }
    L.q_rows.by_row(qb, N, D);
    L.q_cols.by_col(L.q_rows, N, D);
    for (int64_t d1 = 0; d1 < D; ++d1)  // gA = q^T gy: gA[d1, :] = sum over n with q[n, d1]
      sum_listed_rows(gy, L.q_cols.list(d1), L.q_cols.size(d1), D, gA + d1 * D);
    transpose(gA, gAt, D, D);
    for (int64_t n = 0; n < N; ++n) {  // gk = v gA^T, gv = k gA
      sum_listed_rows_to(gAt, L.v_rows.list(n), L.v_rows.size(n), D, gk + base + n * D, row);
      sum_listed_rows_to(gA, L.k_rows.list(n), L.k_rows.size(n), D, gv + base + n * D, row);
    }
  }
}

// Calls fn(std::integral_constant<int, D>) for the head widths compiled in, else with 0.
template <typename Fn>
void dispatch_head_dim(int64_t D, Fn&& fn) {
  if (D == 48) fn(std::integral_constant<int, 48>{});
  else if (D == 64) fn(std::integral_constant<int, 64>{});
  else fn(std::integral_constant<int, 0>{});
}

// ---- ops ----------------------------------------------------------------------------------

using Outputs5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Grads3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Outputs5 sdsa_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      SPIKECLIP_ATTN_LIF_PARAMS, bool save) {
  const Heads s = check_qkv(q, k, v, "sdsa");
  const auto ov = attn_options(SPIKECLIP_ATTN_LIF_ARGS);
  at::Tensor out = at::empty_like(q);
  const auto hdt = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor h = at::empty({s.T, q.size(1), q.size(2), s.D}, q.options().dtype(hdt));
  Saved saved(q, save);
  uint8_t* bits[3];
  saved.pointers(bits);
  std::atomic<bool> all_ok{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "sdsa_fwd", [&] {
    using F = at::opmath_type<scalar_t>;
    const LifOptions<F> o = ov.as<F>();
    at::parallel_for(0, s.BH, 1, [&](int64_t b0, int64_t b1) {
      std::vector<F> buf(3 * s.D);
      bool ok = true;
      for (int64_t bh = b0; bh < b1; ++bh)
        sdsa_forward_head<scalar_t, F>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                                       v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                       h.data_ptr<F>(), bits, bh, s, o, save, buf.data(),
                                       buf.data() + s.D, buf.data() + 2 * s.D, &ok);
      if (!ok) all_ok = false;
    });
  });
  raise_if_not_spikes(all_ok, "sdsa");
  if (!save) h = at::empty({0}, h.options());
  return {out, h, saved.bits[0], saved.bits[1], saved.bits[2]};
}

Grads3 sdsa_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& q_bits,
                    const at::Tensor& k_bits, const at::Tensor& v_bits, int64_t D,
                    SPIKECLIP_ATTN_LIF_PARAMS) {
  const at::Tensor go = grad_out.contiguous();
  const Heads s = check_backward(go, h, q_bits, k_bits, v_bits, D, true, "sdsa_bwd");
  const auto ov = attn_options(SPIKECLIP_ATTN_LIF_ARGS);
  at::Tensor gq = at::empty_like(go), gk = at::empty_like(go), gv = at::empty_like(go);
  const uint8_t* bits[3] = {q_bits.data_ptr<uint8_t>(), k_bits.data_ptr<uint8_t>(),
                            v_bits.data_ptr<uint8_t>()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "sdsa_bwd", [&] {
    using F = at::opmath_type<scalar_t>;
    const LifOptions<F> o = ov.as<F>();
    dispatch_surrogate(ov.surrogate, [&](auto G) {
      at::parallel_for(0, s.BH, 1, [&](int64_t b0, int64_t b1) {
        Scratch<F> scratch;
        for (int64_t bh = b0; bh < b1; ++bh)
          sdsa_backward_head<decltype(G)::value, scalar_t, F>(
              go.data_ptr<scalar_t>(), h.data_ptr<F>(), bits, gq.data_ptr<scalar_t>(),
              gk.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(), bh, s, o, scratch);
      });
    });
  });
  return {gq, gk, gv};
}

Outputs5 ssa_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     SPIKECLIP_ATTN_LIF_PARAMS, bool save) {
  const Heads s = check_qkv(q, k, v, "ssa");
  const auto ov = attn_options(SPIKECLIP_ATTN_LIF_ARGS);
  at::Tensor out = at::empty_like(q);
  at::Tensor h = save ? at::empty_like(q) : at::empty({0}, q.options());
  Saved saved(q, save);
  uint8_t* bits[3];
  saved.pointers(bits);
  std::atomic<bool> all_ok{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "ssa_fwd", [&] {
    using F = at::opmath_type<scalar_t>;
    const LifOptions<F> o = ov.as<F>();
    at::parallel_for(0, s.BH, 1, [&](int64_t b0, int64_t b1) {
      Scratch<F> scratch;
      std::vector<uint8_t> bit_scratch;
      SpikeLists q_rows;
      bool ok = true;
      dispatch_bool(save, [&](auto SAVE) {
        dispatch_head_dim(s.D, [&](auto DIM) {
        for (int64_t bh = b0; bh < b1; ++bh)
          ssa_forward_head<decltype(SAVE)::value, decltype(DIM)::value, scalar_t, F>(
              q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
              out.data_ptr<scalar_t>(), save ? h.data_ptr<scalar_t>() : nullptr, bits, bh, s, o,
              static_cast<F>(scale), scratch, bit_scratch, q_rows, &ok);
        });
      });
      if (!ok) all_ok = false;
    });
  });
  raise_if_not_spikes(all_ok, "ssa");
  return {out, h, saved.bits[0], saved.bits[1], saved.bits[2]};
}

Grads3 ssa_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& q_bits,
                   const at::Tensor& k_bits, const at::Tensor& v_bits, int64_t D, double scale,
                   SPIKECLIP_ATTN_LIF_PARAMS) {
  const at::Tensor go = grad_out.contiguous();
  const Heads s = check_backward(go, h, q_bits, k_bits, v_bits, D, false, "ssa_bwd");
  const auto ov = attn_options(SPIKECLIP_ATTN_LIF_ARGS);
  at::Tensor gq = at::empty_like(go), gk = at::empty_like(go), gv = at::empty_like(go);
  const at::Tensor hc = h.contiguous();
  const uint8_t* bits[3] = {q_bits.data_ptr<uint8_t>(), k_bits.data_ptr<uint8_t>(),
                            v_bits.data_ptr<uint8_t>()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "ssa_bwd", [&] {
    using F = at::opmath_type<scalar_t>;
    const LifOptions<F> o = ov.as<F>();
    dispatch_surrogate(ov.surrogate, [&](auto G) {
      at::parallel_for(0, s.BH, 1, [&](int64_t b0, int64_t b1) {
        Scratch<F> scratch;
        SsaLists lists;
        dispatch_head_dim(s.D, [&](auto DIM) {
        for (int64_t bh = b0; bh < b1; ++bh)
          ssa_backward_head<decltype(G)::value, decltype(DIM)::value, scalar_t, F>(
              go.data_ptr<scalar_t>(), hc.data_ptr<scalar_t>(), bits, gq.data_ptr<scalar_t>(),
              gk.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(), bh, s, o, static_cast<F>(scale),
              scratch, lists);
        });
      });
    });
  });
  return {gq, gk, gv};
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("sdsa_fwd", &sdsa_fwd_cpu);
  m.impl("sdsa_bwd", &sdsa_bwd_cpu);
  m.impl("ssa_fwd", &ssa_fwd_cpu);
  m.impl("ssa_bwd", &ssa_bwd_cpu);
}

}  // namespace spikeclip
