"""ppir_itk/parzen.py (its C kernels, src/ppir_parzen.c) against NumPy references, a
loop-per-sample reference and ITK's own Mattes metric."""

from __future__ import annotations

import numpy as np
import pytest
import reference

from ppir_itk import _kernels, parzen
from ppir_itk.errors import InputError
from ppir_itk.image import ImageGrid
from ppir_itk.transforms import make_transform


def _assemble(fixed_values, moving_values, gradients, jacobians, valid, fixed_bins, moving_bins):
    """ITK's value, GetDerivative and number of valid points, from parzen.py's functions
    (the value as the metric rebuilds it: the entropy difference and the moving marginal)."""
    fixed_bin = parzen.fixed_bins(fixed_values, fixed_bins)
    windows = parzen.moving_parzen(moving_values, valid.astype(np.uint8), moving_bins)
    histogram = parzen.joint_histogram(
        fixed_bin, windows.first_bin, windows.weights, windows.inside, fixed_bins.count
    )
    ratio = parzen.log_ratio(histogram)
    weights = parzen.sample_weights(ratio, fixed_bin, windows.first_bin, windows.derivatives)
    steepest = np.einsum("nk,nkp->np", gradients, jacobians)
    n_valid = windows.count
    information = parzen.entropy_difference(histogram / n_valid) - windows.negative_entropy
    get_derivative = -parzen.gradient_factor(n_valid) * (weights @ steepest)  # ITK v4's sign
    return -information, get_derivative, n_valid


