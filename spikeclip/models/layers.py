"""Layers on time-major sequences `[T, B, ...]`: conv/linear + batch norm (statistics over time
and batch, as Spikingformer does), the temporal weighted readout, and the neuron factory that
gives a LIF (spiking) or a ReLU (the ANN counterpart)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as nn_module

from spikeclip.kernels import pack_spikes
from spikeclip.kernels.bn_lif.op import bn_lif
from spikeclip.kernels.common.batch_norm import batch_norm_args
from spikeclip.kernels.common.options import lif_options
from spikeclip.kernels.max_pool.op import max_pool2x2, max_pool3x3s2
from spikeclip.kernels.max_pool.reference import max_pool2x2_reference, max_pool3x3s2_reference
from spikeclip.kernels.spike_products.conv import conv_takes_spikes, spike_conv2d
from spikeclip.kernels.spike_products.linear import spike_linear
from spikeclip.kernels.spike_products.lookup import (
    lookup_available,
    lookup_fits,
    spike_linear_lookup,
)
from spikeclip.models.config import SpikeCLIPConfig
from spikeclip.models.kernel_policy import (
    bn_lif_backend,
    layer_product_backend,
    runs_cpp_kernels,
    sums_spikes,
)
from spikeclip.models.neurons import LIF
from spikeclip.models.recompute import packed_recompute


def hooked(module: nn.Module) -> bool:
    """Whether a forward hook watches `module` (its own, or a global one)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or nn_module._global_forward_hooks
        or nn_module._global_forward_pre_hooks
    )


def make_neuron(
    config: SpikeCLIPConfig, *, spiking: bool, v_th: float | None = None, backend: str = "auto"
) -> nn.Module:
    """The neuron of a SpikeCLIP encoder: LIF(tau, v_th, hard reset, detach_reset, surrogate;
    a PLIF with config.learnable_tau; a learned threshold with config.learnable_v_th) on
    `[T, B, ...]`, or ReLU for the ANN counterpart."""
    if not spiking:
        return nn.ReLU()
    return LIF(
        tau=config.tau,
        v_th=config.v_th if v_th is None else v_th,
        v_reset=config.v_reset,
        detach_reset=True,
        surrogate=config.surrogate,
        alpha=config.alpha,
        learnable_tau=config.learnable_tau,
        learnable_v_th=config.learnable_v_th,
        backend=backend,
    )


def runs_inference(x: torch.Tensor, weight: torch.Tensor, backend: str) -> bool:
    """What every inference path (BN folded: _SpikingUnit, image_encoder.ConvTokenizer) asks of
    a layer's input beside eval mode and no gradient: CPU float32/float64 x of the weight's
    dtype (another is the plain path's error), no autocast, the default kernels (backend "auto"
    or "cpp"; "torch" is the reference and keeps the plain path), not inside torch.compile."""
    return not (
        torch.compiler.is_compiling()
        or x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or x.dtype != weight.dtype
        or torch.is_autocast_enabled("cpu")
        or backend not in ("auto", "cpp")
    )


def elementwise_neuron(neuron: nn.Module | None) -> bool:
    """Whether an inference path may call `neuron` on any layout of `[T, B, ...]`: none, a ReLU,
    or a LIF taking whole sequences (step mode "m")."""
    return (
        neuron is None
        or isinstance(neuron, nn.ReLU)
        or (isinstance(neuron, LIF) and neuron.step_mode == "m")
    )


