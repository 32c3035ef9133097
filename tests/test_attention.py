"""SDSA and SSA: every fused backend against the float64 reference (outputs and the gradients
of q, k, v) on random spikes at several firing rates, dtypes and odd shapes; the reference's
own gradcheck; bit packing; registration; errors."""

import math

import pytest
import torch
from conftest import FUSED
from lif_cases import TOL, rel_err

from spikeclip.kernels import (
    BackendUnavailableError,
    pack_spikes,
    sdsa,
    sdsa_reference,
    ssa,
    ssa_reference,
    unpack_spikes,
)
from spikeclip.kernels.common.backends import OP_BACKENDS
from spikeclip.kernels.lif.reference import lif_reference

OPS = {"sdsa": (sdsa, sdsa_reference), "ssa": (ssa, ssa_reference)}
ATTN = [p for p in FUSED if p.values[0] in OP_BACKENDS["ssa"]]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_spikes(shape, rates, dtype, device):
    return [(torch.rand(shape, device=device) < r).to(dtype) for r in rates]


def membrane_input(name, q, k, v, scale=0.125):
    """The LIF input of each op, float64: to find outputs within rounding of the threshold."""
    q, k, v = q.double(), k.double(), v.double()
    if name == "sdsa":
        return (k * v).sum(-2, keepdim=True)
    return q @ (k.transpose(-2, -1) @ v) * scale


