"""RegularStepGradientDescentOptimizer against SimpleITK's own regular step, step by step.

    python benchmarks/regular_step_vs_simpleitk.py [--kind rigid] [--relaxation 0.5]

Registers a 2-D head phantom's known-transform copy (``tests/test_registration.py``'s
parameters) with ppir_itk's clear mean squares metric and this optimizer, and with
SimpleITK's MeanSquares, ``SetOptimizerAsRegularStepGradientDescent`` and
``SetOptimizerScalesFromPhysicalShift`` (same levels, same settings, same initial
transform), and prints per level the scales, the iterations and the stop of each, and
the displacement RMSE of each result against the truth and between the two (mm).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import SimpleITK as sitk

import ppir_itk
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.optimizer import RegularStepGradientDescentOptimizer
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.images import to_sitk
from ppir_itk.wrapping.transforms import from_sitk
from ppir_itk.wrapping.transforms import to_sitk as transform_to_sitk

KNOWN = {
    "rigid": [0.08, 2.5, -1.5],
    "similarity": [1.04, -0.06, 1.5, 2.0],
    "affine": [1.04, 0.06, -0.05, 0.96, 2.0, -1.0],
    "translation": [2.7, -1.9],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(KNOWN), default="rigid")
    parser.add_argument("--learning-rate", type=float, default=1.0)
    parser.add_argument("--minimum-step", type=float, default=1e-4)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--relaxation", type=float, default=0.5)
    args = parser.parse_args()
    shrink, sigmas = [2, 1], [1.0, 0.0]
    fixed = head_phantom((96, 88), spacing=(1.1, 0.9))
    truth = make_transform(args.kind, 2)
    if truth.has_center:
        truth.center = fixed.geometry.center()
    truth.parameters = KNOWN[args.kind]
    moving = moved_copy(fixed, truth)
    initial = make_transform(args.kind, 2)
    if initial.has_center:
        initial.center = fixed.geometry.center()
    settings = dict(
        LearningRate=args.learning_rate,
        MinimumStepLength=args.minimum_step,
        NumberOfIterations=args.iterations,
        RelaxationFactor=args.relaxation,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(
            "clear", session=ppir_itk.in_process_session(fixed)
        )
        metric.SetMovingImage(moving)
        optimizer = RegularStepGradientDescentOptimizer(**settings)
        ours_scales: list[np.ndarray] = []
        # The scales are estimated as each level starts, before the optimizer's START.
        optimizer.AddObserver("StartEvent", lambda: ours_scales.append(optimizer.GetScales()))
        method = ppir_itk.ImageRegistrationMethod(
            metric,
            optimizer,
            initial.copy(),
            shrink_factors=shrink,
            smoothing_sigmas=sigmas,
        )
        ours = method.run()

    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMeanSquares()
    registration.SetMetricSamplingStrategy(registration.NONE)
    registration.SetInterpolator(sitk.sitkLinear)
    registration.SetOptimizerAsRegularStepGradientDescent(
        learningRate=args.learning_rate,
        minStep=args.minimum_step,
        numberOfIterations=args.iterations,
        relaxationFactor=args.relaxation,
    )
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetShrinkFactorsPerLevel(shrink)
    registration.SetSmoothingSigmasPerLevel(sigmas)
    registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    registration.SetInitialTransform(transform_to_sitk(initial), inPlace=False)
    theirs_levels: list[dict] = []
    registration.AddCommand(
        sitk.sitkMultiResolutionIterationEvent,
        lambda: theirs_levels.append({"scales": None, "iterations": 0}),
    )

    def iteration() -> None:
        level = theirs_levels[-1]
        level["iterations"] += 1
        if level["scales"] is None:
            level["scales"] = np.array(registration.GetOptimizerScales())

    registration.AddCommand(sitk.sitkIterationEvent, iteration)
    images = [sitk.Cast(to_sitk(image), sitk.sitkFloat64) for image in (fixed, moving)]
    theirs = from_sitk(registration.Execute(*images))

    print(
        f"{args.kind}, learning rate {args.learning_rate}, minimum step {args.minimum_step}, "
        f"relaxation {args.relaxation}"
    )
    for level, ours_level, ours_level_scales, theirs_level in zip(
        range(len(shrink)), ours.levels, ours_scales, theirs_levels, strict=True
    ):
        difference = np.abs(ours_level_scales / theirs_level["scales"] - 1).max()
        print(
            f"level {level}: scales {np.array2string(ours_level_scales, precision=1)}, "
            f"SimpleITK's within {difference:.1e} (relative)"
        )
        print(
            f"         iterations ppir_itk {ours_level.iterations} "
            f"({ours_level.stop_condition}), SimpleITK {theirs_level['iterations']}"
        )
    print(f"SimpleITK's last stop: {registration.GetOptimizerStopConditionDescription()}")
    geometry = fixed.geometry
    print(
        f"RMSE to the truth: ppir_itk {displacement_rmse(ours.transform, truth, geometry):.4f} mm, "
        f"SimpleITK {displacement_rmse(theirs, truth, geometry):.4f} mm; "
        f"between them {displacement_rmse(ours.transform, theirs, geometry):.4f} mm"
    )


if __name__ == "__main__":
    main()
