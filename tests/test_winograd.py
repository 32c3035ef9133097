"""conv3x3_winograd and conv3x3_winograd_weight_grad (csrc/cpu/winograd_cpu.cpp): F.conv2d(x,
w, padding=1) and its weight gradient by Winograd's F(4x4, 3x3), against PyTorch's: float64 to
rounding, float32 to the transforms' ~1e-5 of the output's scale; odd sizes (partial tiles,
channels off the vector width, several chunks); any layout; inf / NaN as the direct
convolution spreads them; bad input refused."""

import pytest
import torch
import torch.nn.functional as F
from seeded_draws import integer

from spikeclip._ext import extension_loaded

pytestmark = pytest.mark.skipif(not extension_loaded(), reason="needs spikeclip._C")


def winograd(x, w):
    return torch.ops.spikeclip.conv3x3_winograd(x, w)


def winograd_weight_grad(x, g):
    return torch.ops.spikeclip.conv3x3_winograd_weight_grad(x, g)


def weight_grad(x, g):
    return torch.nn.grad.conv2d_weight(x, (g.shape[1], x.shape[1], 3, 3), g, padding=1)


def scaled_err(y, ref):
    return ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


TOL = {torch.float32: 5e-5, torch.float64: 1e-12}

SHAPES = [  # N, C_in, H, W, C_out
    (2, 3, 5, 7, 5),  # partial tiles both ways, channels below one vector
    (1, 9, 4, 4, 17),  # one whole tile, channels just past a vector
    (3, 16, 9, 13, 8),
    (1, 1, 1, 1, 1),  # a 1x1 image: one tile, mostly border
    (2, 8, 3, 2, 8),  # planes smaller than a tile
    (2, 64, 64, 64, 8),  # several chunks of tile rows, the last one short
    (4, 40, 8, 8, 48),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_equals_f_conv2d(shape, dtype):
    torch.manual_seed(sum(shape))
    N, C, H, W, K = shape
    x, w = torch.randn(N, C, H, W, dtype=dtype), torch.randn(K, C, 3, 3, dtype=dtype)
    y = winograd(x, w)
    ref = F.conv2d(x, w, padding=1)
    assert y.shape == ref.shape and y.dtype == dtype and y.is_contiguous()
    assert scaled_err(y, ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_weight_grad_equals_pytorch_s(shape, dtype):
    """Over every tile and chunk (the sum over tiles runs chunk by chunk into one gradient)."""
    torch.manual_seed(sum(shape) + 1)
    N, C, H, W, K = shape
    x, g = torch.randn(N, C, H, W, dtype=dtype), torch.randn(N, K, H, W, dtype=dtype)
    gw = winograd_weight_grad(x, g)
    ref = weight_grad(x, g)
    assert gw.shape == ref.shape and gw.dtype == dtype and gw.is_contiguous()
    assert scaled_err(gw, ref) <= TOL[dtype]


def test_any_layout_of_x():
    torch.manual_seed(1)
    x, w = torch.randn(2, 12, 10, 9), torch.randn(7, 12, 3, 3)
    ref = F.conv2d(x, w, padding=1)
    for view in (x.contiguous(memory_format=torch.channels_last), x.mT.contiguous().mT):
        assert scaled_err(winograd(view, w), ref) <= TOL[torch.float32]
    wide = torch.randn(2, 12, 10, 20)[..., ::2]  # a strided view
    assert scaled_err(winograd(wide, w), F.conv2d(wide, w, padding=1)) <= TOL[torch.float32]
    g = torch.randn(2, 7, 10, 10)
    for gv in (g, g.contiguous(memory_format=torch.channels_last)):
        assert (
            scaled_err(winograd_weight_grad(wide, gv), weight_grad(wide, g)) <= TOL[torch.float32]
        )


def pytorch_s(fn, *args):
    """fn(*args), or the RuntimeError's type if PyTorch refuses."""
    try:
        return fn(*args)
    except RuntimeError:
        return RuntimeError


def assert_like(ours, ref, *args, **tol):
    if ref is RuntimeError:  # what PyTorch refuses (planes of size 0, no kernels), refused
        with pytest.raises(RuntimeError):
            ours(*args)
    else:
        torch.testing.assert_close(ours(*args), ref, equal_nan=True, **tol)


@pytest.mark.parametrize(
    "N,C,H,W,K", [(0, 3, 5, 5, 4), (2, 0, 5, 5, 4), (2, 3, 5, 5, 0), (2, 3, 0, 5, 4)], ids=str
)
def test_empty_operands_as_pytorch(N, C, H, W, K):
    x, w, g = torch.randn(N, C, H, W), torch.randn(K, C, 3, 3), torch.randn(N, K, H, W)
    assert_like(winograd, pytorch_s(lambda: F.conv2d(x, w, padding=1)), x, w)
    assert_like(winograd_weight_grad, pytorch_s(weight_grad, x, g), x, g)


@pytest.mark.parametrize("where", ["x", "w"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_inf_and_nan_spread_as_in_the_direct_convolution(where, bad):
    """The transforms would mix an inf into every output of its tiles (inf - inf = NaN): such
    operands go to the direct convolution, whose pattern of inf and NaN is the answer."""
    torch.manual_seed(2)
    x, w = torch.randn(2, 40, 9, 10), torch.randn(48, 40, 3, 3)
    if where == "x":
        x[1, 3, 4, 5] = bad
    else:
        w[3, 4, 1, 2] = bad
    y, ref = winograd(x, w), F.conv2d(x, w, padding=1)
    assert not ref.isfinite().all()
    torch.testing.assert_close(y, ref, equal_nan=True)
    g = torch.randn(2, 48, 9, 10)  # the weight gradient, x or grad_y holding the bad value
    x2, g2 = (
        (x, g)
        if where == "x"
        else (
            torch.randn(2, 40, 9, 10),
            g.index_put_(
                (torch.tensor(1), torch.tensor(5), torch.tensor(2), torch.tensor(3)),
                torch.tensor(bad),
            ),
        )
    )
    ref = weight_grad(x2, g2)
    assert not ref.isfinite().all()
    torch.testing.assert_close(winograd_weight_grad(x2, g2), ref, equal_nan=True)


@pytest.mark.parametrize(
    ("x", "w", "error"),
    [
        (torch.randn(2, 3, 5, 5), torch.randn(4, 3, 5, 5), ValueError),  # not 3x3
        (torch.randn(2, 3, 5, 5), torch.randn(4, 2, 3, 3), ValueError),  # channels differ
        (torch.randn(3, 5, 5), torch.randn(4, 3, 3, 3), ValueError),  # x not 4-d
        (torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3, dtype=torch.float64), ValueError),
        (
            torch.ones(2, 3, 5, 5, dtype=torch.int),
            torch.ones(4, 3, 3, 3, dtype=torch.int),
            ValueError,
        ),
        (torch.randn(2, 3, 5, 5).half(), torch.randn(4, 3, 3, 3).half(), ValueError),
    ],
    ids=["5x5", "channels", "3-d x", "dtypes differ", "int32", "float16"],
)
def test_bad_input_is_refused(x, w, error):
    with pytest.raises(error, match="conv3x3_winograd"):
        winograd(x, w)


@pytest.mark.parametrize(
    ("x", "g"),
    [
        (torch.randn(2, 3, 5, 5), torch.randn(3, 4, 5, 5)),  # batches differ
        (torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 6)),  # planes differ
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5)),  # not 4-d
        (torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 5, dtype=torch.float64)),
        (torch.randn(2, 3, 5, 5).bfloat16(), torch.randn(2, 4, 5, 5).bfloat16()),
    ],
    ids=["batch", "planes", "3-d", "dtypes differ", "bfloat16"],
)
def test_bad_input_to_the_weight_gradient_is_refused(x, g):
    with pytest.raises(ValueError, match="conv3x3_winograd_weight_grad"):
        winograd_weight_grad(x, g)


