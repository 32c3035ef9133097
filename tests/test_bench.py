"""The benchmark harness runs every contender and reports a failing one as a row."""

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
