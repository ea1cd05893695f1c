"""``ppir_itk.simpleitk.ImageRegistrationMethod`` against SimpleITK's own, call for call.

Each script runs twice on the same small phantom pair: with ``sitk.ImageRegistrationMethod()``
and with the facade (the clear backend unless a test says otherwise: the private backends
have their own tests); the results must agree within 0.5 px, and the facade's events,
iteration numbers, in-place update and return type must be SimpleITK's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ppir_serve

import ppir_itk
import ppir_itk.simpleitk as facade
from ppir_itk.backends import InsecureBackendWarning
from ppir_itk.errors import InputError
from ppir_itk.optimizer import window_convergence_value
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.transforms import Euler2DTransform, TranslationTransform
from ppir_itk.wrapping.images import to_sitk, write_image
from ppir_itk.wrapping.transforms import to_sitk as to_sitk_transform

TOLERANCE_PX = 0.5
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def pair() -> tuple[Any, Any]:
    """A 48 x 48 phantom and a copy turned by 0.05 rad about its centre and moved (2, -1.5)."""
    fixed = head_phantom((48, 48))
    truth = Euler2DTransform(2, [0.05, 2.0, -1.5], center=fixed.geometry.center())
    moving = moved_copy(fixed, truth)
    as_float = [sitk.Cast(to_sitk(image), sitk.sitkFloat64) for image in (fixed, moving)]
    return as_float[0], as_float[1]


def largest_displacement_px(first: Any, second: Any, image: Any) -> float:
    """The largest ``|first(x) - second(x)|`` over ``image``'s pixel centres, in pixels."""
    size = image.GetSize()
    largest = 0.0
    for index in np.ndindex(*size):
        point = image.TransformIndexToPhysicalPoint(tuple(int(i) for i in index))
        moved = np.subtract(first.TransformPoint(point), second.TransformPoint(point))
        largest = max(largest, float(np.linalg.norm(moved)))
    return largest / min(image.GetSpacing())


def run_both(
    script: Callable[[Any], Any], pair: tuple[Any, Any], **facade_options: Any
) -> tuple[Any, Any]:
    """``script(R)`` (it makes the calls and returns the initial transform it set) run with
    SimpleITK's method and with the facade; each run's (method, transform, initial, output)."""
    facade_options.setdefault("backend", "clear")
    runs = []
    with warnings.catch_warnings():  # module fixtures run outside conftest's filter
        warnings.simplefilter("ignore", InsecureBackendWarning)
        for method in (
            sitk.ImageRegistrationMethod(),
            facade.ImageRegistrationMethod(**facade_options),
        ):
            initial = script(method)
            runs.append((method, initial, method.Execute(*pair)))
    return runs[0], runs[1]


def centred(transform: Any, image: Any) -> Any:
    centre = image.TransformContinuousIndexToPhysicalPoint(
        [(size - 1) / 2.0 for size in image.GetSize()]
    )
    transform.SetCenter(centre)
    return transform


# -- mean squares, regular step, two levels: the events and their numbers -------------------
def _mean_squares_script(events: list[tuple[Any, ...]]) -> Callable[[Any], Any]:
    def script(R: Any) -> Any:
        events.clear()
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsRegularStepGradientDescent(1.0, 0.01, 100)
        R.SetShrinkFactorsPerLevel([2, 1])
        R.SetSmoothingSigmasPerLevel([1.0, 0.0])
        R.AddCommand(sitk.sitkStartEvent, lambda: events.append(("start",)))
        R.AddCommand(
            sitk.sitkMultiResolutionIterationEvent,
            lambda: events.append(("level", R.GetCurrentLevel())),
        )
        R.AddCommand(
            sitk.sitkIterationEvent,
            lambda: events.append(("iteration", R.GetCurrentLevel(), R.GetOptimizerIteration())),
        )
        R.AddCommand(sitk.sitkEndEvent, lambda: events.append(("end",)))
        initial = sitk.TranslationTransform(2)
        R.SetInitialTransform(initial)  # inPlace=True, SimpleITK's default
        return initial

    return script


