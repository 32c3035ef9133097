#include "lif_common.h"

namespace spikeclip {

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default: TORCH_CHECK(false, "spikeclip: unsupported dtype ", t);
  }
}

namespace {

// Membrane state and all compute happen in this dtype: float64 for float64, else float32.
at::ScalarType state_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

LifOptionsView make_options(const at::Tensor& tau, SPIKECLIP_LIF_PARAMS, bool tau_on_host) {
  return lif_options_view(tau_on_host ? tau.item<double>() : 0.0, SPIKECLIP_LIF_ARGS);
}

void check_state(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& like,
                 at::ScalarType dtype) {
  if (!t) return;
  TORCH_CHECK(t->device() == like.device(), "spikeclip lif: ", name, " is on ", t->device(),
              ", expected ", like.device());
  TORCH_CHECK(t->scalar_type() == dtype, "spikeclip lif: ", name, " has dtype ", t->scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t->dim() == like.dim() - 1 && t->sizes() == like.sizes().slice(1),
              "spikeclip lif: ", name, " has shape ", t->sizes(), ", expected ",
              like.sizes().slice(1));
  TORCH_CHECK(t->is_contiguous(), "spikeclip lif: ", name, " must be contiguous");
}

void check_tau(const at::Tensor& tau, const at::Tensor& like) {
  TORCH_CHECK(tau.numel() == 1 && tau.dim() == 0, "spikeclip lif: tau must be a 0-d tensor");
  TORCH_CHECK(tau.device() == like.device(), "spikeclip lif: tau is on ", tau.device(),
              ", expected ", like.device());
  TORCH_CHECK(tau.scalar_type() == state_dtype(like.scalar_type()), "spikeclip lif: tau has dtype ",
              tau.scalar_type(), ", expected ", state_dtype(like.scalar_type()));
}

void check_sequence(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 1, "spikeclip lif: ", name, " must have a time dimension, got 0-d");
  TORCH_CHECK(t.is_contiguous(), "spikeclip lif: ", name, " must be contiguous");
  to_dtype(t.scalar_type());
}

}  // namespace

LifOptionsView lif_options_view(double tau, SPIKECLIP_LIF_PARAMS) {
  LifOptionsView o;
  o.tau = tau;
  o.v_th = v_th;
  o.v_reset = v_reset;
  o.soft_reset = soft_reset;
  o.decay_input = decay_input;
  o.detach_reset = detach_reset;
  o.surrogate = surrogate_code(surrogate);
  o.alpha = alpha;
  return o;
}

int surrogate_code(c10::string_view name) {
  if (name == "sigmoid") return kSigmoid;
  if (name == "atan") return kAtan;
  if (name == "triangle") return kTriangle;
  if (name == "erf") return kErf;
  TORCH_CHECK_VALUE(false, "spikeclip: unknown surrogate '", std::string(name),
                    "' (expected sigmoid, atan, triangle or erf)");
}


LifForward prepare_forward(const at::Tensor& x, const std::optional<at::Tensor>& v0,
                           const at::Tensor& tau, SPIKECLIP_LIF_PARAMS, bool save_h,
                           bool return_v, bool tau_on_host) {
  check_sequence(x, "x");
  const auto sdt = state_dtype(x.scalar_type());
  check_state(v0, "v0", x, sdt);
  check_tau(tau, x);
  LifForward f;
  f.spikes = at::empty_like(x);
  f.h = save_h ? at::empty_like(x) : at::empty({0}, x.options());
  f.v_last = return_v ? at::empty(x.sizes().slice(1), x.options().dtype(sdt))
                      : at::empty({0}, x.options().dtype(sdt));
  auto& v = f.view;
  v.dtype = to_dtype(x.scalar_type());
  v.T = x.size(0);
  v.N = c10::multiply_integers(x.sizes().slice(1));
  v.x = x.data_ptr();
  v.v0 = v0 ? v0->data_ptr() : nullptr;
  v.tau_ptr = tau.data_ptr();
  v.spikes = f.spikes.data_ptr();
  v.h = save_h ? f.h.data_ptr() : nullptr;
  v.v_last = return_v ? f.v_last.data_ptr() : nullptr;
  v.opts = make_options(tau, SPIKECLIP_LIF_ARGS, tau_on_host);
  return f;
}

LifBackward prepare_backward(const at::Tensor& grad_spikes,
                             const std::optional<at::Tensor>& grad_v_last, const at::Tensor& h,
                             const std::optional<at::Tensor>& v0, const at::Tensor& tau,
                             SPIKECLIP_LIF_PARAMS, bool need_tau_grad, bool tau_on_host,
                             int64_t grad_tau_partials) {
  check_sequence(h, "h");
  check_sequence(grad_spikes, "grad_spikes");
  TORCH_CHECK(grad_spikes.sizes() == h.sizes() && grad_spikes.scalar_type() == h.scalar_type() &&
                  grad_spikes.device() == h.device(),
              "spikeclip lif: grad_spikes must match h in shape, dtype and device");
  const auto sdt = state_dtype(h.scalar_type());
  check_state(grad_v_last, "grad_v_last", h, sdt);
  check_state(v0, "v0", h, sdt);
  check_tau(tau, h);
  LifBackward b;
  b.grad_x = at::empty_like(h);
  b.grad_v0 = at::empty(h.sizes().slice(1), h.options().dtype(sdt));
  if (grad_tau_partials > 0)
    b.grad_tau = at::zeros({need_tau_grad ? grad_tau_partials : 0}, h.options().dtype(sdt));
  else
    b.grad_tau = at::zeros({}, h.options().dtype(sdt));
  auto& v = b.view;
  v.dtype = to_dtype(h.scalar_type());
  v.T = h.size(0);
  v.N = c10::multiply_integers(h.sizes().slice(1));
  v.grad_spikes = grad_spikes.data_ptr();
  v.grad_v_last = grad_v_last ? grad_v_last->data_ptr() : nullptr;
  v.h = h.data_ptr();
  v.v0 = v0 ? v0->data_ptr() : nullptr;
  v.tau_ptr = tau.data_ptr();
  v.grad_x = b.grad_x.data_ptr();
  v.grad_v0 = b.grad_v0.data_ptr();
  v.grad_tau = need_tau_grad ? b.grad_tau.data_ptr() : nullptr;
  v.opts = make_options(tau, SPIKECLIP_LIF_ARGS, tau_on_host);
  return b;
}

}  // namespace spikeclip
