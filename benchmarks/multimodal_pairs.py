"""Multi-modal pairs with a known affine, from the MNI152 templates in nilearn's wheel.

The fixed image is the ICBM 2009a symmetric T1 template; the moving image is the same
template's grey-matter probability map (bright cortex, dark white matter: not a monotonic
function of T1) resampled through the inverse of a known affine, as
:func:`ppir_itk.phantoms.moved_copy` does, so that registering it onto the T1 must find
that affine. Two pairs: an axial slice (2-D, 1 mm) and the volumes shrunk x2 (3-D, 2 mm).

nilearn is a benchmark download, not a dependency: ``pip install --no-deps
nilearn==0.14.1`` (the templates are data files of its wheel; nilearn is never imported).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppir_itk.image import ImageGrid
from ppir_itk.phantoms import moved_copy
from ppir_itk.transforms import LinearTransform, make_transform
from ppir_itk.wrapping.images import as_image_grid

TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
INSTALL = "pip install --no-deps nilearn==0.14.1"
# z = +8 mm: through the lateral ventricles, the basal ganglia and the cortex.
AXIAL_SLICE = 80


@dataclass(frozen=True)
class Pair:
    """A fixed image, a moving image and the transform that aligns them (fixed to moving
    points, ITK's convention)."""

    name: str
    fixed: ImageGrid
    moving: ImageGrid
    truth: LinearTransform


def template_path(tissue: str) -> Path:
    """The path of an MNI152 template (``t1``, ``gm``) inside the installed nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"the MNI152 pairs need nilearn's templates, and nilearn is not installed: {INSTALL}"
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / TEMPLATE.format(tissue)
    if not path.is_file():
        raise SystemExit(f"nilearn's MNI152 template {path} is missing: {INSTALL}")
    return path


def _truth(fixed: ImageGrid, degrees: list[float], scale: float, shift: list[float]):
    """An affine centred on the fixed image: rotation (about z, then y, then x) times an
    isotropic scale, then a shift (mm)."""
    angles = np.deg2rad(degrees)
    if fixed.dimension == 2:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        rotation = np.array([[c, -s], [s, c]])
    else:
        rotation = np.eye(3)
        for axis, angle in zip((2, 1, 0), angles, strict=True):
            c, s = np.cos(angle), np.sin(angle)
            plane = [k for k in range(3) if k != axis]
            turn = np.eye(3)
            turn[np.ix_(plane, plane)] = [[c, -s], [s, c]]
            rotation = turn @ rotation
    truth = make_transform("affine", fixed.dimension)
    truth.center = fixed.geometry.center()
    truth.parameters = np.concatenate([(scale * rotation).ravel(), shift])
    return truth


def _volume(tissue: str) -> ImageGrid:
    return as_image_grid(str(template_path(tissue)), name=f"MNI152 {tissue}")


def slice_pair() -> Pair:
    """T1 (fixed) and grey matter (moving, moved by 4 degrees, x1.05, (3, -2) mm) on the
    axial slice z = +8 mm, 197 x 233 pixels at 1 mm."""
    slices = []
    for tissue in ("t1", "gm"):
        volume = _volume(tissue)
        geometry = volume.geometry
        direction = np.asarray(geometry.direction).reshape(3, 3)[:2, :2].ravel()
        slices.append(
            ImageGrid(
                volume.array[AXIAL_SLICE].astype(np.float32),
                geometry.spacing[:2],
                geometry.origin[:2],
                tuple(direction),
            )
        )
    fixed, grey = slices
    truth = _truth(fixed, [4.0], 1.05, [3.0, -2.0])
    return Pair("MNI152 slice T1/GM (2-D, 1 mm)", fixed, moved_copy(grey, truth), truth)


def _shrunk(volume: ImageGrid) -> ImageGrid:
    """The volume at twice the spacing, each voxel the mean of a 2x2x2 block."""
    import SimpleITK as sitk

    from ppir_itk.wrapping.images import as_image_grid as grid_of
    from ppir_itk.wrapping.images import to_sitk

    shrunk = sitk.BinShrink(sitk.Cast(to_sitk(volume), sitk.sitkFloat32), [2, 2, 2])
    return grid_of(shrunk, check=False)


def volume_pair() -> Pair:
    """T1 (fixed) and grey matter (moving, moved by (3, -2, 4) degrees, x1.05,
    (3, -4, 2) mm), both shrunk to 2 mm: 98 x 116 x 94 voxels."""
    fixed = _shrunk(_volume("t1"))
    grey = _shrunk(_volume("gm"))
    truth = _truth(fixed, [3.0, -2.0, 4.0], 1.05, [3.0, -4.0, 2.0])
    return Pair("MNI152 T1/GM (3-D, 2 mm)", fixed, moved_copy(grey, truth), truth)
