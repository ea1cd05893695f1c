"""One metric evaluation (value and derivative): C kernels vs NumPy reference vs ITK.

    python benchmarks/bench_metric.py [--repeats 5]

On a 256^2 and a 128^3 phantom with an affine transform, single-threaded,
times (best of ``--repeats``):

- ``ppir_itk``: ``PrivateMeanSquaresImageToImageMetric.evaluate()`` with the
  clear backend: warp, gradient, valid mask, the affine Gram matrix (for the
  Gauss-Newton Hessian, which ITK does not compute), the local moments and
  the joint moments;
- ``numpy``: the same computation in plain vectorised NumPy (``numpy_baseline``
  below: the kernels' contract, docs/kernels.md, written one array operation
  at a time; each step maps the fixed grid's points afresh, as each kernel does);
- ``itk``: ``itk.MeanSquaresImageToImageMetricv4.GetValueAndDerivative`` with a
  linear interpolator, moving-image gradient from ITK's precomputed gradient
  filter (its default) and from its central-difference calculator.

Prints each time and the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import numpy as np

import ppir_itk
from ppir_itk import parallel
from ppir_itk.image import GridGeometry
from ppir_itk.phantoms import head_phantom
from ppir_itk.pyramid import Level, LevelSchedule
from ppir_itk.transforms import make_transform


def best_of(repeats: int, call) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def case(shape: tuple[int, ...]):
    fixed = head_phantom(shape, dtype=np.float32)
    moving = head_phantom(shape, dtype=np.float32)
    d = len(shape)
    transform = make_transform("affine", d)
    transform.center = fixed.geometry.center()
    matrix = np.eye(d) + 0.02 * np.random.default_rng(0).standard_normal((d, d))
    transform.parameters = np.concatenate([matrix.ravel(), np.full(d, 0.7)])
    return fixed, moving, transform


def ours(fixed, moving, transform):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(
            "clear", session=ppir_itk.in_process_session(fixed)
        )
    metric.SetMovingImage(moving)
    metric.SetTransform(transform)
    metric.moving_party.start(LevelSchedule.from_lists([1], [0.0]), ppir_itk.NoSampling())
    metric.initialize_level(0, Level(1, 0.0), None)
    return metric.evaluate


def _physical_points(geometry: GridGeometry) -> np.ndarray:
    """Every fixed-grid point in physical space, ITK order, shape (n, d)."""
    flat = np.arange(geometry.number_of_points)
    index = np.stack(np.unravel_index(flat, geometry.size[::-1])[::-1], axis=1)
    return geometry.origin_array + index @ geometry.index_to_physical.T


def _affine_basis(geometry: GridGeometry) -> np.ndarray:
    """phi(x) = (x - c, 1) at every fixed-grid point, shape (n, d + 1)."""
    points = _physical_points(geometry)
    return np.hstack([points - geometry.center(), np.ones((len(points), 1))])


def _warp(moving, index_gradient, geometry, matrix, offset):
    """Warped values, physical gradient, valid mask: ITK's IsInsideBuffer, linear
    interpolation of the image and of its central-difference gradient."""
    moving_geometry = moving.geometry
    d = geometry.dimension
    to_index = moving_geometry.physical_to_index
    u = (_physical_points(geometry) @ matrix.T + offset - moving_geometry.origin_array) @ to_index.T
    size = np.array(moving.array.shape[::-1])
    valid = np.all((u >= -0.5) & (u < size - 0.5), axis=1)  # half a pixel beyond the centres
    inside = np.clip(u[valid], 0, size - 1)  # sampled on the border
    lower = np.floor(inside).astype(np.int64)
    upper = np.minimum(lower + 1, size - 1)
    fraction = inside - lower
    image = moving.array.astype(np.float64)
    values, gradient = np.zeros(len(u)), np.zeros((len(u), d))
    inside_values, inside_gradient = np.zeros(len(inside)), np.zeros((len(inside), d))
    for corner in itertools.product((False, True), repeat=d):
        index = np.where(corner, upper, lower)[:, ::-1].T  # NumPy order
        weight = np.prod(np.where(corner, fraction, 1.0 - fraction), axis=1)
        inside_values += weight * image[tuple(index)]
        inside_gradient += weight[:, None] * index_gradient[tuple(index)]
    values[valid] = inside_values
    gradient[valid] = inside_gradient @ to_index  # row-wise to_index^T g
    return values, gradient, valid, int(valid.sum())


def numpy_baseline(fixed, moving, transform):
    geometry = fixed.geometry
    d = geometry.dimension
    n = geometry.number_of_points
    # Index-space central differences along ITK axis k (NumPy axis d - 1 - k), one-sided
    # at the borders: computed once, outside the timing, as the metric does per level.
    index_gradient = np.stack(np.gradient(moving.array.astype(np.float64))[::-1], axis=-1)
    fixed_values = fixed.array.ravel().astype(np.float64)

    def evaluate():
        matrix, offset = transform.matrix_offset()
        values, gradient, valid, n_valid = _warp(moving, index_gradient, geometry, matrix, offset)
        rows = (gradient[:, :, None] * _affine_basis(geometry)[:, None, :]).reshape(n, -1)
        gram = rows.T @ rows
        local = gradient.T @ (values[:, None] * _affine_basis(geometry))
        joint = gradient.T @ (fixed_values[:, None] * _affine_basis(geometry))
        coefficients = transform.jacobian_in_affine_basis(geometry.center()).reshape(
            -1, d * (d + 1)
        )
        ssd = values @ values - 2 * values @ fixed_values + valid @ (fixed_values**2)
        return (
            ssd / n_valid,
            coefficients @ (local - joint).ravel(),
            coefficients @ gram @ coefficients.T,
        )

    return evaluate


def itk_metric(fixed, moving, transform, gradient_filter: bool):
    import itk

    from ppir_itk.wrapping.images import to_itk
    from ppir_itk.wrapping.transforms import to_itk as transform_to_itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    image_type = itk.Image[itk.F, fixed.dimension]
    metric = itk.MeanSquaresImageToImageMetricv4[image_type, image_type].New()
    metric.SetFixedImage(to_itk(fixed))
    metric.SetMovingImage(to_itk(moving))
    metric.SetMovingTransform(transform_to_itk(transform))
    metric.SetMaximumNumberOfWorkUnits(1)
    metric.SetUseMovingImageGradientFilter(gradient_filter)
    metric.SetUseFixedImageGradientFilter(False)
    metric.Initialize()
    derivative = itk.Array[itk.D](metric.GetNumberOfParameters())

    def evaluate():
        # ImageToImageMetricv4::GetDerivative runs GetValueAndDerivative (the
        # wrapping cannot pass the value by reference); the value is then cached.
        metric.GetDerivative(derivative)
        return metric.GetCurrentValue(), derivative

    return evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    parallel.set_number_of_threads(1)
    print("one metric evaluation, single thread, best of", args.repeats)
    print(
        f"{'image':>10} {'ppir_itk':>10} {'numpy':>10} {'itk(filter)':>12} {'itk(cdiff)':>11}"
        f" {'numpy/ours':>11} {'itk/ours':>9}"
    )
    for shape in ((256, 256), (128, 128, 128)):
        fixed, moving, transform = case(shape)
        calls = {
            "ours": ours(fixed, moving, transform),
            "numpy": numpy_baseline(fixed, moving, transform),
            "itk_filter": itk_metric(fixed, moving, transform, True),
            "itk_cdiff": itk_metric(fixed, moving, transform, False),
        }
        times = {name: best_of(args.repeats, call) for name, call in calls.items()}
        fastest_itk = min(times["itk_filter"], times["itk_cdiff"])
        label = "x".join(map(str, shape))
        print(
            f"{label:>10} {times['ours']:>9.4f}s {times['numpy']:>9.4f}s "
            f"{times['itk_filter']:>11.4f}s {times['itk_cdiff']:>10.4f}s "
            f"{times['numpy'] / times['ours']:>10.1f}x {fastest_itk / times['ours']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
