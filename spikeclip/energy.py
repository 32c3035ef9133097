"""Energy estimate of a network from what it does on real inputs (SpikeCLIP's line of work):

- a layer fed by spikes (its input holds only 0 and 1) costs synaptic operations: SOPs =
  input spikes x the MACs each one fans out to (Linear: out_features; Conv2d: counted exactly
  per spike, borders included; spiking attention: see `_attention_ops`);
- a layer fed by real values (the first conv, the readout projection, every layer of an ANN)
  costs its dense multiply-accumulates (MACs);
- energy = 0.9 pJ per SOP + 4.6 pJ per MAC (45 nm); membrane updates, normalisation and
  pooling are not counted, as in that line of work.

`estimate(module, inputs)` runs one forward pass with hooks and returns an EnergyReport:
per-layer rows, firing rates of every LIF (and every spiking attention's LIF), totals per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spikeclip.models.blocks import AttentionCore
from spikeclip.models.image_encoder import ImageEncoder
from spikeclip.models.neurons import LIF
from spikeclip.models.spikeclip_model import SpikeCLIP
from spikeclip.models.text_encoder import TextEncoder

SOP_PJ = 0.9
MAC_PJ = 4.6


@dataclass
class LayerEnergy:
    """One layer's work over the whole forward pass (all images, all time steps)."""

    name: str
    kind: str  # linear | conv | attention | neuron
    sops: int = 0
    macs: int = 0
    firing_rate: float | None = None  # neurons: output spikes per neuron per step
    calls: int = 0

    def energy_pJ(self) -> float:
        return self.sops * SOP_PJ + self.macs * MAC_PJ


@dataclass
class EnergyReport:
    rows: list[LayerEnergy]
    images: int
    extra: dict = field(default_factory=dict)

    @property
    def sops_per_image(self) -> float:
        return sum(r.sops for r in self.rows) / self.images

    @property
    def macs_per_image(self) -> float:
        return sum(r.macs for r in self.rows) / self.images

    @property
    def total_mJ(self) -> float:
        """Energy per image, in millijoules."""
        return sum(r.energy_pJ() for r in self.rows) / self.images * 1e-9

    @property
    def firing_rates(self) -> dict[str, float]:
        return {r.name: r.firing_rate for r in self.rows if r.firing_rate is not None}

    @property
    def mean_firing_rate(self) -> float | None:
        rates = list(self.firing_rates.values())
        return sum(rates) / len(rates) if rates else None

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "total_mJ": self.total_mJ,
            "sops_per_image": self.sops_per_image,
            "macs_per_image": self.macs_per_image,
            "rows": [
                {**r.__dict__, "mJ_per_image": r.energy_pJ() / self.images * 1e-9}
                for r in self.rows
            ],
        }

    def table(self) -> str:
        lines = [
            f"{'layer':44s} {'kind':9s} {'rate':>6s} {'SOPs/img':>12s} {'MACs/img':>12s} "
            f"{'uJ/img':>9s}"
        ]
        for r in self.rows:
            rate = f"{r.firing_rate:.3f}" if r.firing_rate is not None else ""
            lines.append(
                f"{r.name:44s} {r.kind:9s} {rate:>6s} {r.sops / self.images:12.4g} "
                f"{r.macs / self.images:12.4g} {r.energy_pJ() / self.images * 1e-6:9.3f}"
            )
        lines.append(
            f"{'total':44s} {'':9s} {'':6s} {self.sops_per_image:12.4g} "
            f"{self.macs_per_image:12.4g} {self.total_mJ * 1e3:9.3f}"
        )
        return "\n".join(lines)

    def plot_firing_rates(self, path) -> None:
        """Bar chart of every neuron's firing rate, written as PNG to `path`."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rates = self.firing_rates
        if not rates:
            raise ValueError("no firing rates to plot: the network has no spiking neurons")
        fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(rates)), 4.0))
        ax.bar(range(len(rates)), list(rates.values()), color="#3b6ea8")
        ax.set_xticks(range(len(rates)), list(rates), rotation=90, fontsize=7)
        ax.set_ylabel("firing rate (spikes / neuron / step)")
        ax.set_title(f"firing rates (mean {self.mean_firing_rate or 0:.3f})")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def is_spikes(x: torch.Tensor) -> bool:
    """True when x holds only 0 and 1 (a spike tensor)."""
    return bool(((x == 0) | (x == 1)).all())


def _linear_ops(m: nn.Linear, x: torch.Tensor) -> tuple[int, int]:
    if is_spikes(x):
        return int(torch.count_nonzero(x)) * m.out_features, 0
    return 0, x.numel() // m.in_features * m.in_features * m.out_features


def _conv_ops(m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    cin_g, g = m.in_channels // m.groups, m.groups
    kh, kw = m.kernel_size
    if is_spikes(x) and m.padding_mode == "zeros":
        # Each output position sums over its receptive field: count the spikes inside it,
        # per group, and multiply by the group's output channels.
        ones = torch.ones(g, cin_g, kh, kw, dtype=torch.float64, device=x.device)
        x = x.flatten(0, -4) if x.dim() > 4 else x  # [T, B, C, H, W] (SpikingConv2d)
        fed = F.conv2d((x != 0).double(), ones, None, m.stride, m.padding, m.dilation, g)
        return int(fed.sum().item()) * (m.out_channels // g), 0
    return 0, y.numel() * cin_g * kh * kw


def _attention_ops(m, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int]:
    """SSA q @ k^T @ v in the cheaper association; each spike fans out to a row: k^T @ v costs
    nnz(k) x d, q @ (k^T v) nnz(q) x d (N > d), else q @ k^T nnz(q) x N and (q k^T) @ v
    nnz(v) x N. SDSA: k * v gates and accumulates nnz(k), q * s gates nnz(q). Dense MACs for
    the ANN counterpart."""
    N, d = q.shape[-2:]
    heads = q.numel() // (N * d)
    if m.kind == "ssa":
        if m.spiking:
            if d < N:
                return (int(torch.count_nonzero(k)) + int(torch.count_nonzero(q))) * d, 0
            return (int(torch.count_nonzero(q)) + int(torch.count_nonzero(v))) * N, 0
        return 0, heads * 2 * N * d * min(N, d)
    if m.spiking:
        return int(torch.count_nonzero(k)) + int(torch.count_nonzero(q)), 0
    return 0, 2 * q.numel()


def counts_ops(module: nn.Module) -> bool:
    """Whether the estimate counts `module`'s SOPs/MACs (linear, convolution, attention)."""
    return isinstance(module, nn.Linear | nn.Conv2d | AttentionCore)


