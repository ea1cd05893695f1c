"""One metric evaluation (value and derivative): C kernels vs NumPy reference vs ITK.

    python benchmarks/bench_metric.py [--repeats 5]

On a 256^2 and a 128^3 phantom with an affine transform, single-threaded,
times (best of ``--repeats``):

- ``ppir_itk``: ``PrivateMeanSquaresImageToImageMetric.evaluate()`` with the
  clear backend: warp, gradient, valid mask, the affine Gram matrix (for the
  Gauss-Newton Hessian, which ITK does not compute), the local moments and
  the joint moments;
- ``numpy``: the same computation with the NumPy reference kernels of
  ``tests/reference.py``;
- ``itk``: ``itk.MeanSquaresImageToImageMetricv4.GetValueAndDerivative`` with a
  linear interpolator, moving-image gradient from ITK's precomputed gradient
  filter (its default) and from its central-difference calculator.

Prints each time and the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import reference  # noqa: E402

import ppir_itk  # noqa: E402
from ppir_itk import parallel  # noqa: E402
from ppir_itk.phantoms import head_phantom  # noqa: E402
from ppir_itk.pyramid import Level, LevelSchedule  # noqa: E402
from ppir_itk.transforms import make_transform  # noqa: E402


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
            "clear", session=ppir_itk.in_process_session(fixed))
    metric.SetMovingImage(moving)
    metric.SetTransform(transform)
    metric.moving_party.start(LevelSchedule.from_lists([1], [0.0]), ppir_itk.NoSampling())
    metric.initialize_level(0, Level(1, 0.0), None)
    return metric.evaluate


def numpy_reference(fixed, moving, transform):
    geometry, moving_geometry = fixed.geometry, moving.geometry
    gradient_image = reference.central_gradient(moving.array)
    fixed_values = fixed.array.ravel().astype(np.float64)
    n = geometry.number_of_points
    center = geometry.center()
    d = geometry.dimension

    def evaluate():
        matrix, offset = transform.matrix_offset()
        basis = (geometry.size_array, geometry.index_to_physical, geometry.origin_array)
        values, gradient, valid, n_valid = reference.warp(
            moving.array, gradient_image, moving_geometry.physical_to_index,
            moving_geometry.origin_array, *basis, matrix, offset, None, 0, n)
        gram = reference.affine_gram(*basis, center, None, 0, n, gradient)
        local = reference.affine_moments(*basis, center, None, 0, n, gradient, values)
        joint = reference.affine_moments(*basis, center, None, 0, n, gradient, fixed_values)
        coefficients = transform.jacobian_in_affine_basis(center).reshape(-1, d * (d + 1))
        ssd = values @ values - 2 * values @ fixed_values + valid @ (fixed_values**2)
        return (ssd / n_valid, coefficients @ (local - joint).ravel(),
                coefficients @ gram @ coefficients.T)

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
    print(f"{'image':>10} {'ppir_itk':>10} {'numpy':>10} {'itk(filter)':>12} {'itk(cdiff)':>11}"
          f" {'numpy/ours':>11} {'itk/ours':>9}")
    for shape in ((256, 256), (128, 128, 128)):
        fixed, moving, transform = case(shape)
        calls = {
            "ours": ours(fixed, moving, transform),
            "numpy": numpy_reference(fixed, moving, transform),
            "itk_filter": itk_metric(fixed, moving, transform, True),
            "itk_cdiff": itk_metric(fixed, moving, transform, False),
        }
        times = {name: best_of(args.repeats, call) for name, call in calls.items()}
        fastest_itk = min(times["itk_filter"], times["itk_cdiff"])
        label = "x".join(map(str, shape))
        print(f"{label:>10} {times['ours']:>9.4f}s {times['numpy']:>9.4f}s "
              f"{times['itk_filter']:>11.4f}s {times['itk_cdiff']:>10.4f}s "
              f"{times['numpy'] / times['ours']:>10.1f}x {fastest_itk / times['ours']:>8.2f}x")


if __name__ == "__main__":
    main()