def _jacobians(kind: str, points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """dW/dtheta (n, d, p) of ITK's TranslationTransform or (centred) AffineTransform."""
    n, d = points.shape
    if kind == "translation":
        return np.broadcast_to(np.eye(d), (n, d, d)).copy()
    jacobian = np.zeros((n, d, d * d + d))
    for k in range(d):
        jacobian[:, k, k * d : (k + 1) * d] = points - center  # the matrix, row-major
        jacobian[:, k, d * d + k] = 1.0  # the translation
    return jacobian


# ---------------------------------------------------------------- the loop reference


@pytest.mark.parametrize("bins", [parzen.MIN_BINS, 32, parzen.MAX_BINS])
@pytest.mark.parametrize("kind", ["translation", "affine"])
def test_equals_the_loop_reference(bins, kind):
    rng = np.random.default_rng(bins)
    n, d = 700, 3
    fixed_values = rng.normal(size=n)
    moving_image = np.sin(2.5 * rng.normal(size=n)) + 0.1 * rng.normal(size=n)
    moving_values = np.sin(2.5 * fixed_values) + 0.1 * rng.normal(size=n)  # not monotonic
    # The range's ends, exactly, and values outside it (ITK skips those samples).
    low, high = moving_image.min(), moving_image.max()
    moving_values[:5] = low, high, high, low - 0.05, high + 1e-12
    fixed_values[:3] = fixed_values.max(), fixed_values.min(), fixed_values.max()
    valid = rng.random(n) > 0.1
    gradients = rng.normal(size=(n, d))
    points = rng.uniform(-10, 10, size=(n, d))
    jacobians = _jacobians(kind, points, center=np.array([1.0, -2.0, 0.5]))
    fixed_bins = parzen.IntensityBins.from_values(fixed_values, bins)
    moving_bins = parzen.IntensityBins.from_values(moving_image, bins)
    assert (moving_values < low).any() and (moving_values > high).any()

    value, derivative, n_valid = _assemble(
        fixed_values, moving_values, gradients, jacobians, valid, fixed_bins, moving_bins
    )

    expected = reference.mattes_mutual_information(
        fixed_values,
        moving_values,
        gradients,
        jacobians,
        valid,
        bins,
        (fixed_bins.minimum, fixed_bins.maximum),
        (moving_bins.minimum, moving_bins.maximum),
    )
    assert n_valid == expected[2]
    np.testing.assert_allclose(value, expected[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(derivative, expected[1], rtol=1e-10, atol=1e-12)


def test_windows_at_the_range_ends():
    bins = parzen.IntensityBins(10, minimum=-1.0, maximum=3.0)
    windows = parzen.moving_parzen(np.array([-1.0, 3.0]), np.ones(2, np.uint8), bins)
    assert windows.first_bin.tolist() == [1, 10 - 4]  # centres clipped to [2, B - 3]
    np.testing.assert_allclose(
        windows.weights, [[1 / 6, 4 / 6, 1 / 6, 0], [0, 1 / 6, 4 / 6, 1 / 6]]
    )
    assert parzen.fixed_bins(np.array([-1.0, 3.0]), bins).tolist() == [2, 10 - 3]


# ------------------------------------------------- the kernels against NumPy references
# The vectorised NumPy arithmetic the kernels replaced (ITK's, as parzen.py's docstring
# states it), kept here as their oracle.

OFFSETS = np.arange(4)  # a cubic window's 4 bins, from its first


def reference_cubic_bspline(u):
    a = np.abs(u)
    a2 = a * a
    inner = (4.0 - 6.0 * a2 + 3.0 * a2 * a) / 6.0
    outer = (8.0 - 12.0 * a + 6.0 * a2 - a2 * a) / 6.0
    return np.where(a < 1.0, inner, np.where(a < 2.0, outer, 0.0))


def reference_cubic_bspline_derivative(u):
    a = np.abs(u)
    inner = -2.0 * a + 1.5 * a * a
    outer = -2.0 + 2.0 * a - 0.5 * a * a
    return np.sign(u) * np.where(a < 1.0, inner, np.where(a < 2.0, outer, 0.0))


def reference_windows(values, valid, bins):
    """(first_bin, weights, derivatives, inside, negative_entropy) of parzen.moving_parzen."""
    inside = valid.astype(bool) & (values >= bins.minimum) & (values <= bins.maximum)
    term = np.where(inside, values, bins.minimum) / bins.bin_size - bins.normalized_minimum
    first = np.clip(np.floor(term), parzen.PADDING, bins.count - parzen.PADDING - 1)
    first = first.astype(np.int64) - 1
    argument = (first - term)[:, None] + OFFSETS
    weights = np.where(inside[:, None], reference_cubic_bspline(argument), 0.0)
    derivatives = reference_cubic_bspline_derivative(argument) * (-1.0 / bins.bin_size)
    derivatives = np.where(inside[:, None], derivatives, 0.0)
    cells = (first[:, None] + OFFSETS).ravel()
    marginal = np.bincount(cells, weights.ravel(), minlength=bins.count) / inside.sum()
    used = marginal > parzen.CLOSE_TO_ZERO
    negative_entropy = np.sum(marginal[used] * np.log(marginal[used]))
    return first, weights, derivatives, inside.astype(np.uint8), negative_entropy


def reference_histogram(fixed_bin, first_bin, weights, valid, count):
    keep = valid.astype(bool)
    cells = (fixed_bin[keep] * count + first_bin[keep])[:, None] + OFFSETS
    flat = np.bincount(cells.ravel(), weights[keep].ravel(), minlength=count * count)
    return flat.reshape(count, count)


def reference_log_ratio(histogram):
    p = histogram / histogram.sum()
    moving_marginal = p.sum(axis=0)
    used = (p > parzen.CLOSE_TO_ZERO) & (moving_marginal > parzen.CLOSE_TO_ZERO)[None, :]
    ratio = np.zeros_like(p)
    ratio[used] = np.log((p / np.where(used, moving_marginal, 1.0))[used])
    return ratio


def reference_entropy_difference(fractions):
    rows = fractions.sum(axis=1)
    used, used_rows = fractions > parzen.CLOSE_TO_ZERO, rows > parzen.CLOSE_TO_ZERO
    return np.sum(fractions[used] * np.log(fractions[used])) - np.sum(
        rows[used_rows] * np.log(rows[used_rows])
    )


def reference_sample_weights(ratio, fixed_bin, first_bin, derivatives):
    return np.sum(ratio[fixed_bin[:, None], first_bin[:, None] + OFFSETS] * derivatives, axis=1)


def _samples(bins, n=3000, seed=0):
    """Moving values over a range: its ends exactly, values outside it, values on bin
    edges (integer window positions) and at the clipped top bin; some invalid."""
    rng = np.random.default_rng(seed + bins)
    image = rng.normal(size=n)
    moving_bins = parzen.IntensityBins.from_values(image, bins)
    values = np.sin(2.0 * image) * 1.5
    edges = (np.arange(2, bins - 1) + moving_bins.normalized_minimum) * moving_bins.bin_size
    values[: edges.size] = edges
    low, high = moving_bins.minimum, moving_bins.maximum
    values[edges.size : edges.size + 5] = low, high, np.nextafter(high, 0), low - 1e-3, high + 1
    valid = (rng.random(n) > 0.1).astype(np.uint8)
    fixed_bin = rng.integers(0, bins, n)
    fixed_bin[:3] = 0, bins - 1, bins - 1  # the edge rows
    return values, valid, moving_bins, fixed_bin


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("bins", [parzen.MIN_BINS, 7, 32, 50, parzen.MAX_BINS])
def test_windows_are_the_numpy_reference(bins):
    values, valid, moving_bins, _ = _samples(bins)
    windows = parzen.moving_parzen(values, valid, moving_bins)
    first, weights, derivatives, inside, negative_entropy = reference_windows(
        values, valid, moving_bins
    )
    assert 0 < windows.count == inside.sum() < inside.size
    assert (windows.inside == inside).all() and (windows.first_bin == first).all()
    assert {1, bins - 4} <= set(windows.first_bin.tolist())  # both clipped ends
    assert_close(windows.weights, weights)
    assert_close(windows.derivatives, derivatives)
    assert_close(windows.negative_entropy, negative_entropy)


@pytest.mark.parametrize("bins", [parzen.MIN_BINS, 7, 32, 50, parzen.MAX_BINS])
def test_histogram_ratio_entropy_and_weights_are_the_numpy_reference(bins):
    values, valid, moving_bins, fixed_bin = _samples(bins)
    windows = parzen.moving_parzen(values, valid, moving_bins)
    counted = windows.inside.copy()
    counted[::7] = 0  # samples with weights that the histogram leaves out
    histogram = parzen.joint_histogram(fixed_bin, windows.first_bin, windows.weights, counted, bins)
    expected = reference_histogram(fixed_bin, windows.first_bin, windows.weights, counted, bins)
    assert_close(histogram, expected)
    ratio = parzen.log_ratio(histogram)
    assert_close(ratio, reference_log_ratio(expected))
    assert (ratio == 0).any() and (ratio != 0).any()  # cells ITK skips, and the others
    fractions = histogram / values.size
    assert_close(parzen.entropy_difference(fractions), reference_entropy_difference(fractions))
    assert_close(
        parzen.sample_weights(ratio, fixed_bin, windows.first_bin, windows.derivatives),
        reference_sample_weights(ratio, fixed_bin, windows.first_bin, windows.derivatives),
    )


def test_an_empty_histogram_is_refused():
    with pytest.raises(ValueError, match="the joint histogram is empty"):
        parzen.log_ratio(np.zeros((8, 8)))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: _kernels.parzen_joint_histogram(*_bins_of(8), 8), "a fixed bin lies outside"),
        (
            lambda: _kernels.parzen_sample_weights(
                np.zeros((8, 8)), *_bins_of(8)[:2], np.zeros((2, 4))
            ),
            "a fixed bin lies outside",
        ),
        (lambda: _kernels.parzen_log_ratio(np.zeros((4, 4))), "count must be a number of bins"),
        (lambda: _kernels.parzen_entropy_difference(np.zeros((8, 7))), "must be square"),
        (
            lambda: _kernels.parzen_windows(np.zeros(3), np.ones(3, bool), 8, 0, 1, 0.25, -2),
            "valid must have dtype uint8",
        ),
        (
            lambda: _kernels.parzen_windows(np.zeros(3), np.ones(3, np.uint8), 8, 0, 1, 0.0, -2),
            "bin_size must be > 0",
        ),
    ],
)
def test_the_kernels_refuse_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _bins_of(count):
    """Two samples' fixed and first bins, the second window past the last bin, and their
    weights."""
    return (
        np.array([0, 1], np.int64),
        np.array([0, count - 3], np.int64),
        np.full((2, 4), 0.25),
        np.ones(2, np.uint8),
    )