class _SpikingUnit(nn.Module):
    """op (linear or conv, no bias) + BatchNorm (+ an optional neuron) on `[T, B, ...]`.

    packed_input=True (the input holds spikes): with a gradient to compute, the unit keeps only
    its input packed 1 bit per element and recomputes itself in the backward
    (spikeclip.models.recompute), instead of keeping the op's float input, the BN input and the
    neuron's membrane. Same outputs and gradients; a ValueError if the input is not spikes.
    Spike-fed on CPU with the cpp kernels (backend "auto" or "cpp"), the op's product and
    weight gradient are sums of weight rows at the input's spikes in every memory mode
    (_sums_spikes); backend "torch" is the dense reference.
    """

    def __init__(
        self, op: nn.Module, bn: nn.Module, neuron: nn.Module | None, packed_input, backend
    ):
        super().__init__()
        self.op, self.bn, self.neuron, self.spike_input = op, bn, neuron, packed_input
        self.memory = "lossless"  # "plain": keep float copies like plain layers (no packing)
        self.backend = backend  # set_backend reaches it; "torch": dense products (reference)

    def _sums_spikes(self, x: torch.Tensor) -> bool:
        """Whether the op runs as sums of weight rows at the input's spikes (the `cpp`
        kernels, on CPU): work in proportion to the firing rate, keeping only the bits."""
        return self.spike_input and sums_spikes(self.backend, x)

    def _neuron_params(self) -> dict[str, torch.Tensor]:
        """The neuron's parameters (a PLIF's w), by name; none for a LIF with a fixed tau."""
        return dict(self.neuron.named_parameters()) if self.neuron is not None else {}

    def _params(self) -> list[torch.Tensor]:
        """Every tensor the output depends on besides x: op weight, BN affine, the neuron's."""
        own = [p for p in (self.op.weight, self.bn.weight, self.bn.bias) if p is not None]
        return own + list(self._neuron_params().values())

    def _needs_grad(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self._params())
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.spike_input and self.memory != "plain"
        if packed and self._needs_grad(x) and not torch.compiler.is_compiling():
            return self.packed_forward(x)
        if self.takes_inference_path(x):
            return self.inference_forward(x)
        return self.unit(x)

    # ---- inference: BN folded into the op ---------------------------------------------------

    def folds(self) -> bool:
        """Whether BN can fold into the op (folded_bn): eval mode with running statistics."""
        return not self.bn.training and self.bn.running_mean is not None

    def folded_bn(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) per channel with BN(y) = y * scale + shift in eval mode: scale =
        gamma / sqrt(running_var + eps), shift = beta - running_mean * scale. Folded into the
        op's weights and a bias, BN costs nothing (up to float rounding: the op then sums in
        scaled weights)."""
        bn = self.bn
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        return scale, shift

    def takes_inference_path(self, x: torch.Tensor) -> bool:
        """Whether forward runs op and BN as one folded op (inference_forward): BN foldable,
        nothing needing a gradient, CPU x of the weights' dtype without autocast, the default
        kernels (backend "auto" / "cpp"; "torch" is the reference), the neuron none, a ReLU or
        a LIF in step mode "m", nobody watching the op, BN or neuron (the energy count's
        forward hooks see them called), not inside torch.compile."""
        if not self.folds() or not runs_inference(x, self.op.weight, self.backend):
            return False
        if self._needs_grad(x) or not elementwise_neuron(self.neuron):
            return False
        return not any(hooked(m) for m in (self.op, self.bn, self.neuron) if m is not None)

    def inference_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.folded_op(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self.neuron(y) if self.neuron is not None else y

    def packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_recompute(self, x, self._params())

    def recompute_state(self):
        """What the recomputation needs of BN: its mode, and in eval mode the statistics."""
        bn = self.bn
        if bn.training or bn.running_mean is None:
            return (True, None, None)
        return (False, bn.running_mean.clone(), bn.running_var.clone())

    recompute_reads_bits = False

    def unit(self, x, state=None, params=None, bits=None) -> torch.Tensor:
        T, B = x.shape[:2]
        neuron_params = {}
        if params is None:
            y = self.op_on(x.flatten(0, 1), None, bits)
        else:
            names = list(self._neuron_params())
            if names:  # the recomputation's fresh leaves for the neuron's parameters
                neuron_params = dict(zip(names, params[-len(names) :], strict=True))
                params = params[: -len(names)]
            weight, *affine = params
            y = self.op_on(x.flatten(0, 1), weight, bits)
        fused = self._fused_bn_lif(y)
        if params is None:
            bn_args = batch_norm_args(self.bn) if fused else None
            bn = self.bn
        else:
            gamma, beta = affine if affine else (None, None)
            training, mean, var = state
            # Batch statistics again (not updated twice), or the forward's running statistics.
            bn_args = (mean, var, gamma, beta, training, 0.0, self.bn.eps)

            def bn(z):
                return torch.nn.functional.batch_norm(z, *bn_args)

        if fused:
            n = self.neuron
            options = lif_options(n.v_th, n.v_reset, n.decay_input, n.detach_reset,
                                  n.surrogate, n.alpha)  # fmt: skip
            spikes = bn_lif(self.channels_second(y), T, *bn_args, tau=n.tau, options=options,
                            backend=fused)  # fmt: skip
            return spikes.view(y.shape).unflatten(0, (T, B))
        y = self.normalise(y, bn).unflatten(0, (T, B))
        if neuron_params:
            return torch.func.functional_call(self.neuron, neuron_params, (y,))
        return self.neuron(y) if self.neuron is not None else y

    def _fused_bn_lif(self, y: torch.Tensor) -> str | None:
        """The backend of BN + LIF fused (kernels/bn_lif) for this unit, or None: a LIF
        with a fixed tau, memory not "low" (bfloat16 membranes), nobody watching either module
        (forward hooks: the energy count), and a backend that has the fused kernels."""
        n = self.neuron
        if not isinstance(n, LIF) or n.has_parameters or n.memory == "low" or n.step_mode != "m":
            return None
        if hooked(n) or hooked(self.bn):
            return None
        return bn_lif_backend(self.backend, y)


class _SpikeSumsConv2d(nn.Conv2d):
    """nn.Conv2d that, given a backend, convolves its input as spikes
    (spikeclip.kernels.spike_conv2d: keeps the input's bits; `cpp` sums weight rows at the
    spikes); the same parameters and state dict."""

    def forward(self, x, backend=None):
        if backend is None:
            return super().forward(x)
        return spike_conv2d(x, self.weight, padding=self.padding[0], backend=backend)


class SeqConvBN(_SpikingUnit):
    """Conv2d (no bias) + BatchNorm2d (+ neuron) on `[T, B, C_in, H, W]` -> `[T, B, C_out, H,
    W]`, time folded into the batch (batch statistics over T x B x H x W).

    With spike input (packed_input) the conv keeps its input packed for the weight gradient
    (spikeclip.kernels.spike_conv2d) and is not recomputed: a second 3x3 convolution costs
    more than the float BN input it would spare (measured: the paper encoder's step 0.89x the
    reference's with recomputation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        neuron: nn.Module | None = None,
        packed_input: bool = False,
        backend: str = "auto",
    ):
        conv = _SpikeSumsConv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        super().__init__(conv, nn.BatchNorm2d(out_channels), neuron, packed_input, backend)

    def _conv_backend(self, x: torch.Tensor) -> str | None:
        """spike_conv2d's backend for this input, or None for the plain convolution."""
        if not self.spike_input or not conv_takes_spikes(self.op):
            return None
        if self._sums_spikes(x):
            return "auto"  # the cpp sums; the dense product where autocast gives half precision
        packed = self.memory != "plain" and self._needs_grad(x)
        return "torch" if packed and not torch.compiler.is_compiling() else None

    def op_on(self, x, weight, bits=None):
        if weight is None:  # through the module: forward hooks (the energy count) see it
            return self.op(x, self._conv_backend(x))
        return self.op._conv_forward(x, weight, None)

    def packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x)  # op_on keeps the bits (no recomputation)

    @staticmethod
    def normalise(y, bn):
        return bn(y)

    def folded_op(self, x: torch.Tensor) -> torch.Tensor:
        """op then BN in eval mode as one convolution of x `[N, C_in, H, W]` (any memory
        format): folded_bn's scale in the weights, its shift the bias."""
        op = self.op
        weight, bias = self.folded_weights()
        return F.conv2d(x, weight, bias, op.stride, op.padding, op.dilation, op.groups)

    def folded_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of op then BN in eval mode as one convolution (folded_bn)."""
        scale, shift = self.folded_bn()
        return self.op.weight * scale.view(-1, 1, 1, 1), shift

    @staticmethod
    def channels_second(y):
        return y  # [T*B, C, H, W]


def _spike_product(x, bits, weight, backend):
    y = spike_linear(x.reshape(-1, x.shape[-1]), bits, weight, backend=backend)
    return y.view(*x.shape[:-1], y.shape[-1])


class _SpikeRowsLinear(nn.Linear):
    """nn.Linear that, given its input's bits, sums weight rows at the spikes instead
    (spikeclip.kernels.spike_linear); the same parameters and state dict."""

    def forward(self, x, bits=None, backend="auto"):
        if bits is None:
            return super().forward(x)
        return _spike_product(x, bits, self.weight, backend)


class SeqLinearBN(_SpikingUnit):
    """Linear (no bias) + BatchNorm (+ neuron) over the last dimension of `[T, B, ..., C_in]`
    -> `[..., C_out]`: a 1x1 convolution + BN on tokens (statistics over all other dims).

    Its spike sums are spikeclip.kernels.spike_linear (BLAS above 20% firing)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        neuron: nn.Module | None = None,
        packed_input: bool = False,
        backend: str = "auto",
    ):
        super().__init__(
            _SpikeRowsLinear(in_features, out_features, bias=False),
            nn.BatchNorm1d(out_features),
            neuron,
            packed_input,
            backend,
        )

    # The recomputation sums weight rows at the input's spikes (spikeclip.kernels.spike_linear):
    # work in proportion to the firing rate, for the product and the weight gradient.
    recompute_reads_bits = True

    def op_on(self, x, weight, bits=None):
        backend = layer_product_backend(self.backend)
        if weight is None:  # through the module: forward hooks (the energy count) see it
            if not self._sums_spikes(x):
                return self.op(x)
            if bits is None:  # (a packed recomputation's forward passes the bits it made)
                bits = pack_spikes(x.reshape(-1, x.shape[-1]))  # all its backward keeps
            return self.op(x, bits, backend)
        if bits is None:
            return torch.nn.functional.linear(x, weight)
        return _spike_product(x, bits, weight, backend)

    def folded_op(self, x: torch.Tensor) -> torch.Tensor:
        """op then BN in eval mode as one linear map of x `[..., C_in]`: folded_bn's scale in
        the weights, its shift a bias; where the plain path sums spikes, table lookups
        (kernels.spike_products.lookup) if their tables fit, else the same sums."""
        weight, shift = self.folded_weights()
        if not self._sums_spikes(x):
            return torch.nn.functional.linear(x, weight, shift)
        bits = pack_spikes(x.reshape(-1, x.shape[-1]))
        if lookup_available(x) and lookup_fits(*reversed(weight.shape), 1, x.dtype):
            return spike_linear_lookup(bits, weight, shift).view(*x.shape[:-1], -1)
        return _spike_product(x, bits, weight, layer_product_backend(self.backend)).add_(shift)

    def folded_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of op then BN in eval mode as one linear map (folded_bn)."""
        scale, shift = self.folded_bn()
        return self.op.weight * scale.unsqueeze(1), shift

    def looks_up(self, x: torch.Tensor) -> bool:
        """Whether the inference path may run this unit on x's spikes as table lookups
        (kernels.spike_products.lookup), with its neuron fused (a LIF, or none)."""
        return (
            self._sums_spikes(x)
            and self.takes_inference_path(x)
            and lookup_available(x)
            and lookup_fits(self.op.in_features, self.op.out_features, 1, x.dtype)
            and (self.neuron is None or isinstance(self.neuron, LIF))
        )

    @staticmethod
    def normalise(y, bn):
        return bn(y.reshape(-1, y.shape[-1])).view(y.shape)

    @staticmethod
    def channels_second(y):
        return y.reshape(-1, y.shape[-1])  # [T*B*N, C]


class SeqMaxPool2x2(nn.Module):
    """2x2 max-pool, stride 2, of `[..., C, H, W]` -> `[..., C, H/2, W/2]` (leading dims folded
    into the batch): nn.MaxPool2d(2)'s values and gradients; on CPU with the cpp kernels
    (backend "auto" or "cpp") a kernel that keeps a byte per window for the backward
    (spikeclip.kernels.max_pool)."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend  # set_backend reaches it

    pool = staticmethod(max_pool2x2)
    spec = staticmethod(max_pool2x2_reference)  # F.max_pool2d: any memory format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = "cpp" if runs_cpp_kernels(self.backend, x) else "torch"
        y = self.pool(x.flatten(0, -4), backend=backend)
        return y.unflatten(0, x.shape[:-3])


