"""spike_conv2d: convolutions of spikes (the cpp sums for stride-1 'same' ones, any geometry
densely) and their gradients, against dense convolution; and the weight-gradient kernel on its
own."""

import pytest
import torch
import torch.nn.functional as F
from lif_cases import rel_err
from seeded_draws import integer

from spikeclip.kernels import pack_spikes
from spikeclip.kernels.common.backends import why_unavailable
from spikeclip.kernels.spike_products.conv import spike_conv2d

BACKENDS = [b for b in ("torch", "cpp") if why_unavailable(b, torch.device("cpu")) is None]


def winograd_pays(k, cin, cout, H, W):
    """Where the cpp kernels' dense 3x3 work goes by Winograd (csrc/cpu/winograd_cpu.h)."""
    return k == 3 and min(cin, cout) >= 32 and min(H, W) >= 8


needs_cpp = pytest.mark.skipif("cpp" not in BACKENDS, reason="spikeclip._C not built")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("B", "cin", "cout", "H", "W", "k", "rate"),
    [
        (3, 5, 7, 6, 11, 3, 0.15),  # cpp: dense, too few inputs per output pixel to sum
        (2, 17, 100, 9, 5, 3, 0.05),  # the cpp sums: an 8-vector tile, a 4-vector one, a rest
        (2, 10, 24, 6, 9, 3, 0.1),  # one 3-vector tile (float64: 6)
        (1, 16, 130, 7, 7, 3, 0.02),  # two full tiles and a rest
        (2, 9, 64, 5, 13, 5, 0.1),
        (3, 150, 6, 4, 9, 1, 0.12),
        (2, 8, 24, 6, 6, 3, 0.6),  # dense hand-over
        (2, 50, 20, 5, 7, 3, 0.1),
        (2, 12, 96, 11, 40, 3, 0.08),  # bands of 4 (float64: 2) rows, the last one short
        (1, 3, 5, 3, 3, 3, 0.0),
        (2, 40, 48, 9, 10, 3, 0.1),  # cpp: the input gradient by Winograd F(4x4, 3x3)
        (2, 40, 48, 9, 10, 3, 0.5),  # and the dense product too
    ],
)
def test_matches_dense(backend, dtype, B, cin, cout, H, W, k, rate):
    x = (torch.rand(B, cin, H, W) < rate).to(dtype)
    w = torch.randn(cout, cin, k, k, dtype=dtype)
    g = torch.randn(B, cout, H, W, dtype=dtype)
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = spike_conv2d(xs, ws, padding=k // 2, backend=backend)
    y.backward(g)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y_ref = F.conv2d(xr, wr, padding=k // 2)
    y_ref.backward(g)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    # Winograd's transforms (cpp, dense 3x3 work): about 1e-5 of the scale in float32
    tol_w = 3e-5 if backend == "cpp" and winograd_pays(k, cin, cout, H, W) else tol
    tol_w = tol_w if dtype == torch.float32 else tol
    assert y.dtype == dtype and y.shape == y_ref.shape and y.is_contiguous()
    assert rel_err(y.detach(), y_ref.detach()) <= tol_w
    assert rel_err(ws.grad, wr.grad) <= tol_w
    assert rel_err(xs.grad, xr.grad) <= tol_w
    with torch.no_grad():  # (no bits kept: the kernel alone)
        y_inference = spike_conv2d(x, w, padding=k // 2, backend=backend)
    assert rel_err(y_inference, y_ref.detach()) <= tol_w


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "padding", "dilation", "groups"),
    [
        (4, 6, (2, 3), 2, (0, 1), 1, 1),
        (6, 9, 3, (2, 1), 2, (1, 2), 3),
        (5, 7, 3, 1, 0, 1, 1),  # stride 1, no padding: not 'same'
        (4, 4, 5, 3, 1, 1, 4),  # depthwise
    ],
)
def test_any_geometry_matches_dense(cin, cout, k, stride, padding, dilation, groups):
    kh, kw = (k, k) if isinstance(k, int) else k
    x = (torch.rand(3, cin, 11, 10, dtype=torch.float64) < 0.3).double()
    w = torch.randn(cout, cin // groups, kh, kw, dtype=torch.float64)
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = spike_conv2d(xs, ws, **geo)  # auto: dense here, bits kept
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y_ref = F.conv2d(xr, wr, **geo)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    assert y.shape == y_ref.shape
    assert rel_err(y.detach(), y_ref.detach()) <= 1e-13
    assert rel_err(ws.grad, wr.grad) <= 1e-13
    assert rel_err(xs.grad, xr.grad) <= 1e-13
    if "cpp" in BACKENDS:
        with pytest.raises(RuntimeError, match="stride-1 'same'"):
            spike_conv2d(x, w, backend="cpp", **geo)


@needs_cpp
@needs_cpp
@pytest.mark.parametrize(("cin", "cout", "H"), [(40, 48, 9), (16, 48, 9), (40, 48, 7)])
def test_dense_3x3_work_goes_by_winograd_where_it_pays(cin, cout, H):
    """The cpp kernels' input gradient, and their product and weight gradient past the rates
    the sums pay, are Winograd's bit for bit where it pays (32+ channels each way, planes 8+
    wide), else oneDNN's."""
    torch.manual_seed(cin + H)
    x = (torch.rand(2, cin, H, 10) < 0.5).float()
    w, g = torch.randn(cout, cin, 3, 3), torch.randn(2, cout, H, 10)
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = spike_conv2d(xs, ws, padding=1, backend="cpp")
    y.backward(g)
    ops = torch.ops.spikeclip

    def onednn_backward(inp, weight, mask):  # as the kernels call it: the operands laid out alike
        return torch.ops.aten.convolution_backward(
            g, inp, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)  # fmt: skip

    if winograd_pays(3, cin, cout, H, 10):
        want = (ops.conv3x3_winograd(x, w), ops.conv3x3_winograd(g, w.flip(2, 3).transpose(0, 1)),
                ops.conv3x3_winograd_weight_grad(x, g))  # fmt: skip
    else:
        want = (F.conv2d(x, w, padding=1),
                onednn_backward(torch.empty(x.shape), w, [True, False, False])[0],
                onednn_backward(x, torch.empty(w.shape), [False, True, False])[1])  # fmt: skip
    for got, expected in zip((y.detach(), xs.grad, ws.grad), want, strict=True):
        assert torch.equal(got, expected)


def test_gradcheck_weight_float64():
    x = (torch.rand(2, 4, 5, 6) < 0.3).double()
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: spike_conv2d(x, w, padding=1, backend="cpp"), (w,))


@needs_cpp
def test_opcheck():
    x = (torch.rand(2, 5, 6, 7) < 0.1).float()
    w = torch.randn(9, 5, 3, 3)
    torch.library.opcheck(torch.ops.spikeclip.spike_conv2d.default, (x, w, 1))
    codes = torch.ops.spikeclip.spike_conv2d(x, w, 1)[1]
    g = torch.randn(2, 9, 6, 7)
    torch.library.opcheck(torch.ops.spikeclip.spike_conv2d_weight_grad.default, (g, codes, 5, 3, 1))
    torch.library.opcheck(torch.ops.spikeclip.spike_conv2d_input_grad.default, (g, w, 1))
    for bad in ((g, w, 2), (g[:, :4], w, 1), (g.double(), w, 1), (g[0], w, 1)):
        with pytest.raises(RuntimeError, match="spike_conv2d_input_grad"):
            torch.ops.spikeclip.spike_conv2d_input_grad(*bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    x = (torch.rand(2, 4, 5, 5) < 0.3).float()
    w = torch.randn(3, 4, 3, 3)
    with pytest.raises(ValueError, match="spikes"):
        spike_conv2d(x + 0.5, w, padding=1, backend=backend)
    with pytest.raises(ValueError, match=r"\[C_out, C_in, k, k\]"):
        spike_conv2d(x, torch.randn(3, 5, 3, 3), padding=1, backend=backend)
    with pytest.raises(ValueError, match="dtype"):
        spike_conv2d(x, w.double(), padding=1, backend=backend)


@needs_cpp
@pytest.mark.parametrize("cin", [4, 20])  # dense (too few inputs), summed: checked while packing
def test_kernel_rejects_non_spikes(cin):
    x = (torch.rand(2, cin, 5, 5) < 0.3).float()
    x[1, 2, 3, 4] = 2.0
    with pytest.raises(ValueError, match="spikes"):
        torch.ops.spikeclip.spike_conv2d(x, torch.randn(3, cin, 3, 3), 1)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("Cin", "Cout", "k", "rate"),
    [
        (50, 100, 3, 0.1),  # summed: an 8-vector tile, a 4-vector one, a rest
        (20, 7, 5, 0.05),  # summed, a rest only
        (440, 24, 1, 0.15),  # summed, no padding
        (48, 16, 3, 0.0),  # summed, no spikes
        (70, 520, 3, 0.08),  # summed by channel (a gradient over 1 MiB), the last byte short
        (48, 33, 3, 0.5),  # dense: above the summing rate
        (5, 7, 3, 0.02),  # dense: too few inputs per output to pay for the padded copy
    ],
)
def test_weight_grad_kernel_matches_dense(dtype, Cin, Cout, k, rate):
    B, H, W = 3, 6, 11
    x = (torch.rand(B, Cin, H, W) < rate).to(dtype)
    w = torch.randn(Cout, Cin, k, k, dtype=dtype, requires_grad=True)
    y = F.conv2d(x, w, padding=k // 2)
    g = torch.randn_like(y)
    (gw_ref,) = torch.autograd.grad(y, w, g)
    codes = pack_spikes(x.permute(0, 2, 3, 1).contiguous())  # [B, H, W, ceil(Cin / 8)]
    gw = torch.ops.spikeclip.spike_conv2d_weight_grad(g, codes, Cin, k, k // 2)
    assert rel_err(gw, gw_ref) <= (1e-6 if dtype == torch.float32 else 1e-13)


@needs_cpp
@pytest.mark.parametrize("cin", [24, 40])  # a gradient of 69 KB: by images; 1.5 MB: by channels
def test_weight_grad_has_the_same_bits_on_any_number_of_threads(cin):
    # 37 images: more than the kernel's 16 chunks, split unevenly; each chunk's gradient is summed
    # on its own and the chunks added in order (or, by channels, each thread sums whole channels),
    # so the thread count changes nothing
    B, cout, H, W, k = 37, 40 if cin == 24 else 520, 5, 6, 3
    x = (torch.rand(B, cin, H, W) < 0.1).double()
    g = torch.randn(B, cout, H, W, dtype=torch.float64)
    codes = torch.ops.spikeclip.spike_conv2d(x, torch.randn(cout, cin, k, k).double(), 1)[1]
    threads = torch.get_num_threads()
    try:
        grads = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            grads.append(torch.ops.spikeclip.spike_conv2d_weight_grad(g, codes, cin, k, 1))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], other) for other in grads[1:])
    ref = torch.nn.grad.conv2d_weight(x, (cout, cin, k, k), g, padding=1)
    assert rel_err(grads[0], ref) <= 1e-13


