"""The benchmark harness runs every contender and reports a failing one as a row."""

import pytest
from lif_cases import rel_err

from spikeclip.bench import model_bench
from spikeclip.bench.model_bench import bench_train_step


def test_model_bench_every_memory_mode_and_precision():
    rows = bench_train_step(
        config="tiny",
        batches=(2,),
        precisions=("float32", "bfloat16"),
        backends=("cpp",),
        memories=("plain", "lossless", "low"),
        rounds=1,
        peers=False,
        log=lambda _: None,
    )
    names = ["torch", "cpp", "cpp lossless", "cpp low", model_bench.STAND_IN]
    assert [r["contender"] for r in rows] == names * 2
    for r in rows:
        assert r["error"] is None and r["step_s"] > 0, r
        assert r["saved_MB_per_image"] > 0, r
    by = {(r["precision"], r["contender"]): r for r in rows}
    for p in ("float32", "bfloat16"):  # lossless keeps less than plain, in both precisions
        assert by[p, "cpp lossless"]["saved_MB_per_image"] < by[p, "cpp"]["saved_MB_per_image"]


def test_model_bench_reports_a_failing_contender(monkeypatch):
    real = model_bench._contender_models

    def with_a_broken_one(*args):
        builds = real(*args)

        def broken():
            raise RuntimeError("no kernels for this\nsecond line")

        builds["broken"] = broken
        return builds

    monkeypatch.setattr(model_bench, "_contender_models", with_a_broken_one)
    rows = bench_train_step(config="tiny", batches=(2,), backends=(), rounds=1, peers=False,
                            log=lambda _: None)  # fmt: skip
    broken = next(r for r in rows if r["contender"] == "broken")
    assert broken["step_s"] is None and broken["error"] == "RuntimeError: no kernels for this"
    assert all(r["step_s"] > 0 for r in rows if r["contender"] != "broken")


def test_spikingjelly_swap_computes_the_same_network():
    """The peer rows time the same function: SpikingJelly's LIFNode in place of every LIF
    (attention's too) gives the reference encoder's outputs and gradients."""
    import copy

    import pytest
    import torch

    pytest.importorskip("spikingjelly.activation_based.neuron")
    from spikeclip.bench.peers import with_spikingjelly
    from spikeclip.models import ImageEncoder, SpikeCLIPConfig, set_backend, set_memory

    cfg = SpikeCLIPConfig.named("tiny")
    torch.manual_seed(0)
    ours = ImageEncoder(cfg).train()
    set_backend(ours, "torch")
    set_memory(ours, "plain")
    peer = with_spikingjelly(copy.deepcopy(ours), torch.device("cpu"))
    images = torch.rand(3, 3, cfg.image_size, cfg.image_size)
    out_ours, out_peer = ours(images), peer(images)
    assert torch.allclose(out_peer, out_ours, rtol=1e-5, atol=1e-6)
    out_ours.square().sum().backward()
    out_peer.square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), peer.parameters(), strict=True):
        # float rounding of the surrogate's formula differs between libraries, and grows
        # through the layers: compare by relative norm
        assert rel_err(q.grad, p.grad) < 1e-4, name


def test_model_bench_runs_only_the_contenders_asked_for():
    rows = bench_train_step(config="tiny", batches=(2,), rounds=1, peers=False,
                            only=("torch", "cpp"), log=lambda _: None)  # fmt: skip
    assert [r["contender"] for r in rows] == ["torch", "cpp"]
    with pytest.raises(ValueError, match="no contenders"):
        bench_train_step(config="tiny", batches=(2,), only=("cuda",), log=lambda _: None)
