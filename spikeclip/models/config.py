"""SpikeCLIPConfig: every size and neuron setting of the image and text encoders, with the named
configs `paper` (SpikeCLIP as published) and `tiny` (trains on 2 CPU cores in minutes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from spikeclip.kernels.reference import SURROGATES

IMAGE_NEURONS = ("lif", "relu")  # relu: the ANN counterpart of the image encoder (T = 1)
ATTENTIONS = ("ssa", "sdsa")


@dataclass(frozen=True)
class SpikeCLIPConfig:
    """Sizes of SpikeCLIP's image encoder (Spikingformer-style) and text encoder.

    Image: `[B, in_channels, H, W]` resized to `image_size`, repeated over `time_steps`;
    tokenizer channels width/8, width/4, width/2, width, width with two 2x2 max-pools, giving
    (image_size/4)^2 tokens of `width`; `depth` blocks of attention (`heads`, `attention`) + MLP
    (`mlp_ratio`); mean over tokens, temporal weighted readout, Linear(width, embed_dim).
    Text: frozen token + position embeddings (`vocab_size` x `text_width`, `context_length`),
    flattened, LIF -> Linear(-> text_hidden) -> LIF -> Linear(-> embed_dim), temporal readout.
    Neurons: LIF(tau, v_th, hard reset to v_reset, detach_reset, surrogate(alpha)); the
    attention's LIF fires at attn_v_th.
    """

    image_size: int = 32
    in_channels: int = 3
    time_steps: int = 4
    width: int = 384
    depth: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    attention: str = "ssa"
    attn_scale: float = 0.125
    attn_v_th: float = 0.5
    embed_dim: int = 512
    image_neuron: str = "lif"
    tau: float = 2.0
    v_th: float = 1.0
    v_reset: float = 0.0
    surrogate: str = "sigmoid"
    alpha: float = 4.0
    vocab_size: int = 49408
    context_length: int = 20
    text_width: int = 512
    text_hidden: int = 2048

    def __post_init__(self):
        positive = (
            "image_size",
            "in_channels",
            "time_steps",
            "width",
            "depth",
            "heads",
            "embed_dim",
            "vocab_size",
            "context_length",
            "text_width",
            "text_hidden",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SpikeCLIPConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % 4:
            raise ValueError(
                f"SpikeCLIPConfig.image_size must be a multiple of 4 (two 2x2 max-pools), "
                f"got {self.image_size}"
            )
        if self.width % 8:
            raise ValueError(f"SpikeCLIPConfig.width must be a multiple of 8, got {self.width}")
        if self.width % self.heads:
            raise ValueError(
                f"SpikeCLIPConfig.width ({self.width}) must be divisible by heads ({self.heads})"
            )
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.image_neuron not in IMAGE_NEURONS:
            raise ValueError(
                f"image_neuron must be one of {IMAGE_NEURONS}, got {self.image_neuron!r}"
            )
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}")
        from spikeclip.kernels.options import check_number

        # real, finite numbers (NaN, inf, bools and strings are named here, not at forward)
        for name, minimum in (("tau", 1.0), ("alpha", 0.0), ("mlp_ratio", 0.0),
                              ("attn_scale", 0.0), ("v_th", None), ("attn_v_th", None),
                              ("v_reset", None)):  # fmt: skip
            check_number(getattr(self, name), f"SpikeCLIPConfig.{name}", minimum=minimum)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def tokens(self) -> int:
        return (self.image_size // 4) ** 2

    @property
    def image_time_steps(self) -> int:
        """Time steps the image encoder runs: 1 for the ANN counterpart."""
        return self.time_steps if self.image_neuron == "lif" else 1

    @classmethod
    def named(cls, name: str, **overrides) -> SpikeCLIPConfig:
        """`paper` or `tiny`, with any field overridden."""
        if name not in NAMED_CONFIGS:
            raise ValueError(f"config must be one of {sorted(NAMED_CONFIGS)}, got {name!r}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown SpikeCLIPConfig fields: {sorted(unknown)}")
        return dataclasses.replace(NAMED_CONFIGS[name], **overrides)

    def replace(self, **changes) -> SpikeCLIPConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SpikeCLIPConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SpikeCLIPConfig fields: {sorted(unknown)}")
        return cls(**d)


NAMED_CONFIGS = {
    # SpikeCLIP as published (../shared/SPIKECLIP.md): about 9.5M image-encoder parameters.
    "paper": SpikeCLIPConfig(),
    # Small enough to train on 2 CPU cores in minutes (a step of batch 128 ~1 s): 28 px
    # (Fashion-MNIST's own size, 7 x 7 tokens), width 64, one block.
    "tiny": SpikeCLIPConfig(
        image_size=28,
        width=64,
        depth=1,
        heads=2,
        embed_dim=384,
        text_width=384,
        text_hidden=512,
        vocab_size=30522,
    ),
}
