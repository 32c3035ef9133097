"""nn.Modules built on spikeclip.kernels."""

from spikeclip.models.neurons import LIF

__all__ = ["LIF"]