@needs_cpp
@pytest.mark.parametrize("seed", range(30))
def test_random_shapes_give_the_dense_convolution(seed):
    """Random sizes (zero included), kernels 1 / 3 / 5 and firing rates on both sides of the
    kernels' summing limit: values and both gradients equal the dense convolution's (float64)."""
    gen = torch.Generator().manual_seed(seed)

    def pick(lo, hi):
        return integer(gen, lo, hi)

    B, cin, cout, H, W = pick(0, 4), pick(1, 70), pick(1, 140), pick(0, 12), pick(1, 12)
    k, rate = (1, 3, 5)[pick(0, 2)], float(torch.rand((), generator=gen)) * 0.3
    x = (torch.rand(B, cin, H, W, generator=gen) < rate).double()
    w = torch.randn(cout, cin, k, k, generator=gen, dtype=torch.float64)
    g = torch.randn(B, cout, H, W, generator=gen, dtype=torch.float64)
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    try:
        y_ref = F.conv2d(xr, wr, padding=k // 2)
    except RuntimeError as error:  # an empty image smaller than the kernel: refused alike
        with pytest.raises(RuntimeError, match=str(error).split(":")[0]):
            spike_conv2d(xs, ws, padding=k // 2, backend="cpp")
        return
    y_ref.backward(g)
    y = spike_conv2d(xs, ws, padding=k // 2, backend="cpp")
    y.backward(g)
    assert y.shape == y_ref.shape
    for a, b in ((y.detach(), y_ref.detach()), (ws.grad, wr.grad), (xs.grad, xr.grad)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cout", [40, 600])  # the weight gradient by images, and by channels
def test_inf_and_nan_give_the_dense_convolutions_answer(dtype, cout):
    """A weight or grad_y holding inf / NaN: the kernels hand over to the dense convolution,
    whose products meet them at the zeros too (0 x inf = NaN), so the answer is the
    reference's, NaN for NaN."""
    B, cin, H, W, k = 3, 24, 5, 6, 3
    x = (torch.rand(B, cin, H, W) < 0.1).to(dtype)
    for bad in (float("inf"), float("nan")):
        w = torch.randn(cout, cin, k, k, dtype=dtype)
        w[1, 2, 0, 1] = bad
        y = torch.ops.spikeclip.spike_conv2d(x, w, 1)[0]
        torch.testing.assert_close(y, F.conv2d(x, w, padding=1), equal_nan=True)
        g = torch.randn(B, cout, H, W, dtype=dtype)
        g[2, 3, 4, 5] = bad
        codes = torch.ops.spikeclip.spike_conv2d(x, w.nan_to_num(), 1)[1]
        gw = torch.ops.spikeclip.spike_conv2d_weight_grad(g, codes, cin, k, 1)
        ref = torch.nn.grad.conv2d_weight(x, w.shape, g, padding=1)
        assert torch.isnan(ref).any()  # the zeros met the inf: a case the sums would miss
        torch.testing.assert_close(gw, ref, equal_nan=True)