@pytest.mark.parametrize("seed", range(200))
def test_random_operands_give_pytorch_s_answer_or_an_error(seed):
    """Fuzz: random sizes (zeros among them), now and then a mismatched channel count, batch or
    plane, a 5x5 kernel, another dtype, an inf or a NaN in x: both ops refuse exactly what
    disagrees (ValueError), else give PyTorch's values (inf and NaN where it has them), never
    reading elsewhere (the ASAN run covers this file)."""
    g = torch.Generator().manual_seed(seed)

    def r(lo, hi):
        return integer(g, lo, hi)

    N, C, H, W, K = r(0, 3), r(0, 20), r(0, 13), r(0, 13), r(0, 20)
    k = 5 if r(0, 9) == 0 else 3
    dtype = torch.float64 if r(0, 1) else torch.float32
    x = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    w = torch.randn(K, C + (r(0, 9) == 0), k, k, generator=g, dtype=dtype)
    gy = torch.randn(N + (r(0, 9) == 0), K, H, W + (r(0, 9) == 0), generator=g, dtype=dtype)
    if r(0, 9) == 0:
        w = w.float() if dtype == torch.float64 else w.double()
    if r(0, 5) == 0 and x.numel():  # an inf or a NaN: spread as the direct convolution spreads it
        x.view(-1)[r(0, x.numel() - 1)] = (float("inf"), float("nan"))[r(0, 1)]
    if w.shape[1] != C or k != 3 or w.dtype != dtype:
        with pytest.raises(ValueError):
            winograd(x, w)
    else:
        ref = pytorch_s(lambda: F.conv2d(x, w, padding=1))
        assert_like(winograd, ref, x, w, atol=TOL[dtype] * 10, rtol=TOL[dtype])
    if gy.shape[0] != N or gy.shape[3] != W:
        with pytest.raises(ValueError):
            winograd_weight_grad(x, gy)
    else:
        ref = pytorch_s(weight_grad, x, gy)
        assert_like(winograd_weight_grad, ref, x, gy, atol=TOL[dtype] * 100,
                    rtol=TOL[dtype] * 10)  # fmt: skip


def test_opcheck():
    x, w = torch.randn(2, 9, 6, 7), torch.randn(5, 9, 3, 3)
    torch.library.opcheck(torch.ops.spikeclip.conv3x3_winograd.default, (x, w))
    g = torch.randn(2, 5, 6, 7)
    torch.library.opcheck(torch.ops.spikeclip.conv3x3_winograd_weight_grad.default, (x, g))
