"""Correlation on every backend against Clear, on a pair with a scanner's gain.

    python benchmarks/correlation_private_vs_clear.py [--size 96 88] [--gain 3 --offset 50]

The head phantom and a rigidly moved copy whose intensities are ``gain I + offset``: mean
squares (Gauss-Newton, Clear) misses the transform, correlation (the regular step) finds it
on ``clear``, ``he`` (packed) and ``spdz``. Printed per backend: iterations, seconds, the
displacement RMSE against the truth and against Clear's transform, in voxels (the smallest
spacing), over the fixed grid. In process (the same messages as over TLS).

``--converge``: each correlation run then goes on from its transform at full resolution
with the regular step's minimum step at 1e-8 (learning rate 1e-3, at most 1000
iterations): the default stop leaves the regular step short of the metric's minimum (its
step halves on every reversal, down to 1e-5, while it zigzags along the valley of the
angle and the translation), so where it stops depends on the path; the converged
transforms show how far apart the backends' minima are.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import ppir_itk
from ppir_itk.backends import InsecureBackendWarning
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.image import ImageGrid
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.transforms import make_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[96, 88])
    parser.add_argument("--gain", type=float, default=3.0)
    parser.add_argument("--offset", type=float, default=50.0)
    parser.add_argument("--converge", action="store_true", help="then run to the minimum")
    args = parser.parse_args()
    warnings.simplefilter("ignore", InsecureBackendWarning)
    fixed = head_phantom(tuple(args.size), spacing=(1.1, 0.9))
    truth = make_transform("rigid", 2)
    truth.center = fixed.geometry.center()
    truth.parameters = np.array([0.06, 2.5, -1.5])
    moved = moved_copy(fixed, truth)
    moving = ImageGrid(
        (args.gain * moved.array + args.offset).astype(np.float32),
        moved.geometry.spacing,
        moved.geometry.origin,
        moved.geometry.direction,
    )
    voxel = min(fixed.geometry.spacing)
    runs = [("meansquares", "clear"), *(("correlation", b) for b in ("clear", "he", "spdz"))]
    clear = None
    converged_clear = None
    header = "| metric | backend | iterations | seconds | vs truth (voxels) | vs Clear (voxels) |"
    if args.converge:
        header += " converged: iterations | vs truth | vs Clear converged |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for metric, backend in runs:
        start = time.perf_counter()
        result = ppir_itk.register(
            fixed,
            moving,
            transport="in-process",
            backend=backend,
            metric=metric,
            transform="rigid",
        )
        seconds = time.perf_counter() - start
        if metric == "correlation" and backend == "clear":
            clear = result.transform
        versus = (
            f"{displacement_rmse(result.transform, clear, fixed.geometry) / voxel:.2g}"
            if clear is not None and metric == "correlation"
            else ""
        )
        truth_error = displacement_rmse(result.transform, truth, fixed.geometry) / voxel
        row = (
            f"| {metric} | {backend} | {result.iterations} | {seconds:.1f} | "
            f"{truth_error:.3g} | {versus} |"
        )
        if args.converge and metric == "correlation":
            converged = ppir_itk.register(
                fixed,
                moving,
                transport="in-process",
                backend=backend,
                metric=metric,
                transform=result.transform,
                shrink_factors=[1],
                smoothing_sigmas=[0.0],
                minimum_step_length=1e-8,
                learning_rate=1e-3,
                iterations=1000,
                relative_value_tolerance=0.0,
            )
            if backend == "clear":
                converged_clear = converged.transform
            to_truth = displacement_rmse(converged.transform, truth, fixed.geometry) / voxel
            apart = displacement_rmse(converged.transform, converged_clear, fixed.geometry)
            row += f" {converged.iterations} | {to_truth:.3g} | {apart / voxel:.2g} |"
        elif args.converge:
            row += " | | |"
        print(row)


if __name__ == "__main__":
    main()
