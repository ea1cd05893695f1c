"""docs/errors.md is true: each row's example ends with exactly its message, exit status 2.

The rows are read from the page; each row's first cell names a case below, which
makes the files the example needs. The example (upper-case names standing for
paths in a temporary directory) runs through ``ppir_itk.cli.main`` in this
process; stderr must be ``ppir: error: <message>`` and nothing else, and no file
may appear. A row without a case, or a case without a row, fails.
"""

from __future__ import annotations

import re
import shlex
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import dicom_series

from ppir_itk.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"

# ---------------------------------------------------------------- files the examples name


def _image(array: np.ndarray, **options: bool) -> Callable[[Path], None]:
    return lambda path: sitk.WriteImage(sitk.GetImageFromArray(array, **options), str(path))


def _noise(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _noise_with(values: dict[tuple[int, ...], float]) -> np.ndarray:
    array = _noise(32, 32, seed=2).astype(np.float64)
    for index, value in values.items():
        array[index] = value
    return array


def _metaimage(header: str, values: int) -> Callable[[Path], None]:
    """A MetaImage written by hand: headers ITK refuses, or that its writers never make."""
    text = f"ObjectType = Image\n{header}\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    return lambda path: path.write_bytes(text.encode() + _noise(values).astype("<f4").tobytes())


def _truncated_png(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray((_noise(16, 16) * 255).astype(np.uint8)), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _sheared_nifti(path: Path) -> None:
    import nibabel

    shear = np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    image = nibabel.Nifti1Image(_noise(8, 9, 10), shear)
    image.set_qform(None, code=0)
    image.set_sform(shear, code=1)
    nibabel.save(image, str(path))


def _time_series(path: Path) -> None:
    volumes = [sitk.GetImageFromArray(_noise(4, 5, 6, seed=k)) for k in range(3)]
    sitk.WriteImage(sitk.JoinSeries(volumes), str(path))


def _complex(path: Path) -> None:
    array = _noise(16, 16) + 1j * _noise(16, 16, seed=1)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.complex64)), str(path))


def _two_series(path: Path) -> None:
    dicom_series(path, "1.2.826.0.1.3680043.2.1125.7.1", (3, 16, 12), "axial")
    dicom_series(path, "1.2.826.0.1.3680043.2.1125.7.2", (2, 10, 8), "scout")


def _nan_scaling(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(_noise(6, 7, 8)), str(path))
    header = bytearray(path.read_bytes())
    header[112:116] = struct.pack("<f", np.nan)  # NIfTI-1's scl_slope
    path.write_bytes(bytes(header))


def _transform(make: Callable[[], sitk.Transform]) -> Callable[[Path], None]:
    return lambda path: sitk.WriteTransform(make(), str(path))


def _bspline() -> sitk.Transform:
    bspline = sitk.BSplineTransform(2, 3)
    bspline.SetFixedParameters([4, 4, 0, 0, 10, 10, 1, 0, 0, 1])
    return bspline


def _pki(path: Path) -> None:
    from ppir_itk.protocol.tls import init_pki

    init_pki(path)


def _expired_pki(path: Path) -> None:
    import datetime

    from ppir_itk.protocol.tls import init_pki

    init_pki(path, days=1, not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))


