"""nn.Modules built on spikeclip.kernels: neurons, blocks on `[T, B, ...]`, SpikeCLIP's image
and text encoders, and SpikeCLIP itself."""

from spikeclip.models.blocks import MLP, AttentionCore, Block, SelfAttention
from spikeclip.models.config import SpikeCLIPConfig
from spikeclip.models.image_encoder import ConvTokenizer, ImageEncoder
from spikeclip.models.layers import SeqConvBN, SeqLinearBN, TemporalReadout, make_neuron
from spikeclip.models.neurons import IF, LIF, reset_net
from spikeclip.models.official import from_official
from spikeclip.models.spikeclip_model import SpikeCLIP, set_backend, set_memory
from spikeclip.models.spiking_layers import SeqToANN, SpikingConv2d, SpikingLinear
from spikeclip.models.text_encoder import TextEncoder

__all__ = [
    "IF",
    "LIF",
    "MLP",
    "AttentionCore",
    "Block",
    "ConvTokenizer",
    "ImageEncoder",
    "SelfAttention",
    "SeqConvBN",
    "SeqLinearBN",
    "SeqToANN",
    "SpikeCLIP",
    "SpikeCLIPConfig",
    "SpikingConv2d",
    "SpikingLinear",
    "TemporalReadout",
    "TextEncoder",
    "from_official",
    "make_neuron",
    "reset_net",
    "set_backend",
    "set_memory",
]
