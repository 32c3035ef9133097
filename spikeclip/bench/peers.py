"""Other SNN libraries' LIF neurons with the same settings as ours, when they are installed:
tau 2, decay_input, threshold 1, hard reset to 0, no detach, sigmoid surrogate alpha 4."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable

import torch


def _skipped(name: str, exc: ImportError) -> None:
    """Say why a peer is left out of a table (once per peer), unless it is simply absent."""
    if name not in _SAID and importlib.util.find_spec(name) is not None:
        _SAID.add(name)
        print(f"# {name} is installed but does not import ({exc}): left out")


_SAID: set[str] = set()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def spikingjelly_node(device, v_th: float = 1.0, detach_reset: bool = False):
    """SpikingJelly's multi-step LIFNode (tau 2, hard reset to 0, sigmoid 4), or None."""
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError as exc:
        _skipped("spikingjelly", exc)
        return None
    return neuron.LIFNode(
        tau=2.0,
        decay_input=True,
        v_threshold=v_th,
        v_reset=0.0,
        detach_reset=detach_reset,
        surrogate_function=surrogate.Sigmoid(alpha=4.0),
        step_mode="m",
    ).to(device)


def spikingjelly_lif(device: torch.device) -> tuple[str, Callable] | None:
    """(label, fn(x) -> spikes) for SpikingJelly's multi-step LIFNode, or None."""
    node = spikingjelly_node(device)
    if node is None:
        return None
    # 0.0.0.0.14 has backend= ('torch' | 'cupy'); 2.0.0 picks its own kernels.
    backend = getattr(node, "backend", None)
    if device.type == "cuda" and "cupy" in getattr(node, "supported_backends", ()):
        node.backend = backend = "cupy"

    def run(x: torch.Tensor) -> torch.Tensor:
        node.reset()
        return node(x)

    suffix = f" ({backend})" if backend else ""
    return f"spikingjelly {_version('spikingjelly')}{suffix}", run


def snntorch_leaky(device: torch.device) -> tuple[str, Callable] | None:
    """(label, fn(x) -> spikes) for snnTorch's Leaky stepped over T (beta = 1 - 1/tau)."""
    try:
        import snntorch
    except ImportError as exc:
        _skipped("snntorch", exc)
        return None
    leaky = snntorch.Leaky(
        beta=0.5,
        threshold=1.0,
        reset_mechanism="zero",
        spike_grad=snntorch.surrogate.fast_sigmoid(),
    ).to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        mem = leaky.init_leaky()
        out = []
        for t in range(x.shape[0]):
            spk, mem = leaky(x[t], mem)
            out.append(spk)
        return torch.stack(out)

    return f"snntorch {_version('snntorch')}", run
