"""B-spline registration through every backend, against a known deformation.

    python benchmarks/bspline.py [--grids 4 16] [--backends clear he spdz]
        [--simpleitk] [--iterations 50] [--volume 96] [--data ../shared/data/brain-affine-pair]

2-D: the brain pair's template (256 x 221 pixels) is the moving image; the
fixed image is the template seen through a known smooth B-spline deformation
(48 mm control grid, 3 mm per control point). Each backend registers it with
a control grid of every ``--grids`` spacing (pixels), levels 4, 2, 1, through
the two-party runtime (fixed party, and dealer for spdz, in their own
processes). Printed per run: RMS error against the truth over the brain
(pixels), RMS distance to Clear's result, iterations, total time, the moving
party's time per iteration (optimizer iterations of all levels) and its ratio
to Clear's, and the bytes each party sends per iteration at full resolution.

``--simpleitk``: after the backends, SimpleITK registers the same pair the same way
(mean squares, every pixel, the same levels and mesh, LBFGSB for at most the same
iterations per level, one thread as ours), timed in the same run.

``--volume N``: instead, an N^3 head phantom (3-D, 32 mm / 2 mm deformation,
grid 8 voxels, URS 10 %, 30 iterations per level).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import ppir_itk
from ppir_itk.bspline import BSplineTransform
from ppir_itk.phantoms import head_phantom
from ppir_itk.registration import resample
from ppir_itk.wrapping.images import as_image_grid, to_sitk

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-affine-pair"


def deformed(moving, spacing: float, amplitude: float, seed: int = 11):
    truth = BSplineTransform.over(moving.geometry, spacing)
    truth.parameters = np.random.default_rng(seed).normal(
        scale=amplitude, size=truth.number_of_parameters
    )
    return resample(moving, truth, moving.geometry), truth


def rms(first, second, grid, where) -> float:
    points = grid.physical_points(grid.flat_to_index(where))
    moved = first.transform_points(points) - second.transform_points(points)
    return float(np.sqrt((moved**2).sum(axis=1).mean()) / min(grid.spacing))


def per_iteration(result) -> float:
    seconds = sum(level.seconds - level.setup_seconds for level in result.levels)
    return seconds / max(sum(level.iterations for level in result.levels), 1)


def last_level_bytes(result, party: str) -> float:
    level = result.levels[-1]
    return level.parties[party]["bytes_sent"] / max(level.iterations + 1, 1)


class SimpleITKTransform:
    """A SimpleITK transform with ``transform_points`` (for :func:`rms`)."""

    def __init__(self, transform: sitk.Transform) -> None:
        self.transform = transform

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        return np.array([self.transform.TransformPoint(tuple(p)) for p in points])


def simpleitk_bspline(fixed, moving, grid: float, options) -> tuple[SimpleITKTransform, int]:
    """SimpleITK's B-spline registration of the pair with ``options``' levels and iterations
    (mean squares, every pixel, LBFGSB, one thread): the transform and its iterations."""
    fixed_image, moving_image = to_sitk(fixed), to_sitk(moving)
    extent = np.asarray(fixed.geometry.size) * np.asarray(fixed.geometry.spacing)
    mesh = np.maximum(np.ceil(extent / (grid * min(fixed.geometry.spacing)) - 1e-9), 1)
    transform = sitk.BSplineTransformInitializer(fixed_image, [int(m) for m in mesh], 3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(numberOfIterations=options["iterations"])
    method.SetShrinkFactorsPerLevel(options["shrink_factors"])
    method.SetSmoothingSigmasPerLevel(options["smoothing_sigmas"])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(options["threads"])  # its pyramid too
    method.SetNumberOfThreads(options["threads"])
    iterations = [0]
    method.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__(0, iterations[0] + 1))
    method.Execute(fixed_image, moving_image)
    return SimpleITKTransform(transform), iterations[0]


def run(fixed, moving, truth, grids, backends, options, simpleitk: bool = False) -> None:
    brain = np.flatnonzero(fixed.array.ravel() > 0.15 * fixed.array.max())
    spacing = min(fixed.geometry.spacing)
    for grid in grids:
        clear = None
        for backend in backends:
            start = time.perf_counter()
            result = ppir_itk.register(
                fixed,
                moving,
                backend=backend,
                transform="bspline",
                grid_spacing=grid * spacing,
                **options,
            )
            seconds = time.perf_counter() - start
            clear = result if backend == "clear" else clear
            versus = (
                ""
                if clear is None or result is clear
                else (
                    f", {rms(result.transform, clear.transform, fixed.geometry, brain):.4f} px "
                    f"from clear, x{per_iteration(result) / per_iteration(clear):.1f} its time"
                )
            )
            sent = " ".join(
                f"{party} {last_level_bytes(result, party) / 1e6:.3f} MB"
                for party in ("moving", "fixed")
            )
            if "dealer" in result.parties:
                dealer = result.parties["dealer"]
                sent += (
                    f"; dealer in all: {dealer['bytes_sent'] / 1e6:.1f} MB sent, "
                    f"{dealer['seconds']:.1f} s"
                )
            print(
                f"grid {grid} px ({result.transform.number_of_parameters} parameters), "
                f"{backend}: error {rms(result.transform, truth, fixed.geometry, brain):.3f} "
                f"px{versus}; {result.iterations} iterations, {seconds:.1f} s, moving party "
                f"{per_iteration(result) * 1e3:.1f} ms/iteration; per iteration at full "
                f"resolution sent: {sent}",
                flush=True,
            )
        if simpleitk:
            start = time.perf_counter()
            transform, iterations = simpleitk_bspline(fixed, moving, grid, options)
            seconds = time.perf_counter() - start
            print(
                f"grid {grid} px, SimpleITK (LBFGSB): error "
                f"{rms(transform, truth, fixed.geometry, brain):.3f} px; {iterations} "
                f"iterations, {seconds:.1f} s",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--grids", type=float, nargs="+", default=[4.0, 16.0])
    parser.add_argument("--backends", nargs="+", default=["clear", "he", "spdz"])
    parser.add_argument("--simpleitk", action="store_true", help="also SimpleITK's B-spline")
    parser.add_argument("--volume", type=int, help="also a 3-D phantom of this size")
    parser.add_argument("--iterations", type=int, default=50, help="at most, per level (2-D)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    options = dict(
        shrink_factors=[4, 2, 1],
        smoothing_sigmas=[2.0, 1.0, 0.0],
        iterations=args.iterations,
        bending_energy_weight=100.0,
        threads=1,
    )
    if args.volume:
        moving = head_phantom((args.volume,) * 3)
        fixed, truth = deformed(moving, 32.0, 2.0)
        run(
            fixed,
            moving,
            truth,
            [8.0],
            args.backends,
            {**options, "iterations": 30, "sampling": "urs", "sampling_fraction": 0.1},
        )
        return
    moving = as_image_grid(args.data / "template.png", name="template")
    moving = ppir_itk.ImageGrid(moving.array.astype(np.float64), spacing=moving.geometry.spacing)
    fixed, truth = deformed(moving, 48.0, 3.0)
    run(fixed, moving, truth, args.grids, args.backends, options, args.simpleitk)


if __name__ == "__main__":
    main()
