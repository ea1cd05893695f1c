"""The README's Python examples run as written, from a working directory of their own.

Each ```python block of README.md is run by a fresh interpreter in a temporary folder
(``monkeypatch.chdir``) that holds the files it names: a phantom pair written as
``fixed.nii.gz`` and ``moving.nii.gz``, and for the ITK-style example the PKI
``ppir pki init pki`` makes (so ``pki/moving-party`` is the README's own path). The only
change to a block is the one the README asks for: the fixed site's ``HOST:PORT``, here a
``ppir serve`` child on loopback. A line appended after each block writes the result
transform, which must be close to the transform the pair was made with.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import known_pair, ppir_serve

from ppir_itk.evaluation import displacement_rmse
from ppir_itk.phantoms import head_phantom
from ppir_itk.wrapping.images import write_image
from ppir_itk.wrapping.transforms import read_transform

README = Path(__file__).resolve().parent.parent / "README.md"
FIXED_SITE = '"fixed-site:7443"'  # the address the README tells the moving site to change
RESULT = "readme_result.tfm"


def _python_block(marker: str) -> str:
    """The README's one ```python block that contains ``marker``."""
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), re.M | re.S)
    chosen = [block for block in blocks if marker in block]
    assert len(chosen) == 1, f"README.md has {len(chosen)} python blocks with {marker!r}"
    return chosen[0]


def _write_pair(folder: Path, shape: tuple[int, ...], kind: str, parameters: list[float]):
    fixed = head_phantom(shape)
    moving, truth = known_pair(fixed, kind, parameters)
    write_image(fixed, folder / "fixed.nii.gz")
    write_image(moving, folder / "moving.nii.gz")
    return fixed, truth


def _run(script: str, folder: Path) -> None:
    """``script`` as its own Python process in ``folder`` (the test's working directory)."""
    (folder / "example.py").write_text(script, encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "example.py"], capture_output=True, text=True, check=False, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_the_one_call_example_runs_as_written(tmp_path, monkeypatch):
    """Its relative paths name files of the caller's folder, though the fixed party it
    starts runs in a temporary folder of its own."""
    monkeypatch.chdir(tmp_path)
    fixed, truth = _write_pair(tmp_path, (32, 32), "rigid", [0.05, 1.2, -0.8])
    block = _python_block("ppir_itk.register(")
    _run(
        block
        + f"\nimport SimpleITK\nSimpleITK.WriteTransform(result.sitk_transform(), {RESULT!r})\n",
        tmp_path,
    )
    assert displacement_rmse(read_transform(RESULT), truth, fixed.geometry) < 0.1


@pytest.mark.slow  # about 40 s: a 3-D affine through he, and a server's start
def test_the_itk_style_example_runs_as_written_against_ppir_serve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixed, truth = _write_pair(
        tmp_path,
        (24, 24, 24),
        "affine",
        [1.02, 0.01, 0, 0, 0.99, 0.02, 0.01, 0, 1.0, 1.0, -0.5, 0.5],
    )
    subprocess.run(
        [sys.executable, "-m", "ppir_itk.cli", "pki", "init", "pki"],
        check=True,
        capture_output=True,
    )
    block = _python_block("ppir_itk.connect(")
    assert block.count(FIXED_SITE) == 1
    # The fixed site's operator grants this session what an affine over three levels needs:
    # the defaults (1/64 of the voxels in all, 1/4 of a level's grid) are for strangers.
    caps = ("grant-measurements", "max-measurements-per-evaluation", "max-measurements-per-level")
    unlimited = [word for cap in caps for word in (f"--{cap}", "inf")]
    with ppir_serve(
        Path("pki"), Path("fixed.nii.gz"), tmp_path / "serve.log", *unlimited
    ) as address:
        script = block.replace(FIXED_SITE, repr(address))
        _run(script + f"\nitk.transformwrite([transform], {RESULT!r})\n", tmp_path)
    # half a voxel: 5 % of a 24^3 phantom sampled, 0.19 mm measured
    assert displacement_rmse(read_transform(RESULT), truth, fixed.geometry) < 0.5
