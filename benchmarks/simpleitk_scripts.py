"""SimpleITK's registration examples, each run with SimpleITK's method and with ppir_itk's.

    python benchmarks/simpleitk_scripts.py [--backends clear spdz] [--out scripts.json]

For each of SimpleITK's Python examples ``ImageRegistrationMethod1``-``4``,
``ImageRegistrationMethodBSpline1``-``3``, ``ImageRegistrationMethodDisplacement1`` and
``ImageRegistrationMethodExhaustive``, a function of our own makes the example's calls in
its order (its observers write to a log, not the terminal; its ``WriteTransform`` goes to
a temporary folder). The function takes the registration-method factory, so the one
changed line is literally ``R = make_method()``: ``sitk.ImageRegistrationMethod`` or
``ppir_itk.simpleitk.ImageRegistrationMethod`` with a backend (``clear`` for the accuracy
rows; the example's private backend, ``--backends``, where it runs in reasonable time).

The pairs are made from the phantom shipped with the package (``ppir_itk/data``, as
``ppir demo``): the fixed image, and a copy moved by a known transform of the example's
family (``moved_copy``), with its contrast changed where the metric allows it: inverted for
Mattes, scaled and shifted for correlation. Each row: SimpleITK's result against ppir's
(the largest displacement between the two over the fixed grid, px), each one's
displacement to the truth (RMS over the fixed grid, px; the JSON has the largest too),
each one's seconds (ppir's with its fixed party's, and spdz's dealer's, start), or the
sentence of the call ppir_itk refuses.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

import ppir_itk.simpleitk
from ppir_itk.phantoms import moved_copy
from ppir_itk.transforms import LinearTransform
from ppir_itk.wrapping.images import as_image_grid, to_sitk
from ppir_itk.wrapping.transforms import from_sitk

Factory = Callable[[], Any]
# (make_method, fixed, moving, log, folder) -> the transform the example writes
Script = Callable[[Factory, Any, Any, list[str], Path], Any]


# -- the examples: the calls of SimpleITK's scripts, in their order --------------------------
def _log_position(method: Any, log: list[str]) -> None:
    log.append(
        f"{method.GetOptimizerIteration()} {method.GetMetricValue()} "
        f"{method.GetOptimizerPosition()}"
    )


def _log_value(method: Any, log: list[str]) -> None:
    log.append(f"{method.GetOptimizerIteration()} {method.GetMetricValue()}")


def _log_end(method: Any, log: list[str]) -> None:
    log.append(method.GetOptimizerStopConditionDescription())
    log.append(f"{method.GetOptimizerIteration()} {method.GetMetricValue()}")


def method_1(make_method: Factory, fixed: Any, moving: Any, log: list[str], folder: Path) -> Any:
    """Mean squares, regular step, a translation."""
    R = make_method()  # noqa: N806 (the example's name)
    R.SetMetricAsMeanSquares()
    R.SetOptimizerAsRegularStepGradientDescent(4.0, 0.01, 200)
    R.SetInitialTransform(sitk.TranslationTransform(fixed.GetDimension()))
    R.SetInterpolator(sitk.sitkLinear)
    R.AddCommand(sitk.sitkIterationEvent, lambda: _log_position(R, log))
    out = R.Execute(fixed, moving)
    _log_end(R, log)
    sitk.WriteTransform(out, str(folder / "method_1.tfm"))
    return out


def method_2(make_method: Factory, fixed: Any, moving: Any, log: list[str], folder: Path) -> Any:
    """Joint-histogram mutual information on normalised, blurred images; gradient descent
    with a line search, a translation."""
    fixed = sitk.DiscreteGaussian(sitk.Normalize(fixed), 2.0)
    moving = sitk.DiscreteGaussian(sitk.Normalize(moving), 2.0)
    R = make_method()  # noqa: N806
    R.SetMetricAsJointHistogramMutualInformation()
    R.SetOptimizerAsGradientDescentLineSearch(
        learningRate=1.0, numberOfIterations=200, convergenceMinimumValue=1e-5,
        convergenceWindowSize=5,
    )  # fmt: skip
    R.SetInitialTransform(sitk.TranslationTransform(fixed.GetDimension()))
    R.SetInterpolator(sitk.sitkLinear)
    R.AddCommand(sitk.sitkIterationEvent, lambda: _log_position(R, log))
    out = R.Execute(fixed, moving)
    _log_end(R, log)
    sitk.WriteTransform(out, str(folder / "method_2.tfm"))
    return out


def method_3(make_method: Factory, fixed: Any, moving: Any, log: list[str], folder: Path) -> Any:
    """Correlation, regular step with index-shift scales, a similarity from the moments."""

    def on_iteration() -> None:
        if R.GetOptimizerIteration() == 0:
            log.append(f"scales {R.GetOptimizerScales()}")
        _log_position(R, log)

    R = make_method()  # noqa: N806
    R.SetMetricAsCorrelation()
    R.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=500, gradientMagnitudeTolerance=1e-8
    )
    R.SetOptimizerScalesFromIndexShift()
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity2DTransform())
    R.SetInitialTransform(initial)
    R.SetInterpolator(sitk.sitkLinear)
    R.AddCommand(sitk.sitkIterationEvent, on_iteration)
    out = R.Execute(fixed, moving)
    _log_end(R, log)
    sitk.WriteTransform(out, str(folder / "method_3.tfm"))
    return out


def method_4(make_method: Factory, fixed: Any, moving: Any, log: list[str], folder: Path) -> Any:
    """Mattes mutual information (24 bins) on a 10 % random sample seeded by the clock,
    regular step, a translation."""
    bins, percentage = 24, 0.10
    R = make_method()  # noqa: N806
    R.SetMetricAsMattesMutualInformation(bins)
    R.SetMetricSamplingPercentage(percentage, sitk.sitkWallClock)
    R.SetMetricSamplingStrategy(R.RANDOM)
    R.SetOptimizerAsRegularStepGradientDescent(1.0, 0.001, 200)
    R.SetInitialTransform(sitk.TranslationTransform(fixed.GetDimension()))
    R.SetInterpolator(sitk.sitkLinear)
    R.AddCommand(sitk.sitkIterationEvent, lambda: _log_position(R, log))
    out = R.Execute(fixed, moving)
    _log_end(R, log)
    sitk.WriteTransform(out, str(folder / "method_4.tfm"))
    return out


def bspline_1(make_method: Factory, fixed: Any, moving: Any, log: list[str], folder: Path) -> Any:
    """Correlation, L-BFGS-B, a B-spline of mesh 8 over the fixed image."""
    initial = sitk.BSplineTransformInitializer(fixed, [8] * moving.GetDimension())
    log.append(f"initial {initial.GetParameters()[:4]}")
    R = make_method()  # noqa: N806
    R.SetMetricAsCorrelation()
    R.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5, numberOfIterations=100, maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=1000, costFunctionConvergenceFactor=1e7,
    )  # fmt: skip
    R.SetInitialTransform(initial, True)
    R.SetInterpolator(sitk.sitkLinear)
    R.AddCommand(sitk.sitkIterationEvent, lambda: _log_value(R, log))
    out = R.Execute(fixed, moving)
    _log_end(R, log)
    sitk.WriteTransform(out, str(folder / "bspline_1.tfm"))
    return out


def bspline_2(make_method: Factory, fixed: Any, moving: Any, log: list[str], folder: Path) -> Any:
    """Mattes mutual information (50 bins), gradient descent with a line search and
    physical-shift scales, a B-spline of mesh 10, levels 6-2-1 with sigmas 6-2-1."""

    def on_iteration() -> None:
        _log_value(R, log)
        log.append(f"parameters {len(R.GetOptimizerPosition())}")

    initial = sitk.BSplineTransformInitializer(fixed, [10] * moving.GetDimension())
    log.append(f"initial {initial.GetParameters()[:4]}")
    R = make_method()  # noqa: N806
    R.SetMetricAsMattesMutualInformation(50)
    R.SetOptimizerAsGradientDescentLineSearch(
        5.0, 100, convergenceMinimumValue=1e-4, convergenceWindowSize=5
    )
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetInitialTransform(initial)
    R.SetInterpolator(sitk.sitkLinear)
    R.SetShrinkFactorsPerLevel([6, 2, 1])
    R.SetSmoothingSigmasPerLevel([6, 2, 1])
    R.AddCommand(sitk.sitkIterationEvent, on_iteration)
    R.AddCommand(sitk.sitkMultiResolutionIterationEvent, lambda: log.append("level"))
    out = R.Execute(fixed, moving)
    _log_end(R, log)
    sitk.WriteTransform(out, str(folder / "bspline_2.tfm"))
    return out


def bspline_3(make_method: Factory, fixed: Any, moving: Any, log: list[str], folder: Path) -> Any:
    """Joint-histogram mutual information, gradient descent with a line search, a B-spline
    of mesh 2 refined x1, x2, x5 over levels 4-2-1 with sigmas 4-2-1."""

    def on_iteration() -> None:
        if R.GetOptimizerIteration() == 0:
            log.append(f"mesh parameters {initial.GetNumberOfParameters()}")
        _log_value(R, log)

    def on_level() -> None:
        if R.GetCurrentLevel() > 0:
            _log_end(R, log)
        log.append("level")

    initial = sitk.BSplineTransformInitializer(fixed, [2] * fixed.GetDimension())
    log.append(f"initial parameters {initial.GetNumberOfParameters()}")
    R = make_method()  # noqa: N806
    R.SetMetricAsJointHistogramMutualInformation()
    R.SetOptimizerAsGradientDescentLineSearch(
        5.0, 100, convergenceMinimumValue=1e-4, convergenceWindowSize=5
    )
    R.SetInterpolator(sitk.sitkLinear)
    R.SetInitialTransformAsBSpline(initial, inPlace=True, scaleFactors=[1, 2, 5])
    R.SetShrinkFactorsPerLevel([4, 2, 1])
    R.SetSmoothingSigmasPerLevel([4, 2, 1])
    R.AddCommand(sitk.sitkIterationEvent, on_iteration)
    R.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_level)
    out = R.Execute(fixed, moving)
    _log_end(R, log)
    sitk.WriteTransform(out, str(folder / "bspline_3.tfm"))
    return out


def displacement_1(
    make_method: Factory, fixed: Any, moving: Any, log: list[str], folder: Path
) -> Any:
    """An affine from the moments by joint-histogram mutual information, then a
    displacement field by ANTS neighbourhood correlation on top of it (levels 3-2-1)."""

    def on_iteration() -> None:
        if R.GetOptimizerIteration() == 0:
            log.append(f"level {R.GetCurrentLevel()} scales {R.GetOptimizerScales()}")
        log.append(f"{R.GetOptimizerIteration()} {R.GetMetricValue()}")
        log.append(f"rate {R.GetOptimizerLearningRate()}")
        if R.GetOptimizerConvergenceValue() != 1.7976931348623157e308:
            log.append(f"convergence {R.GetOptimizerConvergenceValue()}")

    def on_level() -> None:
        log.append(R.GetOptimizerStopConditionDescription())

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(fixed.GetDimension())
    )
    R = make_method()  # noqa: N806
    R.SetShrinkFactorsPerLevel([3, 2, 1])
    R.SetSmoothingSigmasPerLevel([2, 1, 1])
    R.SetMetricAsJointHistogramMutualInformation(20)
    R.MetricUseFixedImageGradientFilterOff()
    R.SetOptimizerAsGradientDescent(
        learningRate=1.0, numberOfIterations=100, estimateLearningRate=R.EachIteration
    )
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetInitialTransform(initial, inPlace=True)
    R.SetInterpolator(sitk.sitkLinear)
    R.AddCommand(sitk.sitkIterationEvent, on_iteration)
    R.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_level)
    out = R.Execute(fixed, moving)
    _log_end(R, log)

    field = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64)
    field.CopyInformation(fixed)
    displacement = sitk.DisplacementFieldTransform(field)
    displacement.SetSmoothingGaussianOnUpdate(varianceForUpdateField=0.0, varianceForTotalField=1.5)
    R.SetMovingInitialTransform(out)
    R.SetInitialTransform(displacement, inPlace=True)
    R.SetMetricAsANTSNeighborhoodCorrelation(4)
    R.MetricUseFixedImageGradientFilterOff()
    R.SetShrinkFactorsPerLevel([3, 2, 1])
    R.SetSmoothingSigmasPerLevel([2, 1, 1])
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetOptimizerAsGradientDescent(
        learningRate=1, numberOfIterations=300, estimateLearningRate=R.EachIteration
    )
    out = sitk.CompositeTransform(out)
    out.AddTransform(R.Execute(fixed, moving))
    _log_end(R, log)
    sitk.WriteTransform(out, str(folder / "displacement_1.tfm"))
    return out


def exhaustive(make_method: Factory, fixed: Any, moving: Any, log: list[str], folder: Path) -> Any:
    """Mattes mutual information (50 bins) over a grid of 13 rotations of a 2-D Euler
    transform from the moments."""

    def on_iteration() -> None:
        if R.GetOptimizerIteration() == 0:
            log.append(f"scales {R.GetOptimizerScales()}")
        _log_position(R, log)

    R = make_method()  # noqa: N806
    R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    samples_per_axis = 12
    R.SetOptimizerAsExhaustive([samples_per_axis // 2, 0, 0])
    R.SetOptimizerScales([2.0 * math.pi / samples_per_axis, 1.0, 1.0])
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler2DTransform())
    R.SetInitialTransform(initial)
    R.SetInterpolator(sitk.sitkLinear)
    R.AddCommand(sitk.sitkIterationEvent, on_iteration)
    out = R.Execute(fixed, moving)
    _log_end(R, log)
    sitk.WriteTransform(out, str(folder / "exhaustive.tfm"))
    return out


# -- the pairs -------------------------------------------------------------------------------
def phantom() -> Any:
    """The fixed image ``ppir demo`` registers onto: 144 x 160 pixels at 1 mm."""
    with resources.as_file(resources.files("ppir_itk") / "data" / "demo_fixed.mha") as path:
        return sitk.ReadImage(str(path), sitk.sitkFloat32)


def centred(transform: Any, image: Any) -> Any:
    """``transform`` about ``image``'s centre."""
    middle = [(size - 1) / 2.0 for size in image.GetSize()]
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint(middle))
    return transform


