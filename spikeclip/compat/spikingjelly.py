"""SpikingJelly 2.0 neurons and attention on our fused kernels, with SpikingJelly's own classes.

    from spikeclip.compat.spikingjelly import LIFNode
    net = spikformer.Spikformer(..., spiking_neuron=LIFNode, tau=2.0, detach_reset=True)

`LIFNode`, `ParametricLIFNode` and `IFNode` subclass SpikingJelly's classes of the same name:
same constructor arguments, same state (`.v`, `.v_seq`, `reset()`, `functional.reset_net`,
`set_step_mode`), same parameters and state_dict keys (a PLIF's `w`). Only their charge-fire-reset
runs on `spikeclip.kernels.lif` (one fused sweep over T in step mode "m"; one step of it in "s").

SpikingJelly's math (`_ops/lif/reference.py`) is ours term for term (DESIGN.md, "Multi-step
LIF"): the charge v + (x - (v - v_reset)) / tau, fire h >= v_th, hard or soft reset, detach_reset;
PLIF's tau = 1 / sigmoid(w); the IF charge v + x (our tau = inf, decay_input False). Its
surrogates Sigmoid, ATan, PiecewiseQuadratic and Erf (spiking=True, a number alpha) are our
sigmoid, atan, triangle and erf at the same alpha (the same derivative formulas). Whatever else
(another surrogate, a tensor alpha, `_neuron_precision`) runs SpikingJelly's own code: exact,
never approximated; `unsupported_reason(node)` says why.

Needs spikingjelly==2.0.0 (`pip install --no-deps spikingjelly==2.0.0 loguru`).
"""

from __future__ import annotations

import math

import torch

try:
    from spikingjelly.activation_based import layer as _sj_layer
    from spikingjelly.activation_based import neuron as _sj_neuron
    from spikingjelly.activation_based import surrogate as _sj_surrogate
    from spikingjelly.activation_based.layer import attention as _sj_attention
except ImportError as exc:  # pragma: no cover - exercised only without SpikingJelly
    raise ImportError(
        "spikeclip.compat.spikingjelly needs SpikingJelly 2.0: "
        "pip install --no-deps spikingjelly==2.0.0 loguru"
    ) from exc

from spikeclip.compat.pooling import byte_pool
from spikeclip.kernels import lif, sdsa, ssa

__all__ = [
    "IFNode",
    "LIFNode",
    "ParametricLIFNode",
    "SpikeDrivenSelfAttention",
    "SpikingSelfAttention",
    "at_rest",
    "check_carried_state",
    "lif_settings",
    "unsupported_reason",
]

# SpikingJelly's surrogate classes whose derivative is one of ours, at the same alpha.
_SURROGATES = {
    _sj_surrogate.Sigmoid: "sigmoid",
    _sj_surrogate.ATan: "atan",
    _sj_surrogate.PiecewiseQuadratic: "triangle",
    _sj_surrogate.Erf: "erf",
}


def surrogate_of(function) -> tuple[str, float] | str:
    """(our surrogate name, alpha) for a SpikingJelly surrogate module, or why it has none."""
    name = _SURROGATES.get(type(function))
    if name is None:
        return f"surrogate {type(function).__name__} has no fused equivalent"
    if not getattr(function, "spiking", True):
        return f"surrogate {type(function).__name__} with spiking=False (no Heaviside forward)"
    alpha = getattr(function, "alpha", None)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        return f"surrogate {type(function).__name__} alpha {alpha!r} is not a positive number"
    return name, float(alpha)


def _tau(node, w=None) -> float | torch.Tensor:
    """The node's tau; a PLIF's from `w` when given (a recomputation's leaf), else its own."""
    if isinstance(node, _sj_neuron.ParametricLIFNode):
        return 1.0 / torch.sigmoid(node.w if w is None else w)
    if isinstance(node, _sj_neuron.IFNode):
        return math.inf
    return float(node.tau)


def unsupported_reason(node) -> str | None:
    """None when `node` (a SpikingJelly LIFNode, ParametricLIFNode or IFNode of exactly that
    class, or ours) runs on our kernels as it is set now; else the reason it does not."""
    base = _BASES.get(type(node)) or (type(node) if type(node) in _ACCELERATED else None)
    if base is None:
        return f"{type(node).__module__}.{type(node).__qualname__} is not a neuron we compute"
    found = surrogate_of(node.surrogate_function)
    if isinstance(found, str):
        return found
    if getattr(node, "_neuron_precision", None) is not None:
        return "an explicit _neuron_precision (SpikingJelly's mixed-precision Triton path)"
    if isinstance(node, _sj_neuron.ParametricLIFNode) and node.w.numel() != 1:
        return "a PLIF with more than one w"
    if not isinstance(node, (_sj_neuron.ParametricLIFNode, _sj_neuron.IFNode)):
        tau = node.tau
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 1:
            return f"tau {tau!r} is not a number > 1"
    if node.v_reset is not None and not isinstance(node.v_reset, (int, float)):
        return f"v_reset {node.v_reset!r} is not a number"
    return None


