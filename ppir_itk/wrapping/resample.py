"""Resampling a moving image through a transform onto a grid, with ITK (SimpleITK).

Used by the registration's result (the warped output), the evaluation's
intensity error and the phantoms' moved copies.
"""

from __future__ import annotations

import SimpleITK as sitk

from ppir_itk.bspline import BSplineTransform
from ppir_itk.image import GridGeometry, ImageGrid
from ppir_itk.transforms import LinearTransform
from ppir_itk.wrapping import transforms as transform_io
from ppir_itk.wrapping.images import as_image_grid, to_sitk

__all__ = ["resample"]


def resample(
    moving: ImageGrid,
    transform: LinearTransform | BSplineTransform,
    geometry: GridGeometry,
    outside: float = 0.0,
) -> ImageGrid:
    """Resample ``moving`` through ``transform`` onto the grid ``geometry`` with ITK
    (linear; ``outside`` where a point maps outside the moving image)."""
    reference = sitk.Image([int(s) for s in geometry.size], sitk.sitkFloat64)
    reference.SetSpacing(geometry.spacing)
    reference.SetOrigin(geometry.origin)
    reference.SetDirection(geometry.direction)
    warped = sitk.Resample(
        to_sitk(moving),
        reference,
        transform_io.to_sitk(transform),
        sitk.sitkLinear,
        outside,
        sitk.sitkFloat64,
    )
    return as_image_grid(warped, check=False)
