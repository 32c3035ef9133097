// What the spike-fed products need to hand their work over to the dense computation they
// replace (their spec): the check that sends them there, and the spikes as floats again.
//
// A product fed by spikes sums weight rows at the ones and skips the zeros; the dense product
// meets the zeros too, and 0 x inf and 0 x NaN are NaN. So wherever an operand the sums would
// meet only at the spikes (the weight in a product, grad_y in a weight gradient) holds an inf or
// a NaN, the kernels compute densely: the reference's NaN, not a finite sum that hides it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstring>
#include <type_traits>

#include "../spike_pack.h"

namespace spikeclip {

// Whether x[0..n) holds no inf and no NaN (their exponent bits all set): an integer OR over the
// bits, which vectorises (a bool &= per element did not: a store per element).
template <typename F>
inline bool all_finite(const F* __restrict x, int64_t n) {
  using U = std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>;
  constexpr U kExp = sizeof(F) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    U bits;
    std::memcpy(&bits, x + i, sizeof(F));
    bad |= U((bits & kExp) == kExp);
  }
  return bad == 0;
}

// Whether the float32 / float64 tensor t holds no inf and no NaN (any layout; threads take
// chunks of a contiguous copy).
inline bool all_finite(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "all_finite", [&] {
    const scalar_t* p = c.data_ptr<scalar_t>();
    at::parallel_for(0, c.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
      if (!all_finite(p + i0, i1 - i0)) finite = false;
    });
  });
  return finite;
}

// Rows of packed spikes bits [rows, ceil(n / 8)] as 0/1 values [rows, n] of dtype.
inline at::Tensor unpack_to(const at::Tensor& bits, int64_t n, at::ScalarType dtype) {
  const at::Tensor b = bits.contiguous();
  at::Tensor x = at::empty({b.size(0), n}, b.options().dtype(dtype));
  const int64_t nb = packed_row_bytes(n);
  AT_DISPATCH_FLOATING_TYPES(dtype, "spike_unpack", [&] {
    const uint8_t* src = b.data_ptr<uint8_t>();
    scalar_t* dst = x.data_ptr<scalar_t>();
    at::parallel_for(0, b.size(0), 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) unpack_row(src + r * nb, dst + r * n, n);
    });
  });
  return x;
}

}  // namespace spikeclip
