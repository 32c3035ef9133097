// CUDA glue: checks, allocation and stream for the kernels in lif_kernels.cu, registered as
// the CUDA implementation of spikeclip::lif_fwd / lif_bwd. Built only when torch has CUDA.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../lif_common.h"

namespace spikeclip {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_fwd_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& tau,
    SPIKECLIP_LIF_PARAMS, bool save_h, bool return_v) {
  check_cuda_float(x.scalar_type(), "spikeclip lif");
  const c10::cuda::CUDAGuard guard(x.device());
  LifForward f =
      prepare_forward(x, v0, tau, SPIKECLIP_LIF_ARGS, save_h, return_v, /*tau_on_host=*/false);
  lif_cuda_forward(f.view, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {f.spikes, f.h, f.v_last};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_bwd_cuda(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last,
    const at::Tensor& h, const std::optional<at::Tensor>& v0, const at::Tensor& tau,
    SPIKECLIP_LIF_PARAMS, bool need_tau_grad) {
  check_cuda_float(h.scalar_type(), "spikeclip lif");
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t n = c10::multiply_integers(h.sizes().slice(1));
  LifBackward b = prepare_backward(grad_spikes, grad_v_last, h, v0, tau, SPIKECLIP_LIF_ARGS,
                                   need_tau_grad, /*tau_on_host=*/false,
                                   std::max<int64_t>(1, lif_cuda_tau_partials(n)));
  lif_cuda_backward(b.view, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Per-block partial sums of dL/dtau -> one scalar (zero when not asked for).
  return {b.grad_x, b.grad_v0, b.grad_tau.sum()};
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CUDA, m) {
  m.impl("lif_fwd", &lif_fwd_cuda);
  m.impl("lif_bwd", &lif_bwd_cuda);
}

}  // namespace spikeclip
