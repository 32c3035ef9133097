// Spike tensors packed 8 per byte along the last dimension, on the CPU.
// Bit j of byte b holds x[..., 8 b + j]; the last byte of a row is zero-padded.
// Spec: spikeclip/kernels/spike_products/reference.py (pack_spikes_reference / unpack_spikes_reference).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "../spike_pack_common.h"

namespace spikeclip {

at::Tensor pack_spikes_cpu(const at::Tensor& x) {
  at::Tensor bits = empty_packed_for(x);
  const at::Tensor xc = x.contiguous();
  const int64_t n = x.size(-1);
  const int64_t nbytes = packed_row_bytes(n);
  const int64_t rows = n == 0 ? 0 : xc.numel() / n;
  std::atomic<bool> non_binary{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pack_spikes", [&] {
    const scalar_t* src = xc.data_ptr<scalar_t>();
    uint8_t* dst = bits.data_ptr<uint8_t>();
    at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
      bool bad = false;
      for (int64_t r = r0; r < r1; ++r)
        bad |= !pack_row(src + r * n, dst + r * nbytes, n);
      if (bad) non_binary = true;
    });
  });
  TORCH_CHECK_VALUE(!non_binary, "pack_spikes: x must hold spikes (only 0 and 1)");
  return bits;
}

at::Tensor unpack_spikes_cpu(const at::Tensor& bits, int64_t n, at::ScalarType dtype) {
  at::Tensor x = empty_unpacked_for(bits, n, dtype);
  const at::Tensor bc = bits.contiguous();
  const int64_t nbytes = bits.size(-1);
  const int64_t rows = nbytes == 0 ? 0 : bc.numel() / nbytes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "unpack_spikes", [&] {
    const uint8_t* src = bc.data_ptr<uint8_t>();
    scalar_t* dst = x.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) unpack_row(src + r * nbytes, dst + r * n, n);
    });
  });
  return x;
}

TORCH_LIBRARY_IMPL(spikeclip, CPU, m) {
  m.impl("pack_spikes", &pack_spikes_cpu);
  m.impl("unpack_spikes", &unpack_spikes_cpu);
}

}  // namespace spikeclip
