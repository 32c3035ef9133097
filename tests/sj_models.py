"""SpikingJelly 2.0 for the comparison tests, imported once here: in CI (CI=true) a missing
SpikingJelly fails the test instead of skipping it, as the README's test command installs it.
The models are SpikingJelly's own model zoo (spikeclip.bench.peer_models.zoo_model), small."""

import os

import pytest
import torch

ZOO = ("spikformer", "spike_driven_transformer", "qkformer", "sew_resnet", "spiking_vgg")


def spikingjelly():
    """spikingjelly.activation_based; skipped only outside CI."""
    if os.environ.get("CI"):
        import spikingjelly.activation_based as sj  # CI installs it: fail loudly
    else:
        sj = pytest.importorskip("spikingjelly.activation_based")
    return sj


def zoo(name: str, dtype=torch.float64):
    """(model, input) of SpikingJelly's model `name`, small enough to run in a second, with
    SpikingJelly's own neurons at the models' published settings (tau 2, detach_reset)."""
    spikingjelly()
    from spikeclip.bench.peer_models import zoo_model

    return zoo_model(name, T=2, width=48 if name == "qkformer" else 32, depth=1, batch=2,
                     classes=5, dtype=dtype)  # fmt: skip
