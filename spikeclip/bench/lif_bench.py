"""LIF forward and forward+backward: every backend available here, the reference, peers, and a
copy of the same bytes, in one interleaved run per size."""

from __future__ import annotations

from collections.abc import Callable

import torch

from spikeclip.bench.peers import snntorch_leaky, spikingjelly_lif
from spikeclip.bench.timing import cuda_graphed, format_table, median_times
from spikeclip.kernels import available_backends, lif

COLUMNS = ["mode", "T", "N", "dtype", "contender", "ms", "GB/s", "x copy", "vs ref", "vs peer"]


def lif_bytes(T: int, N: int, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes a fused LIF must move: fwd reads x, writes spikes (and h when training);
    bwd reads grad_spikes and h, writes grad_x."""
    arrays = 2 if mode == "fwd" else 6
    return arrays * T * N * torch.finfo(dtype).bits // 8


def _contenders(
    x: torch.Tensor, mode: str, peers: bool, graphs: bool
) -> dict[str, Callable[[], object]]:
    device = x.device
    grad = torch.rand_like(x)
    xg = x.detach().clone().requires_grad_(True)

    def fwd(fn):
        return lambda: fn(x)

    def fwd_bwd(fn):
        def run():
            xg.grad = None
            fn(xg).backward(grad)

        return run

    wrap = fwd if mode == "fwd" else fwd_bwd
    out: dict[str, Callable[[], object]] = {}
    for backend in ["torch", *[b for b in available_backends(device) if b != "torch"]]:
        out[backend] = wrap(lambda t, b=backend: lif(t, backend=b))
    if peers:
        for make in (spikingjelly_lif, snntorch_leaky):
            peer = make(device)
            if peer is not None and (x.dtype == torch.float32 or device.type == "cuda"):
                try:  # a peer without kernels for this dtype is left out, said why
                    wrap(peer[1])()
                except Exception as exc:
                    print(f"# {peer[0]} failed on {x.dtype}: {type(exc).__name__}: {exc}")
                    continue
                out[peer[0]] = wrap(peer[1])
    # The same bytes moved by plain copies: fwd = one allocating copy (read x, write out);
    # fwd+bwd = three (6 arrays of x's size), the fused kernels' minimum traffic.
    copies = 1 if mode == "fwd" else 3
    out["copy (same bytes)"] = lambda: [x.clone() for _ in range(copies)]
    if graphs:  # the kernels alone: the fused ones and the copy replayed from CUDA graphs
        for name in [b for b in out if b in ("cuda", "triton")] + ["copy (same bytes)"]:
            replay = cuda_graphed(out[name], device)
            if replay is not None:
                out[f"{name} [graph]"] = replay
    return out


def bench_lif(
    Ts=(4, 8, 16),
    Ns=(1 << 20, 1 << 22),
    dtypes=(torch.float32,),
    modes=("fwd", "fwd+bwd"),
    device: str | torch.device = "cpu",
    peers: bool = True,
    rounds: int = 15,
    budget_s: float = 20.0,
    graphs: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run the sweep; returns one row per (mode, T, N, dtype, contender), printing as it goes.
    graphs (CUDA): also the fused kernels and the copy replayed from CUDA graphs ("[graph]"
    rows, their "x copy" against the graphed copy): what is left without host overhead."""
    device = torch.device(device)
    rows: list[dict] = []
    for dtype in dtypes:
        for T in Ts:
            for N in Ns:
                x = torch.randn(T, N, device=device, dtype=dtype) * 1.5 + 0.5
                for mode in modes:
                    times = median_times(
                        _contenders(x, mode, peers, graphs),
                        device,
                        rounds=rounds,
                        budget_s=budget_s,
                    )
                    nbytes = lif_bytes(T, N, dtype, mode)
                    copy_s = times["copy (same bytes)"]
                    graph_copy_s = times.get("copy (same bytes) [graph]", copy_s)
                    peer = next((v for k, v in times.items() if k.startswith("spikingjelly")), None)
                    block = []
                    for name, sec in times.items():
                        block.append(
                            dict(
                                mode=mode,
                                T=T,
                                N=N,
                                dtype=str(dtype).replace("torch.", ""),
                                contender=name,
                                ms=sec * 1e3,
                                **{
                                    "GB/s": nbytes / sec / 1e9,
                                    "x copy": sec
                                    / (graph_copy_s if name.endswith("[graph]") else copy_s),
                                    "vs ref": times["torch"] / sec,
                                    "vs peer": (peer / sec) if peer else None,
                                },
                            )
                        )
                    rows += block
                    log(format_table(block, COLUMNS) + "\n")
                del x
    return rows
