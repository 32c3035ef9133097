// CUDA glue of pack_spikes / unpack_spikes (kernels: spike_pack_kernels.cu).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../lif_common.h"
#include "../spike_pack.h"

namespace spikeclip {
namespace {

void check_dtype(at::ScalarType t, const char* op) {
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": the cuda backend takes float32, float16 and bfloat16, got ", t);
}

at::Tensor pack_spikes_cuda_op(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, "pack_spikes: x must have at least one dimension");
  check_dtype(x.scalar_type(), "pack_spikes");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t n = x.size(-1);
  const int64_t rows = n == 0 ? 0 : xc.numel() / n;
  auto sizes = x.sizes().vec();
  sizes.back() = packed_row_bytes(n);
  at::Tensor bits = at::empty(sizes, x.options().dtype(at::kByte));
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  pack_spikes_cuda(to_dtype(x.scalar_type()), xc.data_ptr(), bits.data_ptr<uint8_t>(), rows, n,
                   bad.data_ptr<int>(), c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK(bad.item<int>() == 0, "pack_spikes: x must hold spikes (only 0 and 1)");
  return bits;
}

at::Tensor unpack_spikes_cuda_op(const at::Tensor& bits, int64_t n, at::ScalarType dtype) {
  TORCH_CHECK(bits.scalar_type() == at::kByte, "unpack_spikes: bits must be uint8");
  TORCH_CHECK(bits.dim() >= 1 && bits.size(-1) == packed_row_bytes(n),
              "unpack_spikes: the last dimension of bits must be ceil(n / 8) = ",
              packed_row_bytes(n));
  check_dtype(dtype, "unpack_spikes");
  const c10::cuda::CUDAGuard guard(bits.device());
  const at::Tensor bc = bits.contiguous();
  auto sizes = bits.sizes().vec();
  sizes.back() = n;
  at::Tensor x = at::empty(sizes, bits.options().dtype(dtype));
  const int64_t rows = bits.size(-1) == 0 ? 0 : bc.numel() / bits.size(-1);
  unpack_spikes_cuda(to_dtype(dtype), bc.data_ptr<uint8_t>(), x.data_ptr(), rows, n,
                     c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return x;
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CUDA, m) {
  m.impl("pack_spikes", &pack_spikes_cuda_op);
  m.impl("unpack_spikes", &unpack_spikes_cuda_op);
}

}  // namespace spikeclip
