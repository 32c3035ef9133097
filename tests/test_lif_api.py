"""LIF: the spec's own checks (gradcheck, surrogates), custom-op registration (opcheck,
torch.compile), argument errors, and the nn.Module."""

import math

import pytest
import torch
from conftest import FUSED
from lif_cases import make_inputs

from spikeclip.kernels import BackendUnavailableError, lif, lif_reference
from spikeclip.kernels.common.surrogates import SURROGATES, spike_fn
from spikeclip.models import LIF

# Each surrogate g is the derivative of a smooth unit step; check g against the numerical
# derivative of that step, so a wrong formula in the spec cannot hide.
STEPS = {
    "sigmoid": lambda u, a: torch.sigmoid(a * u),
    "atan": lambda u, a: torch.atan(math.pi / 2 * a * u) / math.pi + 0.5,
    "erf": lambda u, a: 0.5 * (1 + torch.erf(a * u)),
    "triangle": lambda u, a: torch.where(
        a * u < -1,
        0.0,
        torch.where(
            a * u > 1, 1.0, torch.where(u < 0, 0.5 * (1 + a * u) ** 2, 1 - 0.5 * (1 - a * u) ** 2)
        ),
    ),
}


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [None, 1.7])
def test_surrogate_is_derivative_of_a_unit_step(surrogate, alpha):
    a = SURROGATES[surrogate][1] if alpha is None else alpha
    u = (torch.rand(2000, dtype=torch.float64) - 0.5) * 6 / a
    u.requires_grad_(True)
    s = spike_fn(u, surrogate, alpha)
    assert torch.equal(s.detach(), (u >= 0).double())
    (g,) = torch.autograd.grad(s.sum(), u)
    eps = 1e-6
    step = STEPS[surrogate]
    num = (step(u.detach() + eps, a) - step(u.detach() - eps, a)) / (2 * eps)
    torch.testing.assert_close(g, num, rtol=1e-5, atol=1e-6)


def smooth_region_inputs(T, N, tau, margin=0.15, **opts):
    """(x, v0) whose h stays at least `margin` from v_th at every step, for every neuron."""
    x = torch.randn(T, 8 * N, dtype=torch.float64) * 1.2 + 0.6
    v0 = torch.rand(8 * N, dtype=torch.float64) * 0.3
    _, _, h = lif_reference(x, tau=tau, v0=v0, **opts, return_h=True)
    ok = ((h - opts.get("v_th", 1.0)).abs() > margin).all(dim=0)
    assert ok.sum() >= N
    return x[:, ok][:, :N].contiguous(), v0[ok][:N].contiguous()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("decay_input", [True, False])
def test_gradcheck_float64(backend, v_reset, decay_input):
    """Away from the threshold a narrow triangle surrogate is exactly zero, so the surrogate
    gradient equals the true derivative there: gradcheck then verifies the whole backward
    sweep (leak, reset, v0, tau, decay_input) against finite differences."""
    opts = dict(v_reset=v_reset, decay_input=decay_input, surrogate="triangle", alpha=10.0)
    x, v0 = smooth_region_inputs(5, 7, 1.8, **opts)
    x.requires_grad_(True)
    v0.requires_grad_(True)
    tau = torch.tensor(1.8, dtype=torch.float64, requires_grad=True)

    def f(x, v0, tau):
        s, v = lif(x, tau=tau, v0=v0, return_v=True, backend=backend, **opts)
        return s, v

    assert torch.autograd.gradcheck(f, (x, v0, tau), eps=1e-6, atol=1e-8)


