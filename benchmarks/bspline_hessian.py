"""Time of the B-spline Gauss-Newton matrix S^T S (kernel + sparse assembly).

    python benchmarks/bspline_hessian.py

2-D 256 x 221 with a 4-pixel grid (every point), 3-D 96^3 with an 8-voxel
grid (URS 10 %): best of 3, one thread.
"""

from __future__ import annotations

import time

import numpy as np

from ppir_itk import parallel
from ppir_itk.bspline import BSplineTransform
from ppir_itk.image import GridGeometry


def main() -> None:
    parallel.set_number_of_threads(1)
    for size, spacing, fraction in (((256, 221), 4.0, 1.0), ((96, 96, 96), 8.0, 0.1)):
        d = len(size)
        grid = GridGeometry(
            size=size, spacing=(1.0,) * d, origin=(0.0,) * d, direction=tuple(np.eye(d).ravel())
        )
        transform = BSplineTransform.over(grid, spacing)
        n = grid.number_of_points
        rng = np.random.default_rng(0)
        indices = (
            None if fraction == 1.0 else np.sort(rng.choice(n, int(n * fraction), replace=False))
        )
        gradient = rng.normal(size=(n if indices is None else indices.size, d))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            hessian = transform.gauss_newton_hessian(grid, indices, gradient)
            best = min(best, time.perf_counter() - start)
        print(
            f"{size}: {gradient.shape[0]} points, {transform.number_of_parameters} "
            f"parameters, S^T S in {best * 1e3:.0f} ms ({hessian.nnz} non-zeros)"
        )


if __name__ == "__main__":
    main()
