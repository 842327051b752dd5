"""The package layers: a module imports only from its own layer and the ones before it.

LAYERS is the order the README's Layout section states. Imports inside functions count as
much as those at the top of a module: deferring an import still points the arrow up.
"""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import imgcls

ROOT = Path(imgcls.__file__).parent
LAYERS = [
    ("imgcls", "imgcls.errors", "imgcls.progress", "imgcls.task", "imgcls.storage", "imgcls.run_folder"),  # foundations
    ("imgcls.data",),
    ("imgcls.fastpath", "imgcls.runtime", "imgcls.kernels"),
    ("imgcls.training",),
    ("imgcls.models",),
    ("imgcls.evaluation",),
    ("imgcls.inference",),
    ("imgcls.explain", "imgcls.visuals"),
    ("imgcls.serving", "imgcls.similarity"),
    ("imgcls.doctor",),
    ("imgcls.fit_and_evaluate",),
    ("imgcls.tuning", "imgcls.compare", "imgcls.planning"),
    ("imgcls.training_run", "imgcls.saved_models"),
    ("imgcls.cli", "imgcls.commands"),
]
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    """The package or top-level module a module belongs to: imgcls.models.pretrained -> imgcls.models."""
    return ".".join(module.split(".")[:2])


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported imgcls module) for every import in source, at any depth, relative ones resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                # `from imgcls import models` imports the package imgcls.models; `from imgcls import
                # __version__` only the top-level package.
                whole = f"{base}.{alias.name}"
                found.append((node.lineno, whole if base == "imgcls" and whole in RANK else base))
    return [(line, name) for line, name in found if name == "imgcls" or name.startswith("imgcls.")]


def upward_imports(source: str, module: str, is_package: bool = False, where: str = "") -> list[str]:
    """One line for each import of a later layer (or of a package LAYERS does not place)."""
    own = unit_of(module)
    problems = []
    for line, name in imports_of(source, module, is_package):
        unit = unit_of(name)
        if unit not in RANK:
            problems.append(f"{where or module}:{line}: {module} imports {name}, and LAYERS does not place {unit}")
        elif RANK[unit] > RANK[own]:
            problems.append(f"{where or module}:{line}: {module} imports {name}, but {unit} comes after {own} "
                            "in the layer order")
    return problems


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        yield path, ".".join(parts[:-1] if is_package else parts), is_package


def test_every_package_and_module_has_a_layer():
    top = {f"imgcls.{p.stem}" for p in ROOT.glob("*.py") if p.stem != "__init__"}
    top |= {f"imgcls.{p.name}" for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    unplaced = sorted(top - set(RANK))
    assert not unplaced, f"add {', '.join(unplaced)} to LAYERS (and to the README's Layout section)"


def test_no_module_imports_a_later_layer():
    problems = [problem for path, module, is_package in modules()
                for problem in upward_imports(path.read_text(encoding="utf-8"), module, is_package,
                                              str(path.relative_to(ROOT.parent)))]
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_the_check_sees_upward_imports_at_any_depth():
    source = ("import torch\n"
              "from imgcls import __version__, runtime\n"
              "from imgcls.training.config import TrainingConfig\n"
              "from . import networks\n"
              "def to_onnx():\n"
              "    from imgcls.inference.onnx_model import OnnxClassifier\n"
              "    from ..training_run import train\n"
              "    import imgcls.serving.app\n"
              "    from imgcls import doctor\n")
    problems = upward_imports(source, "imgcls.models.pretrained")
    assert [p.split(": ", 1)[1] for p in problems] == [
        "imgcls.models.pretrained imports imgcls.inference.onnx_model, but imgcls.inference comes after "
        "imgcls.models in the layer order",
        "imgcls.models.pretrained imports imgcls.training_run, but imgcls.training_run comes after imgcls.models "
        "in the layer order",
        "imgcls.models.pretrained imports imgcls.serving.app, but imgcls.serving comes after imgcls.models "
        "in the layer order",
        "imgcls.models.pretrained imports imgcls.doctor, but imgcls.doctor comes after imgcls.models "
        "in the layer order"]
    assert [p.split(":")[1] for p in problems] == ["6", "7", "8", "9"]
    assert upward_imports("from imgcls.plugins import x\n", "imgcls.cli") == [
        "imgcls.cli:1: imgcls.cli imports imgcls.plugins, and LAYERS does not place imgcls.plugins"]


def test_loading_a_model_to_predict_or_serve_leaves_the_training_loop_unloaded():
    code = ("import sys, imgcls.models, imgcls.inference, imgcls.serving.app\n"
            "print('imgcls.training.trainer' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT.parent), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def module_graph() -> dict[str, set[str]]:
    """The imgcls modules each imgcls module imports, at any depth; `from package import module`
    counts as importing that module, not the package's __init__."""
    found = {module: (path, is_package) for path, module, is_package in modules()}
    graph = {}
    for module, (path, is_package) in found.items():
        package = module.split(".") if is_package else module.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in found else base for alias in node.names]
            else:
                continue
            targets |= {name for name in names if name in found and name != module}
        graph[module] = targets
    return graph


def test_no_modules_import_each_other():
    """Not even around a loop, nor by deferring an import into a function: a loop means one of its
    modules holds what the others need and belongs below them."""
    try:
        graphlib.TopologicalSorter(module_graph()).prepare()
    except graphlib.CycleError as loop:
        pytest.fail("modules that import each other: " + " -> ".join(loop.args[1]))
    assert "imgcls.explain.results" in module_graph()["imgcls.explain.intrinsic"]     # the check sees them
