"""pytest-benchmark view of the LIF kernels (pytest benchmarks --benchmark-enable).

Compare columns across backends of one run; absolute times on shared machines wander. Each
benchmark first checks that what it times computes the reference's result (a fast wrong kernel
gets no number); the default test run collects these too (one call each, no timing)."""

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
    assert torch.equal(lif(x, backend=backend), lif(x, backend="torch"))
    out = benchmark(lambda: lif(x, backend=backend))
    assert out.shape == x.shape


@pytest.mark.parametrize("T", [4, 8])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_forward_backward(benchmark, backend, T):
    x = (torch.randn(T, N, device=DEVICE) + 0.5).requires_grad_(True)
    g = torch.rand_like(x)

    def step():
        x.grad = None
        lif(x, backend=backend).backward(g)
        return x.grad

    grad = step().clone()
    xr = x.detach().clone().requires_grad_(True)
    lif(xr, backend="torch").backward(g)
    torch.testing.assert_close(grad, xr.grad, rtol=1e-5, atol=1e-6)
    benchmark(step)


def test_copy_same_bytes(benchmark):
    x = torch.randn(4, N, device=DEVICE)
    assert torch.equal(benchmark(x.clone), x)
