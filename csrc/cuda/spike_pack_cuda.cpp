// CUDA glue of pack_spikes / unpack_spikes (kernels: spike_pack_kernels.cu).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../lif_common.h"
#include "../spike_pack_common.h"

namespace spikeclip {
namespace {

at::Tensor pack_spikes_cuda_op(const at::Tensor& x) {
  check_cuda_float(x.scalar_type(), "pack_spikes");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor bits = empty_packed_for(x);
  const at::Tensor xc = x.contiguous();
  const int64_t n = x.size(-1);
  const int64_t rows = n == 0 ? 0 : xc.numel() / n;
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  pack_spikes_cuda(to_dtype(x.scalar_type()), xc.data_ptr(), bits.data_ptr<uint8_t>(), rows, n,
                   bad.data_ptr<int>(), c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK_VALUE(bad.item<int>() == 0, "pack_spikes: x must hold spikes (only 0 and 1)");
  return bits;
}

at::Tensor unpack_spikes_cuda_op(const at::Tensor& bits, int64_t n, at::ScalarType dtype) {
  check_cuda_float(dtype, "unpack_spikes");
  const c10::cuda::CUDAGuard guard(bits.device());
  at::Tensor x = empty_unpacked_for(bits, n, dtype);
  const at::Tensor bc = bits.contiguous();
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