FILES: dict[str, Callable[[Path], None]] = {
    "expired": _expired_pki,
    "fixed.mha": _image(_noise(32, 32)),
    "moving.mha": _image(_noise(32, 32, seed=1)),
    "volume.mha": _image(_noise(8, 16, 16)),
    "folder": lambda path: path.mkdir(),
    "folder.tfm": lambda path: path.mkdir(),
    "notes.txt": lambda path: path.write_text("not an image\n"),
    "empty.nii": lambda path: path.write_bytes(b""),
    "truncated.png": _truncated_png,
    "zero_spacing.mha": _metaimage("NDims = 2\nDimSize = 10 10\nElementSpacing = 0 1", 100),
    "singular.mha": _metaimage("NDims = 2\nDimSize = 10 10\nTransformMatrix = 1 0 0 0", 100),
    "sheared.mha": _metaimage("NDims = 2\nDimSize = 10 10\nTransformMatrix = 1 0.5 0 1", 100),
    "sheared.nii": _sheared_nifti,
    "empty_axis.mha": _metaimage("NDims = 2\nDimSize = 0 10", 0),
    "line.mha": _metaimage("NDims = 1\nDimSize = 5", 5),
    "time_series.mha": _time_series,
    "colour.png": _image((_noise(12, 10, 3) * 255).astype(np.uint8), isVector=True),
    "vector.mha": _image(_noise(12, 10, 2), isVector=True),
    "complex.nii": _complex,
    "nan.mha": _image(_noise_with({(3, 4): np.nan})),
    "inf.mha": _image(_noise_with({(3, 4): np.inf, (5, 6): -np.inf})),
    "constant.mha": _image(np.full((9, 9), 3.0)),
    "zeros.mha": _image(np.zeros((9, 9))),
    "tiny.mha": _image(_noise(2, 2)),
    "two_series": _two_series,
    "nan_scaling.nii": _nan_scaling,
    "affine.tfm": _transform(lambda: sitk.AffineTransform(2)),
    "affine_3d.tfm": _transform(lambda: sitk.AffineTransform(3)),
    "scale.tfm": _transform(lambda: sitk.ScaleTransform(2, (2.0, 0.5))),
    "bspline.tfm": _transform(_bspline),
    "garbage.tfm": lambda path: path.write_text("not a transform\n"),
    "pki": _pki,
}
# The page's upper-case path names: the files above, and outputs or paths that never exist.
PATH_NAMES = {name.split(".")[0].upper() for name in FILES} | {
    "OUT",
    "WARPED",
    "REPORT",
    "RESULTS",
    "MISSING",
}
PLACEHOLDER = re.compile(r"(?<![.\w])(" + "|".join(sorted(PATH_NAMES)) + r")\b")

# ------------------------------------------------------------------------- the cases
# Each row of the page, by its first cell: the files its example reads (beyond
# fixed.mha and moving.mha, which every case has).

