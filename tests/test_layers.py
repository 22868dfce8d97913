"""The package's parts import downward only, with no circle among its modules (imports inside functions
included), and the entry points and the command line's checks load no more than they need."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# the layers of the package: the core modules, then each sub-package; a module imports from its own layer and the
# ones below only
CORE = {"gpt", "gpt.files", "gpt.context", "gpt.signals", "gpt.compat", "gpt.metrics"}
PACKAGES = {"gpt.models": 1, "gpt.data": 2, "gpt.training": 3, "gpt.eval": 4, "gpt.serve": 4, "gpt.cli": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted((REPO / "gpt").rglob("*.py"))}


def layer(module: str) -> int:
    package = ".".join(module.split(".")[:2])
    return PACKAGES.get(package, 0 if module in CORE else -1)


def imported(module: str) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in it (``from gpt.x import y`` names gpt.x.y where
    that is a module)."""
    names = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpt":
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "gpt")
    return {name for name in names if name in MODULES and name != module}


def test_every_module_belongs_to_a_layer():
    assert [module for module in MODULES if layer(module) < 0] == []
    assert {module for module in MODULES if layer(module) == 0} == CORE


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_import_downward_only(module):
    upward = {name for name in imported(module) if layer(name) > layer(module)}
    assert not upward, f"{module} (layer {layer(module)}) imports {upward}"


def test_no_module_imports_itself_through_others():
    graph = {module: imported(module) - {"gpt"} for module in MODULES}
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("an import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for name in sorted(graph[module]):
            visit(name)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize("code, unwanted", [
    ("import sys; sys.argv = ['sample.py']; import sample", "lightning"),
    ("import sys; sys.argv = ['export.py']; import export", "lightning"),
    ("import gpt.cli.command_line, gpt.cli.checks, gpt.models.configs, gpt.training.rundir, gpt.metrics", "torch"),
], ids=["sample.py", "export.py", "the checks before any library loads"])
def test_what_needs_no_library_does_not_import_it(code, unwanted):
    result = subprocess.run([sys.executable, "-c", f"import sys; {code}; print({unwanted!r} in sys.modules)"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr
