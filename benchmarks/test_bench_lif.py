"""pytest-benchmark view of the LIF kernels (pytest benchmarks --benchmark-enable).

Compare columns across backends of one run; absolute times on shared machines wander."""

import os

import pytest
import torch

from spikeclip.kernels import available_backends, lif

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [
    b
    for b in available_backends(DEVICE)
    if not (b == "triton" and os.environ.get("TRITON_INTERPRET") == "1")
]
N = int(os.environ.get("SPIKECLIP_BENCH_N", 1 << 20))


@pytest.mark.parametrize("T", [4, 8])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_forward(benchmark, backend, T):
    x = torch.randn(T, N, device=DEVICE) + 0.5
    benchmark(lambda: lif(x, backend=backend))


@pytest.mark.parametrize("T", [4, 8])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_forward_backward(benchmark, backend, T):
    x = (torch.randn(T, N, device=DEVICE) + 0.5).requires_grad_(True)
    g = torch.rand_like(x)

    def step():
        x.grad = None
        lif(x, backend=backend).backward(g)

    benchmark(step)


def test_copy_same_bytes(benchmark):
    x = torch.randn(4, N, device=DEVICE)
    benchmark(x.clone)
