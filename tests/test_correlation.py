"""Correlation, privately: ITK's own ``CorrelationImageToImageMetricv4`` as the oracle, every
backend against clear, the protocols that refuse it, what it costs in measurements of J,
and a registration it gets right where mean squares does not."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import known_pair, register_in_process

import ppir_itk
from ppir_itk.bspline import BSplineTransform
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.image import ImageGrid
from ppir_itk.phantoms import head_phantom
from ppir_itk.policy import FixedPolicy
from ppir_itk.pyramid import Level, LevelSchedule
from ppir_itk.transforms import make_transform

ROTATION_2D = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
MEAN_SQUARES = ppir_itk.PrivateMeanSquaresImageToImageMetric
FIXED_SUM_LINE = "the sum of J over the overlap (correlation only): 1 sum per evaluation"


def _metric(fixed, moving, transform, backend="clear", policy=None, kind=None):
    """A metric (correlation unless ``kind`` says) with its one level open, against a fixed
    party in this process."""
    session = ppir_itk.in_process_session(
        fixed, policy or FixedPolicy.holding_both_images((backend,))
    )
    metric = (kind or ppir_itk.PrivateCorrelationImageToImageMetric)(backend, session=session)
    metric.SetMovingImage(moving)
    metric.SetTransform(transform)
    metric.moving_party.start(LevelSchedule.from_lists([1], [0.0]), ppir_itk.NoSampling())
    metric.initialize_level(0, Level(1, 0.0), ppir_itk.NoSampling())
    return metric


def _recording_joint_terms(metric) -> list:
    """The joint terms the metric's session returns from now on, in order."""
    seen = []
    joint_term = metric.moving_party.joint_term

    def recorded(fields):
        seen.append(joint_term(fields))
        return seen[-1]

    metric.moving_party.joint_term = recorded
    return seen


def _transform(kind: str, fixed: ImageGrid, seed: int = 0):
    """A translation or an affine a little off the identity (centred on the fixed image)."""
    d = fixed.dimension
    rng = np.random.default_rng(seed)
    transform = make_transform(kind, d)
    if kind == "translation":
        transform.parameters = rng.uniform(-1.5, 1.5, d)
    else:
        transform.center = fixed.geometry.center()
        matrix = np.eye(d) + 0.03 * rng.standard_normal((d, d))
        transform.parameters = np.concatenate([matrix.ravel(), rng.uniform(-1, 1, d)])
    return transform


def _itk(fixed, moving, transform, gradient_filter: bool = True):
    """ITK's value, derivative (what GetDerivative returns) and number of valid points."""
    import itk

    from ppir_itk.wrapping.images import to_itk
    from ppir_itk.wrapping.transforms import to_itk as transform_to_itk

    image_type = itk.Image[itk.F, fixed.dimension]
    metric = itk.CorrelationImageToImageMetricv4[image_type, image_type].New()
    metric.SetFixedImage(to_itk(fixed))
    metric.SetMovingImage(to_itk(moving))
    metric.SetMovingTransform(transform_to_itk(transform))
    metric.SetUseMovingImageGradientFilter(gradient_filter)
    metric.Initialize()
    derivative = itk.Array[itk.D](transform.number_of_parameters)
    value = metric.GetValue()
    metric.GetDerivative(derivative)
    return value, np.array(derivative), metric.GetNumberOfValidPoints()


# -- against ITK --------------------------------------------------------------------------
def _partial_overlap(dimension: int) -> tuple[ImageGrid, ImageGrid]:
    """Phantoms that overlap only partly, the moving image's directions rotated."""
    if dimension == 2:
        fixed = head_phantom((64, 60), spacing=(1.1, 0.9))
        moving = head_phantom((70, 66))
        return fixed, ImageGrid(
            moving.array, spacing=(1.0, 1.05), origin=(-4.0, 3.0), direction=ROTATION_2D
        )
    fixed = head_phantom((16, 18, 17), spacing=(1.1, 0.9, 1.2))
    moving = head_phantom((18, 20, 19))
    return fixed, ImageGrid(moving.array, spacing=(1.0, 1.05, 0.95), origin=(-2.0, 1.0, 0.5))


