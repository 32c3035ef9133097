"""Packed bits as a user may hand them over: padding bits past n set (bits packed from a wider
row), odd widths, both sides of the dense hand-over, and shapes that disagree. Every kernel that
reads bits must ignore the padding (as the reference does) and refuse bad shapes with a
ValueError: before the masking, a set padding bit sent `spike_linear` on `cpp` out of bounds.
"""

import pytest
import torch

import spikeclip.kernels.spike_products.linear_triton  # noqa: F401  (registers the Triton ops)
from spikeclip.kernels import pack_spikes, spike_linear, ssa, unpack_spikes
from spikeclip.kernels.common.backends import why_unavailable

CPP = why_unavailable("cpp", torch.device("cpu")) is None
needs_cpp = pytest.mark.skipif(not CPP, reason="the C++ extension is not built")
WIDTHS = [1, 5, 7, 8, 9, 60, 63, 64, 65, 71, 100, 130]
# Devices whose _C kernels read bits: the CPU ones, and the CUDA ones where they are built.
KERNEL_DEVICES = ["cpu"] + (
    ["cuda"] if why_unavailable("cuda", torch.device("cuda")) is None else []
)
TRITON_DEVICES = [
    d
    for d in ("cpu", "cuda")
    if why_unavailable("triton", torch.device(d)) is None
    and (d == "cpu" or torch.cuda.is_available())
]


def random_bits(rows: int, n: int, rate: float, garbage: bool) -> torch.Tensor:
    """Packed rows of n spikes at `rate`; with garbage, every padding bit is set."""
    bits = pack_spikes((torch.rand(rows, n) < rate).float(), backend="torch")
    if garbage and n % 8:
        bits[:, -1] |= (0xFF << (n % 8)) & 0xFF
    return bits


def clean(bits: torch.Tensor, n: int) -> torch.Tensor:
    return pack_spikes(unpack_spikes(bits, n, backend="torch"), backend="torch")


@needs_cpp
def test_issue_reproducer_reads_nothing_past_the_row():
    b = torch.zeros(100, 2, dtype=torch.uint8)
    b[0] = 255
    y = spike_linear(torch.zeros(100, 9), b, torch.randn(16, 9), backend="cpp")
    ref = spike_linear(torch.zeros(100, 9), b, y.new_zeros(16, 9) + 1, backend="torch")
    assert torch.isfinite(y).all()
    assert torch.equal(y[1:], torch.zeros(99, 16))
    assert ref[0].eq(1 * 9).all()  # the reference sees 9 spikes in row 0: bits past 9 ignored


@needs_cpp
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("rate", [0.05, 0.5])  # the sparse sums and the dense hand-over
def test_spike_linear_ignores_padding_bits(n, rate):
    rows, cout = 37, 19
    bits = random_bits(rows, n, rate, garbage=True)
    w = torch.randn(cout, n, dtype=torch.float64, requires_grad=True)
    x = torch.zeros(rows, n, dtype=torch.float64, requires_grad=True)
    y = spike_linear(x, bits, w, backend="cpp")
    g = torch.randn_like(y)
    (gw,) = torch.autograd.grad(y, w, g)
    w_ref = w.detach().clone().requires_grad_()
    y_ref = unpack_spikes(bits, n, torch.float64, backend="torch") @ w_ref.t()
    (gw_ref,) = torch.autograd.grad(y_ref, w_ref, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-12, atol=1e-12)
    # the same bits with the padding cleared give the same answers
    torch.testing.assert_close(spike_linear(x, clean(bits, n), w, backend="cpp"), y)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("n", WIDTHS)
def test_triton_spike_linear_ignores_padding_bits(n, device):
    rows, cout = 37, 19
    bits = random_bits(rows, n, 0.3, garbage=True).to(device)
    w = torch.randn(cout, n, device=device)
    g = torch.randn(rows, cout, device=device)
    x = unpack_spikes(bits, n, torch.float64, backend="torch")
    y = torch.ops.spikeclip.spike_linear_triton(bits, w, n)
    gw = torch.ops.spikeclip.spike_linear_weight_grad_triton(g, bits, n)
    torch.testing.assert_close(y.double(), x @ w.double().t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw.double(), g.double().t() @ x, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.ops.spikeclip.spike_linear_triton(clean(bits, n), w, n), y)


@needs_cpp
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("n", WIDTHS)
def test_unpack_ignores_padding_bits(n, device):
    bits = random_bits(13, n, 0.3, garbage=True).to(device)
    for backend in ("cpp", "cuda", "triton"):
        if why_unavailable(backend, torch.device(device)) is not None:
            continue
        out = unpack_spikes(bits, n, backend=backend)
        assert torch.equal(out, unpack_spikes(bits, n, backend="torch")), backend