def check(name, backend, device, shape, dtype, rates, **opts):
    fused, reference = OPS[name]
    q, k, v = random_spikes(shape, rates, dtype, device)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = fused(*leaves, backend=backend, **opts)
    g = torch.randn(shape, dtype=torch.float64, device=device)
    grads = torch.autograd.grad(out, leaves, g.to(dtype))

    leaves64 = [t.detach().double().cpu().requires_grad_(True) for t in (q, k, v)]
    out64 = reference(*leaves64, **opts)
    grads64 = torch.autograd.grad(out64, leaves64, g.cpu())

    assert out.shape == q.shape and out.dtype == dtype
    # With spike inputs the membrane inputs are exact integer counts (times a power of two) in
    # every dtype, so outputs match exactly and gradients to storage precision.
    assert torch.equal(out.double().cpu(), out64.detach())
    if out.numel() >= 500:
        assert 0 < out64.mean() < 1, "degenerate test: no spikes or all spikes"
    for a, b, nm in zip(grads, grads64, "qkv", strict=True):
        assert a.dtype == dtype
        assert rel_err(a.cpu(), b) < TOL[dtype] * 5, f"grad {nm}"


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("name", ["sdsa", "ssa"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize(
    "rates",
    [(0.5, 0.5, 0.5), (0.2, 0.15, 0.3), (0.05, 0.6, 0.1)],
    ids=["dense", "typical", "skewed"],
)
def test_matches_reference(backend, device, name, dtype, rates):
    check(name, backend, device, (4, 2, 3, 19, 13), dtype, rates)


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("name", ["sdsa", "ssa"])
@pytest.mark.parametrize(
    "shape",
    # N 70 and 130: the CPU backward's column lists span 2 and 3 words of 64 rows; D 29: rows of
    # 4 packed bytes, D 48: 6 (read as a short word by the CPU's spike listing)
    [
        (1, 1, 1, 5, 3),
        (3, 1, 2, 1, 9),
        (2, 2, 1, 33, 1),
        (4, 1, 1, 7, 48),
        (2, 1, 2, 70, 24),
        (2, 1, 2, 130, 29),
    ],
    ids=str,
)
def test_odd_shapes(backend, device, name, shape):
    # SSA's input grows like N * D * rate^3 * scale: a power-of-two scale (exact arithmetic
    # kept) near 1 / (2 * that) keeps the output neither all spikes nor none at every shape.
    n, d = shape[3], shape[4]
    opts = dict(scale=2.0 ** -round(math.log2(2 * n * d * 0.3**3))) if name == "ssa" else {}
    check(name, backend, device, shape, torch.float32, (0.3, 0.3, 0.3), **opts)


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("name", ["sdsa", "ssa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_inf_and_nan_in_grad_out_give_the_reference_answer(backend, device, name, dtype, bad):
    """grad_out with an inf / NaN: the reference's products meet it at the zeros of the spikes
    too (0 x inf = NaN), where sums at the spikes would not; every backend gives its answer."""
    if dtype == torch.float64 and backend == "triton":
        dtype = torch.float32  # Triton's kernels compute float32 and below
    torch.manual_seed(7)
    shape = (2, 2, 2, 5, 16)
    q, k, v = random_spikes(shape, (0.2, 0.2, 0.2), dtype, device)
    v[..., 3] = 0
    g = torch.randn(shape, dtype=dtype, device=device)
    g[0, 0, 0, 1, 3] = bad
    fused, reference = OPS[name]
    grads = {}
    for run, kw in ((fused, dict(backend=backend)), (reference, {})):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        grads[run] = torch.autograd.grad(run(*leaves, **kw), leaves, g)
    assert any(bool(t.isnan().any()) for t in grads[reference])  # cases the sums would miss
    for a, b in zip(grads[fused], grads[reference], strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)


def test_the_finiteness_check_of_grad_out():
    """The backward's check (a finite sum, half precision summed in float32): false for any inf
    or NaN, true for a half-precision grad whose float16 sum would overflow."""
    from spikeclip.kernels.attention.autograd import _sums_to_finite

    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        big = torch.full((4, 64), 60000.0, dtype=dtype)  # sums past float16's 65504
        assert _sums_to_finite(big)
        for bad in (float("inf"), float("-inf"), float("nan")):
            t = big.clone()
            t[3, 7] = bad
            assert not _sums_to_finite(t)
        t = big.clone()
        t[0, 0], t[0, 1] = float("inf"), float("-inf")  # inf - inf: NaN, still caught
        assert not _sums_to_finite(t)


@pytest.mark.parametrize("tiles", [(16, 16), (32, 16), (16, 32)], ids=str)
@pytest.mark.parametrize("shape", [(2, 1, 2, 70, 48), (3, 2, 1, 37, 20)], ids=str)
def test_ssa_triton_tiles(monkeypatch, tiles, shape):
    """Triton's SSA with products tiled smaller than N and D (several tiles of outputs, several
    slices of the sum; the GPU's tiles only at ViT sizes): the same outputs, exact."""
    if not any(p.values[0] == "triton" for p in ATTN):
        pytest.skip("the triton backend does not run here")
    from spikeclip.kernels.attention import triton as attention_triton

    monkeypatch.setattr(attention_triton, "SSA_TILE", tiles[0])
    monkeypatch.setattr(attention_triton, "SSA_DEPTH", tiles[1])
    device = next(p.values[1] for p in ATTN if p.values[0] == "triton")
    n, d = shape[3], shape[4]
    check("ssa", "triton", device, shape, torch.float32, (0.3, 0.3, 0.3),
          scale=2.0 ** -round(math.log2(2 * n * d * 0.3**3)))  # fmt: skip


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("name", ["sdsa", "ssa"])
@pytest.mark.parametrize(
    "opts",
    [
        dict(v_reset=None),
        dict(detach_reset=False, surrogate="atan"),
        dict(tau=3.0, v_th=0.75, surrogate="erf", alpha=1.5),
        dict(v_reset=-0.25, surrogate="triangle"),
    ],
    ids=str,
)
def test_options(backend, device, name, opts):
    check(name, backend, device, (5, 2, 2, 16, 8), torch.float32, (0.4, 0.3, 0.35), **opts)


@pytest.mark.parametrize("backend,device", ATTN)
def test_ssa_scale_and_association(backend, device):
    # N < D takes the other association in the reference; results agree all the same.
    check("ssa", backend, device, (3, 1, 2, 6, 20), torch.float32, (0.5, 0.5, 0.5), scale=0.25)


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("name", ["sdsa", "ssa"])
def test_non_spike_values(backend, device, name):
    fused, reference = OPS[name]
    q, k, v = (torch.rand(3, 1, 2, 8, 5, device=device) for _ in range(3))
    with torch.no_grad():  # forward-only: any values, same function
        out = fused(q, k, v, backend=backend)
        ref = reference(q.cpu(), k.cpu(), v.cpu())
        assert (out.cpu() != ref).float().mean() < 0.05  # rounding may flip a few spikes
    with pytest.raises(ValueError, match="must hold spikes"):
        fused(q.requires_grad_(True), k, v, backend=backend)


@pytest.mark.parametrize("name", ["sdsa", "ssa"])
def test_reference_gradcheck_float64(name):
    """Reference attention with its LIF in a smooth region (narrow triangle surrogate, inputs
    whose membrane stays away from threshold): autograd == finite differences."""
    reference = OPS[name][1]
    opts = dict(surrogate="triangle", alpha=50.0, v_th=0.5)
    for _ in range(200):  # draw until every membrane value stays 0.03 from the threshold
        q, k, v = (torch.rand(2, 1, 1, 4, 3, dtype=torch.float64) for _ in range(3))
        _, _, h = lif_reference(membrane_input(name, q, k, v), v_th=0.5, return_h=True)
        if (h - 0.5).abs().min() > 0.03:
            break
    else:
        pytest.fail("no smooth-region input found")
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda q, k, v: reference(q, k, v, **opts), leaves)


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("name", ["sdsa", "ssa"])
def test_opcheck_and_compile(backend, device, name):
    suffix = "_triton" if backend == "triton" else ""
    if backend == "triton":
        import spikeclip.kernels.attention.triton  # noqa: F401
    fwd = getattr(torch.ops.spikeclip, f"{name}_fwd{suffix}")
    bwd = getattr(torch.ops.spikeclip, f"{name}_bwd{suffix}")
    q, k, v = random_spikes((2, 1, 2, 9, 10), (0.3, 0.3, 0.3), torch.float32, device)
    opts = (2.0, 0.5, 0.0, False, True, "sigmoid", 4.0)
    pre = (0.125,) if name == "ssa" else ()
    args = (q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True), *pre, *opts)
    torch.library.opcheck(fwd, (*args, True))
    torch.library.opcheck(fwd, (q.detach(), k.detach(), v.detach(), *pre, *opts, False))
    _, h, qb, kb, vb = fwd(q.detach(), k.detach(), v.detach(), *pre, *opts, True)
    torch.library.opcheck(bwd, (torch.randn_like(q), h, qb, kb, vb, 10, *pre, *opts))

    fn = OPS[name][0]
    compiled = torch.compile(
        lambda q, k, v: fn(q, k, v, backend=backend).sum(), fullgraph=True, backend="aot_eager"
    )
    out_c = compiled(q, k, v)
    grads_c = torch.autograd.grad(out_c, (q, k, v))
    out = fn(q, k, v, backend=backend).sum()
    grads = torch.autograd.grad(out, (q, k, v))
    assert torch.equal(out_c, out)
    for a, b in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend,device", [*ATTN, pytest.param("torch", "cpu", id="torch")])
@pytest.mark.parametrize("shape", [(3, 5, 13), (8,), (2, 0, 9), (4, 16), (1, 1, 1)], ids=str)
def test_pack_round_trip(backend, device, shape):
    x = (torch.rand(shape, device=device) < 0.4).float()
    bits = pack_spikes(x, backend=backend)
    assert bits.dtype == torch.uint8 and bits.shape == (*shape[:-1], (shape[-1] + 7) // 8)
    assert torch.equal(bits, pack_spikes(x, backend="torch"))
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(unpack_spikes(bits, shape[-1], dtype, backend=backend), x.to(dtype))


def test_pack_errors():
    with pytest.raises(ValueError, match="only 0 and 1"):
        pack_spikes(torch.tensor([0.0, 0.5, 1.0]))
    for bad in (0.5, 2.0, -1.0, float("nan"), float("inf")):  # inside a full byte of a row
        x = (torch.rand(3, 20) < 0.4).float()
        x[1, 12] = bad
        for backend in ("auto", "torch"):
            with pytest.raises(ValueError, match="only 0 and 1"):
                pack_spikes(x, backend=backend)
    with pytest.raises(ValueError, match="only 0 and 1"):
        pack_spikes(torch.tensor([0.0, 2.0]), backend="torch")
    with pytest.raises(TypeError, match="uint8"):
        unpack_spikes(torch.zeros(3), 8)
    with pytest.raises(ValueError, match="ceil"):
        unpack_spikes(torch.zeros(3, dtype=torch.uint8), 8)


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("name", ["sdsa", "ssa"])
@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, float("nan"), float("inf")])
def test_one_non_spike_among_spikes(backend, device, name, bad):
    # a single bad value inside a full byte of a row (the CPU packs those 8 at a time)
    q, k, v = random_spikes((2, 1, 2, 6, 20), (0.3, 0.3, 0.3), torch.float32, device)
    k[1, 0, 1, 4, 10] = bad
    with pytest.raises(ValueError, match="must hold spikes"):
        OPS[name][0](q, k.requires_grad_(True), v, backend=backend)


@pytest.mark.parametrize("name", ["sdsa", "ssa"])
def test_bad_inputs(name):
    fn = OPS[name][0]
    q = torch.zeros(2, 1, 1, 4, 3)
    with pytest.raises(ValueError, match="k has shape"):
        fn(q, torch.zeros(2, 1, 1, 5, 3), q)
    with pytest.raises(ValueError, match=r"\[T, B, H, N, D\]"):
        fn(q[0], q[0], q[0])
    with pytest.raises(TypeError, match="dtype"):
        fn(q, q.double(), q)
    with pytest.raises(ValueError, match="is on meta"):
        fn(q, q, q.to("meta"))
    with pytest.raises(TypeError, match="floating"):
        fn(q.long(), q.long(), q.long())
    with pytest.raises(BackendUnavailableError, match="cuda backend runs on CUDA tensors"):
        fn(q, q, q, backend="cuda")
    with pytest.raises(ValueError, match="tau"):
        fn(q, q, q, tau=0.5)


def _tau_whose_double_reciprocal_rounds_down():
    """A non-round tau for which 1/tau rounded from double is one float32 ulp below 1/tau
    computed in float32 from tau rounded to float32 (what every backend computes)."""
    import numpy as np

    for tau in np.linspace(1.001, 5.0, 4000):
        exact = np.float32(1.0) / np.float32(tau)
        if np.float32(1.0 / float(tau)) < exact:
            return float(tau), exact
    raise AssertionError("no such tau")


@pytest.mark.parametrize("backend,device", ATTN + [pytest.param("torch", "cpu", id="torch")])
def test_non_round_tau_rounds_as_every_backend(backend, device):
    """kv = N, and v_th = N * (1/tau) in float32 exactly: the LIF fires at t = 0 only where
    1/tau is tau rounded to float32 and divided in float32 (the Triton attention once divided
    in double and rounded after, and sat one ulp under the threshold)."""
    import numpy as np

    tau, inv_tau = _tau_whose_double_reciprocal_rounds_down()
    N, D = 9, 3
    v_th = float(np.float32(N) * inv_tau)
    q = torch.ones(1, 1, 1, N, D, device=device)
    out = sdsa(q, q, q, tau=tau, v_th=v_th, backend=backend)
    assert out.eq(1).all(), (backend, tau)
