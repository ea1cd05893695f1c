"""ITK and SimpleITK images in and out of :class:`ppir_itk.image.ImageGrid`.

Everything a user may pass as an image goes through :func:`as_image_grid`:
an ``itk.Image``, a ``SimpleITK.Image``, a path to any format ITK reads
(NIfTI, MHA/MHD, NRRD, PNG, a DICOM series directory, ...) or an
:class:`~ppir_itk.image.ImageGrid`. Bad images are refused with one sentence
that names the image (:class:`~ppir_itk.errors.InputError`).

A file's size is checked against :class:`ImageLimits` from its header, before
a pixel is read. A directory holding several DICOM series is refused unless
one is named as ``FOLDER#SERIES_UID``. A NIfTI header whose scaling
(``scl_slope``, ``scl_inter``) is NaN or infinite is refused: ITK would read
the file as unscaled.

Examples
--------
>>> import SimpleITK as sitk
>>> grid = as_image_grid(sitk.Image(8, 6, sitk.sitkFloat32) + 1.0, name="fixed", check=False)
>>> grid.geometry.size
(8, 6)
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ppir_itk.errors import InputError
from ppir_itk.image import ImageGrid

ImageLike = Any  # itk.Image | SimpleITK.Image | str | os.PathLike | ImageGrid


# They admit a clinical CT of 512 x 512 x 1024 voxels (2**28), even stored as float64
# (2 GiB); ``ppir serve`` and ``ppir register`` take --max-image-voxels/--max-image-bytes.
DEFAULT_MAX_IMAGE_VOXELS = 2**28
DEFAULT_MAX_IMAGE_BYTES = 2**31


class GreyLevelConversionWarning(UserWarning):
    """A palette or RGB image whose channels are equal was read as grey levels."""


@dataclass(frozen=True)
class ImageLimits:
    """The largest image accepted: its voxels, and the bytes of its pixels as ITK reads
    them (every component counted). A file is checked from its header, before its
    pixels are read; an image in memory by its voxels."""

    max_voxels: int = DEFAULT_MAX_IMAGE_VOXELS
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def __post_init__(self) -> None:
        if self.max_voxels < 1 or self.max_bytes < 1:
            raise InputError(
                f"the image limits ({self.max_voxels} voxels, {self.max_bytes} bytes) "
                "must be positive"
            )

    def check(self, name: str, size: Sequence[int], bytes_per_voxel: int | None = None) -> None:
        """Refuse an image of ``size`` (ITK order) beyond the limits, naming it."""
        voxels = math.prod(size)
        shown = "x".join(str(s) for s in size)
        if voxels > self.max_voxels:
            raise InputError(
                f"{name} has {voxels} voxels ({shown}), more than the limit of "
                f"{self.max_voxels} (--max-image-voxels raises it)"
            )
        if bytes_per_voxel is not None and voxels * bytes_per_voxel > self.max_bytes:
            raise InputError(
                f"{name} holds {voxels * bytes_per_voxel} bytes of pixels ({shown} voxels of "
                f"{bytes_per_voxel} byte{'s' if bytes_per_voxel > 1 else ''}), more than the "
                f"limit of {self.max_bytes} (--max-image-bytes raises it)"
            )


DEFAULT_IMAGE_LIMITS = ImageLimits()


def as_image_grid(
    image: ImageLike,
    *,
    name: str = "image",
    check: bool = True,
    limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
) -> ImageGrid:
    """Convert anything image-like to an :class:`ImageGrid`.

    Parameters
    ----------
    image : itk.Image, SimpleITK.Image, path or ImageGrid
        The image. A palette or RGB(A) image whose colour channels are all equal
        is read as grey levels (with a :class:`GreyLevelConversionWarning`);
        a true colour or vector image is refused.
        A path is a file, a DICOM series directory, or ``FOLDER#SERIES_UID``
        for one series of a directory that holds several.
    name : str
        How error messages name this input (e.g. ``"fixed image 'a.nii'"``).
    check : bool
        Refuse NaN or infinite pixels and empty or constant images, and an
        itk or SimpleITK image of more than ``limits.max_voxels`` voxels.
    limits : ImageLimits
        A file beyond them is refused from its header, whatever ``check``. An
        :class:`~ppir_itk.image.ImageGrid` passes as it is: it was read under a
        limit already, or built from an array its caller holds.
    """
    if isinstance(image, ImageGrid):
        grid = image
    elif isinstance(image, (str, os.PathLike)):
        grid = _from_sitk(read_sitk_image(image, name=name, limits=limits), name=name)
    elif isinstance(image, sitk.Image):
        if check:
            limits.check(name, image.GetSize())
        grid = _from_sitk(image, name=name)
    elif type(image).__module__.startswith("itk"):
        if check and hasattr(image, "GetLargestPossibleRegion"):
            limits.check(name, tuple(image.GetLargestPossibleRegion().GetSize()))
        grid = _from_itk(image, name=name)
    else:
        raise InputError(
            f"{name} must be an itk.Image, a SimpleITK.Image or a path, not {type(image).__name__}"
        )
    if check:
        check_pixels(grid, name=name)
    return grid


def read_sitk_image(
    path: str | os.PathLike, *, name: str = "image", limits: ImageLimits = DEFAULT_IMAGE_LIMITS
) -> sitk.Image:
    """Read a file, a DICOM series directory or ``FOLDER#SERIES_UID`` with ITK's readers,
    refusing it from its header (before its pixels are read) if it is beyond ``limits``."""
    path, series = _series_path(path, name=name)
    if not path.exists():
        raise InputError(f"{name}: file '{path}' does not exist")
    reader: Any
    if path.is_dir():
        files = _series_files(path, series, name=name)
        header = _header(files[0], name=name)
        size = header.GetSize()
        if len(files) > 1:  # one slice a file: the series' depth is its number of files
            size = (*size[:2], math.prod(size[2:]) * len(files))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
    else:
        header = _header(str(path), name=name)
        size = header.GetSize()
        _check_nifti_scaling(path, name=name)
        reader = header
    limits.check(name, size, _bytes_per_voxel(header))
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise _unreadable(name, path, error) from None


# A series UID is digits and dots (DICOM PS3.5 9.1); '#' is in none.
_SERIES_SUFFIX = re.compile(r"^(?P<folder>.+)#(?P<uid>[0-9.]+)$")


def _series_path(path: str | os.PathLike, *, name: str) -> tuple[Path, str | None]:
    """The path, and the series UID of a ``FOLDER#SERIES_UID`` (a path that exists as
    given is that path)."""
    text = os.fspath(path)
    named = _SERIES_SUFFIX.match(text)
    if named is None or os.path.exists(text) or not os.path.exists(named["folder"]):
        return Path(text), None
    folder = Path(named["folder"])
    if not folder.is_dir():
        raise InputError(
            f"{name}: '{folder}' is a file; only a DICOM directory takes '#SERIES_UID'"
        )
    return folder, named["uid"]


def _quietly(call: Any, *arguments: Any) -> Any:
    """A GDCM call without GDCM's own warnings (e.g. "No Series") on stderr."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return call(*arguments)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _series_files(folder: Path, series: str | None, *, name: str) -> tuple[str, ...]:
    """The files of the directory's one DICOM series, or of the series named."""
    uids = _quietly(sitk.ImageSeriesReader.GetGDCMSeriesIDs, str(folder))
    if not uids:
        raise InputError(f"{name}: directory '{folder}' holds no DICOM series")
    if series is None and len(uids) > 1:
        listing = "; ".join(_describe_series(folder, uid) for uid in uids)
        raise InputError(
            f"{name}: directory '{folder}' holds {len(uids)} DICOM series ({listing}); "
            f"name one as '{folder}#SERIES_UID'"
        )
    if series is not None and series not in uids:
        raise InputError(
            f"{name}: directory '{folder}' holds no DICOM series '{series}' "
            f"(it holds {', '.join(uids)})"
        )
    chosen = series if series is not None else uids[0]
    return tuple(_quietly(sitk.ImageSeriesReader.GetGDCMSeriesFileNames, str(folder), chosen))


