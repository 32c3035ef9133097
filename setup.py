"""Builds spikeclip._C: the C++ (CPU) kernels always, the CUDA kernels when torch has CUDA.

    pip install --no-build-isolation -e .            # build next to the sources
    SPIKECLIP_CUDA=0 ...   skip the CUDA kernels even where they could be built
    SPIKECLIP_DEBUG=1 ...  -O0 -g, for gdb / cuda-gdb
    SPIKECLIP_NATIVE=1 ... add -march=native (fastest here, not portable: never for wheels)
    SPIKECLIP_CPU_OPT=-O1  the C++ (CPU) kernels' optimisation level (default -O3): the GPU
                           check builds them at -O1 (attention_cpu.cpp compiles in 56 s instead
                           of 166 s; the CPU kernels are not timed there)
    SPIKECLIP_ASAN=1 ...   AddressSanitizer (run with LD_PRELOAD=$(gcc -print-file-name=libasan.so);
                           benchmarks/asan_check.sh does it all)
Metadata and tool configuration live in pyproject.toml.
"""

import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - only reached with an isolated build
    raise SystemExit(
        "spikeclip builds against the installed torch: install torch first, then "
        "`pip install --no-build-isolation -e .`"
    ) from exc


def _flag(name, default="0"):
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def extensions():
    debug = _flag("SPIKECLIP_DEBUG")
    cuda_env = os.environ.get("SPIKECLIP_CUDA", "auto").strip().lower()
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if cuda_env in ("0", "false", "no", "off"):
        with_cuda = False
    elif cuda_env in ("1", "true", "yes", "on") and not with_cuda:
        raise SystemExit("SPIKECLIP_CUDA=1 but torch has no CUDA or nvcc was not found")

    opt = ["-O0", "-g"] if debug else ["-O3"]
    cpu_opt = ["-O0", "-g"] if debug else [os.environ.get("SPIKECLIP_CPU_OPT", "-O3")]
    if cpu_opt[0] not in ("-O0", "-O1", "-O2", "-O3"):
        raise SystemExit(f"SPIKECLIP_CPU_OPT must be -O0 .. -O3, got {cpu_opt[0]!r}")
    # -fno-trapping-math lets GCC if-convert and vectorise the branch-free selects;
    # -ffp-contract=off keeps a*b+c unfused so forward spikes match the reference bit for bit.
    cxx = [*cpu_opt, "-std=c++20", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
    if _flag("SPIKECLIP_NATIVE"):
        cxx.append("-march=native")
    link = ["-fopenmp"]
    if _flag("SPIKECLIP_ASAN"):
        cxx += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
        link += ["-fsanitize=address"]
    common = ["csrc/ops.cpp", "csrc/lif_common.cpp", "csrc/attention_common.cpp"]
    sources = [*common, *sorted(glob.glob("csrc/cpu/*.cpp"))]
    kwargs = dict(extra_compile_args={"cxx": cxx}, extra_link_args=link)
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        nvcc = [*opt, "-std=c++20", "--fmad=false", "-lineinfo"]
        if debug:
            nvcc += ["-G"]
        kwargs["extra_compile_args"]["cxx"].append("-DSPIKECLIP_WITH_CUDA")
        kwargs["extra_compile_args"]["nvcc"] = nvcc + ["-DSPIKECLIP_WITH_CUDA"]
        return [CUDAExtension("spikeclip._C", sources, **kwargs)]
    return [CppExtension("spikeclip._C", sources, **kwargs)]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension})
