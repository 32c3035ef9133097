"""SpikeCLIPConfig: every size and neuron setting of the image and text encoders, with the named
configs `paper` (SpikeCLIP as published) and `tiny` (trains on 2 CPU cores in minutes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from spikeclip.kernels.common.options import check_number
from spikeclip.kernels.common.surrogates import SURROGATES

# relu: our ANN twin of the image encoder (T = 1); clip-ann: the official code's ANN
# counterpart (spikeclip.models.official_ann: softmax attention, LayerNorm, QuickGELU)
IMAGE_NEURONS = ("lif", "relu", "clip-ann")
ATTENTIONS = ("ssa", "sdsa")
TOKENIZER_POOLS = ("3x3", "2x2")  # 3x3 stride 2 padding 1 (SpikeCLIP's), or 2x2 stride 2
TEXT_EMBEDDINGS = ("trained", "frozen-layernorm")
IMAGE_NORMALIZE = ("clip", "none")
# CLIP's per-channel image mean and std (the official preprocessing normalises with them)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class SpikeCLIPConfig:
    """Sizes of SpikeCLIP's image encoder (Spikingformer-style) and text encoder.

    Image: `[B, in_channels, H, W]` in [0, 1] resized to `image_size` (bilinear; antialiased
    when shrinking if `resize_antialias`), normalised (`image_normalize`: "clip" mean/std, or
    "none"), repeated over `time_steps`; tokenizer channels width/8, width/4, width/2, width,
    width with two max-pools (`tokenizer_pool`: "3x3" stride 2 padding 1, SpikeCLIP's, or
    "2x2"), giving (image_size/4)^2 tokens of `width`; its last stage plain conv + BN, or with
    `tokenizer_shortcut` added to its own input; `depth` blocks of attention (`heads`,
    `attention`) + MLP (`mlp_ratio`); mean over tokens, temporal weighted readout,
    Linear(width, embed_dim).
    Text: token + position embeddings (`vocab_size` x `text_width`, `context_length`; copied
    from the teacher), flattened, LIF -> Linear(-> text_hidden) -> LIF -> Linear(-> embed_dim),
    temporal readout. `text_embeddings`: "trained" (SpikeCLIP's: trained with the rest, no
    LayerNorm) or "frozen-layernorm" (frozen, then a LayerNorm: see TextEncoder).
    Neurons: LIF(tau, v_th, hard reset to v_reset, detach_reset, surrogate(alpha)); the
    attention's LIF fires at attn_v_th. `v_reset` None: every LIF (the attention's too) resets
    softly, v -= its threshold on a spike, keeping what lay above it (not in SpikeCLIP, whose
    reset is hard, to 0). `learnable_tau`: every LIF a PLIF (tau = 1 / sigmoid(w),
    w trained, starting at `tau`; not in SpikeCLIP, which fixes tau = 2). `text_v_th`: the text
    encoder's LIF threshold (None: v_th, as SpikeCLIP). `learnable_v_th`: every LIF's threshold
    learned, one per layer, from its v_th (models.neurons.LIF; the attention's fused LIF keeps
    attn_v_th; not in SpikeCLIP).
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
    v_reset: float | None = 0.0
    surrogate: str = "sigmoid"
    alpha: float = 4.0
    vocab_size: int = 49408
    context_length: int = 20
    text_width: int = 512
    text_hidden: int = 2048
    tokenizer_pool: str = "3x3"
    tokenizer_shortcut: bool = False
    text_embeddings: str = "trained"
    image_normalize: str = "clip"
    resize_antialias: bool = False
    learnable_tau: bool = False
    text_v_th: float | None = None
    learnable_v_th: bool = False

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
        for name, choices in (("tokenizer_pool", TOKENIZER_POOLS),
                              ("text_embeddings", TEXT_EMBEDDINGS),
                              ("image_normalize", IMAGE_NORMALIZE)):  # fmt: skip
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("tokenizer_shortcut", "resize_antialias", "learnable_tau", "learnable_v_th"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}")

        # real, finite numbers (NaN, inf, bools and strings are named here, not at forward)
        for name in ("text_v_th", "v_reset"):  # None: the encoder's v_th; soft reset
            if getattr(self, name) is not None:
                check_number(getattr(self, name), f"SpikeCLIPConfig.{name}")
        for name, minimum in (("tau", 1.0), ("alpha", 0.0), ("mlp_ratio", 0.0),
                              ("attn_scale", 0.0), ("v_th", None),
                              ("attn_v_th", None)):  # fmt: skip
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
        """A saved config; fields it predates take the values that were built in then
        (LEGACY_VALUES), so an old checkpoint keeps computing the function it was trained as."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SpikeCLIPConfig fields: {sorted(unknown)}")
        return cls(**{**LEGACY_VALUES, **d})


# What spikeclip 0.1 built before these were options (checkpoints it wrote lack the fields).
LEGACY_VALUES = dict(
    tokenizer_pool="2x2",
    tokenizer_shortcut=True,
    text_embeddings="frozen-layernorm",
    image_normalize="none",
    resize_antialias=True,
    learnable_tau=False,
    text_v_th=None,
    learnable_v_th=False,
)

NAMED_CONFIGS = {
    # SpikeCLIP as published (../shared/SPIKECLIP.md): about 9.5M image-encoder parameters.
    "paper": SpikeCLIPConfig(),
    # Small enough to train on 2 CPU cores in minutes (a step of batch 128 ~1 s): 28 px
    # (Fashion-MNIST's own size, 7 x 7 tokens), width 64, one block. The paper's structure,
    # but for the text embeddings: frozen + LayerNorm, because with the offline teacher's
    # MiniLM embeddings trained ones left text alignment at a loss of 0.334 (0.062 frozen +
    # LayerNorm) and the demo at 34.33% top-1 (benchmarks/results/demo_tiny_*); and for the
    # neurons: threshold 0.5 and a learnable tau, measured on the demo: SpikeCLIP 86.21% vs
    # 84.51% (ANN twin 87.84 / 87.85), replace 82.55% vs 75.50%, at 26% firing instead of 7%
    # (0.0137 vs 0.0053 mJ per image; the ANN 0.0586) (demo_tiny_neuron_options_cpu_2core.txt).
    "tiny": SpikeCLIPConfig(
        image_size=28,
        width=64,
        depth=1,
        heads=2,
        embed_dim=384,
        text_width=384,
        text_hidden=512,
        vocab_size=30522,
        text_embeddings="frozen-layernorm",
        v_th=0.5,
        learnable_tau=True,
    ),
}
