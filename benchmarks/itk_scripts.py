"""ITK's Python registration examples, run with ITK's metric and with the private one.

    python benchmarks/itk_scripts.py [--private-backend he] [--repeats 1]

ITK ships ``Examples/RegistrationITKv4/ImageRegistration3.py`` (mean squares, a
translation), ``ImageRegistration4.py`` (Mattes mutual information, 24 bins, 20 % random
sampling) and ``ImageRegistration5.py`` (mean squares, a ``CenteredRigid2DTransform``
with hand-set scales). Each is written here as a script of our own making the same calls
in the same order (``itk.ImageRegistrationMethodv4``, the metric, the regular-step
optimizer and its setters, one level, an ``itk.PyCommand`` observer of the optimizer's
``IterationEvent``, ``Update()``, ``GetOutput().Get()``, ``GetTransform()``), plus the
lines that swap ITK's metric, method and optimizer for ppir_itk's: the private variant is
the ITK variant with those lines replaced, and the table counts them from a diff of the
two. The private variant's fixed party runs in its own process over mutual TLS
(:func:`ppir_itk.compose.spawn_fixed_party`); the clear backend measures the accuracy
of the swap, one run per example uses a private backend.

The pair: the package's 2-D head phantom (``ppir_itk/data/demo_fixed.mha``, the pair
``ppir demo`` registers) and a copy moved by a known transform (a translation for 3 and 4,
a rotation about the centre and a translation for 5), as ``ppir_itk.phantoms.moved_copy``
makes it. Columns: the lines the private variant adds (+) and removes (-); ITK's result
against ppir_itk's (the largest displacement over the fixed grid's pixel centres, px); each
against the truth; the seconds of each run (the private one from spawning the fixed party
to the transform).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from ppir_itk.compose import spawn_fixed_party
from ppir_itk.image import ImageGrid
from ppir_itk.phantoms import moved_copy
from ppir_itk.transforms import CenteredRigid2DTransform, LinearTransform, TranslationTransform
from ppir_itk.wrapping.images import as_image_grid, to_itk
from ppir_itk.wrapping.transforms import from_itk


def _opening(transform_type: str, metric_type: str) -> str:
    """Every example's types and objects, in ITK's order (method, metric, transform,
    optimizer; then the optimizer and metric set on the method)."""
    return f"""\
import itk
ImageType = itk.Image[itk.F, 2]
TransformType = {transform_type}
OptimizerType = itk.RegularStepGradientDescentOptimizerv4[itk.D]
RegistrationType = itk.ImageRegistrationMethodv4[ImageType, ImageType]
MetricType = {metric_type}[ImageType, ImageType]
registration = RegistrationType.New()
imageMetric = MetricType.New()
transform = TransformType.New()
optimizer = OptimizerType.New()
registration.SetOptimizer(optimizer)
registration.SetMetric(imageMetric)
"""


_IMAGES = """\
registration.SetFixedImage(fixedImage)
registration.SetMovingImage(movingImage)
"""
_ONE_LEVEL = """\
registration.SetNumberOfLevels(1)
registration.SetSmoothingSigmasPerLevel([0])
registration.SetShrinkFactorsPerLevel([1])
"""


def _observed_run(position: str, shown: int) -> str:
    """An ``itk.PyCommand`` on the optimizer's IterationEvent recording the value and the
    first ``shown`` parameters of ``position``, then the run and its result."""
    return f"""\
def onIteration():
    position = {position}
    trace.append((optimizer.GetValue(), *(position.GetElement(i) for i in range({shown}))))
command = itk.PyCommand.New()
command.SetCommandCallable(onIteration)
optimizer.AddObserver(itk.IterationEvent(), command)
registration.Update()
final = registration.GetOutput().Get().GetParameters()
result = registration.GetTransform()
"""


_LIVE_OUTPUT = "registration.GetOutput().Get().GetParameters()"
_TRANSLATION = "itk.TranslationTransform[itk.D, 2]"

# The calls of ITK's ImageRegistration3.py, in its order, written for this benchmark.
MEAN_SQUARES_TRANSLATION = (
    _opening(_TRANSLATION, "itk.MeanSquaresImageToImageMetricv4")
    + _IMAGES
    + """\
registration.SetInitialTransform(transform)
optimizer.SetLearningRate(4)
optimizer.SetMinimumStepLength(0.001)
optimizer.SetRelaxationFactor(0.5)
optimizer.SetNumberOfIterations(100)
"""
    + _ONE_LEVEL
    + _observed_run(_LIVE_OUTPUT, 2)
)

# The calls of ITK's ImageRegistration4.py, in its order.
MATTES_TRANSLATION = (
    _opening(_TRANSLATION, "itk.MattesMutualInformationImageToImageMetricv4")
    + """\
