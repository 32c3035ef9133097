"""The ANN counterpart as SpikeCLIP's official code builds it (model.py's `CLIPv_encoder`):
the same convolutional tokenizer and width, then a pre-LayerNorm CLIP-style transformer with
softmax attention and QuickGELU, mean over tokens, LayerNorm, projection. Config
`image_neuron="clip-ann"`; our ReLU twin of the SNN is `image_neuron="relu"`.

As the official code computes it: the tokenizer's five conv + BN stages have no activation
between them (its activation is defined but not called) and its max-pools are 3x3 stride 2
padding 1 on the BN outputs of the third and fourth stages; attention scales q by
head_dim^-0.5 and has biases on q, k, v and the output projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spikeclip.models.config import SpikeCLIPConfig
from spikeclip.models.image_encoder import check_images, normalize_images
from spikeclip.preprocess import resize_images


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SoftmaxAttention(nn.Module):
    """Multi-head softmax self-attention on `[B, N, C]` (CLIP's), q scaled by head_dim^-0.5."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(width, width) for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape

        def split(t):
            return t.view(B, N, self.heads, self.head_dim).transpose(1, 2)

        q = split(self.q_proj(x) * self.head_dim**-0.5)
        attn = (q @ split(self.k_proj(x)).transpose(-2, -1)).softmax(-1)
        y = (attn @ split(self.v_proj(x))).transpose(1, 2).reshape(B, N, C)
        return self.out_proj(y)

    def energy_ops(self, inputs, output) -> tuple[int, int]:
        """(SOPs, MACs) of the two attention products (the projections count as linears)."""
        B, N, C = inputs[0].shape
        return 0, 2 * B * N * N * C


class EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = SoftmaxAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), QuickGELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class OfficialANNEncoder(nn.Module):
    """`[B, in_channels, H, W]` images in [0, 1] -> features `[B, embed_dim]`, preprocessed
    as the SNN's (resize, normalisation of the config)."""

    def __init__(self, config: SpikeCLIPConfig, backend: str = "auto"):
        super().__init__()
        self.config = config
        self.time_steps = 1
        C = config.width
        channels = [config.in_channels, C // 8, C // 4, C // 2, C, C]
        self.convs = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, bias=False) for i in range(5)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels[i + 1]) for i in range(5))
        self.pre_layernorm = nn.LayerNorm(C)
        hidden = int(C * config.mlp_ratio)
        self.layers = nn.ModuleList(
            EncoderLayer(C, config.heads, hidden) for _ in range(config.depth)
        )
        self.post_layernorm = nn.LayerNorm(C)
        self.proj = nn.Linear(C, config.embed_dim)
        self.check_finite = True

    def forward(self, images: torch.Tensor, *, checked: bool = False) -> torch.Tensor:
        """checked: the caller has run check_images on these images (encode_image has)."""
        if not checked:
            check_images(self.config, images, self.check_finite)
        c = self.config
        x = normalize_images(resize_images(images, c.image_size, c.resize_antialias),
                             c.image_normalize)  # fmt: skip
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = bn(conv(x))
            if i in (2, 3):
                x = F.max_pool2d(x, 3, stride=2, padding=1)
        x = self.pre_layernorm(x.flatten(2).transpose(1, 2))  # [B, N, C]
        for layer in self.layers:
            x = layer(x)
        return self.proj(self.post_layernorm(x.mean(1)))
