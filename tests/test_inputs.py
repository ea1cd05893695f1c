"""Image inputs that cannot hurt the process or silently mislead.

Size limits checked from a file's header before a pixel is read, a DICOM folder of
several series, a NIfTI whose scaling is NaN or infinite, and images too small to
register: each refused with one sentence, through the ``ppir`` command (exit 2, one
line, no output file) and through the API.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import dicom_series

from ppir_itk.cli import main
from ppir_itk.errors import InputError
from ppir_itk.image import GridGeometry, ImageGrid, check_large_enough
from ppir_itk.registration import register
from ppir_itk.wrapping.images import ImageLimits, as_image_grid, nifti_scaling

SERIES = ("1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2")


def _noise(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _write(array: np.ndarray, path: Path, **options: bool) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, **options), str(path))
    return path


def _header_only(path: Path, width: int, height: int) -> Path:
    """A MetaImage whose header claims width x height float64 pixels and holds 16 bytes:
    reading its pixels fails, so only a check of its header can refuse it for its size."""
    header = (
        f"ObjectType = Image\nNDims = 2\nDimSize = {width} {height}\n"
        "ElementType = MET_DOUBLE\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + bytes(16))
    return path


def _refused(argv: list[str], folder: Path, capfd: pytest.CaptureFixture[str]) -> str:
    """Run ``ppir ARGV``: exit 2, one line on stderr, no file made in ``folder``."""
    before = set(folder.rglob("*"))
    capfd.readouterr()
    status = main(argv)
    err = capfd.readouterr().err
    assert status == 2, err
    assert err.startswith("ppir: error: ") and err.count("\n") == 1, err
    assert set(folder.rglob("*")) == before
    return err.removeprefix("ppir: error: ").strip()


def _register_argv(fixed: Path, moving: Path, folder: Path, *extra: str) -> list[str]:
    return [
        "register",
        "--fixed",
        str(fixed),
        "--moving",
        str(moving),
        "--backend",
        "clear",
        "--quiet",
        "--output-transform",
        str(folder / "out.tfm"),
        *extra,
    ]


# ------------------------------------------------------------------------- size limits


def test_file_beyond_the_voxel_limit_is_refused_from_its_header(tmp_path, capfd):
    big = _header_only(tmp_path / "big.mha", 2000, 1000)
    moving = _write(_noise(32, 32), tmp_path / "moving.mha")
    message = _refused(
        _register_argv(big, moving, tmp_path, "--max-image-voxels", "1000000"), tmp_path, capfd
    )
    assert message == (
        f"fixed image '{big}' has 2000000 voxels (2000x1000), more than the limit of "
        "1000000 (--max-image-voxels raises it)"
    )


def test_default_limits_refuse_a_20000_squared_image_and_admit_a_clinical_ct(tmp_path):
    huge = _header_only(tmp_path / "huge.mha", 20000, 20000)
    with pytest.raises(InputError, match=r"has 400000000 voxels \(20000x20000\), more than"):
        as_image_grid(huge, name="fixed image")
    ct = ImageLimits()
    ct.check("a CT", (512, 512, 1000), bytes_per_voxel=2)
    ct.check("a CT as float64", (512, 512, 1000), bytes_per_voxel=8)


def test_bytes_count_every_component(tmp_path, capfd):
    grey_rgb = np.repeat((_noise(10, 10)[..., None] * 255).astype(np.uint8), 3, axis=2)
    colour = _write(grey_rgb, tmp_path / "grey.png", isVector=True)
    moving = _write(_noise(32, 32), tmp_path / "moving.mha")
    message = _refused(
        _register_argv(colour, moving, tmp_path, "--max-image-bytes", "299"), tmp_path, capfd
    )
    assert message == (
        f"fixed image '{colour}' holds 300 bytes of pixels (10x10 voxels of 3 bytes), more "
        "than the limit of 299 (--max-image-bytes raises it)"
    )
    with pytest.warns(UserWarning, match="read as grey levels"):
        assert as_image_grid(colour, limits=ImageLimits(max_bytes=300)).geometry.size == (10, 10)


def test_peer_mode_checks_the_moving_image_before_connecting(tmp_path, capfd):
    big = _header_only(tmp_path / "big.mha", 300, 200)
    argv = [
        "register",
        "--peer",
        "127.0.0.1:9",  # nothing listens: a connection would end with exit 3
        "--moving",
        str(big),
        "--max-image-voxels",
        "50000",
        "--output-transform",
        str(tmp_path / "out.tfm"),
    ]
    message = _refused(argv, tmp_path, capfd)
    assert message.startswith(f"moving image '{big}' has 60000 voxels (300x200), more than")


def test_serve_checks_the_fixed_image(tmp_path, capfd):
    from ppir_itk.protocol.tls import init_pki

    init_pki(tmp_path / "pki")
    big = _header_only(tmp_path / "big.mha", 300, 200)
    argv = ["serve", "--fixed", str(big), "--listen", "127.0.0.1:0", "--tls-dir"]
    message = _refused(
        [*argv, str(tmp_path / "pki" / "fixed-party"), "--max-image-bytes", "100000"],
        tmp_path,
        capfd,
    )
    assert message == (
        f"fixed image '{big}' holds 480000 bytes of pixels (300x200 voxels of 8 bytes), more "
        "than the limit of 100000 (--max-image-bytes raises it)"
    )


def test_images_at_the_limits_register_through_a_local_fixed_party(tmp_path, capfd):
    """The local fixed party (another process) is given the limits its image passed."""
    fixed = _write(_noise(32, 32), tmp_path / "fixed.mha")
    moving = _write(_noise(32, 32, seed=1), tmp_path / "moving.mha")
    limits = ("--max-image-voxels", "1024", "--max-image-bytes", "4096", "--iterations", "2")
    assert main(_register_argv(fixed, moving, tmp_path, *limits)) == 0, capfd.readouterr().err
    assert (tmp_path / "out.tfm").is_file()


def test_in_memory_images_are_checked_by_their_voxels():
    image = sitk.GetImageFromArray(_noise(30, 40))
    with pytest.raises(InputError, match=r"^moving image has 1200 voxels \(40x30\), more"):
        as_image_grid(image, name="moving image", limits=ImageLimits(max_voxels=1000))
    assert as_image_grid(image, limits=ImageLimits(max_voxels=1200)).geometry.size == (40, 30)
    # An ImageGrid was read under a limit already, or built from pixels its caller holds.
    grid = ImageGrid(_noise(30, 40))
    assert as_image_grid(grid, limits=ImageLimits(max_voxels=1)) is grid
    with pytest.raises(InputError, match="must be positive"):
        ImageLimits(max_voxels=0)


def test_itk_images_are_checked_by_their_voxels():
    import itk

    image = itk.image_from_array(_noise(30, 40))
    with pytest.raises(InputError, match=r"^fixed image has 1200 voxels \(40x30\), more"):
        as_image_grid(image, name="fixed image", limits=ImageLimits(max_voxels=1199))
    assert as_image_grid(image, limits=ImageLimits(max_voxels=1200)).geometry.size == (40, 30)


def test_limits_must_be_positive(tmp_path, capfd):
    fixed = _write(_noise(32, 32), tmp_path / "fixed.mha")
    message = _refused(
        _register_argv(fixed, fixed, tmp_path, "--max-image-bytes", "0"), tmp_path, capfd
    )
    assert message == "--max-image-voxels and --max-image-bytes must be positive"


# ------------------------------------------------------------------------ DICOM series


@pytest.fixture()
def two_series(tmp_path):
    folder = tmp_path / "dicom"
    dicom_series(folder, SERIES[0], (5, 16, 12), "axial  head")
    dicom_series(folder, SERIES[1], (4, 10, 8), "scout")
    return folder


def test_a_folder_of_two_series_is_refused_with_their_uids(two_series, tmp_path, capfd):
    moving = _write(_noise(4, 16, 12), tmp_path / "moving.mha")
    message = _refused(_register_argv(two_series, moving, tmp_path), tmp_path, capfd)
    assert message == (
        f"fixed image '{two_series}': directory '{two_series}' holds 2 DICOM series "
        f"({SERIES[0]}: 12x16x5 'axial head'; {SERIES[1]}: 8x10x4 'scout'); "
        f"name one as '{two_series}#SERIES_UID'"
    )


def test_folder_hash_uid_reads_that_series(two_series):
    first = as_image_grid(f"{two_series}#{SERIES[0]}")
    second = as_image_grid(f"{two_series}#{SERIES[1]}")
    assert first.geometry.size == (12, 16, 5) and second.geometry.size == (8, 10, 4)
    assert second.geometry.spacing == pytest.approx((0.5, 0.5, 2.0))
    with pytest.raises(InputError, match=r"has 960 voxels \(12x16x5\)"):
        as_image_grid(f"{two_series}#{SERIES[0]}", limits=ImageLimits(max_voxels=959))


def test_a_series_the_folder_does_not_hold_is_refused(two_series):
    with pytest.raises(InputError) as refused:
        as_image_grid(f"{two_series}#1.2.3", name="fixed image")
    assert str(refused.value) == (
        f"fixed image: directory '{two_series}' holds no DICOM series '1.2.3' "
        f"(it holds {SERIES[0]}, {SERIES[1]})"
    )


def test_a_folder_of_one_series_needs_no_uid(tmp_path):
    dicom_series(tmp_path / "one", SERIES[0], (3, 16, 12), "axial")
    assert as_image_grid(tmp_path / "one").geometry.size == (12, 16, 3)


def test_a_series_uid_after_a_file_is_refused(tmp_path):
    fixed = _write(_noise(8, 8), tmp_path / "fixed.mha")
    with pytest.raises(InputError, match="is a file; only a DICOM directory takes '#SERIES_UID'"):
        as_image_grid(f"{fixed}#1.2.3", name="fixed image")


# --------------------------------------------------------------------- NIfTI scaling


def _nifti(path: Path, slope: float, inter: float, *, order: str = "<") -> Path:
    """A NIfTI-1 written by SimpleITK, its scl_slope and scl_inter (bytes 112, 116) set."""
    plain = path.with_name("plain.nii")
    sitk.WriteImage(sitk.GetImageFromArray(_noise(6, 7, 8)), str(plain))
    header = bytearray(plain.read_bytes())
    plain.unlink()
    if order == ">":  # the header's fields big-endian (its pixels do not matter here)
        header[:4] = struct.pack(">i", 348)
    header[112:120] = struct.pack(order + "ff", slope, inter)
    path.write_bytes(gzip.compress(bytes(header)) if path.suffix == ".gz" else header)
    return path


@pytest.mark.parametrize(
    ("name", "slope", "inter"),
    [("nan.nii", np.nan, 0.0), ("inf.nii.gz", 1.0, np.inf), ("minus_inf.nii", -np.inf, 0.0)],
)
def test_a_nifti_with_non_finite_scaling_is_refused(tmp_path, capfd, name, slope, inter):
    bad = _nifti(tmp_path / name, slope, inter)
    moving = _write(_noise(6, 7, 8), tmp_path / "moving.mha")
    message = _refused(_register_argv(bad, moving, tmp_path), tmp_path, capfd)
    assert message == (
        f"fixed image '{bad}': its NIfTI header's scaling is not finite (scl_slope {slope:g}, "
        f"scl_inter {inter:g}), a corrupt header ITK would read as unscaled; set scl_slope to "
        "0 (no scaling) or the scaling meant"
    )


def test_finite_nifti_scaling_is_read_as_itk_applies_it(tmp_path):
    unscaled = as_image_grid(_nifti(tmp_path / "zero.nii", 0.0, 0.0)).array
    scaled = as_image_grid(_nifti(tmp_path / "two.nii.gz", 2.0, 1.0)).array
    np.testing.assert_allclose(scaled, 2.0 * unscaled + 1.0, rtol=1e-6)


def test_nifti_scaling_is_read_in_either_byte_order_and_from_nifti_2(tmp_path):
    assert nifti_scaling(_nifti(tmp_path / "big_endian.nii", 3.0, np.nan, order=">"))[0] == 3.0
    nifti_2 = bytearray(540)
    nifti_2[:4] = struct.pack("<i", 540)
    nifti_2[4:12] = b"n+2\0\r\n\x1a\n"
    nifti_2[176:192] = struct.pack("<dd", np.inf, 5.0)
    (tmp_path / "two.nii").write_bytes(bytes(nifti_2))
    assert nifti_scaling(tmp_path / "two.nii") == (np.inf, 5.0)
    assert nifti_scaling(_write(_noise(8, 8), tmp_path / "not_nifti.mha")) is None


# ------------------------------------------------------------------- too small to register


def test_a_2x2_fixed_image_is_refused_as_too_small_not_as_not_overlapping(tmp_path, capfd):
    tiny = _write(_noise(2, 2), tmp_path / "tiny.mha")
    message = _refused(_register_argv(tiny, tiny, tmp_path), tmp_path, capfd)
    assert message == (
        f"fixed image '{tiny}' is 2x2 pixels, too small to register with shrink factor 4: its "
        "coarsest level would be 1x1 pixels and every axis needs at least 4 (so at least 16 "
        "pixels along every axis, or smaller shrink factors)"
    )


def test_a_thin_moving_image_is_refused(tmp_path, capfd):
    fixed = _write(_noise(32, 32), tmp_path / "fixed.mha")
    thin = _write(_noise(3, 32), tmp_path / "thin.mha")
    no_pyramid = ("--shrink-factors", "1", "--smoothing-sigmas", "0")
    message = _refused(_register_argv(fixed, thin, tmp_path, *no_pyramid), tmp_path, capfd)
    assert message == (
        f"moving image '{thin}' is 32x3 pixels, too small to register: every axis needs at "
        "least 4 pixels"
    )


def test_the_api_refuses_images_too_small_too():
    tiny, image = ImageGrid(_noise(2, 2)), ImageGrid(_noise(32, 32))
    for fixed, moving, refused in ((tiny, image, "fixed"), (image, tiny, "moving")):
        with pytest.raises(InputError, match=rf"^{refused} image is 2x2 pixels, too small"):
            register(fixed, moving, backend="clear", transport="in-process")


def test_the_least_size_follows_the_coarsest_shrink_factor():
    def geometry(*size: int) -> GridGeometry:
        return GridGeometry(
            size, (1.0,) * len(size), (0.0,) * len(size), tuple(np.eye(len(size)).ravel())
        )

    check_large_enough(geometry(16, 16, 16), name="fixed image", shrink_factor=4)
    check_large_enough(geometry(4, 4), name="moving image")
    with pytest.raises(InputError, match=r"16x15x16 pixels.* would be 4x3x4 pixels"):
        check_large_enough(geometry(16, 15, 16), name="fixed image", shrink_factor=4)
    with pytest.raises(InputError, match="at least 4 pixels"):
        check_large_enough(geometry(4, 3), name="moving image")
