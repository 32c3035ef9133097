"""max_pool2x2 and max_pool3x3s2: the cpp kernels against F.max_pool2d (the spec) in values and
gradients, exactly: ties, NaNs, -inf, odd sizes, channels-last, every dtype; the ops'
registrations; bad input."""

import pytest
import torch
import torch.nn.functional as F

from spikeclip.kernels import max_pool2x2, max_pool3x3s2
from spikeclip.kernels.common.backends import why_unavailable
from spikeclip.models.layers import SeqMaxPool2x2, SeqMaxPool3x3

needs_cpp = pytest.mark.skipif(
    why_unavailable("cpp", torch.device("cpu")) is not None, reason="spikeclip._C not built"
)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# name: (our op, the spec, output size of an input size)
POOLS = {
    "max_pool2x2": (max_pool2x2, lambda t: F.max_pool2d(t, 2), lambda n: n // 2),
    "max_pool3x3s2": (max_pool3x3s2, lambda t: F.max_pool2d(t, 3, stride=2, padding=1),
                      lambda n: (n - 1) // 2 + 1),
}  # fmt: skip


def _inputs(kind, shape, dtype):
    if kind == "random":
        return torch.randn(shape).to(dtype)
    if kind == "ties":  # few distinct values: most windows hold equal maxima
        return torch.randint(0, 3, shape).to(dtype)
    if kind == "close":  # in float64, maxima apart by less than float32 can tell
        return (1 + torch.randint(0, 3, shape).double() * 1e-12).to(dtype)
    if kind == "all_-inf":  # whole windows of -inf, and NaN among them
        x = torch.full(shape, float("-inf"))
        x[torch.rand(shape) < 0.05] = float("nan")
        x[torch.rand(shape) < 0.1] = 1.0
        return x.to(dtype)
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
@pytest.mark.parametrize("name", POOLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "ties", "close", "nan_inf", "all_-inf"])
@pytest.mark.parametrize(
    "shape",
    [(3, 5, 8, 6), (2, 3, 7, 9), (1, 2, 2, 3), (4, 1, 5, 2), (2, 3, 6, 22), (1, 2, 9, 17),
     (2, 2, 5, 41)],
)  # fmt: skip
def test_matches_max_pool2d_exactly(name, dtype, kind, shape):
    ours, spec, out = POOLS[name]
    x = _inputs(kind, shape, dtype)
    g = torch.randn(*shape[:2], out(shape[2]), out(shape[3])).to(dtype)
    y, gx = _pool_and_grad(lambda t: ours(t, backend="cpp"), x, g)
    y_ref, gx_ref = _pool_and_grad(spec, x, g)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert torch.equal(y.isnan(), y_ref.isnan())
    assert torch.equal(y.nan_to_num(0.0), y_ref.nan_to_num(0.0))
    assert torch.equal(gx, gx_ref)
    with torch.no_grad():
        assert torch.equal(ours(x, backend="cpp").nan_to_num(0.0), y_ref.nan_to_num(0.0))


@needs_cpp
@pytest.mark.parametrize("name", POOLS)
def test_channels_last_and_one_pixel(name):
    ours, spec, out = POOLS[name]
    x = torch.randn(2, 8, 9, 7).to(memory_format=torch.channels_last)
    g = torch.randn(2, 8, out(9), out(7))
    y, gx = _pool_and_grad(lambda t: ours(t, backend="cpp"), x, g)
    y_ref, gx_ref = _pool_and_grad(spec, x, g)
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
    if name == "max_pool3x3s2":  # a 1x1 input: one window, clipped to the pixel
        x = torch.randn(3, 2, 1, 1)
        assert torch.equal(ours(x, backend="cpp"), spec(x))


@needs_cpp
def test_gradients_follow_the_window_winner():
    x = torch.tensor([[[[1.0, 5.0, 2.0], [3.0, 4.0, 9.0], [7.0, 8.0, 6.0]]]], requires_grad=True)
    y = max_pool2x2(x, backend="cpp")
    y.backward(torch.full_like(y, 2.0))
    assert y.tolist() == [[[[5.0]]]]
    assert x.grad.tolist() == [[[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]]
    # 3x3 windows overlap: the 9 in the middle wins all four, and takes all four gradients
    x = torch.tensor([[[[1.0, 5.0, 2.0], [3.0, 9.0, 4.0], [7.0, 8.0, 6.0]]]], requires_grad=True)
    y = max_pool3x3s2(x, backend="cpp")
    y.backward(torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]]))
    assert y.tolist() == [[[[9.0, 9.0], [9.0, 9.0]]]]
    assert x.grad.tolist() == [[[[0.0, 0.0, 0.0], [0.0, 15.0, 0.0], [0.0, 0.0, 0.0]]]]


