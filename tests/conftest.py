"""Test set-up. Triton runs on CPU tensors only as its interpreter, which must be switched on
before the first @triton.jit function is executed: set here, never in library code."""

import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from spikeclip.kernels.common.backends import why_unavailable


def pytest_sessionstart(session):
    """A built extension that fails to load (an ABI mismatch, a missing symbol) would drop
    every cpp case and leave a green suite: stop instead. In CI (CI=true) an extension that
    was not built at all stops it too: the test command builds it."""
    from spikeclip._ext import EXTENSION_ERROR, EXTENSION_LOAD_FAILED, extension_loaded

    if EXTENSION_LOAD_FAILED:
        why = f"spikeclip._C is built but fails to load ({EXTENSION_ERROR})"
        pytest.exit(f"{why}: the cpp cases would all be skipped; rebuild it", returncode=3)
    if os.environ.get("CI", "").lower() in ("1", "true") and not extension_loaded():
        pytest.exit(f"CI: spikeclip._C is not built ({EXTENSION_ERROR})", returncode=3)


def fused_cases():
    """(backend, device) pairs of every fused backend that can run here."""
    cases = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for backend in ("cpp", "cuda", "triton"):
            if why_unavailable(backend, torch.device(device)) is None:
                cases.append(pytest.param(backend, device, id=f"{backend}-{device}"))
    return cases


FUSED = fused_cases()


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh random inputs per test, reproducible from the test's name (crc32: str hash() is
    # salted per process).
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """A small randomly initialised Hugging Face CLIP saved to a directory (fake_data.py)."""
    pytest.importorskip("transformers")
    from fake_data import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip"))