# --------------------------------------------------------------------- ITK as the oracle


def _field(points: np.ndarray) -> np.ndarray:
    """A smooth intensity field over physical space."""
    x, y = points[:, 0], points[:, 1]
    z = points[:, 2] if points.shape[1] == 3 else 0.0
    return np.sin(0.35 * x) + np.cos(0.27 * y) + 0.3 * np.sin(0.03 * x * y) + 0.2 * np.cos(0.4 * z)


def _sampled(shape, spacing, origin, direction, intensity) -> ImageGrid:
    grid = ImageGrid(np.zeros(shape, np.float32), spacing, origin, direction)
    geometry = grid.geometry
    points = geometry.physical_points(geometry.flat_to_index(np.arange(geometry.number_of_points)))
    return ImageGrid(
        intensity(points).reshape(shape).astype(np.float32), spacing, origin, direction
    )


def mattes_scene(dimension: int, kind: str):
    """Fixed = cos(2.2 f(x + shift)) (not monotonic in the moving f); moving partly overlapped."""
    if dimension == 2:
        angle = 0.2
        direction = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        moving = _sampled((26, 28), (1.0, 1.05), (-2.0, 1.0), direction.ravel(), _field)
        fixed_shape, fixed_spacing, fixed_origin = (20, 24), (1.1, 0.9), (0.5, 2.0)
        shift = np.array([0.7, -0.4])
    else:
        moving = _sampled(
            (9, 11, 13), (1.0, 1.05, 1.1), (-1.0, 0.5, -0.5), np.eye(3).ravel(), _field
        )
        fixed_shape, fixed_spacing, fixed_origin = (8, 10, 12), (1.1, 0.9, 1.2), (0.5, 1.0, 0.2)
        shift = np.array([0.7, -0.4, 0.3])
    fixed = _sampled(
        fixed_shape,
        fixed_spacing,
        fixed_origin,
        np.eye(dimension).ravel(),
        lambda p: np.cos(2.2 * _field(p + shift)),
    )
    transform = make_transform(kind, dimension)
    if kind == "affine":
        transform.center = fixed.geometry.center() + 0.3  # not the origin
        rng = np.random.default_rng(dimension)
        matrix = np.eye(dimension) + 0.04 * rng.standard_normal((dimension, dimension))
        transform.parameters = np.concatenate([matrix.ravel(), rng.uniform(-1, 1, dimension)])
    else:
        transform.parameters = np.linspace(0.5, -0.8, dimension)
    return fixed, moving, transform