bins = 24
imageMetric.SetNumberOfHistogramBins(bins)
imageMetric.SetUseMovingImageGradientFilter(False)
imageMetric.SetUseFixedImageGradientFilter(False)
"""
    + _IMAGES
    + """\
registration.SetInitialTransform(transform)
optimizer.SetLearningRate(8.0)
optimizer.SetMinimumStepLength(0.001)
optimizer.SetNumberOfIterations(100)
optimizer.ReturnBestParametersAndValueOn()
optimizer.SetRelaxationFactor(0.8)
"""
    + _ONE_LEVEL
    + """\
registration.SetMetricSamplingStrategy(
    itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM
)
registration.SetMetricSamplingPercentage(0.20)
"""
    + _observed_run(_LIVE_OUTPUT, 2)
)

# The calls of ITK's ImageRegistration5.py, in its order; its observer reads the
# transform itself, which ITK updates in place.
MEAN_SQUARES_CENTERED_RIGID = (
    _opening("itk.CenteredRigid2DTransform[itk.D]", "itk.MeanSquaresImageToImageMetricv4")
    + _IMAGES
    + """\
transform.SetAngle(0.0)
def imageCentre(image):
    origin, spacing = image.GetOrigin(), image.GetSpacing()
    size = image.GetLargestPossibleRegion().GetSize()
    return [
        origin.GetElement(i) + spacing.GetElement(i) * size.GetElement(i) / 2.0 for i in range(2)
    ]
fixedCentre, movingCentre = imageCentre(fixedImage), imageCentre(movingImage)
centre = transform.GetCenter()
centre.SetElement(0, fixedCentre[0])
centre.SetElement(1, fixedCentre[1])
translation = transform.GetTranslation()
translation.SetElement(0, movingCentre[0] - fixedCentre[0])
translation.SetElement(1, movingCentre[1] - fixedCentre[1])
registration.SetInitialTransform(transform)
scales = itk.OptimizerParameters[itk.D](transform.GetNumberOfParameters())
scales.SetElement(0, 1.0)
for i in range(1, 5):
    scales.SetElement(i, 1.0 / 1000.0)
optimizer.SetScales(scales)
optimizer.SetRelaxationFactor(0.6)
optimizer.SetLearningRate(0.1)
optimizer.SetMinimumStepLength(0.001)
optimizer.SetNumberOfIterations(200)
"""
    + _ONE_LEVEL
    + _observed_run("transform.GetParameters()", 5)
)

# The swap: the private variant is the ITK variant with these lines replaced (a line
# replaced by "" is removed; the first replaces ``import itk`` by two lines).
_METHOD = (
    "registration = RegistrationType.New()",
    "registration = ppir_itk.ImageRegistrationMethod()",
)
_OPTIMIZER = (
    "optimizer = OptimizerType.New()",
    "optimizer = ppir_itk.RegularStepGradientDescentOptimizer()",
)
_IMPORT = ("import itk", "import itk\nimport ppir_itk\nsession = fixed_party_session(fixedImage)")
_MEAN_SQUARES = (
    "imageMetric = MetricType.New()",
    "imageMetric = ppir_itk.PrivateMeanSquaresImageToImageMetric(backend, session)",
)
SWAPS = {
    MEAN_SQUARES_TRANSLATION: dict([_IMPORT, _METHOD, _MEAN_SQUARES, _OPTIMIZER]),
    MATTES_TRANSLATION: dict(
        [
            _IMPORT,
            _METHOD,
            (
                "imageMetric = MetricType.New()",
                "imageMetric = ppir_itk.PrivateMattesMutualInformationImageToImageMetric("
                "backend, session, number_of_histogram_bins=24)",
            ),
            _OPTIMIZER,
            # The bins are a constructor argument; the fixed image's gradient is never used.
            ("imageMetric.SetNumberOfHistogramBins(bins)", ""),
            ("imageMetric.SetUseFixedImageGradientFilter(False)", ""),
        ]
    ),
    MEAN_SQUARES_CENTERED_RIGID: dict([_IMPORT, _METHOD, _MEAN_SQUARES, _OPTIMIZER]),
}


@dataclass(frozen=True)
class Example:
    name: str  # ITK's file
    script: str
    truth: LinearTransform
    private_backend: str  # the backend of the private run ("" for none)


def private_variant(script: str) -> str:
    """``script`` with its ITK metric, method and optimizer swapped for ppir_itk's."""
    swaps = SWAPS[script]
    lines = [swaps.get(line, line) for line in script.splitlines()]
    return "\n".join(line for line in lines if line) + "\n"


