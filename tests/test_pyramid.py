"""A level's grid and fixed values against SimpleITK's own multi-resolution metric."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import ppir_itk
from ppir_itk.image import ImageGrid
from ppir_itk.phantoms import head_phantom
from ppir_itk.pyramid import Level, LevelSchedule
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.images import to_sitk

TILTED = np.array([[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]])


def _pair() -> tuple[ImageGrid, ImageGrid]:
    """A tilted, anisotropic fixed image whose sizes put every level's grid points (2 and 3)
    half-way between pixels along one axis; a moving image on another grid."""
    fixed = head_phantom((37, 42))
    fixed = ImageGrid(fixed.array, spacing=(1.1, 0.9), origin=(2.0, -3.0), direction=TILTED)
    moving = head_phantom((40, 44))
    moving = ImageGrid(moving.array, spacing=(1.0, 1.05), origin=(-1.0, 0.5))
    return fixed, moving


def _simpleitk_value(fixed: ImageGrid, moving: ImageGrid, level: Level) -> float:
    """SimpleITK's mean squares on its one level at identity: the value its first iteration
    reports (``MetricEvaluate`` does not shrink or smooth), on float64 images."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([level.shrink_factor])
    method.SetSmoothingSigmasPerLevel([level.smoothing_sigma])
    method.SetInitialTransform(sitk.AffineTransform(2))
    method.SetOptimizerAsGradientDescent(1e-12, 1, estimateLearningRate=method.Never)
    values: list[float] = []
    method.AddCommand(sitk.sitkIterationEvent, lambda: values.append(method.GetMetricValue()))
    method.Execute(
        sitk.Cast(to_sitk(fixed), sitk.sitkFloat64), sitk.Cast(to_sitk(moving), sitk.sitkFloat64)
    )
    return values[0]


@pytest.mark.parametrize(
    "level", [Level(2, 0.0), Level(2, 1.0), Level(3, 0.0), Level(3, 1.5)], ids=str
)
def test_level_mean_squares_equals_simpleitk(level):
    fixed, moving = _pair()
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(
        "clear", session=ppir_itk.in_process_session(fixed)
    )
    metric.SetMovingImage(moving)
    metric.SetTransform(make_transform("affine", 2))
    schedule = LevelSchedule.from_lists([level.shrink_factor], [level.smoothing_sigma])
    metric.moving_party.start(schedule, ppir_itk.NoSampling())
    points = metric.initialize_level(0, level, ppir_itk.NoSampling())

    # ITK's virtual domain: whole blocks, centred on the image's centre (ShrinkImageFilter)
    f, size = level.shrink_factor, np.array(fixed.geometry.size)
    shrunk_size = size // f
    first_point = (size - 1) / 2 - f * (shrunk_size - 1) / 2  # in the fixed image's indices
    assert points.geometry.size == tuple(shrunk_size)
    np.testing.assert_allclose(points.geometry.spacing, np.multiply(fixed.geometry.spacing, f))
    np.testing.assert_allclose(
        points.geometry.origin_array,
        to_sitk(fixed).TransformContinuousIndexToPhysicalPoint(first_point.tolist()),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        metric.evaluate().value, _simpleitk_value(fixed, moving, level), rtol=1e-9
    )
