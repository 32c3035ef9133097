"""The `spikeclip` command (also `python -m spikeclip`).

    spikeclip demo                    # the whole recipe on Fashion-MNIST, offline teacher
    spikeclip train --dataset fashion-mnist --config tiny --teacher lit --out DIR [--resume]
    spikeclip classify --checkpoint DIR --labels "cat,dog,car" [--top-k K] [--json] PATH...
    spikeclip eval --checkpoint DIR [--class-names "a,b,..."] [--extra-names "x,y"] [--out D]
    spikeclip eval --checkpoint DIR (--dataset NAME | --data SHARDS)   # any set: top-1/5, per class
    spikeclip eval --checkpoint DIR --task retrieval --data SHARDS     # captions: recall@1/5/10
    spikeclip shards --dataset NAME|folder|tsv [--data-dir D] [--split S] --out SHARDS
    spikeclip features --data SHARDS --teacher T --out FEAT            # torchrun: shards by rank
    spikeclip align --data SHARDS --features FEAT --config C --out RUN  # torchrun, --resume
    spikeclip finetune --init RUN/checkpoint (--dataset NAME | --data SHARDS --features F) --out R2
    spikeclip energy --checkpoint DIR
    spikeclip bench [lif|attention|model|memory|layers] [--device cpu|cuda] [--T 4 8 16] [--N ...]
    spikeclip info

torch is imported after the arguments are read, so that environment switches such as
PyTorch's THP_MEM_ALLOC_ENABLE take effect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (choices show in the usage)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default == argparse.SUPPRESS
        if "%(default)" not in text and not unset:
            shown = " ".join(map(str, default)) if isinstance(default, list) else "%(default)s"
            text += f" (default: {shown})"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (what to change, and where the help is), status 2;
    help that names every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if "help" not in kwargs and args and args[0].startswith("--"):
            kwargs["help"] = args[0][2:].replace("-", " ")  # a name at least, for its default
        return super().add_argument(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from spikeclip import __version__

    p = _Parser(prog="spikeclip", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"spikeclip {__version__}")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks of failures")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="kernel benchmarks: fused vs reference, peers, copy")
    b.add_argument(
        "op",
        nargs="?",
        default="lif",
        choices=["lif", "attention", "model", "memory", "layers", "peer-models"],
        help="lif: the T x N sweep; attention: SDSA and SSA, SpikeCLIP's shape and up; "
        "model: a training step of SpikeCLIP's image encoder (--config, --batch); "
        "memory: bytes saved for backward and step time of the block stack, every way; "
        "layers: spike-fed linears and convolutions (cpp sums) vs dense, by firing rate "
        "(on CUDA: the linears, Triton's bit-reading products vs dense); "
        "peer-models: SpikingJelly's Spikformer, Spike-driven Transformer and SEW-ResNet "
        "training steps as shipped vs after spikeclip.accelerate",
    )
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
        "--compile", action="store_true", help="model: add torch.compile of the reference"
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

    sub.add_parser("info", help="version, torch, and the kernel backends available here")
    from spikeclip.train.commands import add_commands

    add_commands(sub)
    return p


def _bench(args) -> int:
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
    if args.op == "peer-models":
        from spikeclip.bench.peer_models import bench_peer_models

        rows = bench_peer_models(batch=(args.batch or [16])[0], T=args.T[0],
                                 dtypes=tuple(dtypes), rounds=min(args.rounds, 7),
                                 device=args.device)  # fmt: skip
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


def _info() -> int:
    import torch

    import spikeclip
    from spikeclip._ext import extension_status
    from spikeclip.kernels import available_backends

    print(f"spikeclip {spikeclip.__version__}, torch {torch.__version__}")
    print(f"extension spikeclip._C: {extension_status()}")
    print(f"backends on cpu: {available_backends('cpu')}")
    if torch.cuda.is_available():
        print(f"backends on cuda: {available_backends('cuda')}")
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 600 else text[:600] + " ..."


def main(argv: list[str] | None = None) -> int:
    """Runs a command. Exit status 0, 2 for bad usage (checked before any work starts), 1 for
    a failure; either way one line on stderr (the traceback too with --debug)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except SystemExit as exc:  # raised for bad usage, with the message to print
        if isinstance(exc.code, str):
            if args.debug:
                raise
            message = (
                exc.code
                if exc.code.startswith("spikeclip")
                else f"spikeclip {args.command}: {exc.code}"
            )
            print(message, file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"spikeclip {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"spikeclip {args.command}: error: {_one_line(exc)} ({type(exc).__name__}; "
              "--debug shows the traceback)", file=sys.stderr)  # fmt: skip
        return 1


def resolve_device(device: str) -> str:
    """ "auto": cuda when torch sees a GPU, else cpu; any other name as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run(args) -> int:
    if args.command == "bench":
        # Huge pages pay off for the kernel sweeps' large tensors; in a training step (many
        # mid-sized tensors) this machine's page compaction made every contender slower.
        if not args.no_thp and args.op not in ("model", "memory"):
            os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
        args.device = resolve_device(args.device)
        return _bench(args)
    if args.command == "info":
        return _info()
    if isinstance(getattr(args, "device", None), str):
        args.device = resolve_device(args.device)
    from spikeclip.train.commands import dispatch

    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
