"""Every fused LIF backend against the float64 reference: spikes, final v and every gradient
(x, v0, tau), over all options, surrogates, dtypes and awkward shapes."""

import pytest
import torch
from conftest import FUSED
from lif_cases import TOL, make_inputs, near_threshold, rel_err, run, truth

from spikeclip.kernels import lif

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check_against_truth(backend, device, shape, dtype, opts, *, v0=True, learn_tau=True):
    soft = opts.get("v_reset", 0.0) is None
    x, v0_t, tau, gs, gv = make_inputs(shape, dtype, device, soft=soft, v0=v0, learn_tau=learn_tau)
    s, v, grads = run(x, v0_t, tau, gs, gv, backend, **opts)
    s64, v64, grads64, h64 = truth(x, v0_t, tau, gs, gv, **opts)

    assert s.dtype == dtype and s.shape == x.shape and s.device.type == device
    assert torch.isfinite(s.float()).all() and ((s == 0) | (s == 1)).all()
    # Neurons that came within rounding of v_th may flip; everything else must agree exactly
    # in spikes and closely in v and gradients. Exclusions must stay rare.
    n_neurons = x[0].numel()
    near = near_threshold(h64, opts.get("v_th", 1.0), dtype).reshape(-1)
    assert near.float().mean() < 0.25, "too many near-threshold neurons to be a meaningful test"
    keep = ~near
    flat = lambda t: t.reshape(t.shape[0], n_neurons).cpu()
    assert torch.equal(flat(s)[:, keep].double(), flat(s64)[:, keep]), "spikes differ"
    if n_neurons >= 20:
        assert 0.05 < s64.mean() < 0.95, "degenerate firing rate"
    tol = TOL[dtype]
    assert rel_err(v.reshape(-1)[keep.to(v.device)].cpu(), v64.reshape(-1)[keep]) < tol
    gx, gx64 = grads[0], grads64[0]
    assert gx.dtype == dtype
    assert rel_err(flat(gx)[:, keep], flat(gx64)[:, keep]) < tol, "grad x"
    if v0:
        assert (
            rel_err(grads[1].reshape(-1)[keep.to(device)].cpu(), grads64[1].reshape(-1)[keep]) < tol
        ), "grad v0"
    if learn_tau:
        # A sum over all neurons with cancellation: bound its error by the reference's own in
        # the same dtype (which also rounds the upstream gradient), by float32 accumulation
        # over the magnitude of the terms (~ sum |grad x|), and by near-threshold flips.
        *_, grads_same = run(x, v0_t, tau, gs, gv, "torch", **opts)
        g, g64 = grads[-1].cpu().double(), grads64[-1]
        bound = max(tol * g64.abs(), 3 * (grads_same[-1].cpu().double() - g64).abs())
        bound = bound + 1e-7 * gx64.abs().sum()
        if near.any():
            bound = bound + 5 * near.float().mean() * g64.abs()
        assert (g - g64).abs() <= bound, "grad tau"


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "triangle", "erf"])
@pytest.mark.parametrize("decay_input", [True, False], ids=["decay", "nodecay"])
@pytest.mark.parametrize("v_reset", [0.0, -0.2, None], ids=["hard0", "hard-0.2", "soft"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
def test_matches_reference_every_option(
    backend, device, dtype, surrogate, decay_input, v_reset, detach_reset
):
    opts = dict(
        surrogate=surrogate, decay_input=decay_input, v_reset=v_reset, detach_reset=detach_reset
    )
    check_against_truth(backend, device, (5, 3, 43), dtype, opts)


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize(
    "shape", [(1, 7), (4, 1), (3, 1, 1), (6, 1025), (2, 513, 3), (16, 9)], ids=str
)
def test_shapes(backend, device, shape):
    check_against_truth(backend, device, shape, torch.float32, {})


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_plain_float_tau_no_v0_and_alpha(backend, device, dtype):
    check_against_truth(
        backend,
        device,
        (4, 2, 50),
        dtype,
        dict(surrogate="atan", alpha=3.5, v_th=0.7),
        v0=False,
        learn_tau=False,
    )


@pytest.mark.parametrize("backend,device", FUSED)
def test_float64_where_supported(backend, device):
    if backend not in ("cpp",):
        pytest.skip("float64 runs on torch and cpp only")
    check_against_truth(backend, device, (4, 3, 21), torch.float64, dict(surrogate="erf"))


@pytest.mark.parametrize("backend,device", [*FUSED, pytest.param("torch", "cpu", id="torch")])
def test_chunked_continuation_equals_one_call(backend, device):
    from spikeclip.kernels import lif

    x = torch.randn(9, 4, 33, device=device) + 0.5
    s_all, v_all = lif(x, return_v=True, backend=backend, v_reset=None)
    s1, v1 = lif(x[:4], return_v=True, backend=backend, v_reset=None)
    s2, v2 = lif(x[4:], v0=v1, return_v=True, backend=backend, v_reset=None)
    assert torch.equal(torch.cat([s1, s2]), s_all)
    assert torch.equal(v2, v_all)


@pytest.mark.parametrize("backend,device", [*FUSED, pytest.param("torch", "cpu", id="torch")])
def test_non_contiguous_input(backend, device):
    from spikeclip.kernels import lif

    base = torch.randn(3, 17, 5, device=device) + 0.5
    x = base.transpose(1, 2)  # [3, 5, 17], non-contiguous
    assert not x.is_contiguous()
    xr = x.detach().requires_grad_(True)
    xc = x.contiguous().detach().requires_grad_(True)
    s = lif(xr, backend=backend)
    sc = lif(xc, backend=backend)
    assert torch.equal(s, sc)
    g = torch.randn_like(sc)
    (gx,) = torch.autograd.grad(s, xr, g)
    (gxc,) = torch.autograd.grad(sc, xc, g)
    assert torch.equal(gx, gxc)


@pytest.mark.parametrize("backend,device", [*FUSED, pytest.param("torch", "cpu", id="torch")])
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,), (2, 0, 4)], ids=str)
def test_empty(backend, device, shape):
    from spikeclip.kernels import lif

    x = torch.randn(shape, device=device, requires_grad=True)
    s, v = lif(x, return_v=True, backend=backend)
    assert s.shape == x.shape and v.shape == x.shape[1:]
    v0 = torch.full(x.shape[1:], 0.25, device=device)
    _, v = lif(x.detach(), v0=v0, return_v=True, backend=backend)
    if x.shape[0] == 0:
        assert torch.equal(v, v0)


