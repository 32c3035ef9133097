"""Other SNN libraries' networks on spikeclip's kernels.

    import spikeclip
    report = spikeclip.accelerate(model)   # a SpikingJelly network, in place
    print(report)                          # what was replaced, what was left and why

`spikeclip.compat.spikingjelly`: SpikingJelly 2.0's LIFNode, ParametricLIFNode, IFNode and
spiking self-attention as subclasses of its own classes, on our fused kernels.
"""

from spikeclip.compat.accelerate import AccelerateReport, accelerate

__all__ = ["AccelerateReport", "accelerate"]
