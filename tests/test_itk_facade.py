"""ITK-shaped scripts on ``ppir_itk.ImageRegistrationMethod``: ITK's calls, ITK's answer.

The script makes the calls of ITK's ``Examples/RegistrationITKv4/ImageRegistration3.py``
(written here, not copied) on a small phantom pair with ppir_itk's method, metric and
optimizer (clear backend, the fixed party in its own process over mutual TLS); the result
must agree within 0.5 px with ITK's registration of the same settings (SimpleITK's, and in
a slow test the script run with ITK's own Python objects). The calls the library cannot honour
raise ``NotImplementedError`` naming the call.
"""

from __future__ import annotations

import warnings
from typing import Any

import itk
import numpy as np
import pytest
import SimpleITK as sitk

import ppir_itk
from ppir_itk.backends import InsecureBackendWarning
from ppir_itk.compose import spawn_fixed_party
from ppir_itk.errors import InputError
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.transforms import TranslationTransform
from ppir_itk.wrapping.images import to_itk
from ppir_itk.wrapping.transforms import from_itk

TOLERANCE_PX = 0.5
ImageType = itk.Image[itk.F, 2]


@pytest.fixture(scope="module")
def pair() -> tuple[Any, Any]:
    """A 48 x 48 phantom and a copy moved by (2, -1.5) mm, as ITK images."""
    fixed = head_phantom((48, 48))
    moving = moved_copy(fixed, TranslationTransform(2, [2.0, -1.5]))
    return to_itk(fixed), to_itk(moving)


def example_script(registration: Any, metric: Any, optimizer: Any, pair: tuple[Any, Any]):
    """ImageRegistration3's calls in its order; the observer's records and the result."""
    fixed, moving = pair
    transform = itk.TranslationTransform[itk.D, 2].New()
    registration.SetOptimizer(optimizer)
    registration.SetMetric(metric)
    registration.SetFixedImage(fixed)
    registration.SetMovingImage(moving)
    registration.SetInitialTransform(transform)
    optimizer.SetLearningRate(1.0)
    optimizer.SetMinimumStepLength(0.001)
    optimizer.SetRelaxationFactor(0.5)
    optimizer.SetNumberOfIterations(100)
    registration.SetNumberOfLevels(1)
    registration.SetSmoothingSigmasPerLevel([0])
    registration.SetShrinkFactorsPerLevel([1])
    seen: list[tuple[float, ...]] = []

    def on_iteration() -> None:
        live = registration.GetOutput().Get().GetParameters()
        seen.append((optimizer.GetValue(), live.GetElement(0), *transform.GetParameters()))

    command = itk.PyCommand.New()
    command.SetCommandCallable(on_iteration)
    optimizer.AddObserver(itk.IterationEvent(), command)
    registration.Update()
    return seen, transform, registration.GetTransform()


def largest_displacement_px(first: Any, second: Any, image: Any) -> float:
    size = np.asarray(image.GetLargestPossibleRegion().GetSize())
    indices = np.stack(np.meshgrid(*map(np.arange, size)), -1).reshape(-1, 2)
    points = indices * np.asarray(image.GetSpacing()) + np.asarray(image.GetOrigin())
    moved = [from_itk(t).transform_points(points) for t in (first, second)]
    return float(np.linalg.norm(moved[0] - moved[1], axis=1).max() / min(image.GetSpacing()))


@pytest.fixture(scope="module")
def our_run(pair):
    with (
        warnings.catch_warnings(),  # module fixtures run outside conftest's filter
        spawn_fixed_party(pair[0], backends=("clear",)) as party,
    ):
        warnings.simplefilter("ignore", InsecureBackendWarning)
        session = party.connect()
        return example_script(
            ppir_itk.ImageRegistrationMethod(),
            ppir_itk.PrivateMeanSquaresImageToImageMetric("clear", session),
            ppir_itk.RegularStepGradientDescentOptimizer(),
            pair,
        )


def test_an_itk_example_script_lands_where_itk_does(our_run, pair):
    """Against ITK's ImageRegistrationMethodv4 through SimpleITK (same settings): ITK's
    Python registration module takes tens of seconds to load; the slow test below uses it."""
    fixed, moving = (sitk.GetImageFromArray(itk.array_from_image(image)) for image in pair)
    for image, source in zip((fixed, moving), pair, strict=True):
        image.SetSpacing(tuple(source.GetSpacing()))
        image.SetOrigin(tuple(source.GetOrigin()))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 0.001, 100, relaxationFactor=0.5)
    method.SetInitialTransform(sitk.TranslationTransform(2))
    method.SetShrinkFactorsPerLevel([1])
    method.SetSmoothingSigmasPerLevel([0])
    theirs = itk.TranslationTransform[itk.D, 2].New()
    theirs.SetParameters(
        itk.OptimizerParameters[itk.D](method.Execute(fixed, moving).GetParameters())
    )
    assert largest_displacement_px(theirs, our_run[2], pair[0]) < TOLERANCE_PX