@pytest.mark.parametrize("backend,device", FUSED)
def test_no_grad_forward_saves_nothing_and_matches(backend, device):
    from spikeclip.kernels import lif

    x = torch.randn(4, 100, device=device) + 0.5
    with torch.no_grad():
        s = lif(x, backend=backend)
    assert torch.equal(s, lif(x, backend="torch"))


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("decay_input", [True, False])
def test_non_finite_inputs_behave_as_the_reference(backend, device, soft, decay_input):
    """inf, -inf and NaN in x (at every step, the last included) and in v0: the spikes and the
    final membrane of every backend are the reference's, NaN for NaN (reference docstring)."""
    T, N = 4, 24
    x = torch.randn(T, N, device=device) * 1.5
    v0 = torch.rand(N, device=device) * 0.5
    specials = [float("inf"), float("-inf"), float("nan")]
    for j in range(N):  # column j: one special value at one step (or in v0)
        kind, where = specials[j % 3], (j // 3) % (T + 1)
        if where == T:
            v0[j] = kind
        else:
            x[where, j] = kind
    opts = dict(v_reset=None if soft else 0.0, decay_input=decay_input, v0=v0, return_v=True)
    s, v = lif(x, backend=backend, **opts)
    s_ref, v_ref = lif(x.cpu(), backend="torch", **{**opts, "v0": v0.cpu()})
    assert torch.equal(s.cpu(), s_ref)
    torch.testing.assert_close(v.cpu(), v_ref, rtol=0, atol=0, equal_nan=True)
    assert v_ref.isnan().any() and s_ref.any()  # the cases at stake do occur
