"""SpikingJelly's conv/linear + BatchNorm (+ pool) + neuron units on our kernels, two ways:
- memory=None (`fused_forward`): the BatchNorm and the neuron after it run as one fused pass
  (spikeclip.kernels.bn_lif, cpp on CPU): the normalised BN output never goes to memory and
  the backward keeps only the conv's output, as BatchNorm alone does. Units with a pool between
  BN and neuron, a PLIF, hooks on either module, or tensors off the CPU run as they are.
- memory="lossless" (`unit_forward`): the unit keeps only its input for the backward, packed 1
  bit per element when it holds spikes (as our own units do, spikeclip.models.recompute), and
  recomputes itself there.
Same outputs and gradients either way.

A unit spans two sibling modules (SpikingJelly's `SeqToANNContainer(conv, bn)` and the neuron
after it), so it is formed only inside blocks whose forward is known to feed the container to
that neuron alone: Spikformer's conv-BN-LIF stem stages and MLP, its SSA
(`spikeclip.compat.spikingjelly`), SEW-ResNet's BasicBlock and (fused only) the Spike-driven
Transformer's SDSA q, k and v stages. Their classes become the subclasses below (BLOCKS /
ATTENTION with memory="lossless", FUSED_BLOCKS / FUSED_ATTENTION without).
"""

from __future__ import annotations

import sys
import weakref

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import layer as sj_layer
from spikingjelly.activation_based.model import spikformer as sj_spikformer
from torch import nn

from spikeclip.compat import pooling
from spikeclip.compat import spikingjelly as compat
from spikeclip.kernels.bn_lif.op import bn_lif, fused_backend
from spikeclip.kernels.bn_pool.op import bn_max_pool, bn_pool_backend
from spikeclip.kernels.common.backends import spike_product_backend
from spikeclip.kernels.common.batch_norm import batch_norm_args
from spikeclip.kernels.common.options import lif_options
from spikeclip.kernels.spike_products.conv import conv_takes_spikes, spike_conv2d
from spikeclip.models.kernel_policy import runs_cpp_kernels
from spikeclip.models.layers import hooked
from spikeclip.models.recompute import packed_recompute, recompute

# The layers a unit may hold: PyTorch's (inside a SeqToANNContainer, which folds T into the
# batch) and SpikingJelly's multi-step wrappers of them (which fold it the same way).
_PLAIN = {"op": (nn.Conv1d, nn.Conv2d, nn.Linear), "bn": (nn.BatchNorm1d, nn.BatchNorm2d),
          "pool": (nn.MaxPool2d, pooling.MaxPool2d)}  # fmt: skip
_STEPPED = {"op": (sj_layer.Conv1d, sj_layer.Conv2d, sj_layer.Linear),
            "bn": (sj_layer.BatchNorm1d, sj_layer.BatchNorm2d),
            "pool": (sj_layer.MaxPool2d, compat.MaxPool2d)}  # fmt: skip


def _is(module, kind: str, stepped: bool) -> bool:
    if stepped:
        return type(module) in _STEPPED[kind] and module.step_mode == "m"
    return type(module) in _PLAIN[kind]


def unit_parts(stage) -> tuple | None:
    """(op, bn, pool or None) of `stage` (a SeqToANNContainer of plain layers, or a sequence of
    SpikingJelly's multi-step ones) if we can recompute it, else None."""
    parts = list(stage)
    stepped = not isinstance(stage, sj_layer.SeqToANNContainer)
    pool = parts.pop() if len(parts) == 3 and _is(parts[2], "pool", stepped) else None
    if len(parts) != 2 or not _is(parts[0], "op", stepped) or not _is(parts[1], "bn", stepped):
        return None
    op, bn = parts
    if isinstance(op, nn.Conv2d | nn.Conv1d) and op.padding_mode != "zeros":
        return None
    if not bn.track_running_stats or bn.momentum is None:
        return None
    return op, bn, pool


