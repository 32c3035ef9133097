"""Products fed by spikes kept 1 bit each: pack.py (pack_spikes / unpack_spikes), linear.py and
linear_triton.py (spike_linear), conv.py (spike_conv2d), lookup.py (inference on the CPU:
products of packed spikes by table lookup, fused with the LIF that fires them), reference.py
(the bit layout; the products' spec is the dense product of the unpacked spikes)."""
