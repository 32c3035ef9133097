"""`spikeclip bench`: the kernel, layer, model and peer benchmarks (registered in
spikeclip/cli.py). torch is imported by run_bench, after the environment is set."""

from __future__ import annotations

import json
import os


def add_bench_args(b) -> None:
    b.add_argument(
        "op",
        nargs="?",
        default="lif",
        choices=["lif", "attention", "model", "memory", "layers", "peer-models", "inference"],
        help="lif: the T x N sweep; attention: SDSA and SSA, SpikeCLIP's shape and up; "
        "model: a training step of SpikeCLIP's image encoder (--config, --batch); "
        "memory: bytes saved for backward and step time of the block stack, every way; "
        "layers: spike-fed linears and convolutions (cpp sums) vs dense, by firing rate "
        "(on CUDA: the linears, Triton's bit-reading products vs dense); "
        "peer-models: SpikingJelly's Spikformer, Spike-driven Transformer and SEW-ResNet "
        "training steps as shipped vs after spikeclip.accelerate; "
        "inference: images/s of a checkpoint's image encoder (--checkpoint) and its ANN twin's "
        "(--ann), side by side on real test images, and where their time goes",
    )
    b.add_argument("--checkpoint", help="inference: a trained checkpoint directory")
    b.add_argument("--ann", help="inference: its ANN twin's checkpoint (ann_checkpoint/)")
    b.add_argument("--config", default="paper", help="model: the SpikeCLIPConfig name")
    b.add_argument(
        "--batch", type=int, nargs="+", help="model / memory: samples per step (16 / 32)"
    )
    b.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when there is one)")
    b.add_argument("--T", type=int, nargs="+", default=[4, 8, 16])
    b.add_argument("--N", type=int, nargs="+", default=[1 << 20, 1 << 22])
    b.add_argument(
        "--dtype", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"]
    )
    b.add_argument("--mode", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    b.add_argument("--rounds", type=int, default=15, help="timed rounds per contender")
    b.add_argument("--no-peers", action="store_true", help="skip SpikingJelly / snnTorch")
    b.add_argument(
        "--memory",
        nargs="+",
        default=["plain", "lossless"],
        choices=["plain", "lossless", "low"],
        help="model: the memory modes of our contenders",
    )
    b.add_argument(
        "--compile",
        action="store_true",
        help="model: add torch.compile of the reference; peer-models: of SpikingJelly's "
        "network and of the accelerated one",
    )
    b.add_argument(
        "--contenders",
        nargs="+",
        help="model: run only these contenders (their names in the table)",
    )
    b.add_argument(
        "--graphs",
        action="store_true",
        help="lif on CUDA: also time the fused kernels and the copy replayed from CUDA graphs",
    )
    b.add_argument(
        "--no-thp",
        action="store_true",
        help="leave PyTorch's huge-page allocation off (large CPU tensors then pay "
        "a page fault per 4 KiB on every allocation, in every contender); always off "
        "for `model`",
    )
    b.add_argument("--json", help="also write the rows to this JSON file")


def set_environment(args) -> None:
    """Before torch is imported. Huge pages pay off for the kernel sweeps' large tensors; in a
    training step (many mid-sized tensors) this machine's page compaction made every
    contender slower."""
    if not args.no_thp and args.op not in ("model", "memory"):
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def run_bench(args) -> int:
    import torch

    from spikeclip.bench.attention_bench import bench_attention
    from spikeclip.bench.lif_bench import bench_lif
    from spikeclip.bench.memory_bench import bench_memory
    from spikeclip.bench.model_bench import bench_train_step
    from spikeclip.bench.spike_layers_bench import bench_spike_layers, bench_spike_linears_cuda

    dtypes = [getattr(torch, d) for d in args.dtype]
    print(
        f"# spikeclip bench {args.op}: device={args.device} threads={torch.get_num_threads()} "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}"
    )
    if args.op == "inference":
        from spikeclip.bench.inference_bench import bench_inference
        from spikeclip.bench.timing import format_table

        if not args.checkpoint:
            raise SystemExit("bench inference: give --checkpoint (and --ann for the ANN twin)")
        rows = bench_inference(args.checkpoint, args.ann, batch=(args.batch or [256])[0],
                               rounds=min(args.rounds, 9), device=args.device)  # fmt: skip
        speed = [r for r in rows if r["what"] == "images/s"]
        print(format_table(speed, ["model", "batch", "ms", "images_per_s", "vs_snn"]))
        print(format_table([r for r in rows if r["what"] == "breakdown"],
                           ["model", "part", "ms", "share"]))  # fmt: skip
    elif args.op == "peer-models":
        from spikeclip.bench.peer_models import bench_peer_models

        rows = bench_peer_models(batch=(args.batch or [16])[0], T=args.T[0],
                                 dtypes=tuple(dtypes), rounds=min(args.rounds, 7),
                                 device=args.device, compile=args.compile)  # fmt: skip
    elif args.op == "attention":
        rows = bench_attention(modes=args.mode, device=args.device, rounds=args.rounds)
    elif args.op == "memory":
        fused = "cpp" if args.device == "cpu" else "cuda"
        rows = bench_memory(
            batch=(args.batch or [32])[0],
            device=args.device,
            rounds=min(args.rounds, 5),
            fused=fused,
        )
    elif args.op == "layers":
        if args.device == "cuda":
            rows = bench_spike_linears_cuda(modes=args.mode, dtypes=dtypes, rounds=args.rounds)
        else:
            rows = bench_spike_layers(modes=args.mode, rounds=min(args.rounds, 7))
    elif args.op == "model":
        fused = ("cpp",) if args.device == "cpu" else ("cuda", "triton")
        if "float16" in args.dtype:
            raise SystemExit("--dtype for `bench model` is float32 and/or bfloat16 (autocast)")
        rows = bench_train_step(
            config=args.config,
            batches=tuple(args.batch or [16]),
            precisions=tuple(args.dtype),
            backends=fused,
            memories=tuple(args.memory),
            device=args.device,
            rounds=min(args.rounds, 7),
            compile_reference=args.compile,
            peers=not args.no_peers,
            only=tuple(args.contenders) if args.contenders else None,
        )
    else:
        rows = bench_lif(
            Ts=args.T,
            Ns=args.N,
            dtypes=dtypes,
            modes=args.mode,
            device=args.device,
            peers=not args.no_peers,
            rounds=args.rounds,
            graphs=args.graphs,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