def spike_fed_layers(module: nn.Module):
    """(name, layer) of every layer of `module` whose operations the estimate counts; which of
    them a forward pass feeds with spikes (SOPs) or real values (MACs) shows on their inputs."""
    return [(name, m) for name, m in module.named_modules() if counts_ops(m)]


def op_inputs(layer: nn.Module, args: tuple) -> list[torch.Tensor]:
    """The inputs whose spikes `layer`'s operations count: q, k, v of an attention, else the
    first argument (a layer may take more, e.g. its input's packed bits)."""
    return list(args[:3]) if isinstance(layer, AttentionCore) else [args[0]]


def layer_ops(layer: nn.Module, xs: list[torch.Tensor], out) -> tuple[int, int]:
    """(SOPs, MACs) of one call of a layer that counts_ops on inputs xs (op_inputs) -> out."""
    if isinstance(layer, nn.Linear):
        return _linear_ops(layer, xs[0])
    if isinstance(layer, nn.Conv2d):
        return _conv_ops(layer, xs[0], out)
    return _attention_ops(layer, *xs)


def layer_kind(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return "linear"
    return "conv" if isinstance(layer, nn.Conv2d) else "attention"


def full_firing_sops(layer: nn.Module, xs: list[torch.Tensor]) -> list[float]:
    """Per input of xs: the SOPs of one call of `layer` if every element of that input fired
    and none of the others (the counts add up: an attention's SOPs are those of its q and k,
    or q and v, and the third input's entry is 0)."""
    with torch.no_grad():
        zeros = [torch.zeros(x.shape, dtype=torch.float32, device=x.device) for x in xs]
        return [
            float(layer_ops(layer, [*zeros[:i], torch.ones_like(z), *zeros[i + 1 :]], None)[0])
            for i, z in enumerate(zeros)
        ]


def takes_sequences(module: nn.Module) -> bool:
    """Whether `module` is fed `[T, B, ...]`: it holds multi-step neurons and is not one of
    SpikeCLIP's encoders (which take `[B, ...]` and repeat it over T themselves)."""
    if isinstance(module, ImageEncoder | TextEncoder | SpikeCLIP):
        return False
    return any(isinstance(m, LIF) and m.step_mode == "m" for m in module.modules())


@torch.no_grad()
def estimate(
    module: nn.Module, inputs, *, images: int | None = None, time_major: bool | None = None
) -> EnergyReport:
    """Run module(*inputs) once and count its SOPs and MACs (see the module docstring).

    inputs: a tensor or a tuple of positional arguments. Figures are per image: `images`
    divides the totals; by default the batch size of the first input, its dim 1 when the
    input is a sequence `[T, B, ...]` (time_major; None: `takes_sequences(module)`, true for
    a network of multi-step neurons other than SpikeCLIP's encoders), else its dim 0."""
    args = inputs if isinstance(inputs, tuple | list) else (inputs,)
    if time_major is None:
        time_major = takes_sequences(module)
    if images is None:
        first = args[0]
        if not isinstance(first, torch.Tensor):
            images = len(first)
        elif time_major:
            if first.dim() < 2:
                raise ValueError(
                    f"energy.estimate: a sequence input must be [T, B, ...], got shape "
                    f"{tuple(first.shape)} (time_major=False for batch-first input)"
                )
            images = int(first.shape[1])
        else:
            images = int(first.shape[0])
    if images < 1:
        raise ValueError(f"energy.estimate needs at least one input, got {images}")

    rows: dict[str, LayerEnergy] = {}
    counts: dict[str, list[float]] = {}

    def row(name, kind):
        return rows.setdefault(name, LayerEnergy(name, kind))

    def hook_for(name, m):
        def hook(mod, inp, out):
            if isinstance(mod, LIF) or (isinstance(mod, AttentionCore) and mod.spiking):
                kind = "neuron" if isinstance(mod, LIF) else "attention"
                r = row(name, kind)
                c = counts.setdefault(name, [0.0, 0.0])
                c[0] += float(torch.count_nonzero(out))
                c[1] += out.numel()
                r.firing_rate = c[0] / c[1]
            if counts_ops(mod):
                s, a = layer_ops(mod, op_inputs(mod, inp), out)
                kind = layer_kind(mod)
            elif hasattr(mod, "energy_ops"):  # a module that counts itself
                s, a = mod.energy_ops(inp, out)
                kind = "attention"
            else:
                rows[name].calls += 1
                return
            r = row(name, kind)
            r.sops += s
            r.macs += a
            r.calls += 1

        return hook

    handles = []
    for name, m in module.named_modules():
        if counts_ops(m) or isinstance(m, LIF) or hasattr(m, "energy_ops"):
            handles.append(m.register_forward_hook(hook_for(name or type(m).__name__, m)))
    try:
        module(*args)
    finally:
        for h in handles:
            h.remove()
    return EnergyReport(list(rows.values()), images)
