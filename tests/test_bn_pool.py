"""bn_max_pool (BatchNorm + max-pool fused) against its reference, F.max_pool2d of F.batch_norm:
values, winners and every gradient (y, BN's weight and bias) in float64 and float32, train and
eval, both windows, odd sizes, negative scales, ties, NaN and -inf; the running statistics; bits
that do not depend on the thread count; the bytes kept for the backward; bad input."""

import copy

import pytest
import torch
import torch.nn.functional as F
from seeded_draws import choice
from torch import nn

from spikeclip.kernels.bn_pool.op import bn_max_pool
from spikeclip.kernels.common.backends import why_unavailable
from spikeclip.kernels.common.batch_norm import batch_norm_args
from spikeclip.memory import saved_tensor_bytes

pytestmark = pytest.mark.skipif(
    why_unavailable("cpp", torch.device("cpu")) is not None, reason="spikeclip._C not built"
)
WINDOWS = ["3x3s2", "2x2"]
ERRORS = (RuntimeError, ValueError)  # TORCH_CHECK, TORCH_CHECK_VALUE
POOLS = {2: dict(kernel_size=2, stride=2), 3: dict(kernel_size=3, stride=2, padding=1)}
SHAPES = [(6, 5, 9, 7), (4, 3, 8, 8), (2, 4, 2, 3), (3, 2, 1, 5), (2, 3, 33, 20)]


def _bn(C, dtype, affine=True):
    bn = nn.BatchNorm2d(C, affine=affine).to(dtype)
    with torch.no_grad():
        if affine:  # some channels with a negative scale: the pool's maximum is then y's minimum
            bn.weight.uniform_(0.5, 2.0).mul_(torch.tensor([1.0, -1.0]).repeat(C)[:C].to(dtype))
            bn.bias.normal_(0, 0.5)
        bn.running_mean.normal_(0, 0.3), bn.running_var.uniform_(0.5, 2.0)
    return bn


def _run(bn, y, g, window, backend):
    """(pooled, grad of y, grad of weight, grad of bias, running mean, running var)."""
    bn = copy.deepcopy(bn)
    yl = y.clone().requires_grad_(True)
    z = bn_max_pool(yl, *batch_norm_args(bn), window=window, backend=backend)
    (z * g).sum().backward()
    grads = (bn.weight.grad, bn.bias.grad) if bn.affine else (None, None)
    return z.detach(), yl.grad, *grads, bn.running_mean, bn.running_var


def _out(n, window):
    return n // 2 if window == "2x2" else (n - 1) // 2 + 1


def _grad_out(y, window, gen):
    N, C, H, W = y.shape
    return torch.randn(N, C, _out(H, window), _out(W, window), dtype=y.dtype, generator=gen)


@pytest.mark.parametrize(
    "window, shape",
    [(w, s) for w in WINDOWS for s in SHAPES if w == "3x3s2" or min(s[2:]) >= 2],  # 2x2: H, W >= 2
)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_cpp_equals_the_reference_in_float64(window, shape, mode, affine):
    """rel 1e-12: the pooled values, the gradients of y and of BN's weight and bias, and the
    running statistics."""
    gen = torch.Generator().manual_seed(sum(shape))
    y = torch.randn(shape, dtype=torch.float64, generator=gen) * 1.7 + 0.3
    g = _grad_out(y, window, gen)
    bn = _bn(shape[1], torch.float64, affine).train(mode == "train")
    ref = _run(bn, y, g, window, "torch")
    got = _run(bn, y, g, window, "cpp")
    names = ("z", "y", "weight", "bias", "mean", "var")
    for a, b, name in zip(got, ref, names, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert float((a - b).norm()) <= 1e-12 * float(b.norm()), name
    assert ref[1].abs().sum() > 0


@pytest.mark.parametrize("window", WINDOWS)
def test_float32_follows_the_reference(window):
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(8, 6, 16, 15, generator=gen) * 2 - 0.5
    g = _grad_out(y, window, gen)
    bn = _bn(6, torch.float32)
    ref, got = _run(bn, y, g, window, "torch"), _run(bn, y, g, window, "cpp")
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_nan_and_inf_pick_the_references_winners(window, dtype):
    """Eval mode (fixed statistics): y of few distinct values (most windows tied), -inf, NaN, and
    in float64 values that differ below float32's resolution; the same pooled values (NaN where
    the reference has NaN) and the gradient of y at the same places: the same winners."""
    gen = torch.Generator().manual_seed(7)
    shape = (3, 4, 11, 10)
    y = torch.randint(0, 3, shape, generator=gen).to(dtype)
    if dtype == torch.float64:
        y[0] = 1 + torch.randint(0, 3, shape[1:], generator=gen).double() * 1e-12
    y[1, :, ::3] = float("-inf")
    y[2][torch.rand(shape[1:], generator=gen) < 0.1] = float("nan")
    g = _grad_out(y, window, gen)
    bn = _bn(4, dtype).eval()
    ref, got = _run(bn, y, g, window, "torch"), _run(bn, y, g, window, "cpp")
    for a, b in zip(got[:2], ref[:2], strict=True):  # values equal up to BN's rounding
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, equal_nan=True)
    assert torch.equal(got[1] != 0, ref[1] != 0)  # the same winners take the gradient
    assert ref[0].isnan().any() and ref[0].isinf().any() and (ref[1] != 0).any()


