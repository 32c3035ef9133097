"""Other SNN libraries' LIF neurons with the same settings as ours, when they are installed
(tau 2, decay_input, threshold 1, hard reset to 0, no detach, sigmoid surrogate alpha 4, unless
a model's LIF says otherwise), alone or swapped into one of our networks."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable

import torch
from torch import nn

from spikeclip.models import LIF, AttentionCore, set_memory


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


def spikingjelly_node(
    device, v_th: float = 1.0, detach_reset: bool = False, tau: float = 2.0, alpha: float = 4.0,
    w: torch.Tensor | None = None,
):  # fmt: skip
    """SpikingJelly's multi-step LIFNode (decay_input, hard reset to 0, sigmoid surrogate), on
    its CUDA kernels where it has them (0.0.0.0.14: backend "cupy"; 2.0: its own choice, which
    SJ_LIF_CUDA_IMPLEMENTATION=triton fixes), or None when SpikingJelly does not import.
    w: a learnable tau's parameter (tau = 1 / sigmoid(w)): a ParametricLIFNode starting there."""
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except ImportError as exc:
        _skipped("spikingjelly", exc)
        return None
    kind, first = (
        (neuron.LIFNode, {"tau": float(tau)})
        if w is None
        else (neuron.ParametricLIFNode, {"init_tau": float(1.0 / torch.sigmoid(w.detach()))})
    )
    node = kind(
        **first,
        decay_input=True,
        v_threshold=v_th,
        v_reset=0.0,
        detach_reset=detach_reset,
        surrogate_function=surrogate.Sigmoid(alpha=alpha),
        step_mode="m",
    ).to(device)
    if w is not None:
        with torch.no_grad():
            node.w.copy_(w)
    if torch.device(device).type == "cuda" and "cupy" in getattr(node, "supported_backends", ()):
        node.backend = "cupy"
    return node


def spikingjelly_label(device) -> str:
    """ "spikingjelly VERSION (the kernels it runs on `device`)" for tables."""
    version = _version("spikingjelly")
    if torch.device(device).type != "cuda":
        return f"spikingjelly {version} (torch)"
    if version.startswith("0."):
        return f"spikingjelly {version} (cupy)"
    return f"spikingjelly {version} ({os.environ.get('SJ_LIF_CUDA_IMPLEMENTATION', 'auto')})"


class SpikingJellyNeuron(nn.Module):
    """A SpikingJelly LIFNode in place of one of our LIFs (state reset at every call)."""

    def __init__(self, node):
        super().__init__()
        self.node = node

    def forward(self, x):
        self.node.reset()
        return self.node(x)


def with_spikingjelly(model: nn.Module, device) -> nn.Module | None:
    """`model` (changed in place) with every LIF replaced by SpikingJelly's LIFNode with the
    same settings, and every attention computed as the reference computes it with SpikingJelly's
    LIF; dense layers plain (set_memory "plain"). None when SpikingJelly does not import."""
    if spikingjelly_node(device) is None:
        return None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LIF):
                if child.v_reset != 0.0 or child.surrogate != "sigmoid" or not child.decay_input:
                    raise ValueError(f"with_spikingjelly: no LIFNode settings for {child}")
                node = spikingjelly_node(
                    device, child.v_th, child.detach_reset, child.tau or 2.0, child.alpha or 4.0,
                    w=child.w,
                )  # fmt: skip
                setattr(parent, name, SpikingJellyNeuron(node))
            elif isinstance(child, AttentionCore):
                o = child.lif_options
                node = spikingjelly_node(
                    device, o["v_th"], o["detach_reset"], o["tau"], o["alpha"] or 4.0
                )
                child.sj = SpikingJellyNeuron(node)
                child.forward = _peer_attention(child)
    set_memory(model, "plain")
    return model


def _peer_attention(core):
    """The reference's attention math with core.sj as its LIF (kernels/attention/reference.py)."""

    def attend(q, k, v):
        if core.kind == "ssa":
            return core.sj(q @ (k.transpose(-2, -1) @ v) * core.scale)
        return q * core.sj((k * v).sum(-2, keepdim=True))

    return attend


def spikingjelly_lif(device: torch.device) -> tuple[str, Callable] | None:
    """(label, fn(x) -> spikes) for SpikingJelly's multi-step LIFNode, or None."""
    node = spikingjelly_node(device)
    if node is None:
        return None
    return spikingjelly_label(device), SpikingJellyNeuron(node)


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
