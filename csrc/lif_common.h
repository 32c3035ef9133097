// Torch-side preparation of a LIF call shared by the CPU and CUDA implementations: argument
// checks (the Python wrapper checks first, with friendlier messages; these guard direct calls
// of torch.ops.spikeclip.*), output allocation and the plain views the kernels take.
#pragma once

#include <ATen/ATen.h>

#include "lif_options.h"

#include <optional>
#include <string_view>

#include "lif_launch.h"

namespace spikeclip {

// The kernels' storage dtype of a floating tensor.
DType to_dtype(at::ScalarType t);

// The surrogate's code (lif_math.h: enum Surrogate) for its name; an error for any other name.
// The one name -> code map of the C++ side (Python's: kernels/common/options.py, for Triton).
int surrogate_code(c10::string_view name);

// The options of one LIF call as the kernels take them (tau: its value on the host, or 0 where
// the kernel reads it from the device). The one place the flat op arguments become the view.
LifOptionsView lif_options_view(double tau, SPIKECLIP_LIF_PARAMS);

// The CUDA kernels store float32, float16 and bfloat16 (float64 runs on torch and cpp).
inline void check_cuda_float(at::ScalarType t, const char* op) {
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": the cuda backend takes float32, float16 and bfloat16, got ", t);
}

struct LifForward {
  at::Tensor spikes, h, v_last;
  LifForwardView view;
};

struct LifBackward {
  at::Tensor grad_x, grad_v0, grad_tau;
  LifBackwardView view;
};

// tau_on_host: read tau's value now (CPU); otherwise the kernel reads it from the device.
// grad_tau_partials: size of grad_tau when the device writes per-block partials (0: a scalar).
LifForward prepare_forward(const at::Tensor& x, const std::optional<at::Tensor>& v0,
                           const at::Tensor& tau, SPIKECLIP_LIF_PARAMS, bool save_h,
                           bool return_v, bool tau_on_host);

LifBackward prepare_backward(const at::Tensor& grad_spikes,
                             const std::optional<at::Tensor>& grad_v_last, const at::Tensor& h,
                             const std::optional<at::Tensor>& v0, const at::Tensor& tau,
                             SPIKECLIP_LIF_PARAMS, bool need_tau_grad, bool tau_on_host,
                             int64_t grad_tau_partials = 0);

}  // namespace spikeclip