def test_gradcheck_reference_smooth_forward(monkeypatch):
    """The reference's autograd with the Heaviside replaced by its smooth sigmoid step: now the
    surrogate *is* the derivative, so gradcheck covers the surrogate term too."""
    import spikeclip.kernels.common.surrogates as ref

    class Smooth(torch.autograd.Function):
        @staticmethod
        def forward(u, surrogate, alpha):
            return torch.sigmoid(alpha * u)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.alpha = inputs[2]

        @staticmethod
        def backward(ctx, grad):
            (u,) = ctx.saved_tensors
            return grad * SURROGATES["sigmoid"][0](u, ctx.alpha), None, None

    monkeypatch.setattr(ref, "_SpikeFn", Smooth)
    x = (torch.randn(4, 6, dtype=torch.float64) + 0.5).requires_grad_(True)
    tau = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, tau: lif_reference(x, tau=tau, v_reset=None), (x, tau)
    )


def fused_op_args(backend, device, dtype=torch.float32, need_tau=True):
    x, v0, _, gs, gv = make_inputs((4, 3, 5), dtype, device)
    tau = torch.tensor(1.9, device=device, requires_grad=need_tau)
    x.requires_grad_(True)
    v0.requires_grad_(True)
    return x, v0, tau, gs.to(dtype), gv.float()


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("soft", [False, True])
def test_opcheck(backend, device, dtype, soft):
    from spikeclip.kernels.common.autograd import _op
    from spikeclip.kernels.lif import op as lif_mod  # (spikeclip.kernels.lif is the function)

    fwd = _op(lif_mod._fused_op(backend))
    bwd = torch.ops.spikeclip.lif_bwd_triton if backend == "triton" else torch.ops.spikeclip.lif_bwd
    x, v0, tau, gs, gv = fused_op_args(backend, device, dtype)
    opts = (1.0, 0.0, soft, True, False, "sigmoid", 4.0)
    torch.library.opcheck(fwd, (x, v0, tau, *opts, True, True))
    torch.library.opcheck(fwd, (x.detach(), None, tau.detach(), *opts, False, False))
    h = fwd(x.detach(), v0.detach(), tau.detach(), *opts, True, True)[1]
    torch.library.opcheck(bwd, (gs, gv, h, v0.detach(), tau.detach(), *opts, True))
    torch.library.opcheck(bwd, (gs, None, h, None, tau.detach(), *opts, False))


@pytest.mark.parametrize("backend,device", FUSED)
def test_torch_compile_fullgraph_matches_eager(backend, device):
    def f(x, tau):
        s, v = lif(x, tau=tau, return_v=True, backend=backend, v_reset=None, surrogate="atan")
        return (s * torch.arange(s.shape[-1], device=s.device)).sum() + v.square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = (torch.randn(4, 2, 33, device=device) + 0.5).requires_grad_(True)
    tau = torch.tensor(2.2, device=device, requires_grad=True)
    out = f(x, tau)
    gx, gt = torch.autograd.grad(out, (x, tau))
    out_c = compiled(x, tau)
    gx_c, gt_c = torch.autograd.grad(out_c, (x, tau))
    torch.testing.assert_close(out_c, out)
    torch.testing.assert_close(gx_c, gx)
    torch.testing.assert_close(gt_c, gt)


