"""The kernels' one backend table (kernels.common.backends.OP_BACKENDS) is what every op obeys:
walked op by op, each public op takes exactly the backends its row names (the others are refused
naming the op), runs every one of them that this machine has, and gives the reference's values
on each; kernels/ holds op folders and common/ only."""

import pathlib

import pytest
import torch

import spikeclip.kernels as K
from spikeclip.kernels.bn_lif.op import bn_lif
from spikeclip.kernels.bn_pool.op import bn_max_pool
from spikeclip.kernels.common.backends import (
    BACKENDS,
    OP_BACKENDS,
    BackendUnavailableError,
    why_unavailable,
)
from spikeclip.kernels.common.options import lif_options

g = torch.Generator().manual_seed(11)


def _spikes(*shape):
    return (torch.rand(*shape, generator=g) < 0.3).float()


_y = torch.randn(3 * 2, 4, 5, generator=g)
_gamma, _beta = torch.rand(4, generator=g) + 2, torch.randn(4, generator=g) + 1


def _bn_lif(backend):
    mean, var = torch.zeros(4), torch.ones(4)
    return bn_lif(_y, 3, mean, var, _gamma, _beta, True, 0.1, 1e-5, tau=2.0,
                  options=lif_options(), backend=backend)  # fmt: skip


_x = torch.randn(4, 3, 10, generator=g) + 0.6
_q, _k, _v = _spikes(3, 2, 2, 7, 5), _spikes(3, 2, 2, 7, 5), _spikes(3, 2, 2, 7, 5)
_s = _spikes(6, 13)
_bits = K.pack_spikes(_s, backend="torch")
_w = torch.randn(5, 13, generator=g)
_img = _spikes(2, 3, 9, 9)
_cw = torch.randn(4, 3, 3, 3, generator=g)
_pool_in = torch.randn(2, 3, 9, 9, generator=g)


def _bn_max_pool(backend):
    return bn_max_pool(_pool_in, None, None, _gamma[:3], _beta[:3], True, 0.1, 1e-5,
                       backend=backend)  # fmt: skip


# One call of each op of the table, by backend.
CALLS = {
    "lif": lambda b: K.lif(_x, backend=b),
    "sdsa": lambda b: K.sdsa(_q, _k, _v, backend=b),
    "ssa": lambda b: K.ssa(_q, _k, _v, scale=1.0, backend=b),
    "pack_spikes": lambda b: K.pack_spikes(_s, backend=b),
    "unpack_spikes": lambda b: K.unpack_spikes(_bits, 13, backend=b),
    "spike_linear": lambda b: K.spike_linear(_s, _bits, _w, backend=b),
    "spike_conv2d": lambda b: K.spike_conv2d(_img, _cw, padding=1, backend=b),
    "bn_lif": _bn_lif,
    "bn_max_pool": _bn_max_pool,
    "max_pool2x2": lambda b: K.max_pool2x2(_pool_in, backend=b),
    "max_pool3x3s2": lambda b: K.max_pool3x3s2(_pool_in, backend=b),
}


def test_the_table_covers_every_public_op():
    public_ops = {
        name
        for name in K.__all__
        if callable(getattr(K, name))
        and not name.endswith("_reference")
        and name not in ("available_backends", "resolve_backend", "BackendUnavailableError")
    }
    assert set(OP_BACKENDS) == public_ops | {"bn_lif", "bn_max_pool"}  # used by the units
    assert set(CALLS) == set(OP_BACKENDS)
    for row in OP_BACKENDS.values():
        assert "torch" in row and set(row) <= set(BACKENDS[1:])


@pytest.mark.parametrize("op", sorted(OP_BACKENDS))
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_each_op_takes_what_its_row_says(op, backend):
    call = CALLS[op]
    if backend not in OP_BACKENDS[op]:
        with pytest.raises(BackendUnavailableError, match=f"no {op} kernel"):
            call(backend)
        return
    reason = why_unavailable(backend, torch.device("cpu"))
    if reason is not None:
        with pytest.raises(BackendUnavailableError, match="not available"):
            call(backend)
        return
    out, ref = call(backend), call("torch")
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if op == "bn_lif":  # statistics computed apart: a spike on the threshold may round either way
        assert int((out != ref).sum()) <= 2
    else:  # spike sums in another order than the dense product's: equal up to float rounding
        torch.testing.assert_close(out.float(), ref.float(), rtol=1e-5, atol=1e-5)
    assert not torch.equal(ref, torch.zeros_like(ref))  # the case exercises something


def test_kernels_holds_op_folders_and_common_only():
    root = pathlib.Path(K.__file__).parent
    loose = sorted(p.name for p in root.glob("*.py") if p.name != "__init__.py")
    assert loose == []
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == ["attention", "bn_lif", "bn_pool", "common", "lif", "max_pool",
                       "spike_products"]  # fmt: skip
    for folder in folders:
        assert (root / folder / "__init__.py").exists()
        if folder != "common":  # each op's spec beside it
            assert (root / folder / "reference.py").exists(), folder


def test_resolve_backend_defaults_to_the_lif_and_names_an_unknown_op():
    cpu = torch.device("cpu")
    assert K.resolve_backend("torch", cpu) == "torch"
    assert K.resolve_backend("auto", cpu) == K.resolve_backend("auto", cpu, op="lif")
    with pytest.raises(ValueError, match="op must be one of"):
        K.resolve_backend("auto", cpu, op="conv3d")