def itk_mattes(fixed, moving, transform, bins):
    import itk

    from ppir_itk.wrapping.images import to_itk
    from ppir_itk.wrapping.transforms import to_itk as transform_to_itk

    image_type = itk.Image[itk.F, fixed.dimension]
    metric = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New()
    metric.SetNumberOfHistogramBins(bins)
    metric.SetFixedImage(to_itk(fixed))
    metric.SetMovingImage(to_itk(moving))
    metric.SetMovingTransform(transform_to_itk(transform))
    metric.Initialize()
    derivative = itk.Array[itk.D](metric.GetNumberOfParameters())
    metric.GetDerivative(derivative)  # runs GetValueAndDerivative
    assert metric.GetUseMovingImageGradientFilter()  # ITK's default gradient source
    gradient_image = itk.array_from_image(metric.GetMovingImageGradientImage())
    return (
        metric.GetValue(),
        np.array(derivative),
        metric.GetNumberOfValidPoints(),
        gradient_image.astype(np.float64),
    )


@pytest.mark.parametrize(
    ("dimension", "kind", "bins"),
    [
        (2, "translation", 32),
        (2, "affine", 50),
        (2, "affine", parzen.MAX_BINS),
        (3, "translation", 16),
        (3, "affine", 24),
    ],
)
def test_equals_itk_mattes(dimension, kind, bins):
    fixed, moving, transform = mattes_scene(dimension, kind)
    itk_value, itk_derivative, itk_valid, gradient_image = itk_mattes(
        fixed, moving, transform, bins
    )

    # Warped values and gradients at the fixed voxel centres: our kernel's linear
    # interpolation, of the moving image and of the gradient image ITK's metric made
    # (GradientRecursiveGaussianImageFilter, physical units) taken to index space.
    fixed_geometry, moving_geometry = fixed.geometry, moving.geometry
    n, d = fixed_geometry.number_of_points, dimension
    to_index = moving_geometry.physical_to_index
    index_gradient = np.ascontiguousarray(gradient_image @ np.linalg.inv(to_index))
    matrix, offset = transform.matrix_offset()
    values, gradients, valid = np.empty(n), np.empty((n, d)), np.empty(n, np.uint8)
    _kernels.warp(
        moving.array,
        index_gradient,
        to_index,
        moving_geometry.origin_array,
        fixed_geometry.size_array,
        fixed_geometry.index_to_physical,
        fixed_geometry.origin_array,
        matrix,
        offset,
        None,
        0,
        n,
        values,
        gradients,
        valid,
    )
    values = values.astype(np.float32).astype(np.float64)  # ITK holds it as the pixel type
    points = fixed_geometry.physical_points(fixed_geometry.flat_to_index(np.arange(n)))
    center = transform.center if transform.center is not None else np.zeros(d)
    value, derivative, n_valid = _assemble(
        fixed.array.ravel().astype(np.float64),
        values,
        gradients,
        _jacobians(kind, points, center),
        valid.astype(bool),
        parzen.IntensityBins.from_values(fixed.array, bins),
        parzen.IntensityBins.from_values(moving.array, bins),
    )

    assert 0 < n_valid < n  # partial overlap
    assert n_valid == itk_valid
    np.testing.assert_allclose(value, itk_value, rtol=1e-6)
    np.testing.assert_allclose(
        derivative, itk_derivative, rtol=1e-5, atol=1e-5 * np.abs(itk_derivative).max()
    )


# ------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("count", [4, 257, 0, -5, 32.5, "32", None, True, float("nan")])
def test_histogram_bins_refused(count):
    with pytest.raises(InputError) as refused:
        parzen.check_histogram_bins(count)
    assert str(refused.value) == f"histogram bins {count} must be a whole number from 5 to 256"


@pytest.mark.parametrize("count", [5, 50, 256, 32.0, np.int64(64)])
def test_histogram_bins_accepted(count):
    assert parzen.check_histogram_bins(count) == int(count)
