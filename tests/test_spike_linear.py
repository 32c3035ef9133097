"""spike_linear: x @ W^T from packed spikes, and its gradients, against dense products."""

import pytest
import torch
from lif_cases import rel_err

from spikeclip.kernels import pack_spikes, spike_linear
from spikeclip.kernels.common.backends import (
    SPIKE_PRODUCT_DTYPES,
    BackendUnavailableError,
    why_unavailable,
)

BACKENDS = [
    b for b in ("torch", "cpp", "triton") if why_unavailable(b, torch.device("cpu")) is None
]
# Triton's bit-reading tensor-core products: under the interpreter here, on CUDA where there is
# one (3xTF32 for float32 weights: float32-level error, not bit for bit).
TRITON = [
    pytest.param(d, id=f"triton-{d}")
    for d in ("cpu", "cuda")
    if why_unavailable("triton", torch.device(d)) is None
    and (d == "cpu" or torch.cuda.is_available())
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("rows", "n", "cout", "rate"),
    [
        (37, 13, 5, 0.3),
        (64, 384, 96, 0.03),
        (33, 77, 130, 0.1),  # the cpp sums: two full register tiles and a partial one
        (5, 8, 16, 0.5),
        (1, 1, 3, 1.0),
        (9, 70, 7, 0.0),
    ],
)
def test_matches_dense(backend, dtype, rows, n, cout, rate):
    x = (torch.rand(rows, n) < rate).to(dtype)
    w = torch.randn(cout, n, dtype=dtype, requires_grad=True)
    xg = x.clone().requires_grad_(True)
    g = torch.randn(rows, cout, dtype=dtype)
    if dtype not in SPIKE_PRODUCT_DTYPES.get(backend, (dtype,)):  # Triton: no float64
        with pytest.raises(TypeError, match="computes in"):
            spike_linear(xg, pack_spikes(x), w, backend=backend)
        return
    y = spike_linear(xg, pack_spikes(x), w, backend=backend)
    y.backward(g)
    w_ref = w.detach().clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    y_ref = x_ref @ w_ref.t()
    y_ref.backward(g)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert y.dtype == dtype and y.shape == (rows, cout)
    assert rel_err(y.detach(), y_ref.detach()) <= tol
    assert rel_err(w.grad, w_ref.grad) <= tol
    assert rel_err(xg.grad, x_ref.grad) <= tol


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [
        (b, d)
        for b in BACKENDS
        for d in (torch.float32, torch.float64)
        if d in SPIKE_PRODUCT_DTYPES.get(b, (d,))
    ],
)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_inf_and_nan_give_the_dense_answer(backend, dtype, bad):
    """A weight (forward) or grad_y (weight gradient) holding inf / NaN where x is 0: the dense
    product meets it there (0 x inf = NaN), sums at the spikes would not. Every backend gives
    the reference's answer, NaN for NaN, at a firing rate where the cpp kernels sum."""
    torch.manual_seed(3)
    rows, n, cout = 40, 70, 33
    x = (torch.rand(rows, n) < 0.05).to(dtype)
    x[:, 9] = 0  # the bad weight's input never spikes: only a dense product meets it
    w = torch.randn(cout, n, dtype=dtype)
    w[4, 9] = bad
    w.requires_grad_(True)
    g = torch.randn(rows, cout, dtype=dtype)
    g[7, 2] = bad  # a row whose spikes are few: the sums would meet it only there
    y = spike_linear(x.clone().requires_grad_(True), pack_spikes(x), w, backend=backend)
    y.backward(g)
    w_ref = w.detach().clone().requires_grad_(True)
    y_ref = x @ w_ref.t()
    y_ref.backward(g)
    assert torch.isnan(y_ref).any() and torch.isnan(w_ref.grad).any()  # cases the sums miss
    torch.testing.assert_close(y.detach(), y_ref.detach(), equal_nan=True)
    torch.testing.assert_close(w.grad, w_ref.grad, equal_nan=True)


