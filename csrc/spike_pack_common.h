// Torch-side argument checks and allocation of the packing ops, shared by the CPU and CUDA
// implementations (kernels: spike_pack.h, csrc/cpu, csrc/cuda).
#pragma once

#include <ATen/ATen.h>

#include "spike_pack.h"

namespace spikeclip {

// The packed copy of x [..., n]: uint8 [..., ceil(n / 8)] (rows = x.numel() / n).
inline at::Tensor empty_packed_for(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, "pack_spikes: x must have at least one dimension");
  auto sizes = x.sizes().vec();
  sizes.back() = packed_row_bytes(x.size(-1));
  return at::empty(sizes, x.options().dtype(at::kByte));
}

// The unpacked tensor [..., n] in dtype for bits [..., ceil(n / 8)], after checking bits.
inline at::Tensor empty_unpacked_for(const at::Tensor& bits, int64_t n, at::ScalarType dtype) {
  TORCH_CHECK(bits.scalar_type() == at::kByte, "unpack_spikes: bits must be uint8");
  TORCH_CHECK(bits.dim() >= 1 && bits.size(-1) == packed_row_bytes(n),
              "unpack_spikes: the last dimension of bits must be ceil(n / 8) = ",
              packed_row_bytes(n));
  auto sizes = bits.sizes().vec();
  sizes.back() = n;
  return at::empty(sizes, bits.options().dtype(dtype));
}

}  // namespace spikeclip
