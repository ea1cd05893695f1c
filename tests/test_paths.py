"""Paths relative to the caller's working directory, and transform files that hold the result.

Local mode's fixed party (and dealer) run in a temporary folder of their own: the paths
they are handed are resolved against the caller's working directory first, so a relative
path means the same from the API, the command line and any directory. A B-spline after a
linear transform is written as ITK's composite, which only some formats hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import itk
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import known_pair, ppir_serve

import ppir_itk
from ppir_itk import compose
from ppir_itk.bspline import BSplineTransform
from ppir_itk.compose import spawn_fixed_party
from ppir_itk.errors import InputError
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.phantoms import head_phantom
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol.tls import FIXED_PARTY, TLS, init_pki
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.images import write_image
from ppir_itk.wrapping.transforms import (
    COMPOSITE_FILE_SUFFIXES,
    read_transform,
    write_transform,
)

TRUTH = [0.04, 1.5, -1.0]  # rigid: angle (rad), translation (mm)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """``images/`` with a rigid phantom pair and an affine start, and an empty ``work/``."""
    images, work = tmp_path / "images", tmp_path / "work"
    images.mkdir()
    work.mkdir()
    fixed = head_phantom((32, 32))
    moving, _ = known_pair(fixed, "rigid", TRUTH)
    write_image(fixed, images / "fixed.nii.gz")
    write_image(moving, images / "moving.nii.gz")
    write_transform(make_transform("affine", 2), images / "affine.tfm")
    return images, work


def _ppir(*arguments: str) -> subprocess.CompletedProcess:
    """``ppir ARGUMENTS`` as its own process, in this process's working directory."""
    return subprocess.run(
        [sys.executable, "-m", "ppir_itk.cli", *arguments],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _same_points(path: Path, written: BSplineTransform) -> None:
    """SimpleITK and ITK read ``path`` back as a composite mapping points as ``written``."""
    points = np.array([[3.0, 4.5], [20.0, 17.0], [11.0, 26.0]])
    by_sitk = sitk.ReadTransform(str(path))
    by_itk = itk.transformread(str(path))[0]
    assert by_sitk.GetName() == by_itk.GetNameOfClass() == "CompositeTransform"
    expected = written.transform_points(points)
    for read in (by_sitk, by_itk):
        got = np.array([read.TransformPoint([float(v) for v in point]) for point in points])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


# ------------------------------------------------------------- relative paths: the API


def test_register_takes_paths_relative_to_the_callers_directory(folders, monkeypatch):
    images, work = folders
    monkeypatch.chdir(work)
    result = ppir_itk.register(
        "../images/fixed.nii.gz", "../images/moving.nii.gz", backend="clear", transform="rigid"
    )
    fixed = ppir_itk.wrapping.images.as_image_grid(images / "fixed.nii.gz")
    _, truth = known_pair(fixed, "rigid", TRUTH)
    assert displacement_rmse(result.transform, truth, fixed.geometry) < 0.05


def test_a_missing_relative_image_is_named_as_given(folders, monkeypatch):
    _, work = folders
    monkeypatch.chdir(work)
    with pytest.raises(InputError) as refused:
        ppir_itk.register("missing.nii.gz", "../images/moving.nii.gz", backend="clear")
    assert "'missing.nii.gz'" in str(refused.value) and str(work) not in str(refused.value)


def test_local_mode_children_take_a_relative_pki(tmp_path, monkeypatch, phantom_2d):
    """The dealer and the fixed party both start with bundles of a relative PKI folder."""
    init_pki(tmp_path / "pki")
    monkeypatch.chdir(tmp_path)
    with spawn_fixed_party(phantom_2d, backends=("clear", "spdz"), pki="pki") as children:
        assert children.address and children.dealer_address


def test_a_ready_file_goes_from_where_it_was_written(tmp_path, monkeypatch, phantom_2d):
    """A server's ready file is removed when it stops, though the caller's working
    directory has changed since it started."""
    (tmp_path / "started").mkdir()
    (tmp_path / "later").mkdir()
    monkeypatch.chdir(tmp_path / "started")
    tls = TLS.for_role(init_pki(tmp_path / "pki"), FIXED_PARTY)
    server = FixedPartyServer(
        phantom_2d, "127.0.0.1:0", tls, policy=FixedPolicy(backends=("clear",))
    )
    serving = threading.Thread(target=compose._run_until_interrupted, args=(server, "ready.txt"))
    serving.start()
    try:
        for _ in range(600):
            if (tmp_path / "started" / "ready.txt").exists() or not serving.is_alive():
                break
            serving.join(0.1)
        assert (tmp_path / "started" / "ready.txt").exists()
        monkeypatch.chdir(tmp_path / "later")
    finally:
        server.stop()
        serving.join(30)
    assert not (tmp_path / "started" / "ready.txt").exists()


# ---------------------------------------------------- relative paths: the command line


def test_ppir_register_takes_relative_paths_from_another_directory(folders, monkeypatch):
    """Images, initial transform, outputs, report and log, all relative to the working
    directory; the affine-then-B-spline result, written as HDF5, reads back in SimpleITK
    and ITK."""
    images, work = folders
    monkeypatch.chdir(work)
    (work / "out").mkdir()
    completed = _ppir(
        "register",
        "--quiet",
        *("--fixed", "../images/fixed.nii.gz", "--moving", "../images/moving.nii.gz"),
        *("--backend", "clear", "--transform", "bspline", "--grid-spacing", "12"),
        *("--initial-transform", "../images/affine.tfm"),
        *("--shrink-factors", "2", "1", "--smoothing-sigmas", "1", "0", "--iterations", "5"),
        *("--output-transform", "out/result.h5", "--output-warped", "out/warped.nii.gz"),
        *("--report", "out/report.json", "--log-file", "out/run.log"),
    )
    assert completed.returncode == 0, completed.stderr
    assert sorted(os.listdir(work / "out")) == [
        "report.json",
        "result.h5",
        "run.log",
        "warped.nii.gz",
    ]
    result = read_transform(work / "out" / "result.h5")
    assert isinstance(result, BSplineTransform) and result.bulk is not None
    _same_points(work / "out" / "result.h5", result)


@pytest.mark.slow  # about 25 s: a server's start, and a registration through it
def test_ppir_serve_and_register_take_relative_paths(tmp_path, folders, monkeypatch):
    """Each site in its own directory, every path relative to it: the fixed site's image,
    bundle, ledger and ready file; the moving site's bundle, image and output."""
    images, work = folders
    init_pki(tmp_path / "pki")
    site = tmp_path / "fixed-site"
    site.mkdir()
    monkeypatch.chdir(site)  # ppir_serve runs the server in its log's folder
    options = ("--backends", "clear", "--ledger", "ledger.sqlite", "--ready-file", "ready.txt")
    with ppir_serve(
        Path("../pki"), Path("../images/fixed.nii.gz"), site / "serve.log", *options
    ) as address:
        monkeypatch.chdir(work)
        completed = _ppir(
            "register",
            "--quiet",
            *("--peer", address, "--tls-dir", "../pki/moving-party", "--backend", "clear"),
            *("--moving", "../images/moving.nii.gz", "--transform", "rigid"),
            *("--output-transform", "result.tfm"),
        )
        assert completed.returncode == 0, completed.stderr
        assert (site / "ledger.sqlite").is_file() and (site / "ready.txt").is_file()
    fixed = ppir_itk.wrapping.images.as_image_grid(images / "fixed.nii.gz")
    _, truth = known_pair(fixed, "rigid", TRUTH)
    assert displacement_rmse(read_transform(work / "result.tfm"), truth, fixed.geometry) < 0.05
    assert not (site / "ready.txt").exists()


# ------------------------------------------------------- composites and their formats


def _composite() -> BSplineTransform:
    bulk = make_transform("affine", 2)
    bulk.parameters = [1.02, 0.03, -0.02, 0.97, 1.0, -0.5]
    transform = BSplineTransform.over(head_phantom((32, 32)).geometry, 8.0, bulk=bulk)
    transform.parameters = np.random.default_rng(0).normal(size=transform.number_of_parameters)
    return transform


@pytest.mark.parametrize("suffix", COMPOSITE_FILE_SUFFIXES)
def test_a_composite_is_written_in_each_format_that_holds_it(tmp_path, suffix):
    transform = _composite()
    write_transform(transform, tmp_path / f"result{suffix}")
    _same_points(tmp_path / f"result{suffix}", transform)


def test_a_composite_as_mat_is_refused_and_nothing_is_written(tmp_path):
    target = tmp_path / "result.mat"
    with pytest.raises(InputError) as refused:
        write_transform(_composite(), target)
    assert str(refused.value) == (
        f"transform file '{target}' cannot hold a linear transform then a B-spline (.mat "
        "holds one transform): give one of .tfm, .txt, .h5, .hdf5"
    )
    assert os.listdir(tmp_path) == []
    bspline_alone = _composite()
    bspline_alone.bulk = None
    write_transform(bspline_alone, target)  # one transform: .mat holds it
    assert sitk.ReadTransform(str(target)).GetName() == "BSplineTransform"


def test_ppir_register_refuses_a_composite_as_mat_before_reading_an_image(tmp_path, monkeypatch):
    """Refused first: the images named do not even exist, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    write_transform(make_transform("affine", 2), tmp_path / "affine.tfm")
    completed = _ppir(
        "register",
        *("--fixed", "absent.nii.gz", "--moving", "absent.nii.gz", "--transform", "bspline"),
        *("--grid-spacing", "8", "--initial-transform", "affine.tfm"),
        *("--output-transform", "result.mat"),
    )
    assert completed.returncode == 2
    assert completed.stderr == (
        "ppir: error: --output-transform 'result.mat' cannot hold a linear transform then a "
        "B-spline (.mat holds one transform): give one of .tfm, .txt, .h5, .hdf5\n"
    )
    assert os.listdir(tmp_path) == ["affine.tfm"]