def test_torch_compile_inductor_cpu():
    """The default (inductor) backend compiles a module calling lif with no graph break."""
    torch._dynamo.reset()
    layer = torch.nn.Sequential(torch.nn.Linear(16, 32), LIF(backend="auto"))
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 3, 16, requires_grad=True)
    weights = torch.randn(4, 3, 32)  # a loss whose gradient differs per element
    out_c, out = compiled(x), layer(x)
    torch.testing.assert_close(out_c, out)
    grads_c = torch.autograd.grad((out_c * weights).sum(), [x, *layer.parameters()])
    grads = torch.autograd.grad((out * weights).sum(), [x, *layer.parameters()])
    for gc, g in zip(grads_c, grads, strict=True):  # the compiled backward is the eager one
        assert g.abs().sum() > 0
        torch.testing.assert_close(gc, g, rtol=1e-5, atol=1e-6)


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x,err,match",
    [
        (torch.ones(3, 4, dtype=torch.int64), TypeError, "floating"),
        (torch.ones(3, 4, dtype=torch.bool), TypeError, "floating"),
        (torch.tensor(1.0), ValueError, "time dimension"),
        ([1.0, 2.0], TypeError, "torch.Tensor"),
    ],
)
def test_bad_x(x, err, match):
    with pytest.raises(err, match=match):
        lif(x)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(tau=1.0), ValueError, "tau must be > 1"),
        (dict(tau=0.5), ValueError, "tau must be > 1"),
        (dict(tau=torch.tensor(0.9)), ValueError, "tau must be > 1"),
        (dict(tau=torch.ones(2) * 2), ValueError, "one-element"),
        (dict(tau="2"), TypeError, "tau"),
        (dict(surrogate="relu"), ValueError, "surrogate must be one of"),
        (dict(alpha=-1.0), ValueError, "alpha"),
        (dict(backend="gpu"), ValueError, "backend must be one of"),
        (dict(v_th=float("nan")), ValueError, "v_th"),
        (dict(v0=torch.zeros(5)), ValueError, r"v0 must have shape \(4,\)"),
        (dict(v0=torch.zeros(4, dtype=torch.float64)), TypeError, "v0 must have dtype"),
        (dict(v0=torch.zeros(4, device="meta")), ValueError, "v0 is on meta"),
        (dict(v0=[0.0] * 4), TypeError, "v0 must be a torch.Tensor"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        lif(torch.randn(3, 4), **kwargs)


def test_unavailable_backends_say_why(monkeypatch):
    x = torch.randn(3, 4)
    with pytest.raises(BackendUnavailableError, match="cuda backend runs on CUDA tensors"):
        lif(x, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
            lif(x, backend="triton")
    import spikeclip.kernels.common.backends as b

    monkeypatch.setattr(b, "extension_loaded", lambda: False)
    with pytest.raises(BackendUnavailableError, match="not built"):
        lif(x, backend="cpp")
    assert b.resolve_backend("auto", torch.device("cpu"), op="lif") == "torch"


@pytest.mark.parametrize("backend", ["triton"])
def test_float64_rejected_where_unsupported(backend):
    with pytest.raises(TypeError, match="float64"):
        lif(torch.randn(3, 4, dtype=torch.float64), backend=backend)


@pytest.mark.parametrize("backend,device", FUSED)
def test_forward_without_grad_saves_nothing(backend, device):
    """No input needs a gradient: the op runs with save_h=False and autograd keeps nothing."""
    from spikeclip.memory import saved_tensor_bytes

    x = torch.randn(3, 4, 50, device=device)
    s, saved = saved_tensor_bytes(lif, x, backend=backend)
    assert saved == 0 and not s.requires_grad
    s, saved = saved_tensor_bytes(lif, x.requires_grad_(True), backend=backend)
    assert saved == x.numel() * x.element_size() + 4  # h in x's dtype, and the 0-d tau


# ---- module -------------------------------------------------------------------------------


@pytest.mark.parametrize("learnable", [False, True])
def test_lif_module_matches_functional(learnable):
    layer = LIF(tau=2.5, learnable_tau=learnable, v_reset=None, surrogate="erf")
    x = torch.randn(4, 2, 3, 5, requires_grad=True)
    ref_layer = LIF(
        tau=2.5, learnable_tau=learnable, v_reset=None, surrogate="erf", backend="torch"
    )
    ref_layer.load_state_dict(layer.state_dict())
    s, s_ref = layer(x), ref_layer(x)
    assert torch.equal(s, s_ref)
    if learnable:
        assert abs(float(layer.current_tau().detach()) - 2.5) < 1e-6
        g = torch.randn_like(s)
        (gw,) = torch.autograd.grad(s, layer.w, g)
        (gw_ref,) = torch.autograd.grad(s_ref, ref_layer.w, g)
        torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-6)
    assert "tau=" in repr(layer)


def test_lif_module_rejects_bad_tau():
    with pytest.raises(ValueError, match="tau"):
        LIF(tau=1.0)


def test_surrogate_codes_match_the_kernels_enum():
    """The Triton kernels take the codes of kernels/common/options.py, the C++ ones the enum of
    csrc/lif_math.h (names parsed once, in lif_common.cpp): the same numbers."""
    import pathlib
    import re

    from spikeclip.kernels.common.options import SURROGATE_CODES

    header = pathlib.Path(__file__).parents[1] / "csrc" / "lif_math.h"
    enum = re.search(r"enum Surrogate : int \{([^}]*)\}", header.read_text()).group(1)
    codes = {name.lower(): int(v) for name, v in re.findall(r"k(\w+) = (\d+)", enum)}
    assert codes == SURROGATE_CODES


def test_lif_option_schema_spelled_once_per_language():
    """csrc/ops.cpp's LIF_OPTIONS / ATTENTION_LIF fragments are options.LifOptions's."""
    import pathlib
    import re

    from spikeclip.kernels.common.options import ATTENTION_LIF_SCHEMA, LIF_OPTIONS_SCHEMA

    ops = (pathlib.Path(__file__).parents[1] / "csrc" / "ops.cpp").read_text()

    def macro(name):
        body = re.search(rf"#define {name} \\\n((?:.*\\\n)*.*\n)", ops).group(1)
        return "".join(re.findall(r'"([^"]*)"', body))

    assert macro("LIF_OPTIONS") == LIF_OPTIONS_SCHEMA
    assert macro("ATTENTION_LIF") == ATTENTION_LIF_SCHEMA


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [
        ({"v_th": "1"}, TypeError),
        ({"v_th": float("nan")}, ValueError),
        ({"decay_input": "no"}, TypeError),
        ({"surrogate": "relu"}, ValueError),
        ({"alpha": -1.0}, ValueError),
        ({"v_reset": float("inf")}, ValueError),
        ({"learnable_tau": 1}, TypeError),
    ],
)
def test_lif_module_checks_options_at_construction(kwargs, err):
    from spikeclip.models import LIF

    with pytest.raises(err):
        LIF(**kwargs)


