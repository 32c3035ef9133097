// 3x3 'same' convolutions by Winograd's F(4x4, 3x3) (winograd_cpu.cpp), for the CPU kernels
// whose dense work they take: spike_conv2d's product and weight gradient past the firing rates
// its sums pay, and its input gradient.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace spikeclip {

// Where the transforms pay for themselves: measured on a 2-core AVX2 EPYC, batch 64, float32,
// F(4x4, 3x3) took 0.55-0.75x oneDNN's direct convolution's time with 32-128 channels each way
// on 8-32 px planes (64 -> 32 @ 32, 64 <-> 128 @ 16, 128 -> 128 @ 8) and 1.5x with 16 output
// channels (32 -> 16 @ 32).
constexpr int64_t kWinogradMinChannels = 32;
constexpr int64_t kWinogradMinSide = 8;
bool winograd_pays(int64_t c_in, int64_t c_out, int64_t height, int64_t width);

// F.conv2d(x, w, padding=1) for x [N, C_in, H, W], w [C_out, C_in, 3, 3], float32 or float64.
at::Tensor conv3x3_winograd_cpu(const at::Tensor& x, const at::Tensor& w);

// Its weight gradient [C_out, C_in, 3, 3] for grad_y [N, C_out, H, W].
at::Tensor conv3x3_winograd_weight_grad_cpu(const at::Tensor& x, const at::Tensor& grad_y);

// The same by Winograd where it pays (winograd_pays), else oneDNN's direct convolution.
at::Tensor conv3x3_dense(const at::Tensor& x, const at::Tensor& w);

}  // namespace spikeclip
