"""The firing-rate term of the fine-tuning loss (`--firing-weight`, `--firing-target`): it trades
spikes, and so synaptic operations (the energy estimate's SOPs), for accuracy.

    term = firing_weight * sum_i N_i * max(0, rate_i - firing_target) / sum_i N_i

over the spike inputs i of the encoder's spike-fed layers (linear, convolution, spiking
attention: the layers whose SOPs spikeclip.energy counts; an attention has three, q, k and v),
where rate_i is the mean of input i in this forward pass (differentiable through the neurons'
surrogate gradients) and N_i the SOPs its layer would cost if every element of i fired
(spikeclip.energy's own count: fan-out and borders included; 0 for an input that costs none,
as SSA's v when d < N). sum_i N_i rate_i is the estimate's SOPs (exactly for linear layers and
attention; for a convolution up to its border positions), so with firing_target 0 the term is
firing_weight x the encoder's SOPs / their ceiling: its synaptic energy, as a fraction; with a
target, inputs that fire below it are left alone. Layers fed by real values (the first
convolution, the readout) cost MACs that spikes do not change and are not in the sum.
"""

from __future__ import annotations

import torch
from torch import nn

from spikeclip.energy import full_firing_sops, is_spikes, op_inputs, spike_fed_layers
from spikeclip.models.layers import SeqConvBN, SeqLinearBN


class FiringPenalty:
    """Hooks on `encoder`'s spike-fed layers while in a `with` block; `take()` after each forward
    returns (the term, the SOP-weighted mean input firing rate) of that forward."""

    def __init__(self, encoder: nn.Module, weight: float, target: float):
        if not 0.0 <= target < 1.0:
            raise ValueError(f"firing_target must be in [0, 1), got {target!r}")
        self.encoder, self.weight, self.target = encoder, float(weight), float(target)
        self._spike_fed: dict[str, bool] = {}  # decided on each layer's first input
        self._full: dict[tuple, list[float]] = {}  # N_i per layer and input shapes
        self._terms: list[tuple[str, float, torch.Tensor]] = []  # (layer, N_i, rate_i)
        self._handles = []

    def __enter__(self) -> FiringPenalty:
        # the encoder's own call starts a forward pass: what an earlier pass (or a backward's
        # recomputation of a unit) recorded is dropped there
        self._handles.append(self.encoder.register_forward_pre_hook(lambda m, a: self._clear()))
        for name, watched, layer, inputs in _watch_points(self.encoder):
            self._handles.append(watched.register_forward_pre_hook(self._hook(name, layer, inputs)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._clear()

    def _clear(self) -> None:
        self._terms.clear()

    def _hook(self, name: str, layer: nn.Module, inputs):
        def hook(module, args):
            if not torch.is_grad_enabled():
                return
            xs = inputs(args)
            if name not in self._spike_fed:
                with torch.no_grad():
                    self._spike_fed[name] = all(is_spikes(x) for x in xs)
            if not self._spike_fed[name]:
                return
            key = (name, *(tuple(x.shape) for x in xs))
            if key not in self._full:
                self._full[key] = full_firing_sops(layer, xs)
            for full, x in zip(self._full[key], xs, strict=True):
                if full > 0:
                    self._terms.append((name, full, x.mean(dtype=torch.float32)))

        return hook

    def take(self) -> tuple[torch.Tensor, float]:
        """(term, SOP-weighted mean input firing rate) of the forward pass just run; a pass that
        reached no spike-fed layer gives a zero term."""
        terms, self._terms = self._terms, []
        if not terms:
            return torch.zeros(()), 0.0
        total = sum(full for _, full, _ in terms)
        excess = sum(full * torch.relu(rate - self.target) for _, full, rate in terms)
        # the logged rate: one device sync, not one per input
        fulls = torch.tensor([full for _, full, _ in terms], dtype=torch.float64)
        rates = torch.stack([rate.detach() for _, _, rate in terms]).double().cpu()
        return self.weight * excess / total, float(fulls @ rates) / total


def _watch_points(encoder: nn.Module):
    """(name, the module whose input to watch, the counted layer, args -> the layer's spike
    inputs) for each spike-fed layer of `encoder`. A linear/conv + BN unit's op is watched at
    the unit's own input (the same elements, time folded into the batch): a unit that keeps its
    input packed runs its op inside an autograd Function, where that input has no gradient."""
    units = {id(m.op): m for m in encoder.modules() if isinstance(m, SeqConvBN | SeqLinearBN)}
    for name, layer in spike_fed_layers(encoder):
        unit = units.get(id(layer))
        if unit is not None:
            yield name, unit, layer, lambda args: [args[0].flatten(0, 1)]
        else:
            yield name, layer, layer, lambda args, layer=layer: op_inputs(layer, args)
