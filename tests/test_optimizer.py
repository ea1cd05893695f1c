"""RegularStepGradientDescentOptimizer: ITK's regular step, on metrics with known values."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import known_pair

import ppir_itk
from ppir_itk.errors import InputError
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.events import Event
from ppir_itk.metric import Evaluation
from ppir_itk.optimizer import RegularStepGradientDescentOptimizer, StopCondition

# A 2-D affine map x -> A x + t, parameters in ITK's order (a11 a12 a21 a22 tx ty), seen
# at the corners of a 40 x 30 mm box: a matrix element moves them up to 40 or 30 times
# as far as a translation does, so the scales matter.
CORNERS = np.array([[0.0, 0.0], [40.0, 0.0], [0.0, 30.0], [40.0, 30.0]])
IDENTITY = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
TRUTH = np.array([1.04, 0.03, -0.05, 0.97, 2.0, -1.5])


def _mapped(theta: np.ndarray) -> np.ndarray:
    return CORNERS @ theta[:4].reshape(2, 2).T + theta[4:6]


class CornerMetric:
    """The mean squared distance of the corners' images from their images under TRUTH:
    a bowl in parameter space, 40^2 times steeper along the matrix than the translation."""

    def __init__(self, start: np.ndarray = IDENTITY, extra_parameters: int = 0) -> None:
        self.theta = np.concatenate([start, np.zeros(extra_parameters)])
        self.evaluations = 0

    def GetNumberOfParameters(self) -> int:  # noqa: N802
        return self.theta.size

    def GetParameters(self) -> np.ndarray:  # noqa: N802
        return self.theta.copy()

    def SetParameters(self, parameters: np.ndarray) -> None:  # noqa: N802
        self.theta = np.array(parameters, dtype=np.float64)

    def UpdateTransformParameters(self, delta: np.ndarray) -> None:  # noqa: N802
        self.theta = self.theta + delta

    def GetTransform(self) -> object:  # noqa: N802
        return object()  # not a B-spline

    def maximum_physical_shift(self, delta: np.ndarray) -> float:
        moved = _mapped(self.theta + delta) - _mapped(self.theta)
        return float(np.max(np.linalg.norm(moved, axis=1)))

    def evaluate(self) -> Evaluation:
        self.evaluations += 1
        residual = _mapped(self.theta) - _mapped(TRUTH)  # (4, 2)
        n = len(CORNERS)
        gradient = np.zeros_like(self.theta)
        gradient[:4] = (2.0 / n) * (residual.T @ CORNERS).ravel()
        gradient[4:6] = (2.0 / n) * residual.sum(axis=0)
        value = float(np.square(residual).sum() / n)
        return Evaluation(value, gradient, None, n)


class ScriptedMetric(CornerMetric):
    """Gives the values and gradients it was told, one per evaluation, at any position."""

    def __init__(self, steps: list[tuple[float, list[float]]]) -> None:
        super().__init__(np.zeros(len(steps[0][1])))
        self.steps = list(steps)

    def maximum_physical_shift(self, delta: np.ndarray) -> float:
        return float(np.abs(delta).max())

    def evaluate(self) -> Evaluation:
        value, gradient = self.steps.pop(0)
        return Evaluation(value, np.array(gradient), None, 1)


class Parabola(CornerMetric):
    """value = theta^2, one parameter that moves every point by itself (scale 1)."""

    def __init__(self, start: float) -> None:
        super().__init__(np.array([start]))

    def maximum_physical_shift(self, delta: np.ndarray) -> float:
        return float(np.abs(delta).max())

    def evaluate(self) -> Evaluation:
        self.evaluations += 1
        return Evaluation(float(self.theta[0] ** 2), 2.0 * self.theta, None, 1)


def _run(metric, **options) -> RegularStepGradientDescentOptimizer:
    optimizer = RegularStepGradientDescentOptimizer(**options)
    optimizer.SetMetric(metric)
    optimizer.StartOptimization()
    return optimizer


def test_scales_from_physical_shift_match_a_hand_computation():
    # A change of 0.01 in a11 or a21 moves the corner x = 40 by 0.4 mm, in a12 or a22 the
    # corner y = 30 by 0.3 mm, in a translation every corner by 0.01 mm: ITK squares the
    # shift per unit change. The seventh parameter moves nothing: it takes the smallest
    # nonzero shift's scale, 1.
    optimizer = _run(CornerMetric(extra_parameters=1), NumberOfIterations=1)
    np.testing.assert_allclose(
        optimizer.GetScales(), [40.0**2, 30.0**2, 40.0**2, 30.0**2, 1.0, 1.0, 1.0], rtol=1e-9
    )


def test_converges_to_the_minimum_of_an_anisotropic_bowl():
    metric = CornerMetric()
    optimizer = _run(metric, LearningRate=1.0, MinimumStepLength=1e-6, NumberOfIterations=2000)
    assert optimizer.GetStopCondition() in (
        StopCondition.STEP_TOO_SMALL,
        StopCondition.GRADIENT_MAGNITUDE_TOLERANCE,
    )
    np.testing.assert_allclose(metric.theta, TRUTH, atol=1e-4)
    assert optimizer.GetValue() < 1e-6
    assert optimizer.GetCurrentIteration() < 2000


def test_relaxation_halves_the_step_when_the_gradient_reverses():
    # theta^2 from 0.3 with steps of 1: 0.3 -> -0.7 (reversed: halve) -> -0.2 -> 0.3
    # (reversed) -> 0.05 -> -0.2 (reversed) -> -0.075.
    metric = Parabola(0.3)
    optimizer = RegularStepGradientDescentOptimizer(LearningRate=1.0, NumberOfIterations=6)
    optimizer.SetMetric(metric)
    seen: list[tuple[float, float]] = []
    optimizer.AddObserver(
        Event.ITERATION,
        lambda: seen.append((optimizer.GetCurrentLearningRateRelaxation(), metric.theta[0])),
    )
    optimizer.StartOptimization()
    relaxations, positions = zip(*seen, strict=True)
    assert relaxations == (1.0, 0.5, 0.5, 0.25, 0.25, 0.125)
    np.testing.assert_allclose(positions, [-0.7, -0.2, 0.3, 0.05, -0.2, -0.075], atol=1e-12)


def test_reversal_is_tested_as_itk_does_with_the_previous_gradient_scaled_twice():
    # Scales (1, 4); gradients (1, 16) then (-1, 2). Scaled once each, (1, 4) and
    # (-1, 0.5), their product is +1; ITK scales the kept one again, (1, 1): -0.5 < 0.
    metric = ScriptedMetric([(1.0, [1.0, 16.0]), (1.0, [-1.0, 2.0])])
    optimizer = _run(metric, Scales=[1.0, 4.0], NumberOfIterations=2)
    assert optimizer.GetCurrentLearningRateRelaxation() == 0.5


@pytest.mark.parametrize("estimate", ["once", "each_iteration"])
def test_an_estimated_learning_rate_moves_no_corner_more_than_the_maximum_step(estimate):
    metric = CornerMetric()
    optimizer = RegularStepGradientDescentOptimizer(
        LearningRate=1e-3,  # replaced by the estimate before the first step
        NumberOfIterations=40,
        EstimateLearningRate=estimate,
        MaximumStepSizeInPhysicalUnits=0.5,
    )
    optimizer.SetMetric(metric)
    start = [metric.GetParameters()]
    seen: list[tuple[float, float, float]] = []

    def step() -> None:
        moved = np.linalg.norm(_mapped(metric.theta) - _mapped(start[-1]), axis=1).max()
        start.append(metric.GetParameters())
        relaxation = optimizer.GetCurrentLearningRateRelaxation()
        seen.append((moved, relaxation, optimizer.GetLearningRate()))

    optimizer.AddObserver(Event.ITERATION, step)
    optimizer.StartOptimization()
    shifts, relaxations, learning_rates = np.array(seen).T
    assert relaxations[-1] < 1  # it did relax
    # The affine map is linear in its parameters: the estimate is exact.
    assert shifts[0] == pytest.approx(0.5, rel=1e-9)
    if estimate == "each_iteration":
        np.testing.assert_allclose(shifts, 0.5 * relaxations, rtol=1e-9)
    else:  # the first estimate stays; the corner shifts follow the gradient's direction
        assert np.all(learning_rates == learning_rates[0])
        assert not np.allclose(shifts, 0.5 * relaxations, rtol=1e-3)


def test_maximum_number_of_iterations():
    metric = CornerMetric()
    optimizer = _run(metric, NumberOfIterations=3)
    assert optimizer.GetStopCondition() is StopCondition.MAXIMUM_NUMBER_OF_ITERATIONS
    assert optimizer.GetStopConditionDescription() == "maximum number of iterations (3) reached"
    assert metric.evaluations == 3 and len(optimizer.values) == 3


def test_gradient_magnitude_tolerance():
    optimizer = _run(CornerMetric(start=TRUTH))
    assert optimizer.GetStopCondition() is StopCondition.GRADIENT_MAGNITUDE_TOLERANCE
    assert optimizer.GetStopConditionDescription() == (
        "converged: scaled gradient magnitude 0 below 0.0001 after 0 iterations"
    )
    assert optimizer.GetCurrentIteration() == 0 and optimizer.values == []


def test_minimum_step_length():
    # The relaxations above: 1, 0.5, 0.5, 0.25 and the fourth reversal makes it 0.125.
    optimizer = _run(Parabola(0.3), LearningRate=1.0, MinimumStepLength=0.2)
    assert optimizer.GetStopCondition() is StopCondition.STEP_TOO_SMALL
    assert optimizer.GetStopConditionDescription() == (
        "converged: step length 0.125 below the minimum 0.2 after 5 iterations"
    )


def test_an_observer_stops_it_and_sees_every_iteration():
    optimizer = RegularStepGradientDescentOptimizer(NumberOfIterations=50)
    metric = CornerMetric()
    optimizer.SetMetric(metric)
    seen = {Event.START: 0, Event.ITERATION: 0, Event.END: 0}
    for event in seen:
        optimizer.AddObserver(event, lambda event=event: seen.__setitem__(event, seen[event] + 1))
    values: list[float] = []
    optimizer.AddObserver(Event.ITERATION, lambda: values.append(optimizer.GetValue()))
    optimizer.AddObserver(
        Event.ITERATION,
        lambda: optimizer.GetCurrentIteration() == 7 and optimizer.StopOptimization(),
    )
    optimizer.StartOptimization()
    assert optimizer.GetStopCondition() is StopCondition.USER_STOP
    assert optimizer.GetStopConditionDescription() == "stopped by an observer after 7 iterations"
    assert seen == {Event.START: 1, Event.ITERATION: 7, Event.END: 1}
    assert values == optimizer.values and metric.evaluations == 7


def test_return_best_parameters_and_value():
    # 0.3 (value 0.09) -> -0.7 (0.49) -> -0.2, never evaluated: the best is the start.
    plain = _run(Parabola(0.3), LearningRate=1.0, NumberOfIterations=2)
    assert plain.GetValue() == pytest.approx(0.49)
    np.testing.assert_allclose(plain.GetCurrentPosition(), [-0.2])
    best = _run(
        Parabola(0.3), LearningRate=1.0, NumberOfIterations=2, ReturnBestParametersAndValue=True
    )
    assert best.GetValue() == pytest.approx(0.09)
    np.testing.assert_allclose(best.GetCurrentPosition(), [0.3])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"NumberOfIterations": 0}, "the optimizer's NumberOfIterations 0 must be at least 1"),
        ({"LearningRate": 0.0}, "the optimizer's LearningRate 0.0 must be a positive number"),
        (
            {"MinimumStepLength": -1.0},
            "the optimizer's MinimumStepLength -1.0 must be a number >= 0",
        ),
        ({"RelaxationFactor": 1.0}, "the optimizer's RelaxationFactor 1.0 must be in [0, 1)"),
        (
            {"GradientMagnitudeTolerance": -1e-4},
            "the optimizer's GradientMagnitudeTolerance -0.0001 must be a number >= 0",
        ),
        ({"Scales": [1.0, 0.0]}, "the optimizer's Scales must be a list of positive numbers"),
        (
            {"EstimateLearningRate": "Once"},
            "the optimizer's EstimateLearningRate 'Once' is not one of never, once, each_iteration",
        ),
        (
            {"EstimateLearningRate": "once"},
            "the optimizer's EstimateLearningRate 'once' needs a "
            "MaximumStepSizeInPhysicalUnits > 0, got 0.0",
        ),
    ],
)
def test_invalid_options(options, message):
    with pytest.raises(InputError) as raised:
        RegularStepGradientDescentOptimizer(**options)
    assert str(raised.value) == message


def test_scales_of_another_length_than_the_parameters():
    with pytest.raises(InputError) as raised:
        _run(CornerMetric(), Scales=[1.0, 1.0])
    assert str(raised.value) == (
        "the optimizer's Scales has 2 values but the transform has 6 parameters"
    )


def test_recovers_a_rigid_transform_through_the_registration_method(phantom_2d):
    moving, truth = known_pair(phantom_2d, "rigid", [0.08, 2.5, -1.5])  # rad, mm, mm
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(
        "clear", session=ppir_itk.in_process_session(phantom_2d)
    )
    metric.SetMovingImage(moving)
    optimizer = RegularStepGradientDescentOptimizer(
        LearningRate=1.0, MinimumStepLength=1e-4, NumberOfIterations=200
    )
    method = ppir_itk.ImageRegistrationMethod(
        metric,
        optimizer,
        "rigid",
        shrink_factors=[2, 1],
        smoothing_sigmas=[1.0, 0.0],
        initializer="geometry",
    )
    result = method.run()
    error = displacement_rmse(result.transform, truth, phantom_2d.geometry)
    assert error < 0.03 * min(phantom_2d.geometry.spacing), f"RMSE {error:.4f} mm"
    assert sum(level.iterations for level in result.levels) == len(result.metric_values)
    assert result.levels[-1].stop_condition.startswith("converged: ")


def test_a_zero_gradient_stops_it_even_with_no_tolerance():
    optimizer = _run(CornerMetric(start=TRUTH), GradientMagnitudeTolerance=0.0)
    assert optimizer.GetStopCondition() is StopCondition.GRADIENT_MAGNITUDE_TOLERANCE
    assert np.all(np.isfinite(optimizer.GetCurrentPosition()))


def test_a_bspline_has_one_scale_the_shift_of_a_coefficient_as_itk(phantom_2d):
    moving, _ = known_pair(phantom_2d, "translation", [1.0, -0.5])
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(
        "clear", session=ppir_itk.in_process_session(phantom_2d)
    )
    metric.SetMovingImage(moving)
    optimizer = RegularStepGradientDescentOptimizer(LearningRate=0.5, NumberOfIterations=5)
    method = ppir_itk.ImageRegistrationMethod(
        metric,
        optimizer,
        "bspline",
        grid_spacing=24.0,
    )
    result = method.run()
    # A change of 0.01 in a coefficient moves its control point 0.01 mm: ITK neither
    # squares nor normalises a B-spline's scale.
    np.testing.assert_array_equal(
        optimizer.GetScales(), np.full(result.transform.number_of_parameters, 0.01)
    )
    assert result.metric_values[-1] < result.metric_values[0]


class OffsetParabola(Parabola):
    """value = theta^2 + 1, with its Gauss-Newton Hessian: the relative change of a step near
    the minimum is small."""

    def evaluate(self) -> Evaluation:
        self.evaluations += 1
        theta = self.theta[0]
        return Evaluation(theta**2 + 1.0, 2.0 * self.theta, np.array([[2.0]]), 1)


class Uphill(Parabola):
    """value = 1 + |theta| with a gradient that points uphill: every step is rejected."""

    def evaluate(self) -> Evaluation:
        self.evaluations += 1
        return Evaluation(1.0 + abs(self.theta[0]), np.array([-1.0]), np.array([[1.0]]), 1)


def _gauss_newton(metric) -> ppir_itk.GaussNewtonOptimizer:
    optimizer = ppir_itk.GaussNewtonOptimizer()
    optimizer.SetMetric(metric)
    optimizer.StartOptimization()
    return optimizer


def test_gauss_newton_says_what_stopped_it_with_its_numbers():
    # 0.3 -> 3.0e-4 -> 3.0e-8: the second step changes the value by 9.0e-8, relatively.
    converged = _gauss_newton(OffsetParabola(0.3))
    assert converged.GetStopCondition() is StopCondition.CONVERGENCE
    assert converged.GetStopConditionDescription() == (
        "converged: relative change in value 8.98e-08 below 1e-06 after 2 iterations"
    )
    # Six rejected steps, each damped ten times more: no lower value nearby.
    stuck = _gauss_newton(Uphill(0.0))
    assert stuck.GetStopCondition() is StopCondition.TOO_MANY_BAD_STEPS
    assert stuck.GetStopConditionDescription() == (
        "converged: no lower value in 6 damped steps in a row after 6 iterations"
    )
