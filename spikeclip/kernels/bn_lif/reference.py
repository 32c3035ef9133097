"""The fused BatchNorm + LIF's reference (its spec): F.batch_norm, then the LIF's reference
over T on the time-major outer dimension."""

from __future__ import annotations

import torch

from spikeclip.kernels.common.options import LifOptions
from spikeclip.kernels.lif.reference import lif_reference


def bn_lif_reference(
    y: torch.Tensor,
    T: int,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    *,
    tau: float,
    options: LifOptions,
) -> torch.Tensor:
    """LIF over T of F.batch_norm(y, ...) for y `[T*B', C, ...]`: (spikes of y's shape, the
    final membrane `[B', C, ...]`)."""
    z = torch.nn.functional.batch_norm(
        y, running_mean, running_var, weight, bias, training, momentum, eps
    )
    spikes, v_last = lif_reference(z.unflatten(0, (T, y.shape[0] // T)), tau=tau,
                                   **options.reference_kwargs())  # fmt: skip
    return spikes.flatten(0, 1), v_last