def moved(fixed: Any, truth: Any, contrast: Callable[[Any], Any] | None = None) -> Any:
    """A moving image that ``truth`` (fixed to moving points) aligns with ``fixed``, in
    another contrast if given."""
    linear = from_sitk(truth)
    assert isinstance(linear, LinearTransform), "every truth here is linear"
    moving = to_sitk(moved_copy(as_image_grid(fixed, name="phantom"), linear))
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    return moving if contrast is None else sitk.Cast(contrast(moving), sitk.sitkFloat32)


def inverted(image: Any) -> Any:
    """Bright where the phantom is dark: a contrast mean squares cannot register."""
    return float(sitk.GetArrayViewFromImage(image).max()) - image


def scaled(image: Any) -> Any:
    """A linear change of contrast, which correlation ignores."""
    return 0.5 * image + 20.0


def translation(*shift: float) -> Any:
    return sitk.TranslationTransform(2, shift)


def similarity(fixed: Any) -> Any:
    return centred(sitk.Similarity2DTransform(1.04, 0.06, (3.0, -2.0)), fixed)


def affine(fixed: Any) -> Any:
    truth = centred(sitk.AffineTransform(2), fixed)
    truth.SetMatrix((1.03, 0.04, -0.03, 0.98))
    truth.SetTranslation((2.5, -1.5))
    return truth