class _Unit:
    """stage + neuron as one function of x for spikeclip.models.recompute."""

    recompute_reads_bits = False

    def __init__(self, stage, neuron):
        self.stage, self.neuron = stage, neuron
        self.op, self.bn, self.pool = unit_parts(stage)

    def params(self) -> list[torch.Tensor]:
        own = [self.op.weight, self.op.bias, self.bn.weight, self.bn.bias]
        return [p for p in own if p is not None] + list(self.neuron.parameters())

    def recompute_state(self):
        bn = self.bn
        stats = (None, None) if bn.training else (bn.running_mean.clone(), bn.running_var.clone())
        return bn.training, *stats

    def unit(self, x, state=None, params=None, bits=None):
        if params is None:  # the first forward: the modules themselves (BN statistics once)
            return fused_forward(self.stage, self.neuron, x)
        training, mean, var = state
        params = list(params)
        weight = params.pop(0)
        bias = params.pop(0) if self.op.bias is not None else None
        gamma = params.pop(0) if self.bn.weight is not None else None
        beta = params.pop(0) if self.bn.bias is not None else None
        z = x.flatten(0, 1)
        if isinstance(self.op, nn.Linear):
            z = F.linear(z, weight, bias)
        else:
            summed = spike_fed(self.op, z, weight) if bias is None else None
            z = self.op._conv_forward(z, weight, bias) if summed is None else summed
        bn_args = (mean, var, gamma, beta, training, 0.0, self.bn.eps)
        fuse = self.pool is None and not params  # no pool between, no PLIF w
        if fuse and _fusable(self.neuron, self.bn, at_rest=False) and fused_backend(z) == "cpp":
            spikes = _bn_neuron(z, x.shape[0], bn_args, self.neuron)  # fused, as the forward
            return spikes.unflatten(0, x.shape[:2])
        pooled = _bn_pool(self.bn, self.pool, z, bn_args)
        if pooled is not None:
            z = pooled
        else:
            z = F.batch_norm(z, *bn_args)
            if self.pool is not None:
                p = self.pool
                z = pooling.byte_pool(p, z, lambda t: F.max_pool2d(
                    t, p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode))  # fmt: skip
        z = z.unflatten(0, x.shape[:2])
        w = params[0] if params else None  # a PLIF's w (the only neuron parameter we run)
        spikes, _ = self.neuron._step_through_lif(z, None, w)  # from rest, as the forward
        return spikes


def _run(stage, x):
    """stage(x): a container, or its layers one after another."""
    if callable(stage):
        return stage(x)
    for module in stage:
        x = module(x)
    return x


# Convolutions seen fed something other than spikes: convolved densely from then on.
_DENSE_FED: weakref.WeakSet = weakref.WeakSet()


def _summed_conv(op) -> bool:
    """Whether spike_conv2d computes `op`: a Conv2d it takes (conv_takes_spikes), or a Conv1d of
    kernel 1 in the same terms (a 1x1 convolution of a [N, C, L, 1] image)."""
    if type(op) in (nn.Conv2d, sj_layer.Conv2d):
        return conv_takes_spikes(op)
    return (
        type(op) in (nn.Conv1d, sj_layer.Conv1d)
        and op.bias is None
        and tuple(op.kernel_size) == (1,)
        and tuple(op.stride) == (1,)
        and tuple(op.padding) == (0,)
        and tuple(op.dilation) == (1,)
        and op.groups == 1
    )


def spike_fed(op, x: torch.Tensor, weight: torch.Tensor | None = None):
    """op's convolution of x `[N, C, ...]` (with `weight`, default op.weight) by
    spikeclip.kernels.spike_conv2d where op is one it computes and x holds spikes: sums of weight
    rows at the spikes, and at the spikes the weight gradient, in work that scales with the
    firing rate (dense above 20-30% by kind: csrc/cpu/spike_layers_cpu.cpp); the backward keeps
    x's bits. None where it does not apply (the caller runs op): another layer or geometry,
    hooks on op, a device or dtype the cpp kernels do not take, autocast, torch.compile, or x
    not spikes (then op is remembered and convolved densely from then on)."""
    if (
        op in _DENSE_FED
        or not _summed_conv(op)
        or hooked(op)
        or torch.compiler.is_compiling()
        or torch.is_autocast_enabled(x.device.type)
        or spike_product_backend("spike_conv2d", "auto", x.device, x.dtype) != "cpp"
    ):
        return None
    weight = op.weight if weight is None else weight
    if weight.dtype != x.dtype:
        return None
    one_d = x.dim() == 3
    try:
        y = spike_conv2d(x.unsqueeze(-1) if one_d else x,
                         weight.unsqueeze(-1) if one_d else weight,
                         padding=weight.shape[-1] // 2, backend="cpp")  # fmt: skip
    except ValueError:  # not spikes
        _DENSE_FED.add(op)
        return None
    return y.squeeze(-1) if one_d else y


def _op_forward(op, x: torch.Tensor, stepped: bool) -> torch.Tensor:
    """op(x) `[T, B, ...]` as `[T * B, ...]`, by spike_fed where it applies."""
    flat = x.flatten(0, 1)
    y = spike_fed(op, flat)
    if y is not None:
        return y
    return op(x).flatten(0, 1) if stepped else op(flat)


def _is_spikes(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def unit_forward(stage, neuron, x):
    """neuron(stage(x)) as one recomputed unit where that is exact (see _unit_forward); an
    error if the neuron's membrane from a unit call was carried on without reset_net."""
    compat.check_carried_state(neuron)
    return _unit_forward(stage, neuron, x)


def _unit_forward(stage, neuron, x):
    """neuron(stage(x)), keeping only x (packed when spikes) for the backward where that is
    exact: a gradient to compute, the neuron ours and at rest, the stage a unit we know."""
    params = [p for m in (*stage, neuron) for p in m.parameters()]
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in params)
    )
    if (
        not needs_grad
        or torch.compiler.is_compiling()
        or type(neuron) not in compat.NEURONS.values()
        or compat.unsupported_reason(neuron) is not None
        or neuron.step_mode != "m"
        or neuron.store_v_seq
        or not compat.at_rest(neuron)
        or unit_parts(stage) is None
        or x.dim() < 3
    ):
        return fused_forward(stage, neuron, x)  # the pair as it is, fused where it can be
    unit = _Unit(stage, neuron)
    keep = packed_recompute if x.is_floating_point() and _is_spikes(x) else recompute
    out = keep(unit, x, unit.params())
    neuron.spikeclip_state_detached = True  # its .v holds no gradient path: reset_net first
    return out


