"""`accelerate(model)`: a SpikingJelly or snnTorch network onto our fused kernels, in place.

Each module it changes keeps its identity, parameters, buffers, state and state_dict keys: its
class becomes our subclass of the peer's class (`spikeclip.compat.spikingjelly`), so optimizers
built before, checkpoints, `functional.reset_net`, `set_step_mode`, deepcopy and `.to()` keep
working. A module is changed only where our kernels compute exactly what the peer's code does;
every other neuron or attention module is left as it is and named in the report with the reason.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass, field

from torch import nn

from spikeclip.kernels.backends import BACKENDS

MEMORY_OPTIONS = (None,)


@dataclass
class AccelerateReport:
    """What `accelerate` did: replaced[type name] = count; left = [(module path, reason)]."""

    replaced: Counter = field(default_factory=Counter)
    already: Counter = field(default_factory=Counter)
    left: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = ["spikeclip.accelerate:"]
        for name, n in sorted(self.replaced.items()):
            lines.append(f"  replaced {n} x {name}")
        for name, n in sorted(self.already.items()):
            lines.append(f"  already accelerated {n} x {name}")
        if not self.replaced and not self.already:
            lines.append("  replaced nothing")
        for path, why in self.left:
            lines.append(f"  left {path or '(the model)'}: {why}")
        return "\n".join(lines)


def _peer_modules():
    """(neuron classes, attention classes, base classes that mark a peer neuron) of the peers
    that are installed; spikingjelly is imported only when it is installed."""
    neurons, attention, markers = {}, {}, ()
    if importlib.util.find_spec("spikingjelly") is not None:
        from spikeclip.compat import spikingjelly as sj  # heavy, optional: only when installed

        neurons.update(sj.NEURONS)
        attention.update(sj.ATTENTION)
        markers += (sj._sj_neuron.BaseNode,)
    if importlib.util.find_spec("snntorch") is not None:
        from snntorch._neurons.neurons import SpikingNeuron  # optional peer

        markers += (SpikingNeuron,)
    return neurons, attention, markers


def _snntorch_reason(module) -> str:
    return (
        f"snnTorch {type(module).__name__} is left on snnTorch's code: it steps once per call "
        "from a Python loop, fires on mem > threshold (ours: >=) and keeps the membrane before "
        "its delayed reset as its state, none of which our fused sweep reproduces exactly"
    )


def accelerate(model: nn.Module, *, backend: str = "auto", memory: str | None = None,
               attention: bool = True) -> AccelerateReport:  # fmt: skip
    """Move `model`'s SpikingJelly neurons (and, with attention=True, its spiking
    self-attention) onto spikeclip's fused kernels, in place; returns an `AccelerateReport`.

    backend: our kernels' backend for every replaced module ("auto": cpp on CPU tensors,
    cuda/triton on GPU ones). memory: None (what the model saves for its backward is left as it
    is). Calling it again changes nothing. Replaced: SpikingJelly 2.0 LIFNode,
    ParametricLIFNode, IFNode of exactly those classes with settings we compute (see
    spikeclip.compat.spikingjelly); SpikingSelfAttention (Spikformer, QKFormer's last stages)
    and SpikeDrivenSelfAttention whose attention LIF we compute.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if memory not in MEMORY_OPTIONS:
        raise ValueError(
            f"memory must be one of {MEMORY_OPTIONS}, got {memory!r} (packing the input of "
            "SpikingJelly's spike-fed units is not built yet)"
        )
    if not isinstance(attention, bool):
        raise TypeError(f"attention must be True or False, got {attention!r}")
    neurons, attentions, markers = _peer_modules()
    ours = {cls: cls for cls in (*neurons.values(), *attentions.values())}
    report = AccelerateReport()
    for path, module in model.named_modules():
        cls = type(module)
        if cls in ours:
            report.already[cls.__name__] += 1
            module.kernel_backend = backend
            continue
        if cls in attentions:
            if not attention:
                report.left.append((path, f"{cls.__name__}: attention=False"))
                continue
            from spikeclip.compat.spikingjelly import attention_lif_reason

            why = attention_lif_reason(module.attn_lif)
            if why is not None:
                report.left.append((path, f"{cls.__name__} keeps its own attention: {why}"))
                continue
            module.__class__ = attentions[cls]
            module.kernel_backend = backend
            report.replaced[cls.__name__] += 1
        elif cls in neurons:
            from spikeclip.compat.spikingjelly import unsupported_reason

            why = unsupported_reason(module)
            if why is not None:
                report.left.append((path, f"{cls.__name__}: {why}"))
                continue
            module.__class__ = neurons[cls]
            module.kernel_backend = backend
            report.replaced[cls.__name__] += 1
        elif markers and isinstance(module, markers):
            if cls.__module__.startswith("snntorch"):
                report.left.append((path, _snntorch_reason(module)))
            else:
                report.left.append(
                    (path, f"{cls.__module__}.{cls.__qualname__} is not a neuron we compute")
                )
    return report