def test_bits_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(9)
    y = torch.randn(16, 8, 12, 12, generator=gen)
    g = _grad_out(y, "3x3s2", gen)
    bn = _bn(8, torch.float32)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append(_run(bn, y, g, "3x3s2", "cpp"))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for a, b in zip(other, runs[0], strict=True):
            assert torch.equal(a, b)


def test_keeps_y_and_a_byte_per_window():
    """The backward keeps y and the winners (a byte each), not BatchNorm's output and int64
    indices as the pair does."""
    y = torch.randn(4, 8, 16, 16, requires_grad=True)
    bn = _bn(8, torch.float32)
    _, ours = saved_tensor_bytes(lambda: bn_max_pool(y, *batch_norm_args(bn), backend="cpp"))
    _, pair = saved_tensor_bytes(lambda: bn_max_pool(y, *batch_norm_args(bn), backend="torch"))
    windows = 4 * 8 * 8 * 8
    assert ours <= y.numel() * 4 + windows + 4 * 8 * 4  # y, the bytes, per-channel tensors
    assert pair >= y.numel() * 4 * 2 + windows * 8


def test_picks_and_refuses():
    """auto runs half precision through the reference; by name it is a TypeError; bad windows,
    shapes and per-channel tensors are refused before any kernel reads them; the ops refuse
    tensors that disagree, and a `where` naming places outside y, without writing outside."""
    bn = _bn(3, torch.float32)
    y = torch.randn(2, 3, 6, 6)
    half = bn_max_pool(y.bfloat16(), None, None, None, None, True, 0.1, 1e-5)
    assert half.dtype == torch.bfloat16 and half.shape == (2, 3, 3, 3)
    with pytest.raises(TypeError, match="float32 and float64"):
        bn_max_pool(y.half(), None, None, None, None, True, 0.1, 1e-5, backend="cpp")
    with pytest.raises(ValueError, match="window"):
        bn_max_pool(y, *batch_norm_args(bn), window="3x3")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        bn_max_pool(y[0], None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="H, W >= 2"):
        bn_max_pool(y[..., :1], *batch_norm_args(bn), window="2x2")
    with pytest.raises(ValueError, match="weight must be"):
        bn_max_pool(y, None, None, torch.ones(4), None, True, 0.1, 1e-5)
    ops = torch.ops.spikeclip
    mean, invstd = torch.zeros(3), torch.ones(3)
    with pytest.raises(ERRORS, match="window must be"):
        ops.bn_max_pool(y, mean, invstd, None, None, 4)
    with pytest.raises(ERRORS, match="mean must be"):
        ops.bn_max_pool(y, mean[:2], invstd, None, None, 3)
    with pytest.raises(ERRORS, match="contiguous"):
        ops.bn_max_pool(y.transpose(2, 3), mean, invstd, None, None, 3)
    for window, bad in ((3, 9), (3, 0), (2, 4)):  # 0: row -1, column -1 of window (0, 0)
        z, where = ops.bn_max_pool(y, mean, invstd, None, None, window)
        where = where.clone()
        where[1, 2, 0, 0] = bad
        with pytest.raises(ERRORS, match="outside the input"):
            ops.bn_max_pool_backward(z, where, y, mean, invstd, None, window, True)
    z, where = ops.bn_max_pool(y, mean, invstd, None, None, 3)
    with pytest.raises(ERRORS, match="grad_z must be"):
        ops.bn_max_pool_backward(z[:, :2], where, y, mean, invstd, None, 3, True)
    with pytest.raises(ERRORS, match="where must be"):
        ops.bn_max_pool_backward(z, where.int(), y, mean, invstd, None, 3, True)


def test_empty_batches_give_empty_outputs():
    bn = _bn(3, torch.float32).eval()
    z = bn_max_pool(torch.randn(0, 3, 5, 5, requires_grad=True), *batch_norm_args(bn))
    assert z.shape == (0, 3, 3, 3)