@pytest.mark.slow
def test_an_itk_example_script_lands_where_itk_pythons_own_objects_do(our_run, pair):
    theirs = example_script(
        itk.ImageRegistrationMethodv4[ImageType, ImageType].New(),
        itk.MeanSquaresImageToImageMetricv4[ImageType, ImageType].New(),
        itk.RegularStepGradientDescentOptimizerv4[itk.D].New(),
        pair,
    )
    assert largest_displacement_px(theirs[2], our_run[2], pair[0]) < TOLERANCE_PX


def test_pycommand_observers_see_the_live_transform_updated_in_place(our_run):
    seen, initial, result = our_run
    assert len(seen) > 2
    # GetOutput().Get() and the initial transform (ITK's InPlaceOn) move with each iteration.
    assert all(record[1] == record[2] for record in seen)
    assert len({record[1] for record in seen}) > 2
    assert result is initial
    assert np.allclose(list(initial.GetParameters()), [2.0, -1.5], atol=0.05)


def test_optimizer_setters_are_checked_as_the_constructor_checks():
    optimizer = ppir_itk.RegularStepGradientDescentOptimizer()
    with pytest.raises(InputError, match="LearningRate"):
        optimizer.SetLearningRate(-1.0)
    with pytest.raises(InputError, match="RelaxationFactor"):
        optimizer.SetRelaxationFactor(1.5)
    scales = itk.OptimizerParameters[itk.D](2)
    scales.Fill(0.5)
    optimizer.SetScales(scales)
    optimizer.ReturnBestParametersAndValueOn()
    assert optimizer.Scales is not None and list(optimizer.Scales) == [0.5, 0.5]
    assert optimizer.ReturnBestParametersAndValue


@pytest.mark.parametrize(
    "call, arguments",
    [
        ("SetVirtualDomainFromImage", (None,)),
        ("SetOptimizerWeights", (None,)),
        ("SetMetricSamplingPercentagePerLevel", ([0.1, 0.2],)),
        ("SetSmoothingSigmasAreSpecifiedInPhysicalUnits", (False,)),
    ],
)
def test_calls_the_library_cannot_honour_are_refused_by_name(call, arguments):
    method = ppir_itk.ImageRegistrationMethod()
    with pytest.raises(NotImplementedError, match=f"^{call}"):
        getattr(method, call)(*arguments)


def test_a_fixed_image_that_is_not_the_fixed_partys_is_named(pair):
    fixed, moving = pair
    other = to_itk(head_phantom((40, 48)))
    method = ppir_itk.ImageRegistrationMethod()
    method.SetMetric(
        ppir_itk.PrivateMeanSquaresImageToImageMetric("clear", ppir_itk.in_process_session(fixed))
    )
    method.SetFixedImage(other)
    method.SetMovingImage(moving)
    method.SetInitialTransform(itk.TranslationTransform[itk.D, 2].New())
    with pytest.raises(InputError, match="^SetFixedImage"):
        method.Update()


def test_levels_that_disagree_are_named(pair):
    fixed, moving = pair
    method = ppir_itk.ImageRegistrationMethod()
    method.SetMetric(
        ppir_itk.PrivateMeanSquaresImageToImageMetric("clear", ppir_itk.in_process_session(fixed))
    )
    method.SetMovingImage(moving)
    method.SetNumberOfLevels(2)
    method.SetShrinkFactorsPerLevel([1])
    with pytest.raises(InputError, match="^SetShrinkFactorsPerLevel"):
        method.Update()


def test_itk_sampling_and_level_calls_reach_the_run(pair):
    fixed, moving = pair
    method = ppir_itk.ImageRegistrationMethod()
    method.SetMetric(
        ppir_itk.PrivateMeanSquaresImageToImageMetric("clear", ppir_itk.in_process_session(fixed))
    )
    method.SetMovingImage(moving)
    method.SetInitialTransform(itk.TranslationTransform[itk.D, 2].New())
    method.SetNumberOfLevels(2)
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SetMetricSamplingStrategy(
        itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM
    )
    method.SetMetricSamplingPercentage(0.5)
    method.MetricSamplingReinitializeSeed(7)
    method.Update()
    result = method.GetResult()
    assert [level.shrink_factor for level in result.levels] == [2, 1]
    assert result.sampling == "URS (50.0% of the points, public seed 7)"


def test_a_metric_that_is_not_private_is_named():
    with pytest.raises(InputError, match="^SetMetric: object is not a private metric"):
        ppir_itk.ImageRegistrationMethod().SetMetric(object())  # type: ignore[arg-type]
