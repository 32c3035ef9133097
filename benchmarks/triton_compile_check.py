"""Compile every Triton specialisation our launchers produce for a GPU that is not here.

    python benchmarks/triton_compile_check.py [--arch 90 80] [--full] [--jobs 2] [--out FILE]

Triton compiles for any NVIDIA target with the ptxas inside its wheel, so this needs no GPU
and no CUDA driver: a stand-in driver names the target (sm_90 = H100 / H200, sm_80 = A100) and
every `kernel[grid](...)` the launchers make is compiled (Triton's warm-up) instead of launched.
The launchers run for real, on CPU tensors, so the block sizes, stages, constexpr flags, dtypes
and divisibility are the ones they choose on a GPU for the same shapes.

Each compiled specialisation is checked against its target:
- shared memory per block (Triton's figure) <= the target's opt-in limit (TARGETS);
- registers x threads <= the 64 K registers of an SM (ptxas's figure);
- no `fma.rn.f32` in a kernel that promises none: every kernel that runs the LIF's formulas
  (common/triton_math.py: an FMA rounds once where the reference rounds twice and moves spikes)
  and every kernel launched with enable_fp_fusion=False.
Spills (ptxas's spill stores) are recorded, and must stay under SPILL_LIMIT bytes.

Cases: the ops over shapes of SpikeCLIP (`tiny`: N=49, D=32; `paper`: N=64, D=48) and of ViTs
(N=196 / 1024, D=64 / 128 / 256), in float32, bfloat16 and float16. By default one
specialisation per distinct (kernel, constexprs, dtypes) and each LIF option varied one at a
time (minutes; what CI runs); --full compiles every option combination and divisibility.
Writes a JSON table (every specialisation: registers, spills, shared memory, FMAs) and prints
a summary per kernel; exits 1 if any specialisation fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

# Shared memory a block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin) per target.
TARGETS = {90: 232_448, 80: 166_912}
REGISTERS_PER_SM = 65_536
SPILL_LIMIT = 1024  # bytes of spill stores any specialisation may have
LIF_FORMULAS = ("_charge(", "_reset(", "_lif_dh(")

ATTENTION_SHAPES = [(49, 32), (64, 48), (16, 16), (196, 64), (1024, 64), (196, 128), (1024, 256)]
FULL_ATTENTION_SHAPES = ATTENTION_SHAPES + [(100, 64), (256, 128), (197, 256), (33, 33)]
DTYPES = ("float32", "bfloat16", "float16")
SURROGATES = ("sigmoid", "atan", "triangle", "erf")


# ---- running the launchers against a target ------------------------------------------------


class _TargetDriver:
    """Triton's driver, reduced to what compiling asks of it: the target. The device id is
    the architecture, so each target keeps its own kernel cache."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        return self.target