def rigid(fixed: Any) -> Any:
    return centred(sitk.Euler2DTransform((0.0, 0.0), 0.5, (2.0, -1.0)), fixed)


@dataclass(frozen=True)
class Example:
    """One of SimpleITK's examples: its script, the truth of its pair and how its moving
    image's contrast differs (None: the same contrast), and the backend of its private row
    (None: no private row)."""

    name: str
    metric: str
    transform: str
    script: Script
    truth: Callable[[Any], Any]
    contrast: Callable[[Any], Any] | None
    private_backend: str | None


EXAMPLES = (
    Example("ImageRegistrationMethod1", "mean squares", "translation", method_1,
            lambda fixed: translation(6.0, -4.5), None, "he"),
    Example("ImageRegistrationMethod2", "joint histogram MI", "translation", method_2,
            lambda fixed: translation(6.0, -4.5), None, None),
    Example("ImageRegistrationMethod3", "correlation", "similarity 2-D", method_3,
            similarity, scaled, "spdz"),
    Example("ImageRegistrationMethod4", "Mattes MI, 10 % random", "translation", method_4,
            lambda fixed: translation(6.0, -4.5), inverted, "spdz"),
    Example("ImageRegistrationMethodBSpline1", "correlation", "B-spline, mesh 8", bspline_1,
            affine, scaled, "spdz"),
    Example("ImageRegistrationMethodBSpline2", "Mattes MI", "B-spline, mesh 10", bspline_2,
            affine, inverted, "spdz"),
    Example("ImageRegistrationMethodBSpline3", "joint histogram MI", "B-spline, mesh 2 refined",
            bspline_3, affine, inverted, None),
    Example("ImageRegistrationMethodDisplacement1", "joint histogram MI, then ANTS NC",
            "affine, then displacement field", displacement_1, affine, None, None),
    Example("ImageRegistrationMethodExhaustive", "Mattes MI", "Euler 2-D, exhaustive",
            exhaustive, rigid, None, None),
)  # fmt: skip


