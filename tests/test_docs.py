"""Docstring examples run, the source tree is ruff clean and type checks, and its layers point
one way."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ppir_itk

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(ppir_itk.__path__, "ppir_itk.")
    if not name.endswith("_kernels")
)
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    failures, _ = doctest.testmod(module, optionflags=flags)
    assert failures == 0


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_source_tree_is_ruff_clean(command):
    """``ruff check`` and ``ruff format --check`` pass on the whole tree."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("the tests run outside the source tree")
    completed = subprocess.run(
        [sys.executable, "-m", "ruff", *command, str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_package_type_checks():
    """mypy with pyproject.toml's [tool.mypy], on the package (its adapters in wrapping/ too)."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("the tests run outside the source tree")
    completed = subprocess.run(
        [sys.executable, "-m", "mypy"], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: the layers of docs/architecture.md, backends
    that do not know each other, a transport that knows no party. A cycle breaks them."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("the tests run outside the source tree")
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports; "
            "raise SystemExit(lint_imports(no_cache=True, no_logo=True))",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