def _ptxas_figures(log: str) -> dict:
    def grab(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    return {
        "registers": grab(r"Used (\d+) registers"),
        "spill_stores": grab(r"(\d+) bytes spill stores"),
        "spill_loads": grab(r"(\d+) bytes spill loads"),
        "stack": grab(r"(\d+) bytes stack frame"),
    }


def _promises_no_fma(fn, enable_fp_fusion: bool) -> bool:
    import inspect

    return not enable_fp_fusion or any(f in inspect.getsource(fn.fn) for f in LIF_FORMULAS)


def _arg_dtype(a):
    import torch

    return str(a.dtype).replace("torch.", "") if isinstance(a, torch.Tensor) else None


_CASE = {"label": ""}  # what the cases are compiling now (shape, dtype), for the records


def _case(label: str) -> None:
    _CASE["label"] = label


class Recorder:
    """Compiles (instead of launching) each kernel[grid](...) for `arch`; one record per new
    specialisation. `dedupe`: compile one specialisation per (kernel, constexprs, dtypes),
    whatever the sizes (the ints' divisibility) are."""

    def __init__(self, arch: int, dedupe: bool):
        self.arch, self.dedupe = arch, dedupe
        self.records: list[dict] = []
        self._seen: set = set()

    def __enter__(self):
        import triton
        from triton import knobs
        from triton.runtime.jit import JITFunction

        self._saved = (JITFunction.run, knobs.nvidia.dump_ptxas_log)
        triton.runtime.driver.set_active(_TargetDriver(self.arch))
        knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed: registers and spills
        recorder, original = self, JITFunction.run

        def run(fn, *args, grid, warmup, **kwargs):
            return recorder._compile(original, fn, args, grid, kwargs)

        JITFunction.run = run
        return self

    def __exit__(self, *exc):
        import triton
        from triton import knobs
        from triton.runtime.jit import JITFunction

        JITFunction.run, knobs.nvidia.dump_ptxas_log = self._saved
        triton.runtime.driver._active = None  # the next caller finds the real one, if any

    def _compile(self, original, fn, args, grid, kwargs):
        names = fn.arg_names
        bound = dict(zip(names, args, strict=False)) | kwargs  # the rest by keyword
        constexprs = {names[i]: bound[names[i]] for i in fn.constexprs if names[i] in bound}
        dtypes = {n: _arg_dtype(v) for n, v in bound.items() if _arg_dtype(v)}
        options = {k: v for k, v in kwargs.items() if k not in names}
        key = (fn.fn.__name__, repr(sorted(constexprs.items())), repr(sorted(dtypes.items())),
               repr(sorted(options.items())))  # fmt: skip
        if self.dedupe and key in self._seen:
            return None
        self._seen.add(key)
        log = io.StringIO()
        record = {
            "kernel": fn.fn.__name__,
            "arch": self.arch,
            "case": _CASE["label"],
            "constexprs": {k: str(v) for k, v in constexprs.items()},
            "dtypes": dtypes,
            "options": {k: str(v) for k, v in options.items()},
        }
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(log):
                kernel = original(fn, *args, grid=grid, warmup=True, **kwargs)
        except Exception as e:  # a specialisation that does not compile fails the check
            record |= {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            self.records.append(record)
            return None
        figures = _ptxas_figures(log.getvalue())
        if figures["registers"] is None:  # Triton's cache answered: nothing new
            return kernel
        meta = kernel.metadata
        ptx = kernel.asm["ptx"]
        record |= figures | {
            "num_warps": meta.num_warps,
            "num_stages": meta.num_stages,
            "shared": meta.shared,
            "fma_f32": ptx.count("fma.rn.f32"),
            "no_fma_promised": _promises_no_fma(fn, options.get("enable_fp_fusion", True)),
            "seconds": round(time.perf_counter() - start, 2),
        }
        self.records.append(record)
        return kernel


def failures(record: dict) -> list[str]:
    """Why this specialisation would fail (or break a promise) on its target; [] if none."""
    if "error" in record:
        return [f"does not compile: {record['error']}"]
    why = []
    limit = TARGETS[record["arch"]]
    if record.get("cuda"):  # launch sizes are the host's: registers and spills only
        return [f"spills {record['spill_stores']} B > {SPILL_LIMIT} B"] * (
            record["spill_stores"] > SPILL_LIMIT
        )
    if record["shared"] > limit:
        why.append(f"shared memory {record['shared']} B > {limit} B")
    threads = record["num_warps"] * 32
    if record["registers"] * threads > REGISTERS_PER_SM:
        why.append(f"{record['registers']} registers x {threads} threads > {REGISTERS_PER_SM}")
    if record["spill_stores"] > SPILL_LIMIT:
        why.append(f"spills {record['spill_stores']} B > {SPILL_LIMIT} B")
    if record["no_fma_promised"] and record["fma_f32"]:
        why.append(f"{record['fma_f32']} fma.rn.f32 where the LIF's formulas promise none")
    return why


# ---- the cases: every launcher, over shapes, dtypes and options ------------------------------


def _lif_option_sets(full: bool):
    """(v_th, v_reset, soft_reset, decay_input, detach_reset, surrogate, alpha) tuples: the
    default, then each option changed alone (or every combination with full)."""
    if full:
        for soft, decay, detach, surr in itertools.product(
            (False, True), (True, False), (False, True), SURROGATES
        ):
            yield (1.0, 0.0, soft, decay, detach, surr, 4.0)
        return
    base = (1.0, 0.0, False, True, False, "sigmoid", 4.0)
    yield base
    yield (1.0, 0.0, True, *base[3:])
    yield (*base[:3], False, *base[4:])
    yield (*base[:4], True, *base[5:])
    for surr in SURROGATES[1:]:
        yield (*base[:5], surr, 4.0)


def _variants(shapes, full: bool, decay_only: bool = False):
    """(dtype, shape, LIF options): every dtype and shape with the default options, and the
    other options in float32 at the first shape (they change arithmetic, not tiles); with full,
    every combination."""
    options = [o for o in _lif_option_sets(full) if o[3] or not decay_only]
    if full:
        yield from itertools.product(DTYPES, shapes, options)
        return
    yield from itertools.product(DTYPES, shapes, options[:1])
    yield from itertools.product(DTYPES[:1], shapes[:1], options[1:])


def _lif_cases(full: bool):
    import torch

    from spikeclip.kernels.lif import triton as lif_triton

    for dtype, n, opts in _variants((1000, 1024) if full else (1000,), full):
        _case(f"lif T=3 N={n} {dtype}")
        dt = getattr(torch, dtype)
        x = torch.zeros(3, n, dtype=dt)
        tau = torch.tensor(2.0)
        v0 = torch.zeros(n)
        for has_v0, save, ret in ((False, True, False), (True, False, True)):
            lif_triton.lif_fwd_triton(x, v0 if has_v0 else None, tau, *opts, save, ret)
        for has_gvl, has_v0, tau_grad in ((False, False, False), (True, True, True)):
            lif_triton.lif_bwd_triton(x, v0 if has_gvl else None, x, v0 if has_v0 else None,
                                      tau, *opts, tau_grad)  # fmt: skip


def _attention_cases(full: bool):
    import torch

    from spikeclip.kernels.attention import triton as attention_triton

    shapes = FULL_ATTENTION_SHAPES if full else ATTENTION_SHAPES
    for dtype, (N, D), options in _variants(shapes, full, decay_only=True):
        opts = options[:3] + options[4:]  # the attention's LIF always decays its input
        _case(f"attention N={N} D={D} {dtype}")
        q = torch.zeros(2, 1, 2, N, D, dtype=getattr(torch, dtype))
        bits = torch.zeros(2, 1, 2, N, (D + 7) // 8, dtype=torch.uint8)
        h_sdsa = torch.zeros(2, 1, 2, D)
        for save in (True, False):
            attention_triton.sdsa_fwd_triton(q, q, q, 2.0, *opts, save)
            attention_triton.ssa_fwd_triton(q, q, q, 0.125, 2.0, *opts, save)
        attention_triton.sdsa_bwd_triton(q, h_sdsa, bits, bits, bits, D, 2.0, *opts)
        attention_triton.ssa_bwd_triton(q, q, bits, bits, bits, D, 0.125, 2.0, *opts)


def _product_cases(full: bool):
    import torch

    from spikeclip.kernels.common import pack_triton as spike_pack_triton
    from spikeclip.kernels.spike_products import linear_triton as spike_linear_triton

    shapes = [(100, 72, 40), (256, 384, 1536), (64, 64, 64)] if full else [(100, 72, 40)]
    for dtype, (rows, n, cout) in itertools.product(DTYPES, shapes):
        _case(f"products rows={rows} n={n} C_out={cout} {dtype}")
        dt = getattr(torch, dtype)
        bits = torch.zeros(rows, (n + 7) // 8, dtype=torch.uint8)
        spike_linear_triton.spike_linear_triton(bits, torch.zeros(cout, n, dtype=dt), n)
        spike_linear_triton.spike_linear_weight_grad_triton(
            torch.zeros(rows, cout, dtype=dt), bits, n
        )
        spike_pack_triton.pack_triton(torch.zeros(rows, n, dtype=dt))
        spike_pack_triton.unpack_triton(bits, n, dt)


def _bn_lif_cases(full: bool):
    import torch

    from spikeclip.kernels.bn_lif.triton import bn_lif_forward
    from spikeclip.kernels.common.options import LifOptions

    for (dtype, _, opts), affine in itertools.product(_variants([None], full), (True, False)):
        _case(f"bn_lif [6, 4, 5, 5] {dtype}")
        y = torch.zeros(6, 4, 5, 5, dtype=getattr(torch, dtype))
        w = torch.ones(4) if affine else None
        bn_lif_forward(y, torch.zeros(4), torch.ones(4), w, w, 3, 2.0, LifOptions(*opts))


CASES = {
    "lif": _lif_cases,
    "attention": _attention_cases,
    "products": _product_cases,
    "bn_lif": _bn_lif_cases,
}


def run_cases(names, arch: int, full: bool) -> list[dict]:
    """Compile the named case groups for `arch` in this process; the records."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="spikeclip-tcc-"))
    with Recorder(arch, dedupe=not full) as rec:
        for name in names:
            CASES[name](full)
    return rec.records


def _worker(task):
    kind, names, arch, full = task
    return cuda_resources(arch) if kind == "cuda" else run_cases(names, arch, full)


# ---- CUDA C++: nvcc -cubin -Xptxas -v ---------------------------------------------------------


def cuda_resources(arch: int, sources=None) -> list[dict]:
    """ptxas's registers and spills for every kernel instantiated in csrc/**/*.cu, for `arch`
    (nvcc from CUDA_HOME or PATH; the sources are torch-free)."""
    import glob
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"),
                                                "bin", "nvcc")  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = sources or sorted(glob.glob(os.path.join(root, "csrc", "**", "*.cu"), recursive=True))
    records = []
    for src in sources:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [nvcc, "-cubin", f"-arch=sm_{arch}", "-std=c++20", "-Xptxas", "-v", src, "-o",
                 os.path.join(tmp, "k.cubin")],
                capture_output=True, text=True,
            )  # fmt: skip
        name = os.path.relpath(src, root)
        if out.returncode:
            records.append({"kernel": name, "arch": arch, "source": name, "cuda": True,
                            "error": out.stderr.strip().splitlines()[-1][:300]})  # fmt: skip
            continue
        # one "Compiling entry function '<mangled>'" paragraph per instantiated kernel
        for entry in re.split(r"Compiling entry function", out.stderr)[1:]:
            mangled = re.match(r"\s*'([^']+)'", entry).group(1)
            figures = _ptxas_figures(entry)
            records.append({"kernel": _kernel_name(mangled), "arch": arch, "source": name,
                            "cuda": True, "symbol": mangled, **figures,
                            "shared": grab_int(r"(\d+) bytes smem", entry)})  # fmt: skip
    return records


def grab_int(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else 0


def _kernel_name(mangled: str) -> str:
    """The kernel's name without its namespace and template arguments (c++filt's reading)."""
    import subprocess

    try:
        plain = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout
    except OSError:
        return mangled
    plain = plain.strip().replace("(anonymous namespace)::", "").split("(")[0]
    plain = re.sub(r"<.*>", "", plain).split()[-1]  # no template arguments, no return type
    return plain.split("::")[-1] or mangled


# ---- report ---------------------------------------------------------------------------------


def _per_kernel(records: list[dict]) -> dict:
    """{(kernel, arch): (specialisations, failing, worst registers, spill stores, shared B)}."""
    groups: dict = {}
    for r in records:
        name = f"cuda {r['kernel']}" if r.get("cuda") else r["kernel"]
        groups.setdefault((name, r["arch"]), []).append(r)
    table = {}
    for key, rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        worst = [max((r.get(f) or 0 for r in ok), default=0)
                 for f in ("registers", "spill_stores", "shared", "fma_f32")]  # fmt: skip
        table[key] = (len(rs), sum(bool(failures(r)) for r in rs), *worst)
    return table


def summary(records: list[dict]) -> str:
    """Per (kernel, arch): specialisations, failures, and the worst registers / spills /
    shared memory / FMAs among them."""
    lines = [f"{'kernel':30s} {'arch':5s} {'specs':>5s} {'fail':>4s} {'regs':>4s} "
             f"{'spill B':>7s} {'shared B':>8s} {'fma':>3s}"]  # fmt: skip
    for (kernel, arch), row in sorted(_per_kernel(records).items()):
        lines.append(f"{kernel:30s} sm_{arch:<2d} {row[0]:5d} {row[1]:4d} {row[2]:4d} "
                     f"{row[3]:7d} {row[4]:8d} {row[5]:3d}")  # fmt: skip
    return "\n".join(lines)


def compare(before: list[dict], after: list[dict]) -> str:
    """Before | after per (kernel, arch): specialisations failing / compiled, and the worst
    spill stores and shared memory (a blank side: the kernel is not in that version)."""
    b, a = _per_kernel(before), _per_kernel(after)

    def cell(row):
        return f"{row[1]:3d}/{row[0]:<3d} {row[3]:7d} {row[4]:8d}" if row else " " * 24

    lines = [f"{'':36s} {'before':^24s} | {'after':^24s}",
             f"{'kernel':30s} {'arch':5s} {'fail/n':7s} {'spill B':>7s} {'shared B':>8s} | "
             f"{'fail/n':7s} {'spill B':>7s} {'shared B':>8s}"]  # fmt: skip
    for key in sorted(set(a) | set(b)):
        lines.append(f"{key[0]:30s} sm_{key[1]:<2d} {cell(b.get(key))} | {cell(a.get(key))}")
    fails = [sum(1 for r in rs if failures(r)) for rs in (before, after)]
    lines.append(f"{'all':36s} {fails[0]:3d}/{len(before):<4d}{'':16s} | "
                 f"{fails[1]:3d}/{len(after):<4d}")  # fmt: skip
    return "\n".join(lines)


def write_records(path: str, records: list[dict], **about) -> None:
    """The JSON table: what was run, then one specialisation per line."""
    import triton

    head = {"triton": triton.__version__, **about, "targets_shared_limit": TARGETS,
            "spill_limit": SPILL_LIMIT}  # fmt: skip
    with open(path, "w") as f:
        f.write(json.dumps(head)[:-1] + ', "specialisations": [\n')
        f.write(",\n".join(json.dumps(r, sort_keys=True) for r in records))
        f.write("\n]}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=sorted(TARGETS, reverse=True),
                   choices=sorted(TARGETS))  # fmt: skip
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--full", action="store_true", help="every option combination and size")
    p.add_argument("--cuda", action="store_true",
                   help="also csrc's CUDA kernels: nvcc -cubin -Xptxas -v per target")  # fmt: skip
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", help="JSON file for every specialisation's figures")
    p.add_argument("--compare", metavar="BEFORE_JSON",
                   help="also print a table of this run beside an earlier run's JSON")  # fmt: skip
    args = p.parse_args(argv)

    start = time.perf_counter()
    tasks = [("triton", [name], arch, args.full) for arch in args.arch for name in args.cases]
    tasks += [("cuda", None, arch, False) for arch in args.arch if args.cuda]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        records = [r for rs in pool.map(_worker, tasks) for r in rs]
    elapsed = time.perf_counter() - start
    bad = [(r, failures(r)) for r in records if failures(r)]
    print(summary(records))
    import triton

    print(f"\n{len(records)} specialisations compiled for "
          f"{', '.join(f'sm_{a}' for a in args.arch)} in {elapsed:.0f} s (triton "
          f"{triton.__version__}{', nvcc' if args.cuda else ''}); {len(bad)} fail")  # fmt: skip
    for r, why in bad:
        dtypes = "/".join(sorted(set(r.get("dtypes", {}).values())))
        print(f"FAIL {r['kernel']} sm_{r['arch']} {dtypes} {r.get('constexprs', r.get('source'))}: "
              f"{'; '.join(why)}")  # fmt: skip
    if args.compare:
        with open(args.compare) as f:
            print("\n" + compare(json.load(f)["specialisations"], records))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_records(args.out, records, command=" ".join(["python", *sys.argv]),
                      seconds=round(elapsed), archs=args.arch, failing=len(bad))  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
