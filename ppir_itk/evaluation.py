"""Comparing transforms the way the paper's tables do: displacement over the fixed grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ppir_itk.bspline import BSplineTransform
from ppir_itk.image import GridGeometry, ImageGrid
from ppir_itk.options import RegistrationOptions
from ppir_itk.transforms import LinearTransform
from ppir_itk.wrapping.resample import resample

_CHUNK = 1 << 18


def displacement_rmse(
    first: LinearTransform | BSplineTransform,
    second: LinearTransform | BSplineTransform,
    geometry: GridGeometry,
) -> float:
    """Root mean square of ``|first(x) - second(x)|`` over every point x of the grid (mm).

    Examples
    --------
    >>> from ppir_itk.transforms import TranslationTransform
    >>> grid = GridGeometry((4, 4), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    >>> moved = TranslationTransform(2, parameters=[3.0, 4.0])
    >>> displacement_rmse(moved, TranslationTransform(2), grid)
    5.0
    """
    total = 0.0
    n = geometry.number_of_points
    for start in range(0, n, _CHUNK):
        flat = np.arange(start, min(start + _CHUNK, n))
        points = geometry.physical_points(geometry.flat_to_index(flat))
        difference = first.transform_points(points) - second.transform_points(points)
        total += float(np.sum(difference * difference))
    return float(np.sqrt(total / n))


def intensity_error(fixed: ImageGrid, moving: ImageGrid, transform: Any) -> float:
    """Mean of ``(F(x) - M(T(x)))^2`` over the fixed-grid points x that T maps inside M.

    The paper's "intensity error" (final SSD per pixel), measured on every
    point of the fixed grid whatever sampling the registration used.

    Examples
    --------
    >>> from ppir_itk.transforms import TranslationTransform
    >>> image = ImageGrid(np.arange(16.0).reshape(4, 4))
    >>> intensity_error(image, image, TranslationTransform(2))
    0.0
    >>> intensity_error(image, image, TranslationTransform(2, parameters=[1.0, 0.0]))
    1.0
    """
    warped = resample(moving, transform, fixed.geometry, outside=np.nan).array
    inside = np.isfinite(warped)
    if not inside.any():
        return float("nan")
    difference = fixed.array[inside].astype(np.float64) - warped[inside]
    return float(np.mean(difference * difference))


def sitk_reference_registration(
    fixed: Any,
    moving: Any,
    initial: LinearTransform,
    *,
    shrink_factors: Sequence[int] = RegistrationOptions.shrink_factors,
    smoothing_sigmas: Sequence[float] = RegistrationOptions.smoothing_sigmas,
    iterations: int = 500,
    metric: Literal["meansquares", "correlation", "mattes"] = "meansquares",
    histogram_bins: int = 32,
    sampling_fraction: float | None = None,
    seed: int = 1,
    learning_rate: float = 1.0,
    minimum_step: float = 1e-6,
    relaxation_factor: float = 0.8,
) -> LinearTransform | BSplineTransform:
    """SimpleITK's own clear registration of the same pair (the reference).

    Regular-step gradient descent with scales from physical shift, linear
    interpolation, the same level schedule (by default the registration's own):
    what a SimpleITK user would write. ``metric`` is SimpleITK's mean squares,
    correlation or Mattes mutual information (``histogram_bins`` bins);
    ``sampling_fraction`` None takes every fixed-grid point, a fraction takes that
    share of them at random (SimpleITK's RANDOM strategy, drawn from ``seed``; SimpleITK
    takes 0 as a seed from the wall clock, a different draw each run).
    Used by the tests and benchmarks to check the Clear backend against ITK.
    """
    import SimpleITK as sitk

    from ppir_itk.wrapping.images import as_image_grid, to_sitk
    from ppir_itk.wrapping.transforms import from_sitk
    from ppir_itk.wrapping.transforms import to_sitk as transform_to_sitk

    method = sitk.ImageRegistrationMethod()
    if metric == "meansquares":
        method.SetMetricAsMeanSquares()
    elif metric == "correlation":
        method.SetMetricAsCorrelation()
    elif metric == "mattes":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=histogram_bins)
    else:
        raise ValueError(f"unknown metric '{metric}': choose meansquares, correlation or mattes")
    if sampling_fraction is None:
        method.SetMetricSamplingStrategy(method.NONE)
    else:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(sampling_fraction, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=minimum_step,
        numberOfIterations=iterations,
        relaxationFactor=relaxation_factor,
        gradientMagnitudeTolerance=1e-12,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform_to_sitk(initial), inPlace=False)
    images = [
        sitk.Cast(to_sitk(as_image_grid(image, check=False)), sitk.sitkFloat64)
        for image in (fixed, moving)
    ]
    return from_sitk(method.Execute(*images))