# -- measuring -------------------------------------------------------------------------------
def displacements_px(first: Any, second: Any, image: Any) -> Any:
    """``|first(x) - second(x)|`` at each of ``image``'s pixel centres, in pixels."""
    fields = [
        sitk.GetArrayFromImage(
            sitk.TransformToDisplacementField(
                transform, sitk.sitkVectorFloat64, image.GetSize(), image.GetOrigin(),
                image.GetSpacing(), image.GetDirection(),
            )
        )
        for transform in (first, second)
    ]  # fmt: skip
    return np.linalg.norm(fields[0] - fields[1], axis=-1) / min(image.GetSpacing())


def run(example: Example, make_method: Factory, fixed: Any, moving: Any) -> dict[str, Any]:
    """The example's script with ``make_method``: its result and seconds, or the sentence
    of the call refused."""
    log: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        try:
            result = example.script(make_method, fixed, moving, log, Path(folder))
        except NotImplementedError as refusal:
            return {"refused": str(refusal)}
        seconds = time.perf_counter() - start
    return {"transform": result, "seconds": seconds, "stop": log[-2]}


def measure(example: Example, backends: list[str]) -> dict[str, Any]:
    fixed = phantom()
    truth = example.truth(fixed)
    moving = moved(fixed, truth, example.contrast)
    reference = run(example, sitk.ImageRegistrationMethod, fixed, moving)
    row: dict[str, Any] = {
        "example": example.name,
        "metric": example.metric,
        "transform": example.transform,
        "simpleitk": _summary(reference, truth, fixed),
        "ppir_itk": {},
    }
    for backend in backends:
        if backend != "clear" and backend != example.private_backend:
            continue
        factory = functools.partial(ppir_itk.simpleitk.ImageRegistrationMethod, backend=backend)
        print(f"{example.name} with ppir_itk {backend} ...", file=sys.stderr, flush=True)
        ours = run(example, factory, fixed, moving)
        summary = _summary(ours, truth, fixed)
        if "transform" in ours and "transform" in reference:
            apart = displacements_px(ours["transform"], reference["transform"], fixed)
            summary["vs_simpleitk_px"] = float(apart.max())
        row["ppir_itk"][backend] = summary
        if "refused" in ours:
            break  # the same sentence for every backend
    return row


