"""The metric against ITK's own mean squares metric and a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import reference

import ppir_itk
from ppir_itk.image import ImageGrid
from ppir_itk.phantoms import head_phantom
from ppir_itk.pyramid import Level, LevelSchedule
from ppir_itk.transforms import make_transform

ROTATION_2D = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])


def _scene(dimension: int):
    """Fixed and moving grids that overlap only partly, rotated moving directions."""
    if dimension == 2:
        fixed = head_phantom((64, 60), spacing=(1.1, 0.9))
        moving = head_phantom((70, 66))
        moving = ImageGrid(
            moving.array, spacing=(1.0, 1.05), origin=(-4.0, 3.0), direction=ROTATION_2D
        )
    else:
        fixed = head_phantom((16, 18, 17), spacing=(1.1, 0.9, 1.2))
        moving = head_phantom((18, 20, 19))
        moving = ImageGrid(moving.array, spacing=(1.0, 1.05, 0.95), origin=(-2.0, 1.0, 0.5))
    transform = make_transform("affine", dimension)
    transform.center = fixed.geometry.center()
    rng = np.random.default_rng(dimension)
    matrix = np.eye(dimension) + 0.03 * rng.standard_normal((dimension, dimension))
    transform.parameters = np.concatenate([matrix.ravel(), rng.uniform(-1, 1, dimension)])
    return fixed, moving, transform


def _metric(fixed, moving, transform):
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(
        "clear", session=ppir_itk.in_process_session(fixed)
    )
    metric.SetMovingImage(moving)
    metric.SetTransform(transform)
    metric.moving_party.start(LevelSchedule.from_lists([1], [0.0]), ppir_itk.NoSampling())
    metric.initialize_level(0, Level(1, 0.0), ppir_itk.NoSampling())
    return metric


@pytest.mark.parametrize("dimension", [2, 3])
def test_value_equals_itk_mean_squares(dimension):
    import itk

    from ppir_itk.wrapping.images import to_itk
    from ppir_itk.wrapping.transforms import to_itk as transform_to_itk

    fixed, moving, transform = _scene(dimension)
    image_type = itk.Image[itk.F, dimension]
    itk_metric = itk.MeanSquaresImageToImageMetricv4[image_type, image_type].New()
    itk_metric.SetFixedImage(to_itk(fixed))
    itk_metric.SetMovingImage(to_itk(moving))
    itk_metric.SetMovingTransform(transform_to_itk(transform))
    itk_metric.Initialize()
    itk_value = itk_metric.GetValue()
    ours = _metric(fixed, moving, transform).evaluate()
    assert ours.number_of_valid_points < fixed.geometry.number_of_points  # partial overlap
    assert ours.number_of_valid_points == itk_metric.GetNumberOfValidPoints()
    np.testing.assert_allclose(ours.value, itk_value, rtol=1e-7)


@pytest.mark.parametrize("dimension", [2, 3])
def test_derivative_and_hessian_equal_the_numpy_reference(dimension):
    fixed, moving, transform = _scene(dimension)
    metric = _metric(fixed, moving, transform)
    evaluation = metric.evaluate()

    geometry, moving_geometry = fixed.geometry, moving.geometry
    n = geometry.number_of_points
    matrix, offset = transform.matrix_offset()
    values, gradient, valid, n_valid = reference.warp(
        moving.array,
        reference.central_gradient(moving.array),
        moving_geometry.physical_to_index,
        moving_geometry.origin_array,
        geometry.size_array,
        geometry.index_to_physical,
        geometry.origin_array,
        matrix,
        offset,
        None,
        0,
        n,
    )
    points = reference.physical_points(
        geometry.size_array, geometry.index_to_physical, geometry.origin_array, None, 0, n
    )
    # S = g . dW/dtheta with ITK's own parameter Jacobian, point by point.
    jacobian = _itk_jacobians(transform, points)
    steepest = np.einsum("nk,nkp->np", gradient, jacobian)
    fixed_values = fixed.array.ravel().astype(np.float64)
    residual = (values - fixed_values) * valid
    assert evaluation.number_of_valid_points == n_valid
    np.testing.assert_allclose(evaluation.value, residual @ residual / n_valid, rtol=1e-10)
    np.testing.assert_allclose(
        evaluation.gradient,
        2 * steepest.T @ residual / n_valid,
        rtol=1e-9,
        atol=1e-9 * np.abs(evaluation.gradient).max(),
    )
    np.testing.assert_allclose(
        evaluation.hessian,
        2 * steepest.T @ steepest / n_valid,
        rtol=1e-9,
        atol=1e-12 * np.abs(evaluation.hessian).max(),
    )
    value, derivative = metric.GetValueAndDerivative()
    assert value == evaluation.value
    np.testing.assert_array_equal(derivative, -evaluation.gradient)  # ITK v4's sign


def _itk_jacobians(transform, points):
    import itk

    from ppir_itk.wrapping.transforms import to_itk

    itk_transform = to_itk(transform)
    d, p = transform.dimension, transform.number_of_parameters
    out = np.empty((len(points), d, p))
    jacobian = itk.Array2D[itk.D](d, p)
    for i, point in enumerate(points):
        itk_transform.ComputeJacobianWithRespectToParameters([float(v) for v in point], jacobian)
        out[i] = itk.array_from_vnl_matrix(jacobian)
    return out


def test_identical_images_give_zero_value_and_gradient():
    fixed = head_phantom((40, 36))
    metric = _metric(fixed, fixed, make_transform("rigid", 2))
    evaluation = metric.evaluate()
    assert evaluation.value == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(evaluation.gradient, 0.0, atol=1e-9)


def test_a_kept_jacobian_follows_the_centre_and_the_level():
    """An affine's Jacobian is kept over a level (it does not depend on the parameters),
    but not past a new centre or a new level's points."""
    fixed, moving, transform = _scene(2)
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(
        "clear", session=ppir_itk.in_process_session(fixed)
    )
    metric.SetMovingImage(moving)
    metric.SetTransform(transform)
    metric.moving_party.start(LevelSchedule.from_lists([2, 1], [0.0, 0.0]), ppir_itk.NoSampling())

    def fresh():
        reference = metric._require_level().points.reference
        coefficients = transform.jacobian_in_affine_basis(reference)
        return coefficients.reshape(coefficients.shape[0], -1)

    metric.initialize_level(0, Level(2, 0.0), ppir_itk.NoSampling())
    np.testing.assert_array_equal(metric._jacobian().coefficients, fresh())
    transform.parameters = transform.parameters * 1.01  # kept: the same at any parameters
    np.testing.assert_array_equal(metric._jacobian().coefficients, fresh())
    transform.center = transform.center + 3.0
    np.testing.assert_array_equal(metric._jacobian().coefficients, fresh())
    metric.initialize_level(1, Level(1, 0.0), ppir_itk.NoSampling())
    np.testing.assert_array_equal(metric._jacobian().coefficients, fresh())