IMAGES = {
    "image file missing": [],
    "directory that is not a DICOM series (FOLDER is empty)": ["folder"],
    "unsupported format (NOTES.txt is text)": ["notes.txt"],
    "empty file": ["empty.nii"],
    "corrupt file (a PNG cut in half)": ["truncated.png"],
    "zero pixel spacing in the header": ["zero_spacing.mha"],
    "singular direction matrix in the header": ["singular.mha"],
    "sheared (not orthonormal) direction matrix, MetaImage": ["sheared.mha"],
    "sheared (not orthonormal) direction matrix, NIfTI": ["sheared.nii", "volume.mha"],
    "zero-size image (an axis of 0 pixels)": ["empty_axis.mha"],
    "1-D image": ["line.mha"],
    "4-D image": ["time_series.mha"],
    "colour image (RGB channels that differ)": ["colour.png"],
    "vector image (2 components per pixel)": ["vector.mha"],
    "complex pixels": ["complex.nii"],
    "NaN pixel": ["nan.mha"],
    "infinite pixels": ["inf.mha"],
    "constant image": ["constant.mha"],
    "constant moving image": ["constant.mha"],
    "fixed (2-D) and moving (3-D) of different dimensions": ["volume.mha"],
    "more voxels than --max-image-voxels (FIXED.mha is 32x32)": [],
    "more bytes than --max-image-bytes (32x32 float32 pixels)": [],
    "image limit 0": [],
    "DICOM folder of two series, none named": ["two_series"],
    "DICOM series the folder does not hold": ["two_series"],
    "series UID after a file": [],
    "NIfTI scaling NaN (scl_slope)": ["nan_scaling.nii"],
    "fixed image too small for the shrink factors (TINY.mha is 2x2)": ["tiny.mha"],
    "moving image too small (TINY.mha is 2x2)": ["tiny.mha"],
}
OUTPUTS = {
    "transform suffix ITK cannot write": [],
    "transform suffix in capitals (ITK's suffixes are case-sensitive)": [],
    "output transform's directory missing": [],
    "output transform is a directory (FOLDER.tfm)": ["folder.tfm"],
    "a B-spline after --initial-transform, to a format that holds one transform": ["affine.tfm"],
    "warped-image suffix ITK cannot write as float": [],
    "warped image's directory missing": [],
    "report's directory missing": [],
}
MODES = {
    "neither --fixed nor --peer": [],
    "both --fixed and --peer": [],
    "--dealer without --peer": [],
    "--peer not HOST:PORT": [],
    "--dealer not HOST:PORT": [],
    "--peer without TLS credentials": [],
    "--tls-dir without the certificates (FOLDER is empty)": ["folder"],
    "--cert that is not PEM": ["notes.txt"],
    "--tls-dir of another role's bundle (the fixed party's)": ["pki"],
    "--cert that is a private key": ["pki"],
}
OPTIONS = {
    "--threads 0": [],
    "--iterations 0": [],
    "--iterations with another count than the levels": [],
    "--progress-interval 0": [],
    "--log-file in a missing folder": [],
    "negative --seed": [],
    "--deadline 0": [],
    "--shrink-factors and --smoothing-sigmas of different lengths": [],
    "shrink factor 0": [],
    "negative smoothing sigma": [],
    "unknown transform": [],
    "unknown backend": [],
    "the homomorphic backend's old name": [],
    "unknown metric": [],
    "--histogram-bins outside 5 to 256 (4 bins pad the cubic window: 4 would leave none)": [],
    "unknown optimizer": [],
    "a metric the backend does not compute (he refuses Mattes)": [],
    "a metric the protocol does not compute (the paper's protocols: mean squares only)": [],
    "Gauss-Newton with a metric that is not least squares": [],
    "unknown sampling": [],
    "--sampling-fraction 0": [],
    "--sampling-fraction above 1": [],
    "unknown initializer": [],
    "bspline without --grid-spacing": [],
    "--grid-spacing 0": [],
    "--grid-spacing with more values than axes": [],
    "negative --bending-weight": [],
    "--initial-transform without bspline": ["affine.tfm"],
    "--initial-transform missing": [],
    "--initial-transform a directory": ["folder"],
    "--initial-transform unreadable (GARBAGE.tfm is text)": ["garbage.tfm"],
    "--initial-transform holding a B-spline": ["bspline.tfm"],
    "--initial-transform of a type that cannot keep its own parameters (SCALE.tfm holds a "
    "ScaleTransform)": ["scale.tfm"],
    "--initial-transform of another dimension": ["affine_3d.tfm"],
    "--backend-parameter not KEY=VALUE": [],
    # These start the fixed party (and for spdz a dealer): the backend checks them.
    "he parameter not a whole number": [],
    "he security level refused": [],
    "he degree refused": [],
    "unknown he protocol": [],
    "the paper's protocol with another option": [],
    "the paper's protocol with a B-spline": [],
    "spdz chunk size out of range": [],
    "unknown spdz provider": [],
    "spdz's test-only provider": [],
}
SERVE_DEALER_PKI = {
    "serve: --listen not HOST:PORT": [],
    "serve: --max-sessions 0": [],
    "serve: --grant-measurements 0": [],
    "serve: --max-measurements-per-evaluation negative": [],
    "serve: --max-measurements-per-level 0": [],
    "serve: --joint-term-noise negative": [],
    "serve: --min-control-spacing negative": [],
    "serve: unknown metric in --metrics": [],
    "serve: --max-message-bytes 0": [],
    "serve: --ledger in a missing folder": ["fixed.mha", "pki"],
    "serve: --ledger that is not SQLite": ["fixed.mha", "pki", "notes.txt"],
    "serve: unknown backend": [],
    "serve: spdz without --dealer": [],
    "serve: --dealer not HOST:PORT": [],
    "serve: no TLS credentials": [],
    "serve: --tls-dir without the certificates (FOLDER is empty)": ["folder"],
    "serve: fixed image with a NaN pixel": ["nan.mha", "pki"],
    "serve: --tls-dir of another role's bundle (the dealer's)": ["pki"],
    "serve: --ready-file in a missing folder": ["pki"],
    "dealer: --listen port out of range": [],
    "dealer: --deadline 0": [],
    "dealer: --max-pending 0": [],
    "dealer: no TLS credentials": [],
    "dealer: --cert that is not PEM": ["notes.txt"],
    "dealer: --tls-dir of another role's bundle (the moving party's)": ["pki"],
    "dealer: an expired certificate (EXPIRED: a PKI valid for one day from 2020-01-01)": [
        "expired"
    ],
    "pki: --days 0": [],
    "pki: directory that is a file": ["notes.txt"],
}
BENCH_DEMO = {
    "bench: --fixed without --moving": [],
    "bench: --out is a file": ["notes.txt"],
    "bench: fixed image with a NaN pixel": ["nan.mha"],
    "bench: images of different dimensions": ["volume.mha"],
    "bench: --threads 0": [],
    "bench: --repeats 0": [],
    "bench: --time-cap 0": [],
    "bench: unknown sampling": [],
    "bench: unknown backend": [],
    "bench: unknown protocol": [],
    "demo: unknown backend": [],
    "demo: --threads 0": [],
    "demo: --output-dir missing": [],
}
MASKS = {
    "--fixed-mask missing": [],
    "mask that is not an image (NOTES.txt is text)": ["notes.txt"],
    "mask of another dimension than the images": ["volume.mha"],
    "mask with no pixel inside (ZEROS.mha is all 0)": ["zeros.mha"],
    "--fixed-mask with --peer": [],
    "a backend that does not compute the metric with a fixed mask": [],
    "serve: --fixed-mask of another dimension": ["volume.mha", "pki"],
}
CASES: dict[str, list[str]] = {
    **IMAGES,
    **MASKS,
    **OUTPUTS,
    **MODES,
    **OPTIONS,
    **SERVE_DEALER_PKI,
    **BENCH_DEMO,
}