@needs_cpp
@pytest.mark.parametrize("name,module", [("max_pool2x2", SeqMaxPool2x2),
                                         ("max_pool3x3s2", SeqMaxPool3x3)])  # fmt: skip
def test_module_folds_leading_dims_on_every_backend(name, module):
    x = torch.randn(3, 2, 4, 6, 10)
    ref = POOLS[name][1](x.flatten(0, 1)).unflatten(0, (3, 2))
    for backend in ("torch", "cpp", "auto"):
        assert torch.equal(module(backend)(x), ref)


@needs_cpp
@pytest.mark.parametrize("name", POOLS)
def test_opcheck(name):
    out = POOLS[name][2]
    x = torch.randn(2, 3, 6, 5)
    op = getattr(torch.ops.spikeclip, name)
    torch.library.opcheck(op.default, (x,))
    _, where = op(x)
    g = torch.randn(2, 3, out(6), out(5))
    backward = getattr(torch.ops.spikeclip, f"{name}_backward")
    torch.library.opcheck(backward.default, (g, where, 6, 5))


@needs_cpp
def test_a_where_that_points_outside_is_refused():
    x = torch.randn(1, 2, 5, 5)
    _, where = torch.ops.spikeclip.max_pool3x3s2(x)
    g = torch.randn_like(where, dtype=torch.float32)
    for bad in (9, 0):  # 9 is no place in a window; 0 at (0, 0) is the padded corner
        broken = where.clone()
        broken[0, 1, 0, 0] = bad
        with pytest.raises(ValueError, match="outside the input"):
            torch.ops.spikeclip.max_pool3x3s2_backward(g, broken, 5, 5)


@pytest.mark.parametrize("name,shape", [("max_pool2x2", (4, 6, 6)), ("max_pool2x2", (2, 3, 1, 6)),
                                        ("max_pool2x2", (2, 3, 6, 1)), ("max_pool3x3s2", (4, 6, 6)),
                                        ("max_pool3x3s2", (2, 3, 0, 6))])  # fmt: skip
def test_bad_input(name, shape):
    with pytest.raises(ValueError, match=name):
        POOLS[name][0](torch.randn(shape), backend="torch")


@needs_cpp
def test_3x3_fuzz_shapes_values_and_wheres():
    """Random sizes (empty batches, 1-pixel planes, odd sides), values with inf and NaN, and
    random `where` bytes for the backward: the spec's answer, or a ValueError, never a write
    outside the buffers (benchmarks/asan_check.sh runs this under AddressSanitizer)."""
    gen = torch.Generator().manual_seed(7)
    checked = {"scattered": 0, "refused": 0}
    for i in range(60):
        n, c = (int(v) for v in torch.randint(0, 3, (2,), generator=gen))
        h, w = (int(v) for v in torch.randint(1, 12, (2,), generator=gen))
        x = torch.randn(n, c + 1, h, w, generator=gen)
        x[torch.rand(x.shape, generator=gen) < 0.1] = float("inf")
        x[torch.rand(x.shape, generator=gen) < 0.1] = float("nan")
        ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        g = torch.randn(n, c + 1, ho, wo, generator=gen)
        y, gx = _pool_and_grad(lambda t: max_pool3x3s2(t, backend="cpp"), x, g)
        y_ref, gx_ref = _pool_and_grad(POOLS["max_pool3x3s2"][1], x, g)
        assert torch.equal(y.nan_to_num(0.0), y_ref.nan_to_num(0.0))
        assert torch.equal(gx, gx_ref)
        if i % 2:  # random bytes: mostly in-window places, some past an edge or past 8
            where = torch.randint(0, 256, g.shape, generator=gen, dtype=torch.uint8)
            where[where > 20] %= 9
        else:  # random valid places (the winners of another input)
            where = torch.ops.spikeclip.max_pool3x3s2(torch.randn(x.shape, generator=gen))[1]
        rows = (torch.arange(ho) * 2 - 1).view(-1, 1) + where.long() // 3
        cols = (torch.arange(wo) * 2 - 1).view(1, -1) + where.long() % 3
        inside = (where <= 8) & (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        if inside.all():
            gx = torch.ops.spikeclip.max_pool3x3s2_backward(g, where, h, w)
            expected = torch.zeros(n, c + 1, h * w).scatter_add_(
                2, (rows * w + cols).flatten(2), g.flatten(2)).view(n, c + 1, h, w)  # fmt: skip
            assert torch.allclose(gx, expected)
            checked["scattered"] += where.numel() > 0
        else:
            with pytest.raises(ValueError, match="outside the input"):
                torch.ops.spikeclip.max_pool3x3s2_backward(g, where, h, w)
            checked["refused"] += 1
    assert min(checked.values()) >= 10, checked
    with pytest.raises(ValueError, match="must be"):  # shapes that disagree
        torch.ops.spikeclip.max_pool3x3s2_backward(
            torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.uint8), 5, 5)  # fmt: skip
