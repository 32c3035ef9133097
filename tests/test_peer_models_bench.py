"""`spikeclip bench peer-models`: every contender a row with its ratio to SpikingJelly's own step
and its saved bytes; with compile, the compiled networks too, each reset through the module
that holds its neurons."""

import torch
from sj_models import spikingjelly

from spikeclip.bench import peer_models

BASE = ["spikingjelly (as shipped)", "accelerate(attention=False)", "accelerate()",
        'accelerate(memory="lossless")']  # fmt: skip


def test_rows_for_every_contender():
    spikingjelly()
    rows = peer_models.bench_peer_models(models=("spike_driven_transformer",), batch=1, rounds=1)
    assert [r["contender"] for r in rows] == BASE
    for r in rows:
        assert r["step_ms"] > 0 and r["saved_MiB_per_sample"] > 0, r
    assert rows[0]["vs_spikingjelly"] == 1
    by = {r["contender"]: r for r in rows}
    ratio = by[BASE[0]]["step_ms"] / by["accelerate()"]["step_ms"]
    assert abs(by["accelerate()"]["vs_spikingjelly"] - ratio) < 1e-9
    # our neurons keep less for the backward than SpikingJelly's (whatever the timing)
    assert by["accelerate()"]["saved_MiB_per_sample"] < by[BASE[0]]["saved_MiB_per_sample"]


def test_compiled_contenders_are_the_compiled_networks(monkeypatch):
    """torch.compile itself is tested in test_compat_spikingjelly; here it is a wrapper that
    records what it compiled, so the rows, the networks and their resets are checked fast."""
    spikingjelly()
    compiled, limits = [], []

    class Compiled(torch.nn.Module):  # like OptimizedModule: the network's state is not its own
        def __init__(self, net):
            super().__init__()
            self.calls, self._net = 0, [net]

        def forward(self, x):
            # every neuron reset since the last call (reset_net reached the network itself)
            carried = [n for n, m in self._net[0].named_modules()
                       if isinstance(getattr(m, "v", None), torch.Tensor)]  # fmt: skip
            assert not carried, carried
            limits.append(getattr(torch._dynamo.config, "recompile_limit", None))
            self.calls += 1
            return self._net[0](x)

    def fake_compile(net):
        compiled.append(Compiled(net))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    rows = peer_models.bench_peer_models(models=("spike_driven_transformer",), batch=1, rounds=1,
                                         compile=True)  # fmt: skip
    names = [r["contender"] for r in rows]
    assert names == [*BASE, "spikingjelly + torch.compile", "accelerate() + torch.compile"]
    shipped, accelerated = (c._net[0] for c in compiled)
    assert not any(type(m).__module__.startswith("spikeclip") for m in shipped.modules())
    assert any(type(m).__module__.startswith("spikeclip") for m in accelerated.modules())
    assert all(c.calls >= 3 for c in compiled)  # warm-up, the timed round, the saved bytes
    # every neuron module may compile while they run, and the limit is restored after
    if hasattr(torch._dynamo.config, "recompile_limit"):
        assert set(limits) == {256} and torch._dynamo.config.recompile_limit < 256
    for r in rows[-2:]:
        assert r["step_ms"] > 0 and r["saved_MiB_per_sample"] > 0