# -------------------------------------------------------------------------- the page


def _rows() -> dict[str, tuple[str, str]]:
    """``bad input -> (example, message)`` for every table row of the page."""
    rows: dict[str, tuple[str, str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or cells[0] in ("bad input", "---"):
            continue
        assert len(cells) == 3, f"a row of docs/errors.md has {len(cells)} cells: {line}"
        bad_input, example, message = cells
        assert bad_input not in rows, f"docs/errors.md has two rows '{bad_input}'"
        assert example.startswith("`ppir ") and example.endswith("`"), example
        assert message.startswith("`") and message.endswith("`"), message
        rows[bad_input] = (example.strip("`"), message.strip("`"))
    return rows


ROWS = _rows() if DOC.exists() else {}


def _paths(text: str, folder: Path) -> str:
    """Names as paths in ``folder``: ``MISSING/OUT.tfm`` is ``folder/missing/out.tfm``."""

    def path(match: re.Match[str]) -> str:
        inner = match.start() > 0 and text[match.start() - 1] == "/"
        return match.group(1).lower() if inner else str(folder / match.group(1).lower())

    return PLACEHOLDER.sub(path, text)


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.skipif(not DOC.exists(), reason="the tests run outside the source tree")
@pytest.mark.parametrize("bad_input", sorted(set(ROWS) | set(CASES)))
def test_documented_message(bad_input, tmp_path, capfd):
    assert bad_input in ROWS, f"case '{bad_input}' has no row in docs/errors.md"
    assert bad_input in CASES, f"row '{bad_input}' of docs/errors.md has no case in this test"
    example, message = ROWS[bad_input]
    for name in ("fixed.mha", "moving.mha", *CASES[bad_input]):
        FILES[name](tmp_path / name)
    argv = [_paths(word, tmp_path) for word in shlex.split(example)[1:]]
    before = _files(tmp_path)
    capfd.readouterr()

    status = main(argv)

    err = capfd.readouterr().err
    assert status == 2, err
    assert err == f"ppir: error: {_paths(message, tmp_path)}\n"
    assert _files(tmp_path) == before  # no output, and no temporary file left behind