@pytest.fixture(scope="module")
def mean_squares_runs(pair):
    sitk_events: list[tuple[Any, ...]] = []
    ours_events: list[tuple[Any, ...]] = []
    scripts = iter([_mean_squares_script(sitk_events), _mean_squares_script(ours_events)])
    reference, ours = run_both(lambda R: next(scripts)(R), pair)
    return reference, ours, sitk_events, ours_events


def test_mean_squares_regular_step_lands_where_simpleitk_does(mean_squares_runs, pair):
    (_, _, reference), (_, _, ours), _, _ = mean_squares_runs
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX


def test_execute_returns_the_initial_transform_type_and_updates_it_in_place(mean_squares_runs):
    (_, sitk_initial, reference), (_, initial, ours), _, _ = mean_squares_runs
    assert type(ours) is type(reference) is sitk.TranslationTransform
    assert initial.GetParameters() == ours.GetParameters()
    assert sitk_initial.GetParameters() == reference.GetParameters()
    assert np.linalg.norm(ours.GetParameters()) > 1.0  # moved, not left at the start


def test_events_come_in_simpleitks_order_with_iterations_from_zero(mean_squares_runs):
    (sitk_method, _, _), (method, _, _), sitk_events, events = mean_squares_runs

    expected_frame = [("start",), ("level", 0)]
    for seen in (sitk_events, events):
        assert seen[:2] == expected_frame and seen[-1] == ("end",)
        assert [event for event in seen if event[0] == "level"] == [("level", 0), ("level", 1)]
        for level in (0, 1):
            numbers = [event[2] for event in seen if event[0] == "iteration" and event[1] == level]
            assert numbers == list(range(len(numbers))) and numbers
    # After the run, as SimpleITK: the last level's count, the step that stopped it included.
    last = [event[2] for event in events if event[0] == "iteration" and event[1] == 1][-1]
    assert "converged: step length" in method.GetOptimizerStopConditionDescription()
    assert method.GetOptimizerIteration() == last + 2
    sitk_last = [event[2] for event in sitk_events if event[0] == "iteration" and event[1] == 1][-1]
    assert sitk_method.GetOptimizerIteration() == sitk_last + 2


def test_in_place_off_returns_a_composite_and_keeps_the_initial_transform(pair):
    def script(R: Any) -> Any:
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsRegularStepGradientDescent(1.0, 0.05, 30)
        initial = sitk.TranslationTransform(2)
        R.SetInitialTransform(initial, inPlace=False)
        return initial

    (_, sitk_initial, reference), (_, initial, ours) = run_both(script, pair)
    assert type(ours) is type(reference) is sitk.CompositeTransform
    assert initial.GetParameters() == sitk_initial.GetParameters() == (0.0, 0.0)
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX


# -- the other metrics and optimizers -------------------------------------------------------
def test_correlation_with_physical_shift_scales_on_a_rigid_transform(pair):
    def script(R: Any) -> Any:
        R.SetMetricAsCorrelation()
        R.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=200, gradientMagnitudeTolerance=1e-8
        )
        R.SetOptimizerScalesFromPhysicalShift()
        R.SetShrinkFactorsPerLevel([2, 1])
        R.SetSmoothingSigmasPerLevel([1.0, 0.0])
        initial = centred(sitk.Euler2DTransform(), pair[0])
        R.SetInitialTransform(initial)
        return initial

    (_, _, reference), (method, _, ours) = run_both(script, pair)
    assert type(ours) is sitk.Euler2DTransform
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX
    assert len(method.GetOptimizerScales()) == 3  # the last level's estimate


