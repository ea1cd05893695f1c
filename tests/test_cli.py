"""The ``ppir`` command: outputs readable by ITK and SimpleITK, and bad input refused."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import known_pair

from ppir_itk.cli import main
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.wrapping.images import as_image_grid, write_image
from ppir_itk.wrapping.transforms import from_itk, from_sitk


@pytest.fixture(scope="module")
def pair(tmp_path_factory, phantom_2d):
    folder = tmp_path_factory.mktemp("pair")
    moving, truth = known_pair(phantom_2d, "affine", [1.04, 0.05, -0.04, 0.97, 2.0, -1.0])
    write_image(phantom_2d, folder / "fixed.nii.gz")
    write_image(moving, folder / "moving.mha")
    return folder / "fixed.nii.gz", folder / "moving.mha", truth


def _register(pair, out, *extra):
    fixed, moving, _ = pair
    return main(
        [
            "register",
            "--fixed",
            str(fixed),
            "--moving",
            str(moving),
            "--quiet",
            "--backend",
            "clear",
            "--output-transform",
            str(out),
            *extra,
        ]
    )


@pytest.mark.parametrize("suffix", [".tfm", ".h5", ".mat"])
def test_output_transform_is_read_by_itk_and_simpleitk(pair, tmp_path, suffix):
    import itk

    out = tmp_path / f"result{suffix}"
    assert _register(pair, out) == 0
    geometry = as_image_grid(pair[0]).geometry
    by_sitk = from_sitk(sitk.ReadTransform(str(out)))
    by_itk = from_itk(itk.transformread(str(out))[0])
    for transform in (by_sitk, by_itk):
        assert displacement_rmse(transform, pair[2], geometry) < 0.1


def test_warped_output_and_report(pair, tmp_path):
    out, warped, report = tmp_path / "t.tfm", tmp_path / "w.nii.gz", tmp_path / "r.json"
    assert (
        _register(
            pair,
            out,
            "--output-warped",
            str(warped),
            "--report",
            str(report),
            "--transform",
            "rigid",
            "--shrink-factors",
            "2",
            "1",
            "--smoothing-sigmas",
            "1",
            "0",
        )
        == 0
    )
    data = json.loads(report.read_text())
    assert data["transform_type"] == "rigid" and data["backend"] == "clear"
    assert len(data["levels"]) == 2
    assert set(data["parties"]) == {"moving", "fixed"}
    fixed = sitk.ReadImage(str(pair[0]))
    resampled = sitk.Resample(
        sitk.ReadImage(str(pair[1])),
        fixed,
        sitk.ReadTransform(str(out)),
        sitk.sitkLinear,
        0.0,
        sitk.sitkFloat64,
    )
    written = sitk.ReadImage(str(warped))
    assert written.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(resampled), atol=1e-4
    )


def test_spdz_in_local_mode_starts_a_dealer_and_reports_it(pair, tmp_path, capsys):
    out, report = tmp_path / "t.tfm", tmp_path / "r.json"
    assert _register(pair, out, "--backend", "spdz", "--report", str(report)) == 0
    assert "dealer sent" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["private"] and set(data["parties"]) == {"moving", "fixed", "dealer"}
    geometry = as_image_grid(pair[0]).geometry
    assert displacement_rmse(from_sitk(sitk.ReadTransform(str(out))), pair[2], geometry) < 0.1


def test_bspline_after_an_affine_written_and_read_back(pair, tmp_path):
    affine, result = tmp_path / "affine.tfm", tmp_path / "bspline.h5"
    assert _register(pair, affine) == 0
    assert (
        _register(
            pair,
            result,
            "--transform",
            "bspline",
            "--grid-spacing",
            "16",
            "--initial-transform",
            str(affine),
            "--bending-weight",
            "100",
        )
        == 0
    )
    read = sitk.ReadTransform(str(result))
    assert read.GetName() == "CompositeTransform" and read.GetNumberOfTransforms() == 2
    geometry = as_image_grid(pair[0]).geometry
    assert displacement_rmse(from_sitk(read), pair[2], geometry) < 0.2


def test_serving_spdz_needs_a_dealer(pair, tmp_path, capsys):
    status = main(
        [
            "serve",
            "--fixed",
            str(pair[0]),
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            str(tmp_path),
            "--backends",
            "spdz",
        ]
    )
    assert status == 2 and "needs --dealer" in capsys.readouterr().err


def test_demo_runs_on_installed_data(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "displacement RMSE against the known transform" in out
    assert {p.name for p in tmp_path.iterdir()} == {
        "demo_transform.tfm",
        "demo_warped.nii.gz",
        "demo_report.json",
    }


# -- bad input: one sentence, exit status 2, no output file --------------------------------------
def _palette_png(path, grey=True):
    """A minimal palette (colour type 3) PNG written by hand."""
    height, width = 12, 10
    palette = [(i, i, i) if grey else (i, 255 - i, 3 * i % 256) for i in range(256)]
    rows = b"".join(
        b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width)) for y in range(height)
    )

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + chunk(b"PLTE", bytes(v for rgb in palette for v in rgb))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def test_palette_png_is_read_as_grey_and_says_so(tmp_path, capsys):
    png = _palette_png(tmp_path / "palette.png")
    with pytest.warns(UserWarning, match="read as grey levels"):
        grey = as_image_grid(str(png), name="moving image")
    assert grey.dimension == 2 and grey.array.shape == (12, 10)
    assert grey.array[0, 1] == 7
    colour = _palette_png(tmp_path / "colour_palette.png", grey=False)
    status = main(
        [
            "register",
            "--quiet",
            "--fixed",
            str(png),
            "--moving",
            str(colour),
            "--output-transform",
            str(tmp_path / "t.tfm"),
        ]
    )
    assert status == 2 and "colour image" in capsys.readouterr().err


def test_command_line_exits_non_zero_without_traceback(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppir_itk.cli",
            "register",
            "--fixed",
            str(tmp_path / "a.nii"),
            "--moving",
            str(tmp_path / "b.nii"),
            "--output-transform",
            str(tmp_path / "t.tfm"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,  # not the source tree
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().startswith("ppir: error: fixed image")
    assert "Traceback" not in completed.stderr


def test_the_summary_says_what_each_party_received_in_the_clear(pair, tmp_path, capsys):
    assert (
        _register(
            pair,
            tmp_path / "t.tfm",
            "--backend",
            "he",
            "--iterations",
            "2",
            "--shrink-factors",
            "1",
            "--smoothing-sigmas",
            "0",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "fixed party received in the clear: nothing" in out
    assert "moving party received in the clear: the joint term: 8 sums per evaluation" in out


# What `import ppir_itk`, `ppir --help` and `ppir pki init` import (the package loads its
# names on first use: ppir_itk/__init__.py).
_IMPORTS = """
import sys
import ppir_itk
if sys.argv[1:] == ["import"]:
    print(" ".join(sorted(sys.modules)))
    raise SystemExit
from ppir_itk import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)))
"""
SUBSYSTEMS = (
    "tenseal",
    "torch",
    "crypten",
    "itk",
    "matplotlib",
    "tqdm",
    "ppir_itk.registration",
    "ppir_itk.metric",
    "ppir_itk.backends",
    "ppir_itk.bench",
    "ppir_itk.figures",
)


@pytest.mark.parametrize("command", [["import"], ["--help"], ["pki", "init", "{folder}"]])
def test_help_and_pki_init_import_no_subsystem(command, tmp_path):
    argv = [word.format(folder=tmp_path / "pki") for word in command]
    completed = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    imported = set(completed.stdout.splitlines()[-1].split())
    assert ("ppir_itk.cli" in imported) == (command != ["import"])
    assert not {name for name in SUBSYSTEMS if name in imported}