@pytest.mark.parametrize("kind", ["translation", "affine"])
@pytest.mark.parametrize("dimension", [2, 3])
def test_value_and_valid_points_equal_itk_s_on_a_partial_overlap(dimension, kind):
    fixed, moving = _partial_overlap(dimension)
    transform = _transform(kind, fixed, seed=dimension)
    ours = _metric(fixed, moving, transform).evaluate()
    value, _, valid = _itk(fixed, moving, transform)
    assert ours.number_of_valid_points == valid < fixed.geometry.number_of_points
    assert ours.hessian is None  # not least squares
    np.testing.assert_allclose(ours.value, value, rtol=1e-7)


def _quadratic_scene(dimension: int) -> tuple[ImageGrid, ImageGrid]:
    """A fixed phantom (rotated directions) inside a moving image that is a quadratic of its
    index (identity directions), with a margin of more than a pixel all round.

    ITK's metric cannot take our gradient image (its Python wrapping has no filter from a
    float image to a gradient image of doubles but its Gaussian default), so it computes
    its gradient with ``CentralDifferenceImageFunction`` instead: ``(I(p + s_k / 2) -
    I(p - s_k / 2)) / s_k`` of the linearly interpolated image, 0 within a pixel of the
    border. Ours is the central-difference gradient image, linearly interpolated. On a
    quadratic both are the quadratic's exact gradient away from the border (the two
    samples of ITK's stencil share their fractional index, so the interpolation errors
    cancel; the central differences of a quadratic are exact and linear, which linear
    interpolation reproduces), so the derivatives must agree to rounding.
    """
    if dimension == 2:
        shape, fixed_shape, spacing = (52, 48), (30, 28), (1.1, 0.95)
        fixed = head_phantom(fixed_shape, spacing=(1.0, 1.05))
        fixed = ImageGrid(fixed.array, (1.0, 1.05), (14.0, 4.0), ROTATION_2D)
    else:
        shape, fixed_shape, spacing = (26, 28, 27), (14, 16, 15), (1.05, 0.95, 1.1)
        fixed = head_phantom(fixed_shape, spacing=(1.0, 1.05, 0.9))
        fixed = ImageGrid(fixed.array, (1.0, 1.05, 0.9), (5.0, 5.0, 5.0))
    # A ramp along x, which the moving image's linear part follows: the two correlate.
    ramp = np.arange(fixed_shape[-1], dtype=np.float32) * 4.0
    fixed = ImageGrid(
        fixed.array + ramp, fixed.geometry.spacing, fixed.geometry.origin, fixed.geometry.direction
    )
    index = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    rng = np.random.default_rng(dimension)
    quadratic = 3.0 + index[-1] + sum(rng.uniform(-0.6, 0.6) * u for u in index)
    for a in range(dimension):
        for b in range(a, dimension):
            quadratic = quadratic + rng.uniform(-0.03, 0.03) * (index[a] - 10) * (index[b] - 12)
    return fixed, ImageGrid(quadratic.astype(np.float32), spacing=spacing)


def _maps_inside_with_margin(fixed: ImageGrid, moving: ImageGrid, transform) -> bool:
    geometry = fixed.geometry
    flat = np.arange(geometry.number_of_points)
    points = transform.transform_points(geometry.physical_points(geometry.flat_to_index(flat)))
    index = (points - moving.geometry.origin_array) @ moving.geometry.physical_to_index.T
    size = np.asarray(moving.geometry.size)
    return bool(np.all((index >= 1.5) & (index <= size - 2.5)))


@pytest.mark.parametrize("kind", ["translation", "affine", "bspline"])
@pytest.mark.parametrize("dimension", [2, 3])
def test_derivative_equals_itk_s_with_the_same_gradient(dimension, kind):
    fixed, moving = _quadratic_scene(dimension)
    if kind == "bspline":
        transform = BSplineTransform.over(fixed.geometry, 8.0)
        rng = np.random.default_rng(dimension)
        transform.parameters = rng.uniform(-0.8, 0.8, transform.number_of_parameters)
    else:
        transform = _transform(kind, fixed, seed=dimension)
    assert _maps_inside_with_margin(fixed, moving, transform)
    ours = _metric(fixed, moving, transform).evaluate()
    value, derivative, valid = _itk(fixed, moving, transform, gradient_filter=False)
    assert ours.number_of_valid_points == valid == fixed.geometry.number_of_points
    np.testing.assert_allclose(ours.value, value, rtol=1e-7)
    # ITK's GetDerivative is the negative gradient; ours says d value / d theta.
    np.testing.assert_allclose(
        -ours.gradient, derivative, rtol=0, atol=1e-6 * np.abs(derivative).max()
    )
    metric_value, metric_derivative = _metric(fixed, moving, transform).GetValueAndDerivative()
    np.testing.assert_array_equal(metric_derivative, -ours.gradient)
    assert metric_value == ours.value


