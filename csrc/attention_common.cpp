#include "attention_common.h"

#include <string>
#include <vector>

#include "lif_common.h"
#include "spike_pack.h"

namespace spikeclip {

Heads check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* op) {
  TORCH_CHECK(q.dim() == 5, op, ": q, k, v must be [T, B, H, N, D], got q of shape ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op,
              ": q, k, v must have one shape, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must have one dtype");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op,
              ": q, k, v must be on one device");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), op,
              ": q, k, v must be contiguous");
  return Heads{q.size(0), q.size(1) * q.size(2), q.size(3), q.size(4)};
}

Heads check_grad_out(const at::Tensor& go, int64_t D, const char* op) {
  TORCH_CHECK(go.dim() == 5 && go.size(4) == D, op, ": grad_out must be [T, B, H, N, ", D,
              "], got ", go.sizes());
  return Heads{go.size(0), go.size(1) * go.size(2), go.size(3), D};
}

Heads check_backward(const at::Tensor& go, const at::Tensor& h, const at::Tensor& q_bits,
                     const at::Tensor& k_bits, const at::Tensor& v_bits, int64_t D, bool sdsa,
                     const char* op) {
  const Heads s = check_grad_out(go, D, op);
  std::vector<int64_t> h_shape = go.sizes().vec();
  at::ScalarType h_dtype = go.scalar_type();
  if (sdsa) {
    h_shape.erase(h_shape.begin() + 3);  // [T, B, H, D]: one membrane per head and channel
    h_dtype = h_dtype == at::kDouble ? at::kDouble : at::kFloat;
  }
  TORCH_CHECK_VALUE(h.sizes() == at::IntArrayRef(h_shape) && h.scalar_type() == h_dtype, op,
                    ": h must be ", at::IntArrayRef(h_shape), " ", h_dtype, ", got ", h.sizes(),
                    " ", h.scalar_type());
  TORCH_CHECK_VALUE(h.device() == go.device() && h.is_contiguous(), op,
                    ": h must be contiguous and on grad_out's device");
  std::vector<int64_t> bits_shape = go.sizes().vec();
  bits_shape.back() = packed_row_bytes(D);
  for (const at::Tensor* b : {&q_bits, &k_bits, &v_bits}) {
    TORCH_CHECK_VALUE(b->scalar_type() == at::kByte && b->sizes() == at::IntArrayRef(bits_shape),
                      op, ": q_bits, k_bits, v_bits must be uint8 ", at::IntArrayRef(bits_shape),
                      ", got ", b->sizes(), " ", b->scalar_type());
    TORCH_CHECK_VALUE(b->device() == go.device() && b->is_contiguous(), op,
                      ": q_bits, k_bits, v_bits must be contiguous and on grad_out's device");
  }
  return s;
}

LifOptionsView attn_options(SPIKECLIP_ATTN_LIF_PARAMS) {
  return lif_options_view(tau, v_th, v_reset, soft_reset, /*decay_input=*/true, detach_reset,
                          surrogate, alpha);
}

void raise_if_not_spikes(bool ok, const char* op) {
  TORCH_CHECK_VALUE(ok, op, ": q, k and v must hold spikes (only 0 and 1) when a gradient is "
                        "needed: the backward keeps them packed 1 bit each");
}

Saved::Saved(const at::Tensor& q, bool save) {
  auto sizes = q.sizes().vec();
  sizes.back() = save ? packed_row_bytes(q.size(-1)) : 0;
  for (auto& b : bits)
    b = at::empty(save ? sizes : std::vector<int64_t>{0}, q.options().dtype(at::kByte));
}

void Saved::pointers(uint8_t** out) {
  for (int i = 0; i < 3; ++i)
    out[i] = bits[i].numel() ? bits[i].data_ptr<uint8_t>() : nullptr;
}

}  // namespace spikeclip