def fused_forward(stage, neuron, x):
    """neuron(stage(x)) with the stage's BatchNorm and the neuron as one fused pass where that
    computes exactly what the two modules do (see _fusable); else the modules as they are. The
    neuron's `.v` is its final membrane either way, with its gradient path."""
    parts = unit_parts(stage) if x.dim() >= 3 else None
    if parts is None or (isinstance(stage, nn.Module) and hooked(stage)):
        return neuron(_run(stage, x))
    op, bn, pool = parts
    T, B = x.shape[:2]
    stepped = not isinstance(stage, sj_layer.SeqToANNContainer)
    y = _op_forward(op, x, stepped)
    pooled = _bn_pool(bn, pool, y)
    if pooled is not None:
        return neuron(pooled.unflatten(0, (T, B)))
    if pool is not None or not _fusable(neuron, bn):  # the rest as the modules run it
        for module in (bn, pool) if pool is not None else (bn,):
            y = module(y.unflatten(0, (T, B))).flatten(0, 1) if stepped else module(y)
        return neuron(y.unflatten(0, (T, B)))
    if x.device.type != "cpu" or fused_backend(y) != "cpp":
        z = bn(y.unflatten(0, (T, B))) if stepped else bn(y).unflatten(0, (T, B))
        return neuron(z)
    spikes, v = _bn_neuron(y, T, batch_norm_args(bn), neuron, return_v=True)
    neuron.v = v
    return spikes.unflatten(0, (T, B))


def _bn_pool(bn, pool, y: torch.Tensor, bn_args: tuple | None = None) -> torch.Tensor | None:
    """pool(bn(y)) for y `[T*B, C, H, W]` by the fused kernels (spikeclip.kernels.bn_pool:
    BatchNorm's output never in memory, a byte per window kept) where they compute it: a pool
    our kernels take (pooling.pool_kind), the cpp backend for y, neither module watched by
    hooks; bn_args: F.batch_norm's arguments (default: bn's own, counting the batch as bn
    does). None where it does not apply (the caller runs the modules)."""
    if pool is None or y.dim() != 4 or not isinstance(bn, nn.BatchNorm2d):
        return None
    kind = pooling.pool_kind(pool)
    if (
        kind is None
        or hooked(bn)
        or hooked(pool)
        or torch.compiler.is_compiling()
        or not runs_cpp_kernels(getattr(pool, "kernel_backend", "auto"), y)
        or bn_pool_backend(y) != "cpp"
    ):
        return None
    args = batch_norm_args(bn) if bn_args is None else bn_args
    return bn_max_pool(y, *args, window=kind, backend="cpp")


def _bn_neuron(y, T: int, bn_args: tuple, neuron, **kwargs):
    """bn_lif of y `[T*B, C, ...]` with F.batch_norm's arguments and `neuron`'s settings."""
    settings = compat.lif_settings(neuron)
    tau = settings.pop("tau")
    return bn_lif(y, T, *bn_args, tau=tau, options=lif_options(**settings), **kwargs)


def _fusable(neuron, bn, at_rest: bool = True) -> bool:
    """Whether bn_lif computes neuron(bn(.)): our LIF or IF node (a fixed tau; a PLIF's is a
    parameter) with settings we compute, in step mode "m" without v_seq, starting from rest
    (at_rest=False: a recomputation, which starts there whatever the node holds now), on a
    backend that runs on the CPU, neither module watched by hooks, outside torch.compile
    (which fuses the pair itself)."""
    return (
        type(neuron) in (compat.LIFNode, compat.IFNode)
        and compat.unsupported_reason(neuron) is None
        and neuron.step_mode == "m"
        and not neuron.store_v_seq
        and (not at_rest or compat.at_rest(neuron))
        and neuron.kernel_backend in ("auto", "cpp")
        and not (hooked(neuron) or hooked(bn))
        and not torch.compiler.is_compiling()
    )


