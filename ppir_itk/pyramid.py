"""Multi-resolution schedule and the per-level images each party makes alone.

As in ITK's ``ImageRegistrationMethodv4``: at each level both images are
smoothed with a Gaussian of the level's sigma (physical units) and keep their
full resolution; the shrink factors make only the grid the metric sums over
(ITK's virtual domain: the shrink filter's output geometry), at whose points
the metric reads the smoothed fixed image by linear interpolation. Each party
computes its own level image; nothing here sees both.

Examples
--------
>>> schedule = LevelSchedule.from_lists([4, 2, 1], [2.0, 1.0, 0.0])
>>> [level.shrink_factor for level in schedule.levels]
[4, 2, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ppir_itk.errors import InputError
from ppir_itk.image import ImageGrid
from ppir_itk.wrapping.images import as_image_grid, to_sitk


@dataclass(frozen=True)
class Level:
    """One resolution level: integer shrink factor and Gaussian sigma (physical units)."""

    shrink_factor: int
    smoothing_sigma: float


@dataclass(frozen=True)
class LevelSchedule:
    """The public multi-resolution schedule, coarsest level first."""

    levels: tuple[Level, ...]

    @classmethod
    def from_lists(
        cls, shrink_factors: Sequence[int], smoothing_sigmas: Sequence[float]
    ) -> LevelSchedule:
        if len(shrink_factors) != len(smoothing_sigmas):
            raise InputError(
                f"shrink factors ({len(shrink_factors)} values) and smoothing sigmas "
                f"({len(smoothing_sigmas)} values) must have one value per level each"
            )
        if not shrink_factors:
            raise InputError("the level schedule is empty: give at least one shrink factor")
        levels = []
        for factor, sigma in zip(shrink_factors, smoothing_sigmas, strict=True):
            if int(factor) != factor or factor < 1:
                raise InputError(f"shrink factor {factor} must be a whole number of at least 1")
            if not np.isfinite(sigma) or sigma < 0:
                raise InputError(f"smoothing sigma {sigma:g} must be finite and not negative")
            levels.append(Level(int(factor), float(sigma)))
        return cls(tuple(levels))

    def __len__(self) -> int:
        return len(self.levels)


def smooth(image: ImageGrid, sigma: float) -> ImageGrid:
    """Gaussian smoothing, sigma in physical units, as ITK's registration method does it.

    ITK's ``ImageRegistrationMethodv4`` uses the recursive Gaussian; it needs four
    pixels along every axis, so thinner images fall back to the discrete Gaussian.
    """
    if sigma <= 0:
        return image
    source = sitk.Cast(to_sitk(image), sitk.sitkFloat64)
    if min(image.geometry.size) >= 4:
        smoothed = sitk.SmoothingRecursiveGaussian(source, float(sigma))
    else:
        smoothed = sitk.DiscreteGaussian(source, variance=float(sigma) ** 2, useImageSpacing=True)
    return as_image_grid(smoothed, check=False)


def fixed_level_image(image: ImageGrid, level: Level) -> ImageGrid:
    """The fixed party's image on a level's grid (see :func:`fixed_level_images`)."""
    return fixed_level_images(image, level)[1]


def fixed_level_images(
    image: ImageGrid, level: Level, initial: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[ImageGrid, ImageGrid]:
    """The fixed image at a level, smoothed at full resolution (what ITK's method hands its
    metric: Mattes takes its intensity range there), and the values ITK's metric reads on
    the level's grid: the smoothed image linearly interpolated at the grid's points.

    The grid is ITK's shrink filter's output geometry (size ``floor(size / f)``, spacing
    ``x f``, centred on the image's centre), often half-way between pixels; the filter's
    own pixels (one input pixel kept per block) are not what ITK's metric sees there, so
    only its geometry is used. ``initial``: ITK's fixed initial transform ``x -> A x + b``
    as ``(A, b)``: the grid stays the fixed image's, its values are read at ``A x + b``
    (0 outside the image; :func:`inside_buffer` says where).
    """
    smoothed = smooth(image, level.smoothing_sigma)
    if level.shrink_factor == 1 and initial is None:
        return smoothed, smoothed
    source = to_sitk(smoothed)
    factors = [min(level.shrink_factor, size) for size in smoothed.geometry.size]
    grid = sitk.Shrink(source, factors) if level.shrink_factor > 1 else source
    transform = sitk.Transform()
    if initial is not None:
        transform = sitk.AffineTransform(
            np.asarray(initial[0]).ravel().tolist(), np.asarray(initial[1]).tolist()
        )
    on_grid = sitk.Resample(source, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return smoothed, as_image_grid(on_grid, check=False)


def inside_buffer(image: ImageGrid, physical: np.ndarray) -> np.ndarray:
    """1 where each physical point (n, d) is where ITK's linear interpolator reads the image
    (continuous index in ``[-0.5, size - 0.5)`` on every axis: its ``IsInsideBuffer``)."""
    geometry = image.geometry
    index = (np.asarray(physical, dtype=np.float64) - geometry.origin_array) @ (
        geometry.physical_to_index.T
    )
    upper = geometry.size_array - 0.5
    return np.all((index >= -0.5) & (index < upper), axis=1).astype(np.uint8)


def moving_level_image(image: ImageGrid, level: Level) -> ImageGrid:
    """The moving party's image at a level: smoothed, full resolution."""
    return smooth(image, level.smoothing_sigma)
