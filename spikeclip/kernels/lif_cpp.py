"""Fake implementations and autograd of the C++/CUDA LIF ops in spikeclip._C."""

import torch

from spikeclip._ext import extension_loaded
from spikeclip.kernels.lif_autograd import register_lif_pair

if extension_loaded():
    register_lif_pair("spikeclip::lif_fwd", "spikeclip::lif_bwd", torch.ops.spikeclip.lif_bwd)
