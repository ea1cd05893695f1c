"""ITK and SimpleITK images in and out of :class:`ppir_itk.image.ImageGrid`.

Everything a user may pass as an image goes through :func:`as_image_grid`:
an ``itk.Image``, a ``SimpleITK.Image``, a path to any format ITK reads
(NIfTI, MHA/MHD, NRRD, PNG, a DICOM series directory, ...) or an
:class:`~ppir_itk.image.ImageGrid`. Bad images are refused with one sentence
that names the image (:class:`~ppir_itk.errors.InputError`).

Examples
--------
>>> import SimpleITK as sitk
>>> grid = as_image_grid(sitk.Image(8, 6, sitk.sitkFloat32) + 1.0, name="fixed", check=False)
>>> grid.geometry.size
(8, 6)
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ppir_itk.errors import InputError
from ppir_itk.image import ImageGrid

ImageLike = Any  # itk.Image | SimpleITK.Image | str | os.PathLike | ImageGrid


class GreyLevelConversionWarning(UserWarning):
    """A palette or RGB image whose channels are equal was read as grey levels."""


def as_image_grid(image: ImageLike, *, name: str = "image", check: bool = True) -> ImageGrid:
    """Convert anything image-like to an :class:`ImageGrid`.

    Parameters
    ----------
    image : itk.Image, SimpleITK.Image, path or ImageGrid
        The image. A palette or RGB(A) image whose colour channels are all equal
        is read as grey levels (with a :class:`GreyLevelConversionWarning`);
        a true colour or vector image is refused.
    name : str
        How error messages name this input (e.g. ``"fixed image 'a.nii'"``).
    check : bool
        Refuse NaN or infinite pixels and empty or constant images.
    """
    if isinstance(image, ImageGrid):
        grid = image
    elif isinstance(image, (str, os.PathLike)):
        grid = _from_sitk(read_sitk_image(image, name=name), name=name)
    elif isinstance(image, sitk.Image):
        grid = _from_sitk(image, name=name)
    elif type(image).__module__.startswith("itk"):
        grid = _from_itk(image, name=name)
    else:
        raise InputError(
            f"{name} must be an itk.Image, a SimpleITK.Image or a path, not {type(image).__name__}"
        )
    if check:
        check_pixels(grid, name=name)
    return grid


def read_sitk_image(path: str | os.PathLike, *, name: str = "image") -> sitk.Image:
    """Read a file (or a DICOM series directory) with ITK's readers."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{name}: file '{path}' does not exist")
    if path.is_dir():
        warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM's own "No Series" warning
        try:
            series = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
        if not series:
            raise InputError(f"{name}: directory '{path}' holds no DICOM series")
        reader: Any = sitk.ImageSeriesReader()
        reader.SetFileNames(series)
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
    try:
        return reader.Execute()
    except RuntimeError as error:
        dimension = re.search(r"unsupported image dimension of (\d+)", str(error))
        if dimension:
            raise _wrong_dimension(name, int(dimension.group(1))) from None
        raise InputError(f"{name}: cannot read '{path}': {itk_reason(str(error))}") from None


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
        if alpha_ok and np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(
            rgb[..., 0], rgb[..., 2]
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
