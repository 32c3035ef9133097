// CUDA glue: checks, allocation and stream for the kernels in attention_kernels.cu, registered
// as the CUDA implementation of spikeclip::{sdsa,ssa}_{fwd,bwd}. Built only when torch has CUDA.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../attention_common.h"
#include "../lif_common.h"

namespace spikeclip {
namespace {

using Outputs5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Grads3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Forward of either op: `launch(view, stream)` runs the kernels. SDSA's h is [T, B, H, D]
// float32, SSA's has q's shape and dtype.
template <typename Launch>
Outputs5 attention_fwd(const char* op, bool sdsa, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, double scale, SPIKECLIP_ATTN_LIF_PARAMS, bool save,
                       Launch&& launch) {
  const Heads s = check_qkv(q, k, v, op);
  check_cuda_float(q.scalar_type(), op);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor h = !save ? at::empty({0}, q.options())
                 : sdsa ? at::empty({s.T, q.size(1), q.size(2), s.D}, q.options().dtype(at::kFloat))
                        : at::empty_like(q);
  Saved saved(q, save);
  at::Tensor not_spikes = at::zeros({1}, q.options().dtype(at::kInt));
  AttentionForwardView view{};
  view.dtype = to_dtype(q.scalar_type());
  view.s = s;
  view.q = q.data_ptr();
  view.k = k.data_ptr();
  view.v = v.data_ptr();
  view.out = out.data_ptr();
  view.h = save ? h.data_ptr() : nullptr;
  saved.pointers(view.bits);
  view.not_spikes = not_spikes.data_ptr<int>();
  view.scale = scale;
  view.opts = attn_options(SPIKECLIP_ATTN_LIF_ARGS);
  launch(view, current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (save) raise_if_not_spikes(not_spikes.item<int>() == 0, op);  // one sync, only with grad
  return {out, h, saved.bits[0], saved.bits[1], saved.bits[2]};
}

template <typename Launch>
Grads3 attention_bwd(const char* op, bool sdsa, const at::Tensor& grad_out, const at::Tensor& h,
                     const at::Tensor& q_bits, const at::Tensor& k_bits, const at::Tensor& v_bits,
                     int64_t D, double scale, SPIKECLIP_ATTN_LIF_PARAMS,
                     int64_t workspace_floats_of_heads, Launch&& launch) {
  const at::Tensor go = grad_out.contiguous();
  const Heads s = check_backward(go, h, q_bits, k_bits, v_bits, D, sdsa, op);
  check_cuda_float(go.scalar_type(), op);
  const c10::cuda::CUDAGuard guard(go.device());
  at::Tensor gq = at::empty_like(go), gk = at::empty_like(go), gv = at::empty_like(go);
  const at::Tensor hc = h.contiguous();
  at::Tensor workspace = at::empty({workspace_floats_of_heads}, go.options().dtype(at::kFloat));
  AttentionBackwardView view{};
  view.dtype = to_dtype(go.scalar_type());
  view.s = s;
  view.grad_out = go.data_ptr();
  view.h = hc.data_ptr();
  view.bits[0] = q_bits.data_ptr<uint8_t>();
  view.bits[1] = k_bits.data_ptr<uint8_t>();
  view.bits[2] = v_bits.data_ptr<uint8_t>();
  view.gq = gq.data_ptr();
  view.gk = gk.data_ptr();
  view.gv = gv.data_ptr();
  view.workspace = workspace.numel() ? workspace.data_ptr<float>() : nullptr;
  view.scale = scale;
  view.opts = attn_options(SPIKECLIP_ATTN_LIF_ARGS);
  launch(view, current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gq, gk, gv};
}

Outputs5 sdsa_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       SPIKECLIP_ATTN_LIF_PARAMS, bool save) {
  return attention_fwd("sdsa", true, q, k, v, 1.0, SPIKECLIP_ATTN_LIF_ARGS, save,
                       [](const AttentionForwardView& view, auto st) {
                         sdsa_cuda_forward(view, st);
                       });
}

Grads3 sdsa_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& q_bits,
                     const at::Tensor& k_bits, const at::Tensor& v_bits, int64_t D,
                     SPIKECLIP_ATTN_LIF_PARAMS) {
  return attention_bwd("sdsa_bwd", true, grad_out, h, q_bits, k_bits, v_bits, D, 1.0,
                       SPIKECLIP_ATTN_LIF_ARGS, 0,
                       [](const AttentionBackwardView& view, auto st) {
                         sdsa_cuda_backward(view, st);
                       });
}

Outputs5 ssa_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      double scale, SPIKECLIP_ATTN_LIF_PARAMS, bool save) {
  return attention_fwd(
      "ssa", false, q, k, v, scale, SPIKECLIP_ATTN_LIF_ARGS, save,
      [&](const AttentionForwardView& view, auto st) {
        const Heads& s = view.s;
        at::Tensor A = at::empty({s.T * s.BH * s.D * s.D}, q.options().dtype(at::kFloat));
        ssa_cuda_forward(view, A.numel() ? A.data_ptr<float>() : nullptr, st);
      });
}

Grads3 ssa_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& q_bits,
                    const at::Tensor& k_bits, const at::Tensor& v_bits, int64_t D, double scale,
                    SPIKECLIP_ATTN_LIF_PARAMS) {
  const Heads s = check_grad_out(grad_out, D, "ssa_bwd");  // for the workspace; the rest below
  return attention_bwd("ssa_bwd", false, grad_out, h, q_bits, k_bits, v_bits, D, scale,
                       SPIKECLIP_ATTN_LIF_ARGS,
                       ssa_cuda_workspace_floats(s),
                       [](const AttentionBackwardView& view, auto st) {
                         ssa_cuda_backward(view, st);
                       });
}

}  // namespace

TORCH_LIBRARY_IMPL(spikeclip, CUDA, m) {
  m.impl("sdsa_fwd", &sdsa_fwd_cuda);
  m.impl("sdsa_bwd", &sdsa_bwd_cuda);
  m.impl("ssa_fwd", &ssa_fwd_cuda);
  m.impl("ssa_bwd", &ssa_bwd_cuda);
}

}  // namespace spikeclip