@pytest.mark.parametrize("estimator", ["jacobian", "physical-shift-0.2"])
@pytest.mark.parametrize("kind", ["affine", "euler"])
def test_estimated_scales_are_simpleitks(pair, kind, estimator):
    """ITK's estimates from the transform's Jacobian at the grid's corners, and from
    physical shifts with a probe other than 0.01 (an angle's shift is not linear in it):
    the same scales at each level, and the same result."""
    scales: list[list[tuple[float, ...]]] = []  # per run, per level (its first iteration)

    def script(R: Any) -> Any:
        run: list[tuple[float, ...]] = []
        scales.append(run)
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
        if estimator == "jacobian":
            R.SetOptimizerScalesFromJacobian()
        else:
            R.SetOptimizerScalesFromPhysicalShift(smallParameterVariation=0.2)
        R.AddCommand(
            sitk.sitkIterationEvent,
            lambda: (
                run.append(tuple(R.GetOptimizerScales()))
                if R.GetOptimizerIteration() == 0
                else None
            ),
        )
        R.SetShrinkFactorsPerLevel([2, 1])
        R.SetSmoothingSigmasPerLevel([1.0, 0.0])
        transform = sitk.AffineTransform(2) if kind == "affine" else sitk.Euler2DTransform()
        initial = centred(transform, pair[0])
        R.SetInitialTransform(initial)
        return initial

    (_, _, reference), (_, _, ours) = run_both(script, pair)
    assert len(scales[0]) == 2
    np.testing.assert_allclose(scales[1], scales[0], rtol=1e-9)
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX


def test_mattes_with_random_sampling(pair):
    def script(R: Any) -> Any:
        R.SetMetricAsMattesMutualInformation()  # SimpleITK's 50 bins
        R.SetMetricSamplingStrategy(R.RANDOM)
        R.SetMetricSamplingPercentage(0.5, 7)
        R.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, 200)
        R.SetOptimizerScalesFromPhysicalShift()
        R.SetInitialTransform(sitk.TranslationTransform(2))
        return None

    (_, _, reference), (_, _, ours) = run_both(script, pair)
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX


@pytest.mark.parametrize("line_search", [False, True], ids=["plain", "line-search"])
def test_gradient_descent_with_its_convergence_monitor(pair, line_search):
    def script(R: Any) -> Any:
        R.SetMetricAsMeanSquares()
        if line_search:
            R.SetOptimizerAsGradientDescentLineSearch(
                1.0, 100, convergenceMinimumValue=1e-6, convergenceWindowSize=5
            )
        else:
            R.SetOptimizerAsGradientDescent(1.0, 100, 1e-6, 5)
        R.SetOptimizerScalesFromPhysicalShift()
        initial = sitk.TranslationTransform(2)
        R.SetInitialTransform(initial)
        return initial

    (sitk_method, _, reference), (method, _, ours) = run_both(script, pair)
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX
    assert "Convergence checker passed" in sitk_method.GetOptimizerStopConditionDescription()
    assert method.GetOptimizerStopConditionDescription().startswith(
        "converged: windowed convergence value"
    )
    # The monitor stops it where it stops SimpleITK's, give or take the paths' differences.
    assert abs(method.GetOptimizerIteration() - sitk_method.GetOptimizerIteration()) <= 3
    assert method.GetOptimizerConvergenceValue() <= 1e-6
    assert method.GetOptimizerLearningRate() > 0


def test_an_estimated_learning_rate_steps_the_first_levels_spacing(pair):
    """ITK's default largest step is the smallest spacing of the first level's virtual
    domain, the fixed grid shrunk by that level's factor: 4 px here, not 1."""

    def script(R: Any) -> Any:
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsGradientDescent(1.0, 1, estimateLearningRate=R.Once)
        R.SetOptimizerScalesFromPhysicalShift()
        R.SetShrinkFactorsPerLevel([4])
        R.SetSmoothingSigmasPerLevel([2.0])
        initial = sitk.TranslationTransform(2)
        R.SetInitialTransform(initial)
        return initial

    (_, _, reference), (_, _, ours) = run_both(script, pair)
    steps = [float(np.linalg.norm(out.GetParameters())) for out in (reference, ours)]
    assert steps[0] == pytest.approx(4.0, rel=1e-3)
    assert steps[1] == pytest.approx(steps[0], rel=1e-3)