@pytest.mark.parametrize("backend,device", [pytest.param("torch", "cpu", id="torch"), *FUSED])
@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_single_steps_equal_one_multi_step_call(backend, device, learnable, soft):
    """LIF(step_mode="s") called once per step keeps its membrane: T calls give the spikes of
    one multi-step call, and the same gradients for x and a learnable tau; reset_net restarts."""
    from spikeclip.models import LIF, reset_net

    kw = dict(tau=1.7, v_th=0.8, v_reset=None if soft else 0.1, learnable_tau=learnable,
              backend=backend)  # fmt: skip
    multi, single = LIF(**kw).to(device), LIF(**kw, step_mode="s").to(device)
    x = (torch.randn(5, 3, 7, device=device) * 1.5).requires_grad_(True)
    xs = x.detach().clone().requires_grad_(True)
    g = torch.randn_like(x)
    out = multi(x)
    steps = torch.stack([single(xs[t]) for t in range(x.shape[0])])
    assert torch.equal(steps, out)
    out.backward(g)
    steps.backward(g)
    torch.testing.assert_close(xs.grad, x.grad, rtol=1e-5, atol=1e-6)
    if learnable:
        torch.testing.assert_close(single.w.grad, multi.w.grad, rtol=1e-5, atol=1e-6)
    model = torch.nn.Sequential(single)
    reset_net(model)
    assert single.v is None
    with torch.no_grad():
        assert torch.equal(single(x[0]), out[0])  # from rest again
        with pytest.raises(ValueError, match="v0 must have shape"):
            single(x[0, :2])  # another batch without reset_net
    with pytest.raises(ValueError, match="step_mode"):
        LIF(step_mode="x")