@pytest.mark.parametrize("window", [2, 3])
def test_opcheck(window):
    """The ops' schemas and fake kernels (torch.compile traces through them) agree with the
    kernels."""
    y = torch.randn(4, 3, 7, 6, dtype=torch.float64)
    mean, invstd = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    weight, bias = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    ops = torch.ops.spikeclip
    torch.library.opcheck(ops.bn_max_pool, (y, mean, invstd, weight, bias, window))
    torch.library.opcheck(ops.bn_max_pool, (y, mean, invstd, None, None, window))
    z, where = ops.bn_max_pool(y, mean, invstd, weight, bias, window)
    grad = torch.randn_like(z)
    for training in (True, False):
        torch.library.opcheck(ops.bn_max_pool_backward,
                              (grad, where, y, mean, invstd, weight, window, training))  # fmt: skip


def test_ops_on_random_bad_input():
    """The cpp ops called directly, 300 seeded random cases: sizes with zeros, planes smaller
    than the window, per-channel tensors of the wrong length or dtype, grad_z or `where` of the
    wrong shape, `where` bytes naming places outside y, inf and NaN in y. Each either raises
    (and only when something disagrees) or gives the reference's pooled values and, in eval
    mode, its input gradient; nothing is read or written outside a buffer (asan_check.sh runs
    this file under AddressSanitizer)."""
    ops = torch.ops.spikeclip
    gen = torch.Generator().manual_seed(0)

    def pick(*options):
        return choice(gen, *options)

    raised = matched = 0
    for _ in range(300):
        window = pick(2, 3)
        bad = pick(None, None, None, "mean", "dtype", "weight", "grad", "where", "byte")
        N, C, H, W = pick(0, 1, 3), pick(0, 1, 4), pick(0, 1, 2, 5), pick(1, 2, 7)
        y = torch.randn(N, C, H, W, dtype=torch.float64, generator=gen) * 2
        if y.numel() and pick(True, False):
            flat = y.view(-1)
            for value in (float("inf"), float("-inf"), float("nan")):
                flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = value
        mean = torch.randn(C + 1 if bad == "mean" else C, dtype=torch.float64)
        if bad == "dtype":
            mean = mean.float()
        invstd = torch.rand(C, dtype=torch.float64) + 0.5
        weight = pick(None, torch.randn(C, dtype=torch.float64))
        if bad == "weight":
            weight = torch.rand(C + 1, dtype=torch.float64)
        bias = pick(None, torch.randn(C, dtype=torch.float64))
        small = min(H, W) < (2 if window == 2 else 1)
        try:
            z, where = ops.bn_max_pool(y, mean, invstd, weight, bias, window)
        except ERRORS:
            assert small or bad in ("mean", "dtype", "weight"), (y.shape, window, bad)
            raised += 1
            continue
        assert not small and bad in (None, "grad", "where", "byte"), (y.shape, window, bad)
        view = (1, C, 1, 1)
        a = invstd * (1 if weight is None else weight)
        b = (0 if bias is None else bias) - mean * a
        yl = y.clone().requires_grad_(True)
        if C == 0:  # F.max_pool2d refuses zero channels; ours gives an empty output
            assert z.shape == (N, 0, *z.shape[2:]) and where.shape == z.shape
            matched += 1
            continue
        ref = F.max_pool2d(yl * a.view(view) + b.view(view), **POOLS[window])
        assert z.shape == ref.shape and torch.equal(z.isnan(), ref.isnan())
        assert torch.allclose(z, ref, rtol=1e-12, atol=1e-12, equal_nan=True)
        grad = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
        if bad == "grad":
            grad = grad[:, :, :-1] if grad.shape[2] else torch.zeros(1, dtype=torch.float64)
        if bad == "where":
            where = where.int()
        if bad == "byte" and where.numel():
            where = where.clone()
            where.view(-1)[int(torch.randint(where.numel(), (1,), generator=gen))] = 200
        try:
            gy, _, _ = ops.bn_max_pool_backward(grad, where, y, mean, invstd, weight, window, False)
        except ERRORS:
            assert bad in ("grad", "where", "byte"), (y.shape, window, bad)
            raised += 1
            continue
        assert bad in (None, "byte") and (bad is None or where.numel() == 0), (y.shape, bad)
        ref.backward(grad)
        assert gy.shape == y.shape
        assert torch.allclose(gy, yl.grad, rtol=1e-12, atol=1e-12, equal_nan=True)
        matched += 1
    assert raised > 50 and matched > 50, (raised, matched)
