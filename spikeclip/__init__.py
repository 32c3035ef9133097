"""spikeclip: fused spiking-neural-network kernels for PyTorch, and a spiking CLIP built on them.

    import spikeclip
    spikes = spikeclip.kernels.lif(x)             # x: [T, *]
    layer = spikeclip.models.LIF(tau=2.0)          # nn.Module on [T, B, ...]
    report = spikeclip.accelerate(sj_model)      # a SpikingJelly network on our kernels
    model, preprocess, tokenizer = spikeclip.load("spikeclip_out/demo/checkpoint")
    probs = model.classify([preprocess("photo.png")], ["cat", "dog"])

Submodules load on first use, so that the command line can set up the environment (for
example PyTorch's allocator switches) before torch is imported.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["__version__", "accelerate", "compat", "kernels", "load", "models"]


def __getattr__(name):
    if name in ("compat", "kernels", "models"):
        return importlib.import_module(f"spikeclip.{name}")
    if name == "accelerate":
        return importlib.import_module("spikeclip.compat").accelerate
    if name == "load":
        return importlib.import_module("spikeclip.inference").load
    raise AttributeError(f"module 'spikeclip' has no attribute {name!r}")
