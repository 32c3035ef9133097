"""SpikeCLIP's image encoder (Spikingformer-style) and its ANN counterpart."""

from __future__ import annotations

import math

import torch
from torch import nn

from spikeclip.kernels.spike_products.lookup import (
    lif_spike_codes,
    lookup_available,
    lookup_fits,
    spike_conv3x3_lookup,
    spike_conv3x3_lookup_lif,
)
from spikeclip.models.blocks import Block
from spikeclip.models.config import CLIP_MEAN, CLIP_STD, SpikeCLIPConfig
from spikeclip.models.layers import (
    SeqConvBN,
    SeqMaxPool2x2,
    SeqMaxPool3x3,
    TemporalReadout,
    elementwise_neuron,
    hooked,
    make_neuron,
    runs_inference,
)
from spikeclip.models.neurons import LIF
from spikeclip.preprocess import resize_images


class ConvTokenizer(nn.Module):
    """Convolutional tokenizer: `[T, B, 3, S, S]` -> tokens `[T, B, (S/4)^2, C]`.

    Five 3x3 conv + BN stages with C/8, C/4, C/2, C, C channels and a neuron before each stage
    after the first; max-pools on the BN outputs of the third and fourth stages, before their
    neurons (S -> S/4): 3x3 stride 2 padding 1 (config.tokenizer_pool "3x3", SpikeCLIP's and
    Spikformer's) or 2x2; the fifth stage is plain conv + BN (SpikeCLIP), or with
    config.tokenizer_shortcut added to its own input (a membrane shortcut, as a relative
    position embedding). The first stage sees the same image at every step, so it runs once and
    is repeated.

    Inference (eval mode, no gradient, on CPU: takes_inference_path) runs the same network in
    less work: each BN folded into its convolution (SeqConvBN.folded_op), the activations
    channels last (where the CPU's convolutions run faster), pooled by F.max_pool2d
    (the pools' spec) in that layout. Equal to the other path up to float rounding (the
    convolutions sum in another order): tests/test_inference_path.py.
    """

    def __init__(self, config: SpikeCLIPConfig, *, spiking: bool = True, backend: str = "auto"):
        super().__init__()
        C = config.width
        channels = [config.in_channels, C // 8, C // 4, C // 2, C, C]
        # Stages after the first take spikes: they keep them packed for the backward.
        self.stages = nn.ModuleList(
            SeqConvBN(channels[i], channels[i + 1], packed_input=spiking and i > 0, backend=backend)
            for i in range(5)
        )
        self.neurons = nn.ModuleList(
            make_neuron(config, spiking=spiking, backend=backend) for _ in range(4)
        )
        pool = SeqMaxPool3x3 if config.tokenizer_pool == "3x3" else SeqMaxPool2x2
        self.pool = pool(backend)
        self.shortcut = config.tokenizer_shortcut

    def forward(self, images: torch.Tensor, time_steps: int) -> torch.Tensor:
        if self.takes_inference_path(images):
            return self._infer(images, time_steps)
        x = self.stages[0](images.unsqueeze(0))  # [1, B, C/8, S, S]
        x = x.expand(time_steps, *x.shape[1:])
        x = self.stages[1](self.neurons[0](x))
        x = self.pool(self.stages[2](self.neurons[1](x)))
        x = self.pool(self.stages[3](self.neurons[2](x)))  # [T, B, C, S/4, S/4]
        y = self.stages[4](self.neurons[3](x))
        x = x + y if self.shortcut else y
        return x.flatten(3).transpose(2, 3).contiguous()  # [T, B, N, C]

    def takes_inference_path(self, images: torch.Tensor) -> bool:
        """Whether forward runs the inference path: every BN in eval mode with running
        statistics, nothing needing a gradient, what layers.runs_inference asks of the images
        (CPU float32/float64, no autocast, backend "auto"/"cpp", not compiling), elementwise
        neurons, nobody watching a module inside (forward hooks: the energy count sees every
        layer called; hooks on the tokenizer itself see it called either way)."""
        stages = self.stages
        if not all(s.folds() for s in stages):  # training: refused before anything else
            return False
        if not all(runs_inference(images, s.op.weight, s.backend) for s in stages):
            return False
        if torch.is_grad_enabled() and (
            images.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            return False
        if not all(elementwise_neuron(n) for n in self.neurons):
            return False
        return not any(hooked(m) for m in self.modules() if m is not self)

    def _infer(self, images: torch.Tensor, time_steps: int) -> torch.Tensor:
        """forward's inference path (takes_inference_path): the layers' work in channels-last
        activations, BN folded into the convolutions; spike-fed convolutions as table lookups
        where _looks_up allows."""
        if self._looks_up(images):
            return self._infer_lookup(images, time_steps)
        stages, neurons = self.stages, self.neurons
        x = stages[0].folded_op(images.contiguous(memory_format=torch.channels_last))
        x = x.unsqueeze(0).expand(time_steps, *x.shape)  # [T, B, C/8, S, S]
        x = _per_step(stages[1].folded_op, _fire(neurons[0], x))
        x = _per_step(self.pool.spec, _per_step(stages[2].folded_op, _fire(neurons[1], x)))
        x = _per_step(self.pool.spec, _per_step(stages[3].folded_op, _fire(neurons[2], x)))
        y = _per_step(stages[4].folded_op, _fire(neurons[3], x))
        x = x + y if self.shortcut else y
        return x.flatten(3).transpose(2, 3).contiguous()  # [T, B, N, C]: a view when CL

    def _looks_up(self, images: torch.Tensor) -> bool:
        """Whether the inference path runs its spike-fed stages as table lookups
        (kernels.spike_products.lookup): LIF neurons, 3x3 pools, no shortcut, the extension
        loaded, and each stage's tables within lookup_fits's budget."""
        if self.shortcut or not isinstance(self.pool, SeqMaxPool3x3):
            return False
        if not lookup_available(images) or not all(isinstance(n, LIF) for n in self.neurons):
            return False
        return all(
            lookup_fits(s.op.in_channels, s.op.out_channels, 9, images.dtype)
            for s in self.stages[1:]
        )

    def _infer_lookup(self, images: torch.Tensor, time_steps: int) -> torch.Tensor:
        """_infer with each neuron writing its spikes packed (pooled first where the pools
        are) and each spike-fed convolution a sum of table rows at those bytes: no float
        spikes, no pooled floats, no BN pass. The same network, up to float rounding."""
        stages, neurons, T = self.stages, self.neurons, time_steps
        x = stages[0].folded_op(images.contiguous(memory_format=torch.channels_last))
        x = x.permute(0, 2, 3, 1).unsqueeze(0)  # [1, B, S, S, C/8]: the same at every step
        B, dtype = x.shape[1], x.dtype
        codes = lif_spike_codes(x, T, **neurons[0].forward_options(dtype)).flatten(0, 1)
        for i in (1, 2, 3):  # stage i, then neuron i (pooled first after stages 2 and 3)
            options = neurons[i].forward_options(dtype)
            weight, bias = stages[i].folded_weights()
            codes = spike_conv3x3_lookup_lif(codes, weight, bias, T, pool=i >= 2, **options)
            codes = codes.flatten(0, 1)
        x = spike_conv3x3_lookup(codes, *stages[4].folded_weights())  # [T * B, S/4, S/4, C]
        return x.unflatten(0, (T, B)).flatten(2, 3)  # [T, B, N, C]


def _per_step(layer, x: torch.Tensor) -> torch.Tensor:
    """layer on `[T, B, C, H, W]` with time folded into the batch."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def _fire(neuron: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An elementwise neuron on `[T, B, C, H, W]` held channels last at each step: it runs on
    the `[T, B, H, W, C]` view (contiguous there), so the layout comes back unchanged."""
    return neuron(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)


def normalize_images(images: torch.Tensor, how: str) -> torch.Tensor:
    """config.image_normalize: "clip" subtracts CLIP's per-channel mean and divides by its std
    (3-channel images), "none" passes them as they are."""
    if how == "none":
        return images
    if images.shape[-3] != 3:
        raise ValueError("image_normalize='clip' needs 3-channel images")
    mean = torch.tensor(CLIP_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def check_images(
    config: SpikeCLIPConfig, images, check_finite: bool = True, value_range: bool = False
) -> None:
    """images must be a floating `[B, in_channels, H, W]` tensor, non-empty. Then one cheap pass
    over the values (a device sync on GPU): with check_finite it refuses NaN / inf pixels,
    which would otherwise give a finite, normalised embedding (`encoder.check_finite = False`
    skips that); with value_range (encode_image, classify) the same pass, an aminmax, also
    refuses values outside [0, 1] (0-255 pixel values would be encoded, and classified, as
    some other image)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor, got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] != config.in_channels:
        raise ValueError(
            f"images must be [B, {config.in_channels}, H, W], got shape {tuple(images.shape)}"
        )
    if images.shape[0] == 0 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    if torch.compiler.is_compiling():
        return
    if value_range:
        lo, hi = (float(v) for v in torch.aminmax(images.detach()))  # NaN propagates
        if check_finite and not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("images hold NaN or inf values")
        if lo < 0.0 or hi > 1.0:
            hint = " (0-255 pixel values? divide by 255)" if 1.0 < hi <= 255.0 else ""
            raise ValueError(f"images must be floats in [0, 1], got values from {lo:.4g} to "
                             f"{hi:.4g}{hint}")  # fmt: skip
    elif check_finite and not bool(torch.isfinite(images).all()):
        raise ValueError("images hold NaN or inf values")


class ImageEncoder(nn.Module):
    """`[B, in_channels, H, W]` float images -> features `[B, embed_dim]` (not normalised).

    images in [0, 1] -> resized to image_size (bilinear) -> normalised (config.image_normalize)
    -> repeated over T steps (direct encoding)
    -> ConvTokenizer `[T, B, N, C]` -> depth x Block `[T, B, N, C]` -> mean over tokens `[T, B, C]`
    -> TemporalReadout `[B, C]` -> Linear `[B, embed_dim]`.
    spiking=False (config.image_neuron == "relu") is the ANN counterpart: ReLU for every LIF,
    one time step, the same layout and parameters.
    """

    def __init__(self, config: SpikeCLIPConfig, backend: str = "auto"):
        super().__init__()
        self.config = config
        spiking = config.image_neuron == "lif"
        self.time_steps = config.image_time_steps
        self.tokenizer = ConvTokenizer(config, spiking=spiking, backend=backend)
        self.blocks = nn.ModuleList(
            Block(config, spiking=spiking, backend=backend) for _ in range(config.depth)
        )
        self.readout = TemporalReadout(self.time_steps)
        self.proj = nn.Linear(config.width, config.embed_dim)
        self.check_finite = True  # refuse NaN / inf images (see check_images)

    def check_images(self, images) -> None:
        check_images(self.config, images, self.check_finite)

    def forward(self, images: torch.Tensor, *, checked: bool = False) -> torch.Tensor:
        """checked: the caller has run check_images on these images (encode_image has)."""
        if not checked:
            self.check_images(images)
        c = self.config
        x = resize_images(images, c.image_size, c.resize_antialias)
        x = self.tokenizer(normalize_images(x, c.image_normalize), self.time_steps)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.readout(x.mean(2)))
