"""The package's modules import downward only, and the entry points load no more than they need."""

import ast
import subprocess
import sys

import pytest

from conftest import REPO

# each module of gpt/ and the layer it belongs to; a module may import its own layer and the ones below
LAYERS = {
    "gpt": 0, "gpt.files": 0, "gpt.context": 0, "gpt.result": 0, "gpt.rundir": 0, "gpt.checks": 0, "gpt.compat": 0,
    "gpt.arithmetic": 1, "gpt.quantize": 1,
    "gpt.bpe": 1, "gpt.tokenizers": 1, "gpt.configs": 1, "gpt.generate": 1, "gpt.interface": 1, "gpt.model": 1,
    "gpt.optim": 1,
    "gpt.hf": 2, "gpt.corpus": 2, "gpt.checkpoint": 2,
    "gpt.devices": 3, "gpt.datamodule": 3, "gpt.windows": 3, "gpt.examples": 3, "gpt.lm": 3,
    "gpt.callbacks": 3, "gpt.loggers": 3, "gpt.answers": 3,
    "gpt.cli": 4, "gpt.training": 4, "gpt.sweeps": 4, "gpt.compare": 4,
}


def imported_gpt_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpt":
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "gpt")
    return names


def test_every_module_has_a_layer():
    modules = {"gpt" if p.stem == "__init__" else f"gpt.{p.stem}" for p in (REPO / "gpt").glob("*.py")}
    assert modules == set(LAYERS)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_modules_import_downward_only(module):
    path = REPO / "gpt" / ("__init__.py" if module == "gpt" else f"{module.split('.')[1]}.py")
    upward = {name for name in imported_gpt_modules(path) if LAYERS[name] > LAYERS[module]}
    assert not upward, f"{module} (layer {LAYERS[module]}) imports {upward}"


@pytest.mark.parametrize("script", ["prepare", "sample", "export"])
def test_entry_points_that_need_no_lightning_do_not_import_it(script):
    code = f"import sys; sys.argv = ['{script}.py']; import {script}; print('lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
