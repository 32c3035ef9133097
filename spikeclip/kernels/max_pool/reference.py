"""The max-pools' reference (their spec): PyTorch's F.max_pool2d, whose values and gradients
(the first maximum of a window in row-major order takes its gradient; NaN wins) the byte-index
kernels reproduce."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def max_pool2x2_reference(x: torch.Tensor) -> torch.Tensor:
    """2x2 windows, stride 2 (an odd last row or column dropped)."""
    return F.max_pool2d(x, 2)


def max_pool3x3s2_reference(x: torch.Tensor) -> torch.Tensor:
    """3x3 windows, stride 2, padding 1 (the SpikeCLIP / Spikformer tokenizer's)."""
    return F.max_pool2d(x, 3, stride=2, padding=1)
