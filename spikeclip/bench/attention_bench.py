"""SDSA and SSA: fused vs reference, forward and forward+backward, and the bytes each saves for
its backward, at SpikeCLIP's shape and larger ones, in one interleaved run per shape; with a
plain copy of the fewest bytes an attention must move as the memory-bound floor."""

from __future__ import annotations

from collections.abc import Callable

import torch

from spikeclip.bench.timing import format_table, median_times
from spikeclip.kernels import sdsa, ssa
from spikeclip.kernels.common.backends import OP_BACKENDS, why_unavailable
from spikeclip.memory import saved_tensor_bytes

COLUMNS = [
    "op",
    "T,B,H,N,D",
    "mode",
    "contender",
    "ms",
    "x copy",
    "vs ref",
    "saved MB",
    "saved/ref",
]
COPY = "copy (same bytes)"
# (T, B, H, N, D): SpikeCLIP's image encoder, then larger token counts; on a GPU also the head
# dimensions of larger transformers, whose SSA tiles in D (kernels/attention/triton.py: SSA_TILE).
SHAPES = ((4, 64, 8, 64, 48), (4, 16, 8, 196, 64), (4, 4, 8, 1024, 64))
GPU_SHAPES = SHAPES + ((4, 16, 4, 196, 128), (4, 4, 2, 1024, 256))
RATES = (0.15, 0.15, 0.15)


def _step(fn, mode, qkv, leaves, grad, backend):
    """One timed call: forward without grad, or forward + backward into fresh grads."""
    if mode == "fwd":
        return lambda: fn(*qkv, backend=backend)

    def step():
        for t in leaves:
            t.grad = None
        fn(*leaves, backend=backend).backward(grad)

    return step


def _copy_floor(q, mode):
    """Plain allocating copies moving the fewest bytes any attention moves (q-sized arrays):
    fwd reads q, k, v and writes the output (4, two copies); fwd+bwd also reads the output's
    gradient and writes the three input gradients (8, four copies; saved bits are negligible).
    Its "vs ref" is the most a memory-bound fused kernel can gain over the reference."""
    copies = 2 if mode == "fwd" else 4
    return lambda: [q.clone() for _ in range(copies)]


def bench_attention(
    shapes=None,
    ops=("sdsa", "ssa"),
    modes=("fwd", "fwd+bwd"),
    device="cpu",
    rounds: int = 10,
    budget_s: float = 20.0,
    log: Callable[[str], None] = print,
) -> list[dict]:
    device = torch.device(device)
    shapes = shapes or (GPU_SHAPES if device.type == "cuda" else SHAPES)
    backends = [b for b in OP_BACKENDS["ssa"] if why_unavailable(b, device) is None]
    rows: list[dict] = []
    for shape in shapes:
        q, k, v = ((torch.rand(shape, device=device) < r).float() for r in RATES)
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        grad = torch.randn(shape, device=device)
        for name in ops:
            fn = {"sdsa": sdsa, "ssa": ssa}[name]
            saved = {}
            for b in backends:
                out, nbytes = saved_tensor_bytes(fn, *leaves, backend=b)
                saved[b] = nbytes
                del out
            for mode in modes:
                contenders = {b: _step(fn, mode, (q, k, v), leaves, grad, b) for b in backends}
                contenders[COPY] = _copy_floor(q, mode)
                times = median_times(contenders, device, rounds=rounds, budget_s=budget_s)
                block = [
                    dict(
                        op=name,
                        mode=mode,
                        contender=b,
                        ms=sec * 1e3,
                        **{
                            "T,B,H,N,D": ",".join(map(str, shape)),
                            "x copy": sec / times[COPY],
                            "vs ref": times["torch"] / sec,
                            "saved MB": saved[b] / 2**20 if mode != "fwd" and b in saved else None,
                            "saved/ref": (
                                saved[b] / saved["torch"] if mode != "fwd" and b in saved else None
                            ),
                        },
                    )
                    for b, sec in times.items()
                ]
                rows += block
                log(format_table(block, COLUMNS) + "\n")
    return rows
