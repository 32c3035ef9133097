"""The suite refuses to pass when spikeclip._C is built but does not load (conftest.py): run in
a subprocess where importing _C fails as an ABI mismatch does, it stops with the reason."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# sitecustomize runs before anything imports spikeclip: _C is found, and fails to load
BROKEN = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys

    class _Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name == "spikeclip._C":
                return importlib.machinery.ModuleSpec(name, self, origin="_C.so")
        def create_module(self, spec):
            raise ImportError("_C.so: undefined symbol: _ZN3c104impl3FooEv")
        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, _Broken())
""")


def _pytest(tmp_path, env_extra):
    (tmp_path / "sitecustomize.py").write_text(BROKEN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS.parent)]),
           **env_extra}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(TESTS / "test_imports.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_built_extension_that_fails_to_load_stops_the_suite(tmp_path):
    r = _pytest(tmp_path, {})
    assert r.returncode == 3, r.stdout + r.stderr
    assert "built but fails to load" in r.stdout and "undefined symbol" in r.stdout


def test_the_same_suite_passes_with_the_extension_as_it_is(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(TESTS / "test_imports.py")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
