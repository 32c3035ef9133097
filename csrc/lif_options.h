// The LIF's options as every op implementation takes them: flat, in the order of the op
// schemas (csrc/ops.cpp: LIF_OPTIONS, ATTENTION_LIF; Python: kernels/common/options.py LifOptions),
// because the dispatcher binds an op's arguments to the C++ parameters by position. Spelled
// once here as parameter and argument lists.
#pragma once

#include <c10/util/string_view.h>

// lif_fwd / lif_bwd
#define SPIKECLIP_LIF_PARAMS                                                                   \
  double v_th, double v_reset, bool soft_reset, bool decay_input, bool detach_reset,          \
      c10::string_view surrogate, double alpha
#define SPIKECLIP_LIF_ARGS v_th, v_reset, soft_reset, decay_input, detach_reset, surrogate, alpha

// sdsa / ssa: the attention's LIF (tau a number, decay_input always)
#define SPIKECLIP_ATTN_LIF_PARAMS                                                              \
  double tau, double v_th, double v_reset, bool soft_reset, bool detach_reset,                \
      c10::string_view surrogate, double alpha
#define SPIKECLIP_ATTN_LIF_ARGS tau, v_th, v_reset, soft_reset, detach_reset, surrogate, alpha