@needs_cpp
@pytest.mark.parametrize("width", [5, 9, 13, 17])
@pytest.mark.parametrize(
    ("cin", "cout"), [(3, 5), (61, 5), (61, 600)]
)  # dense below 72 inputs per field; summed above, by images, and by channels past 1 MiB
def test_conv_weight_grad_ignores_padding_bits(width, cin, cout):
    B, H, k = 2, 6, 3
    x = (torch.rand(B, cin, H, width) < 0.1).float()
    codes = pack_spikes(x.permute(0, 2, 3, 1).contiguous(), backend="torch")
    codes[..., -1] |= (0xFF << (cin % 8)) & 0xFF if cin % 8 else 0
    gy = torch.randn(B, cout, H, width)
    gw = torch.ops.spikeclip.spike_conv2d_weight_grad(gy, codes, cin, k, k // 2)
    ref = torch.nn.grad.conv2d_weight(x, (cout, cin, k, k), gy, padding=k // 2)
    torch.testing.assert_close(gw, ref, rtol=1e-4, atol=1e-4)


@needs_cpp
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("op", ["sdsa", "ssa"])
@pytest.mark.parametrize("D", [5, 29, 48])
def test_attention_backward_ignores_padding_bits(op, D, device):
    T, B, H, N = 2, 1, 2, 9
    q, k, v = ((torch.rand(T, B, H, N, D, device=device) < 0.3).float() for _ in range(3))
    fwd = getattr(torch.ops.spikeclip, f"{op}_fwd")
    bwd = getattr(torch.ops.spikeclip, f"{op}_bwd")
    lead = (0.125,) if op == "ssa" else ()
    lif = (2.0, 0.5, 0.0, False, True, "sigmoid", 4.0)
    _, h, qb, kb, vb = fwd(q, k, v, *lead, *lif, True)
    go = torch.randn(T, B, H, N, D, device=device)
    grads = bwd(go, h, qb, kb, vb, D, *lead, *lif)
    if D % 8:
        dirty = [b.clone() for b in (qb, kb, vb)]
        for b in dirty:
            b[..., -1] |= (0xFF << (D % 8)) & 0xFF
        for a, b in zip(grads, bwd(go, h, *dirty, D, *lead, *lif), strict=True):
            assert torch.equal(a, b)
    # shapes that disagree with grad_out are refused, never read
    with pytest.raises(ValueError, match="bits"):
        bwd(go, h, qb[:, :, :, :-1].contiguous(), kb, vb, D, *lead, *lif)
    with pytest.raises(ValueError, match="bits"):
        bwd(go, h, qb, kb, vb.to(torch.int16), D, *lead, *lif)
    with pytest.raises(ValueError, match="h must be"):
        bwd(go, h[:1].contiguous(), qb, kb, vb, D, *lead, *lif)
    with pytest.raises(ValueError, match="h must be"):
        bwd(go, h.double(), qb, kb, vb, D, *lead, *lif)


@needs_cpp
def test_attention_public_api_still_matches_reference():
    q, k, v = ((torch.rand(2, 1, 2, 9, 13) < 0.3).float().requires_grad_() for _ in range(3))
    out = ssa(q, k, v, backend="cpp")
    ref = ssa(q, k, v, backend="torch")
    assert torch.equal(out, ref)


@needs_cpp
@pytest.mark.parametrize(("rows", "n"), [(0, 9), (5, 0), (0, 0)])
def test_spike_linear_with_empty_dimensions(rows, n):
    x = torch.zeros(rows, n, requires_grad=True)
    w = torch.randn(4, n, requires_grad=True)
    bits = torch.zeros(rows, (n + 7) // 8, dtype=torch.uint8)
    y = spike_linear(x, bits, w, backend="cpp")
    y.sum().backward()
    assert y.shape == (rows, 4) and torch.equal(y, torch.zeros(rows, 4))
    assert torch.equal(w.grad, torch.zeros(4, n))


@needs_cpp
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("shape", [(2, 1, 1, 0, 5), (2, 1, 1, 3, 0), (0, 1, 1, 3, 5)])
@pytest.mark.parametrize("op", ["sdsa", "ssa"])
def test_attention_with_empty_dimensions(shape, op, device):
    import spikeclip.kernels as k

    q, kk, v = (torch.zeros(shape, device=device).requires_grad_() for _ in range(3))
    out = getattr(k, op)(q, kk, v, backend="cpp" if device == "cpu" else "cuda")
    out.sum().backward()
    assert out.shape == shape and q.grad.shape == shape


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_spike_linear_refuses_what_it_cannot_read(device):
    bits = random_bits(6, 20, 0.3, garbage=False).to(device)
    w, g = torch.randn(4, 20, device=device), torch.randn(6, 4, device=device)
    op, wgrad = (
        torch.ops.spikeclip.spike_linear_triton,
        torch.ops.spikeclip.spike_linear_weight_grad_triton,
    )
    with pytest.raises(ValueError, match="bits must be"):
        op(bits[:, :2], w, 20)  # a row one byte short
    with pytest.raises(ValueError, match="bits must be"):
        op(bits.to(torch.int16), w, 20)
    with pytest.raises(ValueError, match="weight must be"):
        op(bits, w[:, :19], 20)
    with pytest.raises(TypeError, match="float operand"):
        op(bits, w.double(), 20)
    with pytest.raises(ValueError, match="bits must be"):
        wgrad(g[:5], bits, 20)
    with pytest.raises(TypeError, match="float operand"):
        wgrad(g.half().int(), bits, 20)
    assert op(bits[:0], w, 20).shape == (0, 4)
    assert torch.equal(wgrad(g[:0], bits[:0], 20), torch.zeros(4, 20, device=device))
    assert torch.equal(op(bits[:, :0], w[:, :0], 0), torch.zeros(6, 4, device=device))


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_unpack_refuses_a_negative_or_non_integer_width(backend):
    bits = torch.zeros(3, 0, dtype=torch.uint8)
    with pytest.raises(ValueError, match="n must be >= 0"):
        unpack_spikes(bits, -3, backend=backend)
    with pytest.raises(TypeError, match="n must be an int"):
        unpack_spikes(bits, 0.0, backend=backend)