def test_values_of_x_are_not_read():
    x = (torch.rand(6, 20) < 0.4).float()
    w = torch.randn(4, 20)
    stand_in = torch.zeros((), requires_grad=True).expand(6, 20)
    assert torch.allclose(spike_linear(stand_in, pack_spikes(x), w), x @ w.t())


def test_bad_input():
    x = torch.zeros(4, 10)
    bits = pack_spikes(x)
    with pytest.raises(ValueError, match="weight must be"):
        spike_linear(x, bits, torch.randn(3, 9))
    with pytest.raises(ValueError, match="bits must be"):
        spike_linear(x, bits.float(), torch.randn(3, 10))
    with pytest.raises(ValueError, match=r"\[rows, n\]"):
        spike_linear(x[0], bits, torch.randn(3, 10))


@pytest.mark.parametrize("device", TRITON)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    ("rows", "n", "cout", "rate"),
    [(37, 13, 5, 0.3), (130, 384, 96, 0.05), (65, 77, 130, 0.5), (1, 1, 3, 1.0), (3, 200, 1, 0.2)],
)
def test_triton_reads_bits_in_every_dtype(device, dtype, rows, n, cout, rate):
    x = (torch.rand(rows, n, device=device) < rate).to(dtype)
    w = torch.randn(cout, n, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(rows, cout, device=device, dtype=dtype)
    y = spike_linear(torch.zeros_like(x).requires_grad_(), pack_spikes(x), w, backend="triton")
    y.backward(g)
    # the spec in float64 from the same (rounded) operands
    x64, w64, g64 = x.double(), w.detach().double(), g.double()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and y.shape == (rows, cout)
    assert rel_err(y.detach().double(), x64 @ w64.t()) <= tol
    assert rel_err(w.grad.double(), g64.t() @ x64) <= tol


def test_product_backend_choice_by_device_and_dtype():
    """Backend choice, dtype included, lives in kernels/common/backends.py: auto on CPU sums with
    cpp (when built); cpp never sums half precision, Triton never float64; auto on CUDA takes
    Triton's bit-reading products."""
    from spikeclip.kernels.common.backends import spike_product_backend

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cpp = "cpp" if why_unavailable("cpp", cpu) is None else "torch"
    assert spike_product_backend("spike_linear", "auto", cpu, torch.float32) == cpp
    assert spike_product_backend("spike_linear", "auto", cpu, torch.bfloat16) == "torch"
    assert spike_product_backend("spike_conv2d", "auto", cpu, torch.float64) == cpp
    if TRITON:
        assert spike_product_backend("spike_linear", "auto", cuda, torch.bfloat16) == "triton"
    with pytest.raises(BackendUnavailableError, match="no spike_conv2d kernel"):
        spike_product_backend("spike_conv2d", "triton", cpu, torch.float32)


@pytest.mark.parametrize(
    "op,backend,dtype",
    [("spike_linear", "cpp", torch.bfloat16), ("spike_linear", "cpp", torch.float16),
     ("spike_conv2d", "cpp", torch.bfloat16), ("spike_linear", "triton", torch.float64)],
    ids=str,
)  # fmt: skip
def test_a_backend_asked_by_name_refuses_a_dtype_it_cannot_compute(op, backend, dtype):
    """An explicit backend= never falls back quietly to the dense reference."""
    from spikeclip.kernels.common.backends import spike_product_backend

    if why_unavailable(backend, torch.device("cpu")) is not None:
        pytest.skip(f"{backend} does not run here")
    with pytest.raises(TypeError, match=f"backend='{backend}' computes in"):
        spike_product_backend(op, backend, torch.device("cpu"), dtype)
    if op == "spike_linear":
        x = (torch.rand(4, 12) < 0.5).to(dtype)
        with pytest.raises(TypeError, match="not " + str(dtype).replace("torch.", "")):
            spike_linear(x, pack_spikes(x), torch.randn(3, 12, dtype=dtype), backend=backend)
    assert spike_product_backend(op, "auto", torch.device("cpu"), dtype) in ("torch", "cpp")