def test_a_linear_change_of_intensity_leaves_the_value_and_derivative_as_they_were():
    fixed, moving = _partial_overlap(2)
    transform = _transform("affine", fixed)
    first = _metric(fixed, moving, transform).evaluate()
    brighter = ImageGrid(
        -3.0 * moving.array + 50.0,
        moving.geometry.spacing,
        moving.geometry.origin,
        moving.geometry.direction,
    )
    second = _metric(fixed, brighter, transform).evaluate()
    np.testing.assert_allclose(second.value, first.value, rtol=1e-6)
    np.testing.assert_allclose(
        second.gradient, first.gradient, rtol=0, atol=1e-6 * np.abs(first.gradient).max()
    )


def test_a_moving_image_flat_over_the_overlap_gives_itk_s_zero():
    """``f2 m2 <= epsilon``: ITK's value 0 and zero derivative, not a division by zero."""
    fixed = ImageGrid(head_phantom((24, 20)).array, origin=(10.0, 10.0))
    array = np.full((40, 40), 7.0, dtype=np.float32)
    array[0, 0] = 100.0  # outside what the fixed grid maps onto
    flat = ImageGrid(array)
    transform = make_transform("rigid", 2)
    evaluation = _metric(fixed, flat, transform).evaluate()
    value, derivative, _ = _itk(fixed, flat, transform)
    assert evaluation.value == 0.0 == value
    np.testing.assert_array_equal(evaluation.gradient, 0.0)
    np.testing.assert_array_equal(derivative, 0.0)


# -- private backends against clear ---------------------------------------------------------
@pytest.fixture(scope="module")
def small_pair() -> tuple[ImageGrid, ImageGrid]:
    fixed = head_phantom((40, 36))
    return fixed, known_pair(fixed, "rigid", [0.05, 1.5, -1.0])[0]


def _bspline(fixed: ImageGrid) -> BSplineTransform:
    transform = BSplineTransform.over(fixed.geometry, 12.0)
    transform.parameters = np.random.default_rng(0).uniform(-1, 1, transform.number_of_parameters)
    return transform


@pytest.mark.parametrize("kind", ["affine", "bspline"])
@pytest.mark.parametrize("backend", ["he", "spdz"])
def test_every_private_backend_gives_clear_s_value_and_derivative(small_pair, backend, kind):
    fixed, moving = small_pair
    transform = _bspline(fixed) if kind == "bspline" else _transform("affine", fixed)
    clear = _metric(fixed, moving, transform.copy()).evaluate()
    private_metric = _metric(fixed, moving, transform.copy(), backend)
    private = private_metric.evaluate()
    assert private.number_of_valid_points == clear.number_of_valid_points
    # Fixed point: J to 13 bits or more; a B-spline's own moments take its weights
    # rounded to 10 bits per axis, as the private sums do, which clear's need not.
    np.testing.assert_allclose(private.value, clear.value, rtol=1e-5)
    tolerance = 2e-3 if kind == "bspline" else 1e-4
    np.testing.assert_allclose(
        private.gradient, clear.gradient, rtol=0, atol=tolerance * np.abs(clear.gradient).max()
    )
    assert FIXED_SUM_LINE in private_metric.moving_party.learned()


@pytest.mark.parametrize("protocol", ["paper-v1", "paper-v2"])
def test_the_paper_protocols_refuse_correlation_with_a_sentence(small_pair, protocol):
    fixed, _ = small_pair
    with pytest.raises(ppir_itk.InputError) as refused:
        ppir_itk.PrivateCorrelationImageToImageMetric(
            "he",
            session=ppir_itk.in_process_session(fixed),
            backend_parameters={"protocol": protocol},
        )
    assert str(refused.value) == (
        f"backend 'he' (protocol {protocol}) does not compute metric 'correlation': "
        "register it with backend he or spdz or clear, which is NOT private"
    )


# -- what it costs the fixed party ---------------------------------------------------------
def _evaluations(metric, count: int):
    for _ in range(count):
        metric.evaluate()
    return metric.moving_party.close()