class SpikformerConv2dBNLIF(sj_spikformer.SpikformerConv2dBNLIF):
    """Spikformer's conv-BN(-pool)-LIF stage as one recomputed unit (memory="lossless")."""

    _unit = staticmethod(unit_forward)

    def forward(self, x_seq):
        return self._unit(self.conv_bn.block, self.neuron, x_seq)


class SpikformerMLP(sj_spikformer.SpikformerMLP):
    """Spikformer's MLP: two recomputed units (memory="lossless")."""

    _unit = staticmethod(unit_forward)

    def forward(self, x_seq):
        x_seq = self._unit(self.fc1, self.neuron1, x_seq)
        return self._unit(self.fc2, self.neuron2, x_seq)


class SpikingSelfAttention(compat.SpikingSelfAttention):
    """compat.SpikingSelfAttention with its qkv and proj stages recomputed units."""

    _stage = staticmethod(unit_forward)


class FusedSpikformerConv2dBNLIF(SpikformerConv2dBNLIF):
    """Spikformer's conv-BN-LIF stage with BN + LIF fused (memory=None)."""

    _unit = staticmethod(fused_forward)


class FusedSpikformerMLP(SpikformerMLP):
    """Spikformer's MLP with each BN + LIF fused (memory=None)."""

    _unit = staticmethod(fused_forward)


class FusedSpikingSelfAttention(compat.SpikingSelfAttention):
    """compat.SpikingSelfAttention with its qkv and proj stages' BN + LIF fused."""

    _stage = staticmethod(fused_forward)


class FusedSpikeDrivenSelfAttention(compat.SpikeDrivenSelfAttention):
    """compat.SpikeDrivenSelfAttention with its q, k and v stages' BN + LIF fused."""

    _stage = staticmethod(fused_forward)


BLOCKS = {
    sj_spikformer.SpikformerConv2dBNLIF: SpikformerConv2dBNLIF,
    sj_spikformer.SpikformerMLP: SpikformerMLP,
}
FUSED_BLOCKS = {
    sj_spikformer.SpikformerConv2dBNLIF: FusedSpikformerConv2dBNLIF,
    sj_spikformer.SpikformerMLP: FusedSpikformerMLP,
}


def add_model_zoo_blocks() -> None:
    """SEW-ResNet's block classes, defined (once) when SpikingJelly's sew_resnet has been
    imported: it imports torchvision, so it is never imported here; a SEW-ResNet built from it
    has imported it already. accelerate() calls this each time."""
    sew = sys.modules.get("spikingjelly.activation_based.model.sew_resnet")
    if sew is None or sew.BasicBlock in BLOCKS:
        return

    class BasicBlock(sew.BasicBlock):
        """SEW-ResNet's basic block: conv-BN-neuron twice (and the downsample's) as recomputed
        units (memory="lossless")."""

        _unit = staticmethod(unit_forward)

        def forward(self, x):
            out = self._unit((self.conv1, self.bn1), self.sn1, x)
            out = self._unit((self.conv2, self.bn2), self.sn2, out)
            identity = x
            if self.downsample is not None:
                identity = self._unit(self.downsample, self.downsample_sn, x)
            return sew.sew_function(identity, out, self.cnf)

    class FusedBasicBlock(BasicBlock):
        """SEW-ResNet's basic block with each BN + neuron fused (memory=None)."""

        _unit = staticmethod(fused_forward)

    for cls in (BasicBlock, FusedBasicBlock):  # module attributes, as pickle looks them up
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    BLOCKS[sew.BasicBlock] = BasicBlock
    FUSED_BLOCKS[sew.BasicBlock] = FusedBasicBlock


ATTENTION = {compat.ATTENTION_CLASSES[0]: SpikingSelfAttention}
FUSED_ATTENTION = {
    compat.ATTENTION_CLASSES[0]: FusedSpikingSelfAttention,
    compat.ATTENTION_CLASSES[1]: FusedSpikeDrivenSelfAttention,
}

__all__ = [
    "ATTENTION",
    "BLOCKS",
    "FUSED_ATTENTION",
    "FUSED_BLOCKS",
    "SpikformerConv2dBNLIF",
    "SpikformerMLP",
    "SpikingSelfAttention",
    "add_model_zoo_blocks",
    "fused_forward",
    "unit_forward",
]
