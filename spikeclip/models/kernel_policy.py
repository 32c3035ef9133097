"""Which backend a model layer asks of each op: the layer passes its `backend` setting through
and the op's entry in the kernels' one table (kernels.common.backends.OP_BACKENDS) decides
what runs; nothing here knows a kernel, only what the layer wants of it.
"""

from __future__ import annotations

import torch

from spikeclip.kernels.common.backends import (
    BackendUnavailableError,
    resolve_backend,
    why_unavailable,
)


def layer_product_backend(layer_backend: str) -> str:
    """What a spiking layer set to `layer_backend` asks of its spike-fed product: "torch" the
    dense reference, "triton" Triton's bit-reading products (on CPU only under the
    interpreter), anything else what the device has ("auto")."""
    return layer_backend if layer_backend in ("torch", "triton") else "auto"


def bn_lif_backend(layer_backend: str, x: torch.Tensor) -> str | None:
    """The backend of the fused BatchNorm + LIF (kernels/bn_lif) for a layer set to
    `layer_backend` on x, or None for the unfused pair: what the table gives bn_lif where the
    layer's neurons run fused on CUDA ("auto", "cuda") or where "triton" is asked for (on CPU
    only under the interpreter); never in compiled code (torch.compile fuses the pair itself)."""
    if torch.compiler.is_compiling():
        return None
    if layer_backend == "triton":
        asked = "triton"
    elif x.is_cuda and layer_backend in ("auto", "cuda"):
        asked = "auto"
    else:
        return None
    try:
        resolved = resolve_backend(asked, x.device, op="bn_lif")
    except BackendUnavailableError:
        return None
    return None if resolved == "torch" else resolved


def runs_cpp_kernels(backend: str, x: torch.Tensor) -> bool:
    """Whether a layer asked for `backend` runs x through the cpp kernels: on CPU tensors with
    "auto" or "cpp", when the extension is built and loads."""
    return backend in ("auto", "cpp") and why_unavailable("cpp", x.device) is None


def sums_spikes(backend: str, x: torch.Tensor) -> bool:
    """Whether a spike-fed product of x runs as sums of weight rows at the spikes (the cpp
    kernels sum in float32 / float64 only; torch.compile traces the dense form)."""
    return (
        runs_cpp_kernels(backend, x)
        and x.dtype in (torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
    )
