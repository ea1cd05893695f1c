"""Docstring examples run, the source tree is ruff clean and type checks, and its layers point
one way."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ppir_itk

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(ppir_itk.__path__, "ppir_itk.")
    if not name.endswith("_kernels")
)
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    failures, _ = doctest.testmod(module, optionflags=flags)
    assert failures == 0


def test_source_tree_is_ruff_clean():
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("the tests run outside the source tree")
    ruff = shutil.which("ruff")
    assert ruff is not None, "ruff is a test dependency: pip install '.[test]'"
    completed = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True,
                               check=False, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout


def test_the_package_type_checks():
    """mypy with pyproject.toml's [tool.mypy]: ppir_itk, and wrapping/ as ppir_itk.wrapping."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("the tests run outside the source tree")
    completed = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True,
                               check=False, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: the layers of docs/architecture.md, backends
    that do not know each other, a transport that knows no party. A cycle breaks them."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("the tests run outside the source tree")
    completed = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports; "
         "raise SystemExit(lint_imports(no_cache=True, no_logo=True))"],
        capture_output=True, text=True, check=False, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr


# What the image and transform adapters may import of the package: the core below them.
WRAPPING_MAY_IMPORT = ("ppir_itk.errors", "ppir_itk.image", "ppir_itk.transforms",
                       "ppir_itk.bspline", "ppir_itk.wrapping")


def test_wrapping_imports_only_the_core():
    """wrapping/ installs as ppir_itk.wrapping, which import-linter does not see in an
    editable install: its imports (function-level ones too) reach only the core."""
    if not (ROOT / "wrapping").is_dir():
        pytest.skip("the tests run outside the source tree")
    for path in sorted((ROOT / "wrapping").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("ppir_itk"):
                    assert name.startswith(WRAPPING_MAY_IMPORT), f"{path.name} imports {name}"