def lif_settings(node, w=None) -> dict:
    """The keyword arguments of `spikeclip.kernels.lif` that compute `node` (supported only);
    w: a PLIF's parameter to use instead of its own."""
    surrogate, alpha = surrogate_of(node.surrogate_function)
    is_if = isinstance(node, _sj_neuron.IFNode)
    return dict(
        tau=_tau(node, w),
        v_th=float(node.v_threshold),
        v_reset=None if node.v_reset is None else float(node.v_reset),
        decay_input=False if is_if else bool(node.decay_input),
        detach_reset=bool(node.detach_reset),
        surrogate=surrogate,
        alpha=alpha,
    )


class _FusedNode:
    """The charge-fire-reset of a SpikingJelly BaseNode through `spikeclip.kernels.lif`.

    Mixed into subclasses of SpikingJelly's node classes: SpikingJelly's MemoryModule
    materialises the state and stores it back; these two methods are its transition.
    `kernel_backend` is our backend ("auto": cpp on CPU, cuda/triton on GPU)."""

    kernel_backend = "auto"

    def _step_through_lif(self, x_seq, v, w=None):
        settings = lif_settings(self, w)
        spikes, v_last = lif(x_seq, v0=v, return_v=True, backend=self.kernel_backend, **settings)
        return spikes, v_last.to(x_seq.dtype)

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        if len(inputs) != 1 or unsupported_reason(self) is not None:
            return super().multi_step_functional_forward(inputs, states, **kwargs)
        spikes, v = self._step_through_lif(inputs[0], states[0])
        return (spikes,), (v, *states[1:])

    def single_step_functional_forward(self, inputs, states, **kwargs):
        if len(inputs) != 1 or inputs[0].dim() == 0 or unsupported_reason(self) is not None:
            return super().single_step_functional_forward(inputs, states, **kwargs)
        spikes, v = self._step_through_lif(inputs[0].unsqueeze(0), states[0])
        return (spikes[0],), (v, *states[1:])

    def reset(self):
        super().reset()
        self.spikeclip_state_detached = False

    def extra_repr(self):
        return super().extra_repr() + f", kernel_backend={self.kernel_backend}"


def check_carried_state(node) -> None:
    """A neuron inside a recomputed unit (memory="lossless") keeps its final membrane without
    a gradient path: running on from it would not give SpikingJelly's gradients."""
    if getattr(node, "spikeclip_state_detached", False):
        raise RuntimeError(
            "with memory='lossless' a unit's neuron keeps no gradient path in its membrane "
            "between calls: call spikingjelly's functional.reset_net(model) between sequences "
            "(as SpikingJelly's models are used), or accelerate with memory=None"
        )


class LIFNode(_FusedNode, _sj_neuron.LIFNode):
    """SpikingJelly's `LIFNode` (same arguments) on `spikeclip.kernels.lif`."""


class ParametricLIFNode(_FusedNode, _sj_neuron.ParametricLIFNode):
    """SpikingJelly's `ParametricLIFNode` (same arguments, learnable `w`, tau = 1/sigmoid(w))
    on `spikeclip.kernels.lif`, the gradient of w from the same fused sweep."""


class IFNode(_FusedNode, _sj_neuron.IFNode):
    """SpikingJelly's `IFNode` (same arguments) on `spikeclip.kernels.lif` (no leak)."""


_BASES = {_sj_neuron.LIFNode: LIFNode, _sj_neuron.ParametricLIFNode: ParametricLIFNode,
          _sj_neuron.IFNode: IFNode}  # fmt: skip
_ACCELERATED = tuple(_BASES.values())


# --- attention ------------------------------------------------------------------------------


def attention_lif_reason(node) -> str | None:
    """None when `node` can be the LIF inside our fused attention ops: a fixed-tau LIF with
    decay_input, in step mode "m", at rest (our ops start the attention's LIF from rest)."""
    if type(node) not in (_sj_neuron.LIFNode, LIFNode):
        return f"its attention LIF is a {type(node).__name__}, not a fixed-tau LIFNode"
    reason = unsupported_reason(node)
    if reason is not None:
        return f"its attention LIF: {reason}"
    if not node.decay_input:
        return "its attention LIF has decay_input=False (the fused ops decay their input)"
    if node.step_mode != "m" or node.store_v_seq:
        return "its attention LIF is in step mode 's' or stores v_seq"
    return None


_NOT_RESET = None  # the attention LIF's `v` after a fused call: its state is not kept


def _fuses(module, x, ndim: int) -> bool:
    """Whether `module`'s fused forward computes what SpikingJelly's does for x: the input's
    rank, an attention LIF we compute, starting from rest (a second call without reset_net
    after a fused one is an error: its membrane was not kept)."""
    if x.ndim != ndim or attention_lif_reason(module.attn_lif) is not None:
        return False
    _check_at_rest(module)
    return at_rest(module.attn_lif)


