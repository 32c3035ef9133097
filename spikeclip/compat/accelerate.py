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

from spikeclip.compat import pooling
from spikeclip.compat.pooling import pool_kind
from spikeclip.kernels.common.backends import BACKENDS

MEMORY_OPTIONS = (None, "lossless")


@dataclass
class AccelerateReport:
    """What `accelerate` did: replaced[type name] = count; left = [(module path, reason)]."""

    replaced: Counter = field(default_factory=Counter)
    already: Counter = field(default_factory=Counter)
    restored: Counter = field(default_factory=Counter)
    left: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = ["spikeclip.accelerate:"]
        for name, n in sorted(self.replaced.items()):
            lines.append(f"  replaced {n} x {name}")
        for name, n in sorted(self.already.items()):
            lines.append(f"  already accelerated {n} x {name}")
        for name, n in sorted(self.restored.items()):
            lines.append(f"  back to the peer's own {n} x {name}")
        if not self.replaced and not self.already and not self.restored:
            lines.append("  replaced nothing")
        for path, why in self.left:
            lines.append(f"  left {path or '(the model)'}: {why}")
        return "\n".join(lines)


def _peer_classes(attention: bool, memory: str | None):
    """({peer class: the class it becomes with these options}, peer neuron base classes,
    {peer class: the option that keeps it}) for the installed peers; spikingjelly is imported
    only when it is installed."""
    targets, markers, off = dict(pooling.NEEDS), (), {}
    if importlib.util.find_spec("spikingjelly") is not None:
        from spikeclip.compat import spikingjelly as sj  # heavy, optional: only when installed

        targets.update(sj.NEURONS)
        targets.update(sj.POOLS)
        markers += (sj._sj_neuron.BaseNode,)
        if attention:
            targets.update(sj.ATTENTION)
        else:
            off.update(dict.fromkeys(sj.ATTENTION, "attention=False"))
        from spikeclip.compat import spikingjelly_units as units

        units.add_model_zoo_blocks()
        lossless = memory == "lossless"
        targets.update(units.BLOCKS if lossless else units.FUSED_BLOCKS)
        if attention:
            targets.update(units.ATTENTION if lossless else units.FUSED_ATTENTION)
    if importlib.util.find_spec("snntorch") is not None:
        from snntorch._neurons.neurons import SpikingNeuron  # optional peer

        markers += (SpikingNeuron,)
    return targets, markers, off


def _peer_class(cls):
    """The peer's class that `cls` (one of ours, or the peer's own) stands for."""
    return next((c for c in cls.__mro__ if not c.__module__.startswith("spikeclip.")), cls)


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

    backend: our kernels' backend for every replaced module ("auto": cpp on CPU tensors, cuda/triton
    on GPU ones). memory: None (Spikformer's and SEW-ResNet's BN + neuron pairs run fused on
    the CPU, keeping for the backward what BN alone keeps) or "lossless": their conv/linear +
    BN (+ pool) + neuron units keep only their input for the backward, 1 bit per element where
    it holds spikes, and recompute themselves (spikeclip.compat.spikingjelly_units; the same
    gradients). Calling it again with
    the same options changes nothing; with other options, it moves each module to them.
    Replaced: SpikingJelly 2.0 LIFNode, ParametricLIFNode, IFNode of exactly those classes with
    settings we compute (spikeclip.compat.spikingjelly); SpikingSelfAttention (Spikformer,
    QKFormer's last stages) and SpikeDrivenSelfAttention whose attention LIF we compute; PyTorch's
    and SpikingJelly's MaxPool2d of the shapes our pool kernels compute (compat.pooling).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if memory not in MEMORY_OPTIONS:
        raise ValueError(
            f"memory must be one of {MEMORY_OPTIONS}, got {memory!r} (packing the input of "
            "SpikingJelly's spike-fed units: 'lossless')"
        )
    if not isinstance(attention, bool):
        raise TypeError(f"attention must be True or False, got {attention!r}")
    targets, markers, off = _peer_classes(attention, memory)
    report = AccelerateReport()
    for path, module in model.named_modules():
        cls = type(module)
        peer = _peer_class(cls)
        wanted = targets.get(peer, peer)
        if cls.__module__.startswith("spikeclip.compat"):
            if wanted is peer:  # asked for without the option it was accelerated with
                module.__class__ = peer
                module.__dict__.pop("kernel_backend", None)
                report.restored[peer.__name__] += 1
                continue
            module.kernel_backend = backend
            if cls is wanted:
                report.already[peer.__name__] += 1
                continue
        elif wanted is peer:
            if markers and isinstance(module, markers):
                report.left.append((path, _left_reason(module)))
            elif peer in off:
                report.left.append((path, f"{peer.__name__}: {off[peer]}"))
            continue
        why = _why_not(module, peer)
        if why == _NOT_OURS:
            continue
        if why is not None:
            report.left.append((path, f"{peer.__name__}: {why}"))
            continue
        module.__class__ = wanted
        module.kernel_backend = backend
        report.replaced[peer.__name__] += 1
    return report


def _left_reason(module) -> str:
    cls = type(module)
    if cls.__module__.startswith("snntorch"):
        return _snntorch_reason(module)
    return f"{cls.__module__}.{cls.__qualname__} is not a neuron we compute"


_NOT_OURS = ""  # a module of a class we know, set up as nothing we compute: not reported


def _why_not(module, peer) -> str | None:
    """Why `module` (of the peer's class `peer`) cannot take our class, or None."""
    if isinstance(module, nn.MaxPool2d):
        return None if pool_kind(module) is not None else _NOT_OURS
    from spikeclip.compat import spikingjelly as sj

    if peer in sj.NEURONS:
        return sj.unsupported_reason(module)
    if peer in sj.ATTENTION:
        why = sj.attention_lif_reason(module.attn_lif)
        return None if why is None else f"keeps its own attention: {why}"
    return None