def changed_lines(script: str) -> tuple[int, int]:
    """Lines the private variant adds and removes, from a diff of the two variants."""
    diff = list(difflib.ndiff(script.splitlines(), private_variant(script).splitlines()))
    return sum(line.startswith("+ ") for line in diff), sum(line.startswith("- ") for line in diff)


def demo_fixed() -> ImageGrid:
    with resources.as_file(resources.files("ppir_itk") / "data" / "demo_fixed.mha") as path:
        return as_image_grid(str(path), name="demo fixed image")


def examples(fixed: ImageGrid, private_backend: str) -> list[Example]:
    centre = fixed.geometry.center()
    rigid = CenteredRigid2DTransform(2, [0.08, *centre, 4.5, -3.25])
    return [
        Example(
            "ImageRegistration3", MEAN_SQUARES_TRANSLATION, _shift(6.5, -4.25), private_backend
        ),
        Example("ImageRegistration4", MATTES_TRANSLATION, _shift(6.5, -4.25), ""),
        Example("ImageRegistration5", MEAN_SQUARES_CENTERED_RIGID, rigid, ""),
    ]


def _shift(x: float, y: float) -> LinearTransform:
    return TranslationTransform(2, [x, y])


@contextlib.contextmanager
def fixed_party_sessions(backend: str) -> Iterator[Any]:
    """``fixed_party_session(image)`` for the private scripts: a fixed party of its own
    process over mutual TLS holding ``image``, stopped when the context exits."""
    with contextlib.ExitStack() as stack:

        def fixed_party_session(image: Any) -> Any:
            party = stack.enter_context(spawn_fixed_party(image, backends=(backend,)))
            return party.connect()

        yield fixed_party_session


def run_script(script: str, fixed: Any, moving: Any, backend: str) -> tuple[Any, float, int]:
    """Run ``script``; its result transform, the seconds and the observer's call count."""
    start = time.perf_counter()
    with fixed_party_sessions(backend) as fixed_party_session:
        namespace = {
            "fixedImage": fixed,
            "movingImage": moving,
            "backend": backend,
            "trace": [],
            "fixed_party_session": fixed_party_session,
        }
        exec(compile(script, "<example>", "exec"), namespace)  # noqa: S102 - our own scripts
    return namespace["result"], time.perf_counter() - start, len(namespace["trace"])


def largest_displacement_px(first: Any, second: Any, fixed: ImageGrid) -> float:
    """The largest ``|first(x) - second(x)|`` over ``fixed``'s pixel centres, in pixels;
    each an ITK transform or a LinearTransform."""
    geometry = fixed.geometry
    points = geometry.physical_points(
        np.stack(np.meshgrid(*map(np.arange, geometry.size)), -1).reshape(-1, 2)
    )
    moved = [_as_linear(transform).transform_points(points) for transform in (first, second)]
    return float(np.linalg.norm(moved[0] - moved[1], axis=1).max() / min(fixed.geometry.spacing))


def _as_linear(transform: Any) -> LinearTransform:
    return transform if isinstance(transform, LinearTransform) else from_itk(transform)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--private-backend", default="he")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    fixed = demo_fixed()
    print(
        "| example | lines +/- | backend | ITK vs ppir_itk (px) | ITK vs truth (px) "
        "| ppir_itk vs truth (px) | ITK s | ppir_itk s | iterations seen ITK / ppir_itk |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for example in examples(fixed, args.private_backend):
        moving = moved_copy(fixed, example.truth)
        images = (to_itk(fixed), to_itk(moving))
        added, removed = changed_lines(example.script)
        run_script(example.script, *images, "clear")  # ITK loads its classes at first use
        for backend in (
            ("clear", example.private_backend) if example.private_backend else ("clear",)
        ):
            for _ in range(args.repeats):
                theirs, itk_seconds, itk_calls = run_script(example.script, *images, backend)
                ours, seconds, calls = run_script(private_variant(example.script), *images, backend)
                print(
                    f"| {example.name} | +{added} / -{removed} | {backend} "
                    f"| {largest_displacement_px(theirs, ours, fixed):.3f} "
                    f"| {largest_displacement_px(theirs, example.truth, fixed):.3f} "
                    f"| {largest_displacement_px(ours, example.truth, fixed):.3f} "
                    f"| {itk_seconds:.2f} | {seconds:.2f} | {itk_calls} / {calls} |"
                )


if __name__ == "__main__":
    main()