class SeqMaxPool3x3(SeqMaxPool2x2):
    """3x3 max-pool, stride 2, padding 1 (SpikeCLIP's and Spikformer's tokenizer pool) of
    `[..., C, H, W]` -> `[..., C, ceil(H/2), ceil(W/2)]`, leading dims folded into the batch:
    nn.MaxPool2d(3, 2, 1)'s values and gradients; on CPU with the cpp kernels a kernel that keeps
    a byte per window for the backward instead of an int64 index (spikeclip.kernels.max_pool)."""

    pool = staticmethod(max_pool3x3s2)
    spec = staticmethod(max_pool3x3s2_reference)


class TemporalReadout(nn.Module):
    """Weighted sum over time `[T, B, ...]` -> `[B, ...]` with one learnable weight per step.

    The weights are used as they are (not exponentiated), initialised to ln(0.8 / 2^(T-1-t)):
    ln(0.1), ln(0.2), ln(0.4), ln(0.8) for T = 4, as SpikeCLIP does; later steps weigh more.
    """

    def __init__(self, time_steps: int):
        super().__init__()
        init = [math.log(0.8 / 2.0 ** (time_steps - 1 - t)) for t in range(time_steps)]
        self.weight = nn.Parameter(torch.tensor(init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.weight.numel():
            raise ValueError(
                f"TemporalReadout: expected {self.weight.numel()} time steps, got {x.shape[0]}"
            )
        w = self.weight.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (w * x).sum(0)