def test_the_window_convergence_value_is_itks(pair):
    """The monitor on SimpleITK's own values gives SimpleITK's convergence values (ITK
    fits the window in single precision)."""
    R = sitk.ImageRegistrationMethod()
    R.SetMetricAsMeanSquares()
    R.SetOptimizerAsGradientDescent(0.01, 40, 1e-12, 5, estimateLearningRate=R.Never)
    R.SetInitialTransform(sitk.TranslationTransform(2))
    seen: list[tuple[float, float]] = []
    R.AddCommand(
        sitk.sitkIterationEvent,
        lambda: seen.append((R.GetMetricValue(), R.GetOptimizerConvergenceValue())),
    )
    R.Execute(*pair)
    values = [value for value, _ in seen]
    for n in range(4, len(seen)):
        total = sum(abs(value) for value in values[: n + 1])
        ours = window_convergence_value(values[n - 4 : n + 1], total)
        assert ours == pytest.approx(seen[n][1], rel=1e-4, abs=1e-9)


def test_gauss_newton_lands_where_simpleitks_regular_step_does(pair):
    def script(R: Any) -> Any:
        R.SetMetricAsMeanSquares()
        if isinstance(R, facade.ImageRegistrationMethod):
            R.SetOptimizerAsGaussNewton()
        else:
            R.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-5, 300)
            R.SetOptimizerScalesFromPhysicalShift()
        initial = centred(sitk.Euler2DTransform(), pair[0])
        R.SetInitialTransform(initial)
        return initial

    (_, _, reference), (method, _, ours) = run_both(script, pair)
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX
    with pytest.raises(NotImplementedError, match="GetOptimizerLearningRate"):
        method.GetOptimizerLearningRate()


def test_index_shift_scales_are_simpleitks_on_a_grid_of_one_spacing():
    """SimpleITK's ImageRegistrationMethod3 calls, on a phantom of 2 mm pixels."""
    fixed = head_phantom((40, 40), spacing=(2.0, 2.0))
    truth = Euler2DTransform(2, [0.05, 3.0, -2.0], center=fixed.geometry.center())
    images = (fixed, moved_copy(fixed, truth))
    pair = tuple(sitk.Cast(to_sitk(image), sitk.sitkFloat32) for image in images)
    first_scales: list[tuple[float, ...]] = []

    def script(R: Any) -> Any:
        R.SetMetricAsCorrelation()
        R.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0, minStep=1e-4, numberOfIterations=500, gradientMagnitudeTolerance=1e-8
        )
        R.SetOptimizerScalesFromIndexShift()
        initial = sitk.CenteredTransformInitializer(*pair, sitk.Similarity2DTransform())
        R.SetInitialTransform(initial)
        R.AddCommand(
            sitk.sitkIterationEvent,
            lambda: R.GetOptimizerIteration() == 0 and first_scales.append(R.GetOptimizerScales()),
        )
        return initial

    (_, _, reference), (_, _, ours) = run_both(script, pair)
    sitk_scales, our_scales = first_scales
    assert our_scales == pytest.approx(sitk_scales, rel=1e-3)
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX


def test_index_shift_scales_with_another_optimizer_are_refused(pair):
    R = facade.ImageRegistrationMethod(backend="clear")
    R.SetMetricAsMeanSquares()
    R.SetOptimizerAsGradientDescent(1.0, 10)
    R.SetOptimizerScalesFromIndexShift()
    R.SetInitialTransform(sitk.TranslationTransform(2))
    with pytest.raises(NotImplementedError, match="^SetOptimizerScalesFromIndexShift: "):
        R.Execute(*pair)