def _describe_series(folder: Path, uid: str) -> str:
    """``UID: WxHxN 'description'``, from the series' first file's header."""
    files = _quietly(sitk.ImageSeriesReader.GetGDCMSeriesFileNames, str(folder), uid)
    try:
        reader = _header(files[0], name=uid)
    except InputError:
        return f"{uid}: {len(files)} files"
    width, height = reader.GetSize()[:2]
    description = ""
    if reader.HasMetaDataKey("0008|103e"):  # Series Description
        words = " ".join(reader.GetMetaData("0008|103e").split())
        description = f" '{words}'" if words else ""
    return f"{uid}: {width}x{height}x{len(files)}{description}"


def _header(file: str, *, name: str) -> sitk.ImageFileReader:
    """A reader of ``file`` that has read its header (size, pixel type), not its pixels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise _unreadable(name, Path(file), error) from None
    return reader


def _bytes_per_voxel(header: sitk.ImageFileReader) -> int:
    """Bytes of one voxel as ITK reads it, every component counted."""
    try:
        component = sitk.Image([1] * header.GetDimension(), header.GetPixelID())
        component_bytes = component.GetSizeOfPixelComponent()
    except RuntimeError:  # a pixel type SimpleITK cannot hold: its reader refuses it later
        component_bytes = 8
    return component_bytes * header.GetNumberOfComponents()


def _unreadable(name: str, path: Path, error: RuntimeError) -> InputError:
    dimension = re.search(r"unsupported image dimension of (\d+)", str(error))
    if dimension:
        return _wrong_dimension(name, int(dimension.group(1)))
    return InputError(f"{name}: cannot read '{path}': {itk_reason(str(error))}")


# NIfTI-1 (348-byte header) and NIfTI-2 (540): where the magic and the scaling are.
_NIFTI_LAYOUTS = (
    (348, slice(344, 348), (b"n+1\0", b"ni1\0"), "ff", 112),
    (540, slice(4, 8), (b"n+2\0", b"ni2\0"), "dd", 176),
)


def nifti_scaling(path: str | os.PathLike) -> tuple[float, float] | None:
    """``(scl_slope, scl_inter)`` as a NIfTI-1 or NIfTI-2 header holds them (either byte
    order, gzipped or not), or None for a file that is not NIfTI. ITK reads a NaN or
    infinite slope as no scaling, so it cannot tell these."""
    path = Path(path)
    if path.name.endswith((".img", ".img.gz")):  # a pair: the header is the .hdr beside it
        path = path.with_name(re.sub(r"\.img(\.gz)?$", ".hdr", path.name))
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as file:
            head = file.read(540)
    except (OSError, EOFError):  # missing or corrupt: ITK says what is wrong
        return None
    for order in "<>":
        for length, magic, magics, fields, offset in _NIFTI_LAYOUTS:
            if (
                len(head) >= length
                and struct.unpack(order + "i", head[:4])[0] == length
                and head[magic] in magics
            ):
                slope, inter = struct.unpack_from(order + fields, head, offset)
                return slope, inter
    return None


def _check_nifti_scaling(path: Path, *, name: str) -> None:
    scaling = nifti_scaling(path)
    if scaling is not None and not all(math.isfinite(value) for value in scaling):
        slope, inter = scaling
        raise InputError(
            f"{name}: its NIfTI header's scaling is not finite (scl_slope {slope:g}, "
            f"scl_inter {inter:g}), a corrupt header ITK would read as unscaled; "
            "set scl_slope to 0 (no scaling) or the scaling meant"
        )


def itk_reason(message: str) -> str:
    """What an ITK exception message says, in words: no source paths, addresses or line breaks."""
    lower = message.lower()
    if "orthonormal" in lower or "orthogonal" in lower:
        return "its direction cosines are not orthonormal (ITK refuses such a NIfTI header)"
    if "unable to determine imageio reader" in lower:
        return "ITK knows no image format for it (an unsupported format, or not an image file)"
    reader = re.search(r"(\w+ImageIO)\(0x[0-9a-f]+\)", message)
    if reader:
        return f"ITK's {reader.group(1)} could not read it; the file may be corrupt or truncated"
    said = re.search(r"ERROR: (?:\w+\(0x[0-9a-f]+\): )?(.+)", message)
    if said:  # e.g. ITK refusing a zero spacing or a singular direction matrix
        reason = said.group(1).split(". ")[0].strip().rstrip(".")
        return reason[:1].lower() + reason[1:]
    return "ITK could not read it (unknown format or corrupt file)"


def _wrong_dimension(name: str, dimension: int) -> InputError:
    return InputError(f"{name} is {dimension}-D; only 2-D and 3-D images register")


def _from_sitk(image: sitk.Image, *, name: str) -> ImageGrid:
    dimension = image.GetDimension()
    if dimension not in (2, 3):
        raise _wrong_dimension(name, dimension)
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = _grey_from_channels(image, name=name)
    array = sitk.GetArrayFromImage(image)
    if np.iscomplexobj(array):
        raise InputError(f"{name} has complex pixels; registration needs real grey levels")
    try:
        return ImageGrid(
            array,
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
        )
    except ValueError as error:  # the geometry's own check: an empty axis, a bad spacing
        raise InputError(f"{name}: {error}") from None


def _from_itk(image: Any, *, name: str) -> ImageGrid:
    import itk

    try:
        array = itk.array_from_image(image)
        dimension = image.GetImageDimension()
        geometry = dict(
            spacing=tuple(image.GetSpacing()),
            origin=tuple(image.GetOrigin()),
            direction=itk.array_from_matrix(image.GetDirection()).ravel(),
        )
    except (AttributeError, TypeError) as error:
        raise InputError(f"{name} is not an itk.Image ({error})") from None
    if array.ndim != dimension:  # vector pixels: last axis is the component
        sitk_image = sitk.GetImageFromArray(array, isVector=True)
        array = sitk.GetArrayFromImage(_grey_from_channels(sitk_image, name=name))
    if dimension not in (2, 3):
        raise _wrong_dimension(name, dimension)
    return ImageGrid(array, **geometry)


def _grey_from_channels(image: sitk.Image, *, name: str) -> sitk.Image:
    """A palette/RGB(A) image with equal colour channels, as grey levels."""
    components = image.GetNumberOfComponentsPerPixel()
    channels = sitk.GetArrayFromImage(image)
    if components in (3, 4):
        rgb = channels[..., :3]
        alpha_ok = components == 3 or np.all(channels[..., 3] == channels[..., 3].flat[0])
        if (
            alpha_ok
            and np.array_equal(rgb[..., 0], rgb[..., 1])
            and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            warnings.warn(
                f"{name} is a palette/RGB image whose colours are all grey: read as grey levels",
                GreyLevelConversionWarning,
                stacklevel=3,
            )
            grey = sitk.GetImageFromArray(np.ascontiguousarray(rgb[..., 0]))
            grey.CopyInformation(sitk.VectorIndexSelectionCast(image, 0))
            return grey
        raise InputError(
            f"{name} is a colour image ({components} channels that differ); "
            "registration needs one grey level per pixel"
        )
    raise InputError(
        f"{name} has {components} components per pixel; registration needs one grey level per pixel"
    )


def check_pixels(grid: ImageGrid, *, name: str) -> None:
    """Refuse images a registration cannot use: non-finite, empty or constant."""
    array = grid.array
    if array.size == 0:
        raise InputError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{name} has {bad} NaN or infinite pixels")
    if np.ptp(array) == 0:
        raise InputError(
            f"{name} is constant (every pixel is {array.flat[0]:g}); it has nothing to align"
        )


def to_sitk(grid: ImageGrid) -> sitk.Image:
    image = sitk.GetImageFromArray(grid.array)
    geometry = grid.geometry
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def to_itk(grid: ImageGrid) -> Any:
    import itk

    image = itk.image_from_array(grid.array)
    geometry = grid.geometry
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(itk.matrix_from_array(geometry.direction_matrix.copy()))
    return image


def write_image(grid: ImageGrid, path: str | os.PathLike) -> None:
    """Write atomically: a temporary file with the same suffix, then rename."""
    write_atomically(lambda tmp: sitk.WriteImage(to_sitk(grid), tmp, useCompression=True), path)


def write_atomically(write: Any, path: str | os.PathLike) -> None:
    """Call ``write(temporary_path)`` then move the file into place.

    The temporary file sits in the destination directory and keeps the full
    suffix (``.nii.gz``, ``.tfm``, ...), since ITK picks its writer by suffix. A
    failed write leaves nothing behind.
    """
    path = Path(path)
    suffix = "".join(path.suffixes) or path.suffix
    if not path.parent.exists():
        raise InputError(f"output directory '{path.parent}' does not exist")
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private to its owner
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