def test_correlation_is_charged_one_more_measurement_per_evaluation(small_pair):
    fixed, moving = small_pair
    transform = _transform("affine", fixed)  # 2-D affine: 8 sums, and the sum of J
    mean_squares = _metric(fixed, moving, transform.copy(), "he", kind=MEAN_SQUARES)
    correlation = _metric(fixed, moving, transform.copy(), "he")
    assert _evaluations(mean_squares, 2).measurements == 2 * 8
    assert _evaluations(correlation, 2).measurements == 2 * 9
    assert FIXED_SUM_LINE + ", 2 in total" in correlation.moving_party.learned()
    assert not any("sum of J" in line for line in mean_squares.moving_party.learned())


def test_the_sum_of_j_counts_before_any_product(small_pair):
    """A policy that allows the map's 8 sums per evaluation and not a ninth refuses a
    correlation session at SelectPoints, and lets mean squares run."""
    fixed, moving = small_pair
    points = fixed.geometry.number_of_points

    def policy() -> FixedPolicy:  # one per session: each gets its own dealer
        return FixedPolicy(
            backends=("spdz",),
            max_measurements_per_evaluation=8.5 / points,
            measurement_grant=np.inf,
            max_measurements_per_level=np.inf,
        )

    with pytest.raises(ppir_itk.PeerError) as refused:
        _metric(fixed, moving, _transform("affine", fixed), "spdz", policy())
    assert (
        "one evaluation would reveal 9 linear measurements of the fixed image, and this fixed "
        "party allows 8 per evaluation at level 0"
    ) in str(refused.value)
    mean_squares = _metric(
        fixed, moving, _transform("affine", fixed), "spdz", policy(), MEAN_SQUARES
    )
    assert _evaluations(mean_squares, 1).measurements == 8


def test_the_fixed_party_s_noise_reaches_the_sum_of_j_within_the_exact_budget(small_pair):
    fixed, moving = small_pair
    beta = 0.01
    transform = _transform("affine", fixed)
    exact = _metric(fixed, moving, transform.copy(), "spdz")
    noisy = _metric(
        fixed,
        moving,
        transform.copy(),
        "spdz",
        FixedPolicy.holding_both_images(("spdz",), joint_term_noise=beta),
    )
    exact_terms, noisy_terms = _recording_joint_terms(exact), _recording_joint_terms(noisy)
    for metric in (exact, noisy, exact, noisy):
        metric.evaluate()
    (first, second), (noisy_first, noisy_second) = exact_terms, noisy_terms
    assert first.fixed_sum == second.fixed_sum
    backend = noisy.moving_party.backend  # its fixed-point exponent and bits
    one_voxel = 2.0 ** (backend._bits.j_bits - 1 - backend._exponent_j)
    for term in (noisy_first, noisy_second):  # a draw is below nine deviations
        assert 0 < abs(term.fixed_sum - first.fixed_sum) <= 9 * beta * one_voxel
    assert noisy_first.fixed_sum != noisy_second.fixed_sum  # fresh noise each evaluation


# -- registration: correlation is blind to a linear change of intensity --------------------
def test_correlation_registers_a_brightened_pair_that_mean_squares_gets_wrong():
    """A scanner's gain (3 I + 50): mean squares (Gauss-Newton) misses the transform;
    correlation (the regular step) finds it, and every private backend finds Clear's to
    2.5e-3 voxel (the regular step's end moves with the fixed-point rounding)."""
    fixed = head_phantom((64, 64))
    moved, truth = known_pair(fixed, "rigid", [0.06, 2.5, -1.5])
    moving = ImageGrid(
        3.0 * moved.array + 50.0,
        moved.geometry.spacing,
        moved.geometry.origin,
        moved.geometry.direction,
    )
    levels = {"shrink_factors": [2, 1], "smoothing_sigmas": [1.0, 0.0], "transform": "rigid"}
    mean_squares = register_in_process(fixed, moving, **levels)
    assert displacement_rmse(mean_squares.transform, truth, fixed.geometry) > 1.0
    results = {
        backend: register_in_process(fixed, moving, backend=backend, metric="correlation", **levels)
        for backend in ("clear", "he", "spdz")
    }
    clear = results["clear"].transform
    assert results["clear"].optimizer == "RegularStepGradientDescentOptimizer"
    assert displacement_rmse(clear, truth, fixed.geometry) < 0.05
    for backend in ("he", "spdz"):
        assert displacement_rmse(results[backend].transform, clear, fixed.geometry) < 2.5e-3