def _attend(module, op, q, k, v, **extra):
    """op(q, k, v) with the module's attention LIF settings; its membrane is then not kept."""
    settings = lif_settings(module.attn_lif)
    settings.pop("decay_input")
    y = op(q, k, v, backend=module.kernel_backend, **extra, **settings)
    module.attn_lif.v = _NOT_RESET
    return y


def _check_at_rest(module) -> None:
    v = module.attn_lif.v
    if v is _NOT_RESET:
        raise RuntimeError(
            f"{type(module).__name__}: the fused attention keeps no membrane between calls; "
            "call spikingjelly's functional.reset_net(model) between sequences (as "
            "SpikingJelly's models are used), or accelerate with attention=False"
        )


def at_rest(node) -> bool:
    """True when `node` starts from rest (a reset memory), as our fused attention and the
    recomputed units do."""
    rest = 0.0 if node.v_reset is None else node.v_reset
    return isinstance(node.v, float) and node.v == rest


class SpikingSelfAttention(_sj_attention.SpikingSelfAttention):
    """Spikformer's SSA (SpikingJelly's class, same modules and keys) with its
    (V K^T) Q * scale and attention LIF fused into `spikeclip.kernels.ssa`.

    SpikingJelly computes in a channels-first layout, y^T = (v^T k) q^T; ours, y = q (k^T v), is
    the same sum of exact integer spike counts. The attention LIF's final membrane is not kept
    (reset_net between sequences, as SpikingJelly's models require)."""

    kernel_backend = "auto"

    def forward(self, x_seq):
        if not _fuses(self, x_seq, 4):
            return super().forward(x_seq)
        T, N, _, L = x_seq.shape
        qkv = self._stage(self.qkv_conv_bn, self.qkv_lif, x_seq)  # [T, N, 3C, L]
        local_dim = qkv.shape[2] // 3
        heads = self.num_heads
        qkv = qkv.reshape(T, N, 3, heads, local_dim // heads, L).transpose(-1, -2)
        q, k, v = qkv.unbind(2)  # [T, N, heads, L, d]
        y = _attend(self, ssa, q, k, v, scale=self.scale)
        y = y.transpose(-1, -2).reshape(T, N, local_dim, L)
        return self._stage(self.proj_conv_bn, self.proj_lif, y)

    @staticmethod
    def _stage(stage, neuron, x):
        """neuron(stage(x)); memory="lossless" recomputes the pair (spikingjelly_units)."""
        return neuron(stage(x))


class SpikeDrivenSelfAttention(_sj_attention.SpikeDrivenSelfAttention):
    """The Spike-driven Transformer's SDSA (SpikingJelly's class, same modules and keys) with
    its sum over tokens of k * v, attention LIF and mask by q fused into `spikeclip.kernels.sdsa`.
    The attention LIF's final membrane is not kept (reset_net between sequences)."""

    kernel_backend = "auto"

    def forward(self, x):
        if not _fuses(self, x, 5):
            return super().forward(x)
        T, N, C, H, W = x.shape
        identity = x
        x = self.shortcut_lif(x)
        q = self._stage((self.q_conv, self.q_bn), self.q_lif, x)
        k = self._stage((self.k_conv, self.k_bn), self.k_lif, x)
        v = self._stage((self.v_conv, self.v_bn), self.v_lif, x)

        def heads(t):  # [T, N, C, H, W] -> [T, N, heads, H*W, d]
            t = t.flatten(3).transpose(-1, -2)
            return t.reshape(T, N, H * W, self.num_heads, self.head_dim).permute(0, 1, 3, 2, 4)

        y = _attend(self, sdsa, heads(q), heads(k), heads(v))
        y = y.transpose(3, 4).reshape(T, N, C, H, W)
        return self.proj_bn(self.proj_conv(y)) + identity

    @staticmethod
    def _stage(layers, neuron, x):
        """neuron(bn(conv(x))); accelerate() fuses the BN and the neuron (spikingjelly_units)."""
        for layer in layers:
            x = layer(x)
        return neuron(x)


class MaxPool2d(_sj_layer.MaxPool2d):
    """SpikingJelly's multi-step MaxPool2d (same arguments) on our byte-per-window kernels
    where they apply (spikeclip.compat.pooling), T folded into the batch as SpikingJelly does."""

    kernel_backend = "auto"

    def forward(self, x):
        if self.step_mode == "s" or x.dim() != 5:
            return byte_pool(self, x, super().forward)
        plain = super().forward  # its own errors and shapes where our kernel does not apply
        y = byte_pool(self, x.flatten(0, 1), lambda _: None)
        return plain(x) if y is None else y.unflatten(0, x.shape[:2])


POOLS = {_sj_layer.MaxPool2d: MaxPool2d}
ATTENTION_CLASSES = (_sj_attention.SpikingSelfAttention, _sj_attention.SpikeDrivenSelfAttention)
ATTENTION = {
    _sj_attention.SpikingSelfAttention: SpikingSelfAttention,
    _sj_attention.SpikeDrivenSelfAttention: SpikeDrivenSelfAttention,
}
NEURONS = _BASES
