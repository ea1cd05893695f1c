"""The ITK-style pieces: observers, stop conditions, live measurements, inputs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import known_pair, register_in_process

import ppir_itk
from ppir_itk.errors import InputError
from ppir_itk.events import Event
from ppir_itk.metric import Evaluation
from ppir_itk.optimizer import StopCondition
from ppir_itk.wrapping.images import to_itk, to_sitk
from ppir_itk.wrapping.transforms import to_itk as transform_to_itk


def _method(fixed, moving, **options):
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(
        "clear", session=ppir_itk.in_process_session(fixed)
    )
    metric.SetMovingImage(moving)
    optimizer = ppir_itk.GaussNewtonOptimizer(NumberOfIterations=options.pop("iterations", 50))
    # One level unless a test asks for more (the method's default has three).
    options.setdefault("shrink_factors", [1])
    options.setdefault("smoothing_sigmas", [0.0])
    return ppir_itk.ImageRegistrationMethod(
        metric, optimizer, options.pop("transform", "affine"), **options
    )


def test_itk_and_simpleitk_events_reach_observers(phantom_2d):
    import itk

    moving, _ = known_pair(phantom_2d, "affine", [1.03, 0.02, -0.02, 0.98, 1.0, -1.0])
    method = _method(phantom_2d, moving, shrink_factors=[2, 1], smoothing_sigmas=[1, 0])
    seen: dict[str, list] = {"itk": [], "sitk": [], "levels": [], "start": [], "end": []}
    method.AddObserver(
        itk.IterationEvent(),
        lambda: seen["itk"].append(
            (method.GetCurrentLevel(), method.GetOptimizerIteration(), method.GetMetricValue())
        ),
    )
    method.AddObserver(
        sitk.sitkIterationEvent, lambda: seen["sitk"].append(method.GetOptimizerPosition())
    )
    method.AddObserver(
        sitk.sitkMultiResolutionIterationEvent,
        lambda: seen["levels"].append(method.GetCurrentLevel()),
    )
    method.AddObserver(itk.StartEvent(), lambda: seen["start"].append(1))
    method.AddObserver(Event.END, lambda: seen["end"].append(1))
    transform = method.Execute()
    result = method.GetResult()
    assert len(seen["itk"]) == len(seen["sitk"]) == result.iterations
    assert seen["levels"] == [0, 1] and seen["start"] == [1] and seen["end"] == [1]
    values = [value for _, _, value in seen["itk"]]
    assert values == result.metric_values
    assert type(transform).__name__.startswith("itkAffineTransform")
    np.testing.assert_array_equal(np.array(transform.GetParameters()), result.transform.parameters)


def test_observer_can_stop_the_registration(phantom_2d):
    moving, _ = known_pair(phantom_2d, "affine", [1.03, 0.02, -0.02, 0.98, 1.0, -1.0])
    method = _method(phantom_2d, moving, shrink_factors=[2, 1], smoothing_sigmas=[1, 0])
    method.AddObserver(
        "IterationEvent", lambda: method.GetOptimizerIteration() == 3 and method.StopRegistration()
    )
    method.run()
    assert method.GetResult().iterations == 3
    assert len(method.GetResult().levels) == 1
    assert method.optimizer.GetStopCondition() is StopCondition.USER_STOP
    assert "stopped by an observer" in method.GetOptimizerStopConditionDescription()


class _OvershootingQuadratic:
    """``value = theta^T A theta / 2`` whose Gauss-Newton matrix is a tenth of ``A``: the
    undamped step goes ten times too far (to ``-9 theta``), so only damping makes progress.
    Records every evaluation and where each trial step started."""

    CURVATURE = np.array([[4.0, 1.0], [1.0, 2.0]])

    def __init__(self) -> None:
        self.parameters = np.array([1.0, -2.0])
        self.evaluations: list[tuple[np.ndarray, float]] = []
        self.step_starts: list[np.ndarray] = []

    def evaluate(self) -> Evaluation:
        value = float(0.5 * self.parameters @ self.CURVATURE @ self.parameters)
        self.evaluations.append((self.parameters.copy(), value))
        return Evaluation(
            value=value,
            gradient=self.CURVATURE @ self.parameters,
            hessian=self.CURVATURE / 10.0,
            number_of_valid_points=1,
        )

    def GetParameters(self) -> np.ndarray:  # noqa: N802
        return self.parameters.copy()

    def SetParameters(self, parameters: np.ndarray) -> None:  # noqa: N802
        self.parameters = np.array(parameters, dtype=np.float64)

    def UpdateTransformParameters(self, delta: np.ndarray) -> None:  # noqa: N802
        self.step_starts.append(self.parameters.copy())
        self.parameters = self.parameters + delta

    def maximum_physical_shift(self, delta: np.ndarray) -> float:
        return float(np.linalg.norm(delta))


def test_overshooting_steps_are_rejected_damped_and_the_accepted_values_decrease():
    metric = _OvershootingQuadratic()
    optimizer = ppir_itk.GaussNewtonOptimizer(NumberOfIterations=100)
    optimizer.SetMetric(metric)
    optimizer.StartOptimization()
    (position, value), trials = metric.evaluations[0], metric.evaluations[1:]
    initial, accepted, rejected = value, [value], 0
    assert trials[0][1] > initial  # the undamped first step overshoots
    for start, (trial_position, trial_value), reported in zip(
        metric.step_starts, trials, optimizer.values, strict=True
    ):
        np.testing.assert_array_equal(start, position)  # a rejected step was undone
        if trial_value < accepted[-1]:
            position = trial_position
            accepted.append(trial_value)
        else:
            rejected += 1
        assert reported == accepted[-1]  # the optimizer reports the accepted value only
    assert rejected > 0 and len(accepted) > 5
    assert accepted[-1] < 1e-6 * initial  # damping turned overshoots into progress
    assert optimizer.GetStopCondition() is not StopCondition.TOO_MANY_BAD_STEPS


def test_maximum_iterations_stop_condition(phantom_2d):
    moving, _ = known_pair(phantom_2d, "affine", [1.05, 0.03, -0.03, 0.96, 2.0, -1.0])
    method = _method(phantom_2d, moving, iterations=2)
    method.run()
    assert method.optimizer.GetStopCondition() is StopCondition.MAXIMUM_NUMBER_OF_ITERATIONS
    assert method.GetResult().iterations == 2


def test_converged_run_stops_on_its_own(phantom_2d):
    moving, _ = known_pair(phantom_2d, "rigid", [0.05, 1.0, -1.0])
    method = _method(phantom_2d, moving, transform="rigid", iterations=500)
    method.run()
    assert method.optimizer.GetStopCondition() in (
        StopCondition.CONVERGENCE,
        StopCondition.STEP_TOO_SMALL,
        StopCondition.TOO_MANY_BAD_STEPS,
    )
    assert method.GetResult().iterations < 500


@pytest.mark.parametrize("kind", ["itk", "sitk", "path"])
def test_images_and_initial_transforms_from_itk_simpleitk_and_paths(kind, phantom_2d, tmp_path):
    from ppir_itk.wrapping.images import write_image

    moving, truth = known_pair(phantom_2d, "rigid", [0.04, 1.5, -0.5])
    if kind == "itk":
        fixed_in, moving_in = to_itk(phantom_2d), to_itk(moving)
        initial = transform_to_itk(ppir_itk.make_transform("rigid", 2))
    elif kind == "sitk":
        fixed_in, moving_in = to_sitk(phantom_2d), to_sitk(moving)
        initial = sitk.Euler2DTransform()
    else:
        fixed_in, moving_in = tmp_path / "f.nrrd", tmp_path / "m.nii.gz"
        write_image(phantom_2d, fixed_in)
        write_image(moving, moving_in)
        initial = "rigid"
    result = register_in_process(
        fixed_in, moving_in, transform=initial, shrink_factors=[2, 1], smoothing_sigmas=[1, 0]
    )
    from ppir_itk.evaluation import displacement_rmse

    assert result.transform.kind == "rigid"
    assert displacement_rmse(result.transform, truth, phantom_2d.geometry) < 0.1


def test_bad_api_arguments_raise_input_errors(phantom_2d):
    with pytest.raises(InputError, match="one value per level"):
        register_in_process(phantom_2d, phantom_2d, shrink_factors=[2, 1], smoothing_sigmas=[1])
    with pytest.raises(InputError, match="unknown backend"):
        register_in_process(phantom_2d, phantom_2d, backend="nope")
    with pytest.raises(InputError, match="initializer"):
        register_in_process(phantom_2d, phantom_2d, initializer="magic")
    with pytest.raises(InputError, match="sampling fraction"):
        register_in_process(phantom_2d, phantom_2d, sampling="urs", sampling_fraction=1.5)
    with pytest.raises(InputError, match="must be an itk.Image"):
        register_in_process([[1, 2], [3, 4]], phantom_2d)


def test_no_overlap_is_an_input_error(phantom_2d):
    far = ppir_itk.ImageGrid(
        phantom_2d.array, spacing=phantom_2d.geometry.spacing, origin=(1e4, 1e4)
    )
    with pytest.raises(InputError, match="do not overlap"):
        register_in_process(
            phantom_2d, far, initializer="none", shrink_factors=[1], smoothing_sigmas=[0]
        )
