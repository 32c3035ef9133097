"""max_pool2x2: the cpp kernel against F.max_pool2d(x, 2) (the spec) in values and gradients,
exactly: ties, NaNs, -inf, odd sizes, every dtype; the ops' registrations; bad input."""

import pytest
import torch
import torch.nn.functional as F

from spikeclip.kernels import max_pool2x2
from spikeclip.kernels.backends import why_unavailable
from spikeclip.models.layers import SeqMaxPool2x2

needs_cpp = pytest.mark.skipif(
    why_unavailable("cpp", torch.device("cpu")) is not None, reason="spikeclip._C not built"
)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _inputs(kind, shape, dtype):
    if kind == "random":
        return torch.randn(shape).to(dtype)
    if kind == "ties":  # few distinct values: most windows hold equal maxima
        return torch.randint(0, 3, shape).to(dtype)
    x = torch.randn(shape)
    x[torch.rand(shape) < 0.1] = float("nan")
    x[torch.rand(shape) < 0.1] = float("-inf")
    return x.to(dtype)


def _pool_and_grad(fn, x, g):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "ties", "nan_inf"])
@pytest.mark.parametrize(
    "shape", [(3, 5, 8, 6), (2, 3, 7, 9), (1, 2, 2, 3), (4, 1, 5, 2), (2, 3, 6, 22), (1, 2, 9, 17)]
)
def test_matches_max_pool2d_exactly(dtype, kind, shape):
    x = _inputs(kind, shape, dtype)
    g = torch.randn(*shape[:2], shape[2] // 2, shape[3] // 2).to(dtype)
    y, gx = _pool_and_grad(lambda t: max_pool2x2(t, backend="cpp"), x, g)
    y_ref, gx_ref = _pool_and_grad(lambda t: F.max_pool2d(t, 2), x, g)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert torch.equal(y.isnan(), y_ref.isnan())
    assert torch.equal(y.nan_to_num(0.0), y_ref.nan_to_num(0.0))
    assert torch.equal(gx, gx_ref)
    with torch.no_grad():
        assert torch.equal(max_pool2x2(x, backend="cpp").nan_to_num(0.0), y_ref.nan_to_num(0.0))


@needs_cpp
def test_gradients_follow_the_window_winner():
    x = torch.tensor([[[[1.0, 5.0, 2.0], [3.0, 4.0, 9.0], [7.0, 8.0, 6.0]]]], requires_grad=True)
    y = max_pool2x2(x, backend="cpp")
    y.backward(torch.full_like(y, 2.0))
    assert y.tolist() == [[[[5.0]]]]
    assert x.grad.tolist() == [[[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]]


@needs_cpp
def test_module_folds_leading_dims_on_every_backend():
    x = torch.randn(3, 2, 4, 6, 10)
    ref = F.max_pool2d(x.flatten(0, 1), 2).unflatten(0, (3, 2))
    for backend in ("torch", "cpp", "auto"):
        assert torch.equal(SeqMaxPool2x2(backend)(x), ref)


@needs_cpp
def test_opcheck():
    x = torch.randn(2, 3, 6, 5)
    torch.library.opcheck(torch.ops.spikeclip.max_pool2x2.default, (x,))
    _, where = torch.ops.spikeclip.max_pool2x2(x)
    g = torch.randn(2, 3, 3, 2)
    torch.library.opcheck(torch.ops.spikeclip.max_pool2x2_backward.default, (g, where, 6, 5))


@pytest.mark.parametrize("shape", [(4, 6, 6), (2, 3, 1, 6), (2, 3, 6, 1)])
def test_bad_input(shape):
    with pytest.raises(ValueError, match="max_pool2x2"):
        max_pool2x2(torch.randn(shape), backend="torch")
