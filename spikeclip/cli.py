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
import importlib
import sys
from typing import NamedTuple


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


class Command(NamedTuple):
    """A subcommand: its help line, and where its arguments and its run live ("module:name").
    The modules are imported to build the parser: none imports torch at its top."""

    help: str
    add_arguments: str
    run: str
    reuses_buffers: bool = False  # trains: keep freed host buffers (spikeclip.host_allocator)
    environment: str | None = None  # sets environment switches before torch is imported


# Every subcommand of `spikeclip`, in one place.
COMMANDS = {
    "demo": Command(
        "the whole recipe on Fashion-MNIST with the offline teacher",
        "spikeclip.train.commands:add_demo_args", "spikeclip.train.commands:run_demo", True,
    ),
    "train": Command(
        "train SpikeCLIP with the recipe (any dataset, teacher)",
        "spikeclip.train.commands:add_train_args",
        "spikeclip.train.commands:run_train_command", True,
    ),
    "eval": Command(
        "zero-shot top-1 of a trained checkpoint (or retrieval recalls)",
        "spikeclip.train.stage_commands:add_eval_args",
        "spikeclip.train.stage_commands:run_eval",
    ),
    "classify": Command(
        "zero-shot: the best of your labels for each of your images (files or folders)",
        "spikeclip.classify_command:add_classify_args", "spikeclip.classify_command:run_classify",
    ),
    "shards": Command(
        "write a dataset, folder or TSV as WebDataset shards",
        "spikeclip.train.stage_commands:add_shards_args",
        "spikeclip.train.stage_commands:run_shards",
    ),
    "features": Command(
        "teacher image features of shards, one file per shard",
        "spikeclip.train.stage_commands:add_features_args",
        "spikeclip.train.stage_commands:run_features", True,
    ),
    "align": Command(
        "text + image alignment on shards (no labels)",
        "spikeclip.train.stage_commands:add_align_args",
        "spikeclip.train.stage_commands:run_align", True,
    ),
    "finetune": Command(
        "dual-loss fine-tuning of an aligned checkpoint",
        "spikeclip.train.stage_commands:add_finetune_args",
        "spikeclip.train.stage_commands:run_finetune", True,
    ),
    "energy": Command(
        "per-layer SOPs/MACs and energy per image of a checkpoint",
        "spikeclip.train.commands:add_energy_args", "spikeclip.train.commands:run_energy",
    ),
    "bench": Command(
        "kernel benchmarks: fused vs reference, peers, copy",
        "spikeclip.bench.command:add_bench_args", "spikeclip.bench.command:run_bench",
        environment="spikeclip.bench.command:set_environment",
    ),
    "info": Command(
        "version, torch, and the kernel backends available here",
        "spikeclip.cli:_no_arguments", "spikeclip.cli:_info",
    ),
}  # fmt: skip


def _resolve(where: str):
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def _no_arguments(parser) -> None:
    pass


def _parser() -> argparse.ArgumentParser:
    from spikeclip import __version__

    p = _Parser(prog="spikeclip", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"spikeclip {__version__}")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks of failures")
    sub = p.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        _resolve(command.add_arguments)(sub.add_parser(name, help=command.help))
    return p


def _info(args) -> int:
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
    command = COMMANDS[args.command]
    if command.environment:
        _resolve(command.environment)(args)
    if isinstance(getattr(args, "device", None), str):
        args.device = resolve_device(args.device)
    if command.reuses_buffers:
        from spikeclip.host_allocator import keep_freed_buffers

        keep_freed_buffers()  # training reallocates the same large buffers every step
    return _resolve(command.run)(args)


if __name__ == "__main__":
    sys.exit(main())
