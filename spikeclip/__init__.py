"""spikeclip: fused spiking-neural-network kernels for PyTorch, and a spiking CLIP built on them.

import spikeclip
spikes = spikeclip.kernels.lif(x)             # x: [T, *]
layer = spikeclip.models.LIF(tau=2.0)          # nn.Module on [T, B, ...]
"""

from spikeclip import kernels, models

__version__ = "0.1.0"
__all__ = ["__version__", "kernels", "models"]
