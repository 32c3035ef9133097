"""Kernel benchmarks behind `spikeclip bench` and benchmarks/*.py: every ratio in a table is
taken within one run (fused vs reference, vs SpikingJelly, vs a copy of the same bytes)."""
