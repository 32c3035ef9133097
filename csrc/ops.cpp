// The spikeclip operator library: schemas of every custom op, and the Python module `_C`
// whose import loads them. CPU kernels: csrc/cpu/, CUDA kernels: csrc/cuda/. Fake (meta)
// implementations and autograd are registered from Python once _C loads, beside the op that
// calls them (spikeclip/kernels/<op>/: lif/autograd.py, attention/autograd.py, the fakes in
// spike_products/{pack,linear,conv}.py and max_pool/op.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/cpu_simd.h"

extern "C" {
// Importing spikeclip._C only has to load this library: the ops register statically.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// The LIF's options in every fused op's schema, spelled once (Python: options.LifOptions and
// LIF_OPTIONS_SCHEMA, which test_lif_api checks against these); the attention's LIF always
// decays its input and takes tau as a number.
#define LIF_OPTIONS \
  "float v_th, float v_reset, bool soft_reset, bool decay_input, bool detach_reset, " \
  "str surrogate, float alpha"
#define ATTENTION_LIF \
  "float tau, float v_th, float v_reset, bool soft_reset, bool detach_reset, str surrogate, " \
  "float alpha"

TORCH_LIBRARY(spikeclip, m) {
  // Multi-step LIF over x [T, *]. Returns (spikes [T, *], h [T, *] or empty unless save_h,
  // v_last [*] or empty unless return_v). v0, v_last, tau: float32 (float64 for float64 x).
  // detach_reset, surrogate and alpha are unused by the forward but kept for the backward.
  m.def(
      "lif_fwd(Tensor x, Tensor? v0, Tensor tau, " LIF_OPTIONS ", bool save_h, bool return_v) "
      "-> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // Backward sweep. Returns (grad_x [T, *], grad_v0 [*], grad_tau 0-d, zero unless need_tau_grad).
  m.def(
      "lif_bwd(Tensor grad_spikes, Tensor? grad_v_last, Tensor h, Tensor? v0, Tensor tau, "
      LIF_OPTIONS ", bool need_tau_grad) -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});

  // Spikes packed 8 per byte along the last dimension (bit j of byte b = x[..., 8 b + j]).
  // pack_spikes raises if x holds anything but 0 and 1.
  m.def("pack_spikes(Tensor x) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("unpack_spikes(Tensor bits, int n, ScalarType dtype) -> Tensor",
        {at::Tag::pt2_compliant_tag});

  // Linear layers fed by spikes packed 8 per byte (bits [rows, ceil(n/8)]): y = x W^T as sums
  // of rows of weight_t = W^T [n, C_out] at the spikes, and the weight gradient (as W^T).
  m.def("spike_linear(Tensor bits, Tensor weight_t, int n) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("spike_linear_weight_grad(Tensor grad_y, Tensor bits, int n) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // A stride-1, 'same'-padded 2-d convolution of spikes x [B, C_in, H, W] (0/1 floats; anything
  // else raises) by weight [C_out, C_in, k, k]: sums of weight rows at the spikes. Returns y and
  // x's spikes packed per pixel, codes [B, H, W, ceil(C_in/8)] (bit c % 8 of byte c / 8).
  m.def("spike_conv2d(Tensor x, Tensor weight, int padding) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // Weight gradient [C_out, C_in, k, k] of a stride-1, 'same'-padded 2-d convolution whose
  // input [B, C_in, H, W] is given by its codes [B, H, W, ceil(C_in/8)] (as spike_conv2d
  // returns them).
  m.def("spike_conv2d_weight_grad(Tensor grad_y, Tensor codes, int channels, int kernel_size, "
        "int padding) -> Tensor",
        {at::Tag::pt2_compliant_tag});

  // Input gradient [B, C_in, H, W] of the same convolution (weight [C_out, C_in, k, k]), from
  // grad_y [B, C_out, H, W].
  m.def("spike_conv2d_input_grad(Tensor grad_y, Tensor weight, int padding) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // F.conv2d(x, w, padding=1) for x [N, C_in, H, W], w [C_out, C_in, 3, 3] by Winograd's
  // F(4x4, 3x3) (csrc/cpu/winograd_cpu.cpp): spike_conv2d's dense 3x3 work where it pays.
  m.def("conv3x3_winograd(Tensor x, Tensor w) -> Tensor", {at::Tag::pt2_compliant_tag});
  // Its weight gradient [C_out, C_in, 3, 3] for grad_y [N, C_out, H, W].
  m.def("conv3x3_winograd_weight_grad(Tensor x, Tensor grad_y) -> Tensor",
        {at::Tag::pt2_compliant_tag});

  // Inference products of packed spikes by table lookup (csrc/cpu/spike_lookup_cpu.cpp; no
  // autograd). codes: spikes packed 8 per byte over channels, as pack_spikes packs them.
  // spike_conv3x3_lookup: codes [N, H + 2, W + 2, ceil(C_in/8)] (a zero border), weight
  // [C_out, C_in, 3, 3], bias [C_out] -> the 'same' convolution plus bias, [N, H, W, C_out].
  // spike_linear_lookup: codes [rows, ceil(C_in/8)], weight [C_out, C_in] -> [rows, C_out].
  m.def("spike_conv3x3_lookup(Tensor codes, Tensor weight, Tensor bias) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // The vector width (bytes) the lookups run at on this CPU: 64 (AVX-512), 32 (AVX2) or 16,
  // lowered by SPIKECLIP_CPU_VECTOR_BYTES (csrc/cpu/cpu_simd.h).
  m.def("cpu_vector_bytes() -> int", [] { return int64_t{spikeclip::cpu_vector_bytes()}; });
  m.def("spike_linear_lookup(Tensor codes, Tensor weight, Tensor bias) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // The multi-step LIF's spikes (forward only; v0 = rest) over x [T or 1, B, H, W, C] times
  // input_scale (one step given: the same input at every step), with pool the 3x3 stride-2
  // max-pool (padding 1) of each step first, packed: codes [T, B, H' + 2 pad, W' + 2 pad,
  // ceil(C/8)], the border zero.
  m.def("lif_spike_codes(Tensor x, int T, bool pool, int pad, float tau, float input_scale, "
        "float v_th, float v_reset, bool soft_reset, bool decay_input) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // spike_conv3x3_lookup of codes [T * B, H + 2, W + 2, G] (image t * B + b: step t of sample
  // b) fused with lif_spike_codes of its output (pad 1): codes [T, B, H' + 2, W' + 2,
  // ceil(C_out/8)]; no float output.
  m.def("spike_conv3x3_lookup_lif(Tensor codes, Tensor weight, Tensor bias, int T, bool pool, "
        "float tau, float input_scale, float v_th, float v_reset, bool soft_reset, "
        "bool decay_input) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // spike_linear_lookup of codes [T * M, ceil(C_in/8)] (row t * M + m: step t of sample m)
  // fused with the LIF's spikes: with packed codes [T * M, ceil(C_out/8)] (heads 1), else
  // floats [T * M / tokens, heads, tokens, C_out / heads] (row r = i * tokens + n of the
  // product to [i, :, n]; heads = tokens = 1: [T * M, 1, 1, C_out]).
  m.def("spike_linear_lookup_lif(Tensor codes, Tensor weight, Tensor bias, int T, bool packed, "
        "int heads, int tokens, float tau, float input_scale, float v_th, float v_reset, bool soft_reset, "
        "bool decay_input) -> Tensor",
        {at::Tag::pt2_compliant_tag});

  // 2x2 max-pool, stride 2, of x [..., H, W] -> (y [..., H/2, W/2], where): nn.MaxPool2d(2)'s
  // values, with the winner of each window (0..3, row-major; uint8) kept for the backward.
  m.def("max_pool2x2(Tensor x) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  m.def("max_pool2x2_backward(Tensor grad_y, Tensor where, int height, int width) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // 3x3 max-pool, stride 2, padding 1, of x [..., H, W] -> (y [..., (H-1)/2+1, (W-1)/2+1],
  // where): nn.MaxPool2d(3, 2, 1)'s values, the winner's place in its 3x3 window (0..8,
  // row-major from the padded corner; uint8) kept for the backward.
  m.def("max_pool3x3s2(Tensor x) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  m.def("max_pool3x3s2_backward(Tensor grad_y, Tensor where, int height, int width) -> Tensor",
        {at::Tag::pt2_compliant_tag});

  // BatchNorm + multi-step LIF fused (csrc/cpu/bn_lif_cpu.cpp; kernels/bn_lif). y: a unit's
  // conv / linear output [T * B, C, ...], time-major, float32 / float64; mean, invstd: [C] in
  // y's dtype. bn_stats: the batch mean and biased variance of each channel. bn_lif_fwd: the
  // spikes of the LIF over T of (y - mean) * invstd * weight + bias (like y), and its final
  // membrane [B, C, ...] (empty unless return_v). bn_lif_bwd:
  // (grad_y, grad_weight, grad_bias) from grad_spikes (and the final membrane's gradient) and
  // y (the membrane recomputed):
  // BatchNorm's backward with batch statistics when training, else with fixed ones.
  m.def("bn_stats(Tensor y) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  m.def(
      "bn_lif_fwd(Tensor y, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, int T, "
      "float tau, " LIF_OPTIONS ", bool return_v) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "bn_lif_bwd(Tensor grad_spikes, Tensor? grad_v_last, Tensor y, Tensor mean, "
      "Tensor invstd, Tensor? weight, "
      "Tensor? bias, int T, float tau, " LIF_OPTIONS ", bool training) "
      "-> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});

  // BatchNorm + max-pool fused (csrc/cpu/bn_pool_cpu.cpp; kernels/bn_pool). y [N, C, H, W]
  // float32 / float64; mean, invstd [C] in y's dtype; window 2 (2x2, stride 2) or 3 (3x3,
  // stride 2, padding 1). bn_max_pool: (the pooled BatchNorm output, a byte per window: its
  // winner). bn_max_pool_backward: (grad_y, grad_weight, grad_bias) from the pooled output's
  // gradient: BatchNorm's backward with batch statistics when training, else with fixed ones.
  m.def("bn_max_pool(Tensor y, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
        "int window) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("bn_max_pool_backward(Tensor grad_z, Tensor where, Tensor y, Tensor mean, "
        "Tensor invstd, Tensor? weight, int window, bool training) -> (Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});

  // Spiking attention fused with its LIF (decay_input, v0 = rest). q, k, v: [T, B, H, N, D].
  // Returns (out [T, B, H, N, D], h, q_bits, k_bits, v_bits); h and the packed copies of q, k, v
  // (uint8 [T, B, H, N, ceil(D/8)]) are empty unless save. SDSA's h is [T, B, H, D] in the
  // compute dtype; SSA's h is [T, B, H, N, D] in q's dtype.
  m.def(
      "sdsa_fwd(Tensor q, Tensor k, Tensor v, " ATTENTION_LIF ", bool save) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "sdsa_bwd(Tensor grad_out, Tensor h, Tensor q_bits, Tensor k_bits, Tensor v_bits, int D, "
      ATTENTION_LIF ") -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "ssa_fwd(Tensor q, Tensor k, Tensor v, float scale, " ATTENTION_LIF ", bool save) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "ssa_bwd(Tensor grad_out, Tensor h, Tensor q_bits, Tensor k_bits, Tensor v_bits, int D, "
      "float scale, " ATTENTION_LIF ") -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}