def test_sigmas_in_voxels_are_converted_on_isotropic_images():
    fixed = head_phantom((40, 40), spacing=(2.0, 2.0))
    truth = Euler2DTransform(2, [0.0, 3.0, -2.0], center=fixed.geometry.center())
    pair = tuple(
        sitk.Cast(to_sitk(image), sitk.sitkFloat64) for image in (fixed, moved_copy(fixed, truth))
    )

    def script(R: Any) -> Any:
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsRegularStepGradientDescent(2.0, 0.01, 100)
        R.SetShrinkFactorsPerLevel([2, 1])
        R.SetSmoothingSigmasPerLevel([2.0, 0.0])
        R.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        R.SetInitialTransform(sitk.TranslationTransform(2))
        return None

    (_, _, reference), (method, _, ours) = run_both(script, pair)
    assert [level.smoothing_sigma for level in method.GetResult().levels] == [4.0, 0.0]  # mm
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX


def test_an_observer_stops_the_registration(pair):
    R = facade.ImageRegistrationMethod(backend="clear")
    R.SetMetricAsMeanSquares()
    R.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-6, 100)
    R.SetInitialTransform(sitk.TranslationTransform(2))
    R.AddCommand(
        sitk.sitkIterationEvent, lambda: R.GetOptimizerIteration() == 2 and R.StopRegistration()
    )
    R.Execute(*pair)
    assert "stopped by an observer after 3 iterations" in R.GetOptimizerStopConditionDescription()


# -- a private backend, and a fixed party on another "machine" -----------------------------
def test_the_default_private_backend_lands_where_simpleitk_does(pair):
    def script(R: Any) -> Any:
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsRegularStepGradientDescent(2.0, 0.1, 12)
        R.SetInitialTransform(sitk.TranslationTransform(2))
        return None

    assert facade.DEFAULT_BACKEND == "he"
    (_, _, reference), (method, _, ours) = run_both(script, pair, backend=facade.DEFAULT_BACKEND)
    assert method.GetResult().private and method.GetResult().backend == "he"
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX


def test_remote_fixed_image_carries_the_public_geometry_only(pair, tmp_path):
    pki = ppir_itk.init_pki(tmp_path / "pki")
    image = tmp_path / "fixed.nrrd"
    sitk.WriteImage(pair[0], str(image))
    remote_result = None
    with ppir_serve(pki, image, tmp_path / "serve.log", "--backends", "clear") as address:
        fixed = facade.RemoteFixedImage(address, ppir_itk.TLS.for_role(pki, "moving-party"))
        assert fixed.geometry is None
        R = facade.ImageRegistrationMethod(backend="clear")
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsRegularStepGradientDescent(1.0, 0.05, 40)
        R.SetInitialTransform(sitk.TranslationTransform(2))
        remote_result = R.Execute(fixed, pair[1])
    assert fixed.geometry is not None and fixed.geometry.size == pair[0].GetSize()
    assert R.GetResult().transport == "grpc+mtls"
    local = facade.ImageRegistrationMethod(backend="clear")
    local.SetMetricAsMeanSquares()
    local.SetOptimizerAsRegularStepGradientDescent(1.0, 0.05, 40)
    local.SetInitialTransform(sitk.TranslationTransform(2))
    assert local.Execute(*pair).GetParameters() == remote_result.GetParameters()