def test_a_moving_initial_transform_composes_value_and_derivative():
    """With ITK's moving initial transform R, the metric reads I(R(T(x))): its value and
    derivative are those of the one affine R o T, the derivative through the chain rule
    d(R o T)/d theta (linear in theta, so its difference quotients are exact)."""
    fixed, moving, transform = _scene(2)
    initial = make_transform("affine", 2)
    initial.center = fixed.geometry.center()
    initial.parameters = [0.98, -0.12, 0.1, 1.03, 1.5, -0.8]
    with_initial = _metric(fixed, moving, transform)
    with_initial.SetMovingInitialTransform(initial)
    evaluation = with_initial.evaluate()

    def composed(theta: np.ndarray):
        inner = transform.copy()
        inner.parameters = theta
        matrix, offset = inner.matrix_offset()
        outer_matrix, outer_offset = initial.matrix_offset()
        whole = make_transform("affine", 2)  # centre 0: its parameters are matrix and offset
        whole.parameters = np.concatenate(
            [(outer_matrix @ matrix).ravel(), outer_matrix @ offset + outer_offset]
        )
        return whole

    theta = transform.parameters
    whole = _metric(fixed, moving, composed(theta)).evaluate()
    chain = np.stack(
        [
            (composed(theta + step).parameters - composed(theta - step).parameters) / 2e-3
            for step in np.eye(theta.size) * 1e-3
        ],
        axis=1,
    )  # d(whole's parameters) / d theta
    assert evaluation.number_of_valid_points == whole.number_of_valid_points
    np.testing.assert_allclose(evaluation.value, whole.value, rtol=1e-10)
    np.testing.assert_allclose(evaluation.gradient, chain.T @ whole.gradient, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kind", ["rigid", "affine", "similarity"])
def test_the_jacobian_scales_estimator_is_the_corners_squared_jacobian(kind):
    """ITK's RegistrationParameterScalesFromJacobian on a linear transform: each parameter's
    sum_k (dT_k / dtheta_p)^2 averaged over the grid's corners, and the step scale the mean
    corner move of a step; here against difference quotients of the corners' images."""
    fixed, moving, _ = _scene(2)
    transform = make_transform(kind, 2)
    transform.center = fixed.geometry.center() + 1.5
    transform.parameters = transform.parameters + 0.02
    metric = _metric(fixed, moving, transform)
    corners = metric._require_level().points.geometry.corners()
    size = 1e-6

    def moved(delta):
        trial = transform.copy()
        trial.parameters = transform.parameters + delta
        return trial.transform_points(corners)

    base = transform.transform_points(corners)
    columns = [
        (moved(step) - base) / size for step in np.eye(transform.number_of_parameters) * size
    ]
    expected = [np.mean(np.sum(np.square(column), axis=1)) for column in columns]
    np.testing.assert_allclose(metric.squared_jacobian_norms(), expected, rtol=1e-5)
    step = np.linspace(-0.3, 0.4, transform.number_of_parameters)
    moves = np.linalg.norm((moved(size * step) - base) / size, axis=1)
    assert metric.mean_jacobian_step(step) == pytest.approx(float(np.mean(moves)), rel=1e-5)