def _summary(run_result: dict[str, Any], truth: Any, fixed: Any) -> dict[str, Any]:
    if "refused" in run_result:
        return {"refused": run_result["refused"]}
    to_truth = displacements_px(run_result["transform"], truth, fixed)
    return {
        "to_truth_rms_px": float(np.sqrt(np.mean(to_truth**2))),
        "to_truth_max_px": float(to_truth.max()),
        "seconds": run_result["seconds"],
        "stop": run_result["stop"],
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| example | metric | transform | ppir backend | SimpleITK vs ppir (px) "
        "| SimpleITK to truth, RMS (px) | ppir to truth, RMS (px) | SimpleITK s | ppir s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        theirs = row["simpleitk"]
        for backend, ours in row["ppir_itk"].items():
            head = f"| {row['example']} | {row['metric']} | {row['transform']} | {backend} "
            if "refused" in ours:
                lines.append(
                    f"{head}| refused: {ours['refused']} | {theirs['to_truth_rms_px']:.3f} | "
                    f"| {theirs['seconds']:.2f} | |"
                )
                continue
            lines.append(
                f"{head}| {ours['vs_simpleitk_px']:.3f} | {theirs['to_truth_rms_px']:.3f} "
                f"| {ours['to_truth_rms_px']:.3f} | {theirs['seconds']:.2f} "
                f"| {ours['seconds']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", nargs="+", default=["clear", "he", "spdz"],
        help="clear, and each example's private backend among these",
    )  # fmt: skip
    parser.add_argument("--examples", nargs="+", help="only these (names as in the table)")
    parser.add_argument("--out", type=Path, help="write the measurements as JSON")
    args = parser.parse_args()
    chosen = [e for e in EXAMPLES if not args.examples or e.name in args.examples]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = [measure(example, args.backends) for example in chosen]
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