def test_the_centred_initializer_of_a_remote_fixed_image_is_simpleitks(pair, tmp_path):
    """GEOMETRY from the public geometry, MOMENTS from the centre of mass the fixed party
    discloses (a warning says so): both SimpleITK's own result on the local image."""
    pki = ppir_itk.init_pki(tmp_path / "pki")
    image = tmp_path / "fixed.nrrd"
    sitk.WriteImage(pair[0], str(image))
    modes = {"GEOMETRY": facade.GEOMETRY, "MOMENTS": facade.MOMENTS}
    with ppir_serve(pki, image, tmp_path / "serve.log", "--backends", "clear") as address:
        for name, mode in modes.items():
            fixed = facade.RemoteFixedImage(address, ppir_itk.TLS.for_role(pki, "moving-party"))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ours = facade.CenteredTransformInitializer(
                    fixed, pair[1], sitk.Euler2DTransform(), mode, backend="clear"
                )
            disclosed = [w for w in caught if "disclosed its centre of mass" in str(w.message)]
            assert len(disclosed) == (name == "MOMENTS"), name
            reference = sitk.CenteredTransformInitializer(
                pair[0], pair[1], sitk.Euler2DTransform(), mode
            )
            assert type(ours) is type(reference)
            np.testing.assert_allclose(ours.GetCenter(), reference.GetCenter(), atol=1e-9)
            np.testing.assert_allclose(
                ours.GetParameters(), reference.GetParameters(), atol=1e-9, err_msg=name
            )
            assert fixed.geometry is not None


def test_the_readme_paragraph_runs_as_written(tmp_path, monkeypatch):
    """README.md's "From a SimpleITK script" block, from a working directory of its own."""
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), re.M | re.S)
    (block,) = [
        block for block in blocks if "ppir_itk.simpleitk.ImageRegistrationMethod()" in block
    ]
    fixed = head_phantom((40, 40))
    truth = TranslationTransform(2, [2.0, -1.5])
    write_image(fixed, tmp_path / "fixed.nii.gz")
    write_image(moved_copy(fixed, truth), tmp_path / "moving.nii.gz")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "example.py").write_text(block, encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "example.py"], capture_output=True, text=True, check=False, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    written = sitk.ReadTransform(str(tmp_path / "out.tfm"))
    assert largest_displacement_px(written, to_sitk_transform(truth), to_sitk(fixed)) < 0.1


# -- what is refused, in a sentence naming the call -----------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda R: R.SetMetricAsANTSNeighborhoodCorrelation(2),
        lambda R: R.SetMetricAsJointHistogramMutualInformation(),
        lambda R: R.SetMetricAsDemons(),
        lambda R: R.SetInterpolator(sitk.sitkBSpline),
        lambda R: R.SetMetricSamplingPercentagePerLevel([0.1, 0.2]),
        lambda R: R.AddCommand(sitk.sitkProgressEvent, lambda: None),
    ],
    ids=[
        "SetMetricAsANTSNeighborhoodCorrelation",
        "SetMetricAsJointHistogramMutualInformation",
        "SetMetricAsDemons",
        "SetInterpolator",
        "SetMetricSamplingPercentagePerLevel",
        "AddCommand",
    ],
)
def test_a_call_that_cannot_be_honoured_is_refused_naming_it(call, request):
    name = request.node.callspec.id
    with pytest.raises(NotImplementedError, match=rf"^{name}: \w"):
        call(facade.ImageRegistrationMethod(backend="clear"))


@pytest.mark.parametrize(
    "name",
    [
        "SetOptimizerAsAmoeba",
        "SetOptimizerAsConjugateGradientLineSearch",
        "SetOptimizerAsExhaustive",
        "SetOptimizerAsLBFGS2",
        "SetOptimizerAsOnePlusOneEvolutionary",
        "SetOptimizerAsPowell",
    ],
)
def test_an_optimizer_the_library_lacks_is_refused_with_those_it_has(name):
    with pytest.raises(NotImplementedError, match=rf"^{name}: the private optimizers are "):
        getattr(facade.ImageRegistrationMethod(backend="clear"), name)


def test_a_bspline_as_initial_transform_at_its_own_mesh_lands_where_simpleitk_does(pair):
    """SetInitialTransformAsBSpline with scale factors 1 (SimpleITK: the initial mesh at
    every level) is SetInitialTransform's run, and returns the B-spline in place."""

    def script(R: Any) -> Any:
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsGradientDescentLineSearch(
            5.0, 20, convergenceMinimumValue=1e-4, convergenceWindowSize=5
        )
        R.SetOptimizerScalesFromPhysicalShift()
        initial = sitk.BSplineTransformInitializer(pair[0], [3, 3])
        R.SetInitialTransformAsBSpline(initial, inPlace=True, scaleFactors=[1])
        return initial

    (_, _, reference), (_, initial, ours) = run_both(script, pair)
    assert type(ours) is sitk.BSplineTransform
    assert initial.GetParameters() == ours.GetParameters()
    assert np.abs(ours.GetParameters()).max() > 1.0  # moved, not left at zero
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX


@pytest.mark.parametrize("kind", ["euler", "bspline"])
def test_a_moving_initial_transform_is_composed_as_simpleitk_does(pair, kind):
    """SimpleITK reads the moving image at initial(T(x)) and returns T alone; here the
    initial transform carries most of the truth's shift, T the rest (and the turn)."""
    # A turn too, so the chain rule through the initial transform's matrix counts.
    moving_initial = centred(sitk.Euler2DTransform(), pair[0])
    moving_initial.SetAngle(0.03)
    moving_initial.SetTranslation((1.5, -1.0))

    def script(R: Any) -> Any:
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsRegularStepGradientDescent(1.0, 0.001, 200)
        R.SetOptimizerScalesFromPhysicalShift()
        R.SetMovingInitialTransform(moving_initial)
        if kind == "euler":
            initial = centred(sitk.Euler2DTransform(), pair[0])
        else:
            initial = sitk.BSplineTransformInitializer(pair[0], [3, 3])
        R.SetInitialTransform(initial)
        return initial

    (R, _, reference), (ours_R, _, ours) = run_both(script, pair)
    assert ours_R.GetMovingInitialTransform() is moving_initial
    assert type(ours) is type(reference)
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX
    if kind == "euler":  # T alone is not the whole map: composed with the initial, the truth
        whole = sitk.CompositeTransform([moving_initial, ours])
        centre = centred(sitk.Euler2DTransform(), pair[0]).GetCenter()
        truth = to_sitk_transform(Euler2DTransform(2, [0.05, 2.0, -1.5], center=centre))
        assert largest_displacement_px(whole, truth, pair[0]) < 0.3
        assert largest_displacement_px(ours, truth, pair[0]) > 1.0


@pytest.mark.parametrize("backend", ["clear", "spdz"])
def test_a_fixed_initial_transform_is_read_as_simpleitk_does(pair, backend):
    """SimpleITK reads the fixed image at F(x) for the virtual points x (the fixed grid) and
    compares it with I(T(x)); F moves part of the grid off the fixed image, which the fixed
    party runs as its own mask. Its value and its registration as SimpleITK's."""
    fixed_initial = centred(sitk.Euler2DTransform(), pair[0])
    fixed_initial.SetAngle(-0.02)
    fixed_initial.SetTranslation((3.0, 2.0))
    values = []

    def script(R: Any) -> Any:
        R.SetMetricAsMeanSquares()
        R.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
        R.SetOptimizerScalesFromPhysicalShift()
        R.SetFixedInitialTransform(fixed_initial)
        initial = centred(sitk.Euler2DTransform(), pair[0])
        R.SetInitialTransform(initial)
        values.append(R.MetricEvaluate(*pair))
        return initial

    (_, _, reference), (method, _, ours) = run_both(script, pair, backend=backend)
    assert method.GetFixedInitialTransform() is fixed_initial
    np.testing.assert_allclose(values[1], values[0], rtol=1e-5)
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX
    assert method.GetResult().levels[-1].points_inside_fixed_mask < pair[0].GetNumberOfPixels()


@pytest.mark.parametrize("kind", ["euler", "bspline"])
def test_lbfgsb_lands_where_simpleitks_does(pair, kind):
    """ITK's L-BFGS-B (SimpleITK's ImageRegistrationMethodBSpline1 calls), correlation."""
    events: list[list[int]] = []

    def script(R: Any) -> Any:
        iterations: list[int] = []
        events.append(iterations)
        R.SetMetricAsCorrelation()
        R.SetOptimizerAsLBFGSB(
            gradientConvergenceTolerance=1e-5,
            numberOfIterations=100,
            maximumNumberOfCorrections=5,
            maximumNumberOfFunctionEvaluations=1000,
            costFunctionConvergenceFactor=1e7,
        )
        R.AddCommand(sitk.sitkIterationEvent, lambda: iterations.append(R.GetOptimizerIteration()))
        if kind == "euler":
            initial = centred(sitk.Euler2DTransform(), pair[0])
        else:
            initial = sitk.BSplineTransformInitializer(pair[0], [4, 4])
        R.SetInitialTransform(initial, True)
        return initial

    (_, _, reference), (method, _, ours) = run_both(script, pair)
    assert type(ours) is type(reference)
    assert largest_displacement_px(reference, ours, pair[0]) < TOLERANCE_PX
    assert events[1][:3] == [0, 1, 2] and len(events[1]) > 3
    assert method.GetOptimizerStopConditionDescription().startswith("converged")


@pytest.mark.parametrize("metric", ["meansquares", "correlation", "mattes"])
def test_metric_evaluate_is_simpleitks_value(pair, metric):
    """At full resolution and every point, whatever the pyramid and sampling, after the
    moving initial transform, as SimpleITK's."""
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureBackendWarning)
        for R in (sitk.ImageRegistrationMethod(), facade.ImageRegistrationMethod(backend="clear")):
            if metric == "mattes":
                R.SetMetricAsMattesMutualInformation(32)
            else:
                call = (
                    "SetMetricAsMeanSquares"
                    if metric == "meansquares"
                    else "SetMetricAsCorrelation"
                )
                getattr(R, call)()
            R.SetShrinkFactorsPerLevel([2])  # not used by MetricEvaluate
            R.SetSmoothingSigmasPerLevel([1.0])
            R.SetMetricSamplingStrategy(R.RANDOM)
            R.SetMetricSamplingPercentage(0.2, 1)
            initial = centred(sitk.Euler2DTransform(), pair[0])
            initial.SetAngle(0.02)
            R.SetInitialTransform(initial)
            R.SetMovingInitialTransform(sitk.TranslationTransform(2, (1.0, -0.5)))
            values.append(R.MetricEvaluate(*pair))
    np.testing.assert_allclose(values[1], values[0], rtol=1e-6)


def test_a_bspline_mesh_refined_between_levels_is_refused():
    initial = sitk.BSplineTransformInitializer(sitk.Image(16, 16, sitk.sitkFloat32), [2, 2])
    with pytest.raises(NotImplementedError, match=r"^SetInitialTransformAsBSpline: the B-spline"):
        facade.ImageRegistrationMethod(backend="clear").SetInitialTransformAsBSpline(
            initial, scaleFactors=[1, 2, 5]
        )


def test_a_metric_the_backend_does_not_compute_is_refused_with_the_backends_that_do():
    with pytest.raises(InputError, match="does not compute metric 'mattes'.* spdz"):
        facade.ImageRegistrationMethod(backend="he").SetMetricAsMattesMutualInformation()


def test_a_transform_the_core_would_substitute_is_refused(pair):
    R = facade.ImageRegistrationMethod(backend="clear")
    R.SetMetricAsMeanSquares()
    R.SetOptimizerAsRegularStepGradientDescent(1.0, 0.05, 10)
    R.SetInitialTransform(sitk.ScaleTransform(2))
    with pytest.raises(NotImplementedError, match="^SetInitialTransform: .*ScaleTransform"):
        R.Execute(*pair)


def test_execute_without_an_initial_transform_is_refused_as_simpleitk_does(pair):
    R = facade.ImageRegistrationMethod(backend="clear")
    R.SetMetricAsMeanSquares()
    R.SetOptimizerAsRegularStepGradientDescent(1.0, 0.05, 10)
    with pytest.raises(InputError, match="no initial transform"):
        R.Execute(*pair)
