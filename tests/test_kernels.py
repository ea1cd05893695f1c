"""Tests of the C kernels (ppir_itk._kernels) against the NumPy reference."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import reference as ref

from ppir_itk import _kernels as K

RTOL = 1e-12
DTYPES = [np.float32, np.float64]
DIMS = [2, 3]
MOVING_SHAPES = {2: (17, 23), 3: (9, 11, 13)}  # NumPy order
FIXED_SIZES = {2: (21, 16), 3: (12, 10, 8)}  # ITK order


def assert_close(actual, expected, rtol=RTOL):
    """allclose with rtol and an absolute floor relative to the largest entry."""
    expected = np.asarray(expected)
    scale = np.abs(expected).max() if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def rotation(d, rng):
    """A random proper rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class Scene:
    """Random moving image + fixed grid with rotated, anisotropic, offset geometry."""

    def __init__(self, d, dtype, seed=0):
        rng = np.random.default_rng(seed + 10 * d)
        self.d = d
        shape = MOVING_SHAPES[d]
        self.moving = rng.uniform(-1.0, 2.0, shape).astype(dtype)
        self.moving_gradient = ref.central_gradient(self.moving)
        moving_size = np.array(shape[::-1])
        moving_spacing = rng.uniform(0.6, 1.8, d)
        A_m = rotation(d, rng) * moving_spacing  # direction @ diag(spacing)
        self.moving_origin = rng.uniform(-30.0, 30.0, d)
        self.P = np.linalg.inv(A_m)
        center = self.moving_origin + A_m @ ((moving_size - 1) / 2)

        self.fixed_size = np.array(FIXED_SIZES[d], dtype=np.int64)
        extent = np.linalg.norm(A_m @ (moving_size - 1)) / np.sqrt(d)
        fixed_spacing = extent / (self.fixed_size - 1) * rng.uniform(0.8, 1.2, d)
        self.A = rotation(d, rng) * fixed_spacing
        self.fixed_origin = center - self.A @ ((self.fixed_size - 1) / 2)

        self.matrix = np.eye(d) + 0.08 * rng.standard_normal((d, d))
        self.offset = 0.5 * rng.standard_normal(d)
        self.reference = center + rng.standard_normal(d)
        self.n_grid = int(np.prod(self.fixed_size))
        self.indices = rng.permutation(self.n_grid)[: self.n_grid // 2 + 3].astype(np.int64)
        self.rng = rng

    def n_points(self, indices):
        return self.n_grid if indices is None else len(indices)

    def warp_args(self):
        return (
            self.moving,
            self.moving_gradient,
            self.P,
            self.moving_origin,
            self.fixed_size,
            self.A,
            self.fixed_origin,
            self.matrix,
            self.offset,
        )

    def grid_args(self):
        return (self.fixed_size, self.A, self.fixed_origin, self.reference)


def run_warp(scene, indices, start=0, stop=None, outputs=None):
    n = scene.n_points(indices)
    stop = n if stop is None else stop
    if outputs is None:
        outputs = (np.full(n, np.nan), np.full((n, scene.d), np.nan), np.full(n, 7, np.uint8))
    n_valid = K.warp(*scene.warp_args(), indices, start, stop, *outputs)
    return (*outputs, n_valid)


# --------------------------------------------------------------------------- central_gradient


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
def test_central_gradient_matches_reference(d, dtype):
    rng = np.random.default_rng(d)
    image = rng.standard_normal(MOVING_SHAPES[d]).astype(dtype)
    out = np.full(image.shape + (d,), np.nan)
    K.central_gradient(image, out)
    np.testing.assert_array_equal(out, ref.central_gradient(image))


@pytest.mark.parametrize(
    "shape", [(1, 5), (4, 1), (1, 1), (3, 1, 5), (1, 4, 2), (2, 3, 1), (1, 1, 1), (2, 2, 2)]
)
def test_central_gradient_small_and_size_one_axes(shape):
    rng = np.random.default_rng(1)
    image = rng.standard_normal(shape)
    out = np.full(shape + (len(shape),), np.nan)
    K.central_gradient(image, out)
    expected = ref.central_gradient(image)
    np.testing.assert_array_equal(out, expected)
    for k, n in enumerate(shape[::-1]):
        if n == 1:
            assert np.all(out[..., k] == 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
def test_central_gradient_of_linear_ramp_is_exact(d, dtype):
    slopes = np.array([3.0, -2.0, 0.5])[:d]  # ITK order
    shape = MOVING_SHAPES[d]
    itk_index = np.indices(shape)[::-1]  # ITK axis k is NumPy axis d-1-k
    image = (7.0 + sum(s * i for s, i in zip(slopes, itk_index, strict=True))).astype(dtype)
    out = np.empty(shape + (d,))
    K.central_gradient(image, out)
    np.testing.assert_array_equal(out, np.broadcast_to(slopes, out.shape))


def test_central_gradient_bad_input():
    image = np.zeros((4, 5))
    out = np.zeros((4, 5, 2))
    with pytest.raises(ValueError, match="dtype"):
        K.central_gradient(image.astype(np.int64), out)
    with pytest.raises(ValueError, match="dtype"):
        K.central_gradient(image, out.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        K.central_gradient(image, np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.central_gradient(np.zeros((5, 4)).T, out)
    with pytest.raises(ValueError, match="2-D or 3-D"):
        K.central_gradient(np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4, 5, 4)))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        K.central_gradient(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="empty"):
        K.central_gradient(np.zeros((0, 3)), np.zeros((0, 3, 2)))
    readonly = np.zeros((4, 5, 2))
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        K.central_gradient(image, readonly)
    with pytest.raises(ValueError, match="numpy.ndarray"):
        K.central_gradient(image.tolist(), out)
    with pytest.raises(ValueError, match="dtype"):
        K.central_gradient(image.astype(">f8"), out)


# --------------------------------------------------------------------------------------- warp


@pytest.mark.parametrize("use_indices", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
def test_warp_matches_reference(d, dtype, use_indices):
    scene = Scene(d, dtype)
    indices = scene.indices if use_indices else None
    n = scene.n_points(indices)
    start, stop = 3, n - 5
    values, gradient, valid, n_valid = run_warp(scene, indices, start, stop)
    r_values, r_gradient, r_valid, r_n_valid = ref.warp(*scene.warp_args(), indices, start, stop)

    # The scene must exercise both inside and outside points.
    assert 0.2 * (stop - start) < r_n_valid < 0.95 * (stop - start)
    assert n_valid == r_n_valid
    np.testing.assert_array_equal(valid[start:stop], r_valid)
    assert_close(values[start:stop], r_values)
    assert_close(gradient[start:stop], r_gradient)
    # Outside points get exact zeros.
    outside = valid[start:stop] == 0
    assert np.all(values[start:stop][outside] == 0.0)
    assert np.all(gradient[start:stop][outside] == 0.0)
    # Positions outside [start, stop) are untouched.
    assert np.all(np.isnan(values[:start])) and np.all(np.isnan(values[stop:]))
    assert np.all(np.isnan(gradient[:start])) and np.all(np.isnan(gradient[stop:]))
    assert np.all(valid[:start] == 7) and np.all(valid[stop:] == 7)


@pytest.mark.parametrize("use_indices", [False, True])
@pytest.mark.parametrize("d", DIMS)
def test_warp_chunks_equal_whole(d, use_indices):
    scene = Scene(d, np.float64, seed=3)
    indices = scene.indices if use_indices else None
    n = scene.n_points(indices)
    whole = run_warp(scene, indices)
    bounds = [0, 1, 7, n // 3, n // 3, n - 2, n]  # includes an empty chunk
    outputs = (np.full(n, np.nan), np.full((n, d), np.nan), np.full(n, 7, np.uint8))
    total = 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        total += run_warp(scene, indices, a, b, outputs)[3]
    assert total == whole[3]
    for chunked, full in zip(outputs, whole[:3], strict=True):
        np.testing.assert_array_equal(chunked, full)


@pytest.mark.parametrize("d", DIMS)
def test_warp_chunks_on_threads(d):
    scene = Scene(d, np.float32, seed=4)
    n = scene.n_grid
    whole = run_warp(scene, None)
    outputs = (np.full(n, np.nan), np.full((n, d), np.nan), np.full(n, 7, np.uint8))
    bounds = np.linspace(0, n, 9).astype(int)
    with ThreadPoolExecutor(4) as pool:
        counts = list(
            pool.map(
                lambda ab: run_warp(scene, None, ab[0], ab[1], outputs)[3],
                zip(bounds[:-1], bounds[1:], strict=True),
            )
        )
    assert sum(counts) == whole[3]
    for threaded, full in zip(outputs, whole[:3], strict=True):
        np.testing.assert_array_equal(threaded, full)


@pytest.mark.parametrize("d", DIMS)
def test_warp_index_list_equals_whole_grid(d):
    """indices=arange(n) gives bit-identical results to indices=None."""
    scene = Scene(d, np.float64, seed=5)
    whole = run_warp(scene, None)
    listed = run_warp(scene, np.arange(scene.n_grid, dtype=np.int64))
    for a, b in zip(listed, whole, strict=True):
        np.testing.assert_array_equal(a, b)
    # An arbitrary index list picks the same per-point results.
    picked = run_warp(scene, scene.indices)
    for a, b in zip(picked[:3], whole[:3], strict=True):
        np.testing.assert_array_equal(a, b[scene.indices])


@pytest.mark.parametrize("d", DIMS)
def test_warp_all_outside(d):
    scene = Scene(d, np.float64)
    scene.offset = scene.offset + 1e4
    values, gradient, valid, n_valid = run_warp(scene, None)
    assert n_valid == 0
    assert np.all(valid == 0) and np.all(values == 0.0) and np.all(gradient == 0.0)


def exact_scene(d, dtype):
    """Axis-aligned geometry with dyadic spacings: every coordinate is exact."""
    scene = Scene(d, dtype, seed=6)
    spacing = np.array([0.5, 2.0, 4.0])[:d]
    moving_size = np.array(scene.moving.shape[::-1])
    scene.moving_origin = np.array([1.5, -3.0, 8.0])[:d]
    scene.P = np.diag(1.0 / spacing)
    scene.A = np.diag(spacing)  # fixed grid = moving grid, shifted by whole voxels
    scene.fixed_size = moving_size.astype(np.int64)
    scene.n_grid = int(np.prod(scene.fixed_size))
    scene.fixed_origin = scene.moving_origin.copy()
    scene.matrix = np.eye(d)
    return scene, spacing


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
def test_warp_is_exact_at_grid_nodes(d, dtype):
    scene, spacing = exact_scene(d, dtype)
    shift = np.array([2, 1, 3])[:d]  # whole voxels, ITK order
    scene.offset = shift * spacing
    values, gradient, valid, n_valid = run_warp(scene, None)

    idx = ref.grid_indices(scene.fixed_size, np.arange(scene.n_grid))
    u = idx + shift
    inside = np.all(u <= np.array(scene.moving.shape[::-1]) - 1, axis=1)
    np.testing.assert_array_equal(valid, inside.astype(np.uint8))
    assert n_valid == inside.sum()
    numpy_u = tuple(u[inside][:, ::-1].T)
    np.testing.assert_array_equal(values[inside], scene.moving[numpy_u].astype(np.float64))
    np.testing.assert_array_equal(gradient[inside], scene.moving_gradient[numpy_u] / spacing)


@pytest.mark.parametrize("d", DIMS)
def test_warp_is_linear_between_nodes(d):
    scene, spacing = exact_scene(d, np.float64)
    for axis in range(d):
        for frac in (0.25, 0.5, 0.875):
            shift = np.zeros(d)
            shift[axis] = frac
            scene.offset = shift * spacing
            values, gradient, valid, _ = run_warp(scene, None)
            idx = ref.grid_indices(scene.fixed_size, np.arange(scene.n_grid))
            inside = idx[:, axis] < scene.fixed_size[axis] - 1
            # The last row is still inside (ITK's half pixel) when frac < 0.5 and samples it.
            border = idx[:, axis] == scene.fixed_size[axis] - 1
            expected_valid = inside | (border & (frac < 0.5))
            np.testing.assert_array_equal(valid, expected_valid.astype(np.uint8))
            if frac < 0.5:
                last = tuple(idx[border][:, ::-1].T)
                assert_close(values[border], scene.moving[last], rtol=1e-15)
            lo = tuple(idx[inside][:, ::-1].T)
            step = np.zeros(d, dtype=np.int64)
            step[axis] = 1
            hi = tuple((idx[inside] + step)[:, ::-1].T)
            expected = (1 - frac) * scene.moving[lo] + frac * scene.moving[hi]
            assert_close(values[inside], expected, rtol=1e-15)
            expected_gradient = (
                (1 - frac) * scene.moving_gradient[lo] + frac * scene.moving_gradient[hi]
            ) / spacing
            assert_close(gradient[inside], expected_gradient, rtol=1e-15)


@pytest.mark.parametrize("d", DIMS)
def test_warp_reproduces_affine_functions(d):
    """Linear interpolation of an affine image is exact, at any (rotated) point."""
    scene = Scene(d, np.float64, seed=7)
    slope = np.array([0.3, -1.1, 0.7])[:d]  # per ITK index axis
    itk_index = np.indices(scene.moving.shape)[::-1]
    scene.moving = 2.0 + sum(s * i for s, i in zip(slope, itk_index, strict=True))
    scene.moving_gradient = ref.central_gradient(scene.moving)
    values, gradient, valid, n_valid = run_warp(scene, None)
    assert n_valid > 0
    x = ref.physical_points(scene.fixed_size, scene.A, scene.fixed_origin, None, 0, scene.n_grid)
    u = (x @ scene.matrix.T + scene.offset - scene.moving_origin) @ scene.P.T
    # Exact where u lies between border centres (beyond them the border is sampled).
    top = np.array(scene.moving.shape[::-1]) - 1
    inside = (valid == 1) & np.all((u >= 0) & (u <= top), axis=1)
    assert inside.sum() > 0.5 * n_valid
    assert_close(values[inside], 2.0 + u[inside] @ slope, rtol=1e-11)
    expected = np.broadcast_to(scene.P.T @ slope, (int(inside.sum()), d))
    assert_close(gradient[inside], expected, rtol=1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", DIMS)
def test_warp_borders(d, dtype):
    """u on the border centres is exact; half a pixel beyond samples the border; past it, invalid.

    As ITK's ``IsInsideBuffer``: inside iff ``-0.5 <= u_k < n_k - 0.5``.
    """
    rng = np.random.default_rng(8)
    moving = rng.standard_normal(MOVING_SHAPES[d]).astype(dtype)
    moving_gradient = rng.standard_normal(moving.shape + (d,))
    top = np.array(moving.shape[::-1], dtype=np.float64) - 1
    eye, zero = np.eye(d), np.zeros(d)
    single = np.ones(d, dtype=np.int64)  # a fixed grid of one point at the origin

    def sample(u):
        out = (np.zeros(1), np.zeros((1, d)), np.zeros(1, np.uint8))
        n_valid = K.warp(
            moving,
            moving_gradient,
            eye,
            zero,
            single,
            eye,
            zero,
            eye,
            np.asarray(u, dtype=np.float64),
            None,
            0,
            1,
            *out,
        )
        return out[0][0], out[1][0], n_valid

    corners = [zero, top, np.where(np.arange(d) == 0, top, 0.0)]
    for u in corners:
        value, grad, n_valid = sample(u)
        numpy_index = tuple(u[::-1].astype(int))
        assert n_valid == 1
        assert value == np.float64(moving[numpy_index])
        np.testing.assert_array_equal(grad, moving_gradient[numpy_index])
    for k in range(d):
        axis = np.arange(d) == k
        for u, border in ((top + 0.49 * axis, top), (-0.5 * axis, zero)):
            value, grad, n_valid = sample(u)
            numpy_index = tuple(border[::-1].astype(int))
            assert n_valid == 1 and value == np.float64(moving[numpy_index])
            np.testing.assert_array_equal(grad, moving_gradient[numpy_index])
        for u in (top + 0.5 * axis, -(0.5 + 1e-12) * axis):
            value, grad, n_valid = sample(u)
            assert n_valid == 0 and value == 0.0 and np.all(grad == 0.0)
    value, grad, n_valid = sample(np.full(d, np.nan))
    assert n_valid == 0


def test_warp_bad_input():
    scene = Scene(2, np.float64)
    n = scene.n_grid
    good = dict(
        moving=scene.moving,
        moving_gradient=scene.moving_gradient,
        moving_physical_to_index=scene.P,
        moving_origin=scene.moving_origin,
        fixed_size=scene.fixed_size,
        fixed_index_to_physical=scene.A,
        fixed_origin=scene.fixed_origin,
        matrix=scene.matrix,
        offset=scene.offset,
        indices=None,
        start=0,
        stop=n,
        out_values=np.zeros(n),
        out_gradient=np.zeros((n, 2)),
        out_valid=np.zeros(n, np.uint8),
    )
    assert K.warp(**good) > 0

    def bad(match, **changes):
        with pytest.raises(ValueError, match=match):
            K.warp(**{**good, **changes})

    bad("moving must have dtype", moving=scene.moving.astype(np.int32))
    bad(
        "moving must be 2-D or 3-D",
        moving=np.zeros((2, 2, 2, 2)),
        moving_gradient=np.zeros((2, 2, 2, 2, 4)),
    )
    bad("moving must be 2-D or 3-D", moving=np.zeros(5), moving_gradient=np.zeros((5, 1)))
    bad("moving_gradient must have shape", moving_gradient=scene.moving_gradient[..., :1].copy())
    bad("moving_gradient must have dtype", moving_gradient=scene.moving_gradient.astype(np.float32))
    bad("moving_physical_to_index must have shape", moving_physical_to_index=np.eye(3))
    bad("moving_origin must have shape", moving_origin=np.zeros(3))
    bad("fixed_size must have dtype", fixed_size=scene.fixed_size.astype(np.int32))
    bad("fixed_size must have shape", fixed_size=np.array([4, 4, 4], dtype=np.int64))
    bad("fixed_size must be >= 1", fixed_size=np.array([0, 4], dtype=np.int64))
    bad("fixed_index_to_physical must have shape", fixed_index_to_physical=np.eye(3))
    bad("matrix must be C-contiguous", matrix=np.asfortranarray(scene.matrix + 0.01 * scene.A))
    bad("offset must be a numpy.ndarray", offset=[0.0, 0.0])
    bad("start and stop", start=-1)
    bad("start and stop", start=5, stop=4)
    bad("start and stop", stop=n + 1)
    bad("out_values must have shape", out_values=np.zeros(n - 1))
    bad("out_gradient must be C-contiguous", out_gradient=np.zeros((2, n)).T)
    bad("out_valid must have dtype", out_valid=np.zeros(n, bool))
    readonly = np.zeros(n)
    readonly.flags.writeable = False
    bad("out_values must be writeable", out_values=readonly)
    bad(
        "out_values must not overlap moving_gradient",
        out_values=scene.moving_gradient.reshape(-1)[:n],
    )
    shared = np.zeros(3 * n)
    bad(
        "out_values and out_gradient must not overlap",
        out_values=shared[n : 2 * n],
        out_gradient=shared[: 2 * n].reshape(n, 2),
    )
    bad(
        "out_gradient and out_valid must not overlap",
        out_gradient=shared[: 2 * n].reshape(n, 2),
        out_valid=shared.view(np.uint8)[:n],
    )

    # Index lists: dtype, shape, and every used index inside [0, prod(fixed_size)).
    m = 10
    listed = {
        **good,
        "stop": m,
        "out_values": np.zeros(m),
        "out_gradient": np.zeros((m, 2)),
        "out_valid": np.zeros(m, np.uint8),
    }

    def bad_indices(match, indices, **changes):
        with pytest.raises(ValueError, match=match):
            K.warp(**{**listed, "indices": indices, **changes})

    ok = np.arange(m, dtype=np.int64)
    # The first m grid points: 5 of them map inside the moving image (the reference says so).
    assert K.warp(**{**listed, "indices": ok}) == ref.warp(*scene.warp_args(), ok, 0, m)[3] == 5
    bad_indices("indices must have dtype", ok.astype(np.int32))
    bad_indices("indices must be 1-D", ok.reshape(2, 5))
    for wrong in (-1, n, n + 100):
        broken = ok.copy()
        broken[4] = wrong
        bad_indices("outside", broken)
    bad_indices("start and stop", ok, stop=m + 1)
    bad_indices("out_values must have shape", ok, out_values=np.zeros(n))


# --------------------------------------------------------------------------- affine kernels


def gradient_field(scene, n, seed=9):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, scene.d))
    g[rng.random(n) < 0.3] = 0.0  # like invalid points: skipped by the kernel
    return g


@pytest.mark.parametrize("use_indices", [False, True])
@pytest.mark.parametrize("d", DIMS)
def test_affine_gram_matches_reference(d, use_indices):
    scene = Scene(d, np.float64)
    indices = scene.indices if use_indices else None
    n = scene.n_points(indices)
    gradient = gradient_field(scene, n)
    m = d * (d + 1)
    for start, stop in [(0, n), (5, n - 7), (4, 4)]:
        out = np.full((m, m), np.nan)
        K.affine_gram(*scene.grid_args(), indices, start, stop, gradient, out)
        expected = ref.affine_gram(*scene.grid_args(), indices, start, stop, gradient)
        assert_close(out, expected)
        np.testing.assert_array_equal(out, out.T)


@pytest.mark.parametrize("use_indices", [False, True])
@pytest.mark.parametrize("d", DIMS)
def test_affine_gram_chunks_sum_to_whole(d, use_indices):
    scene = Scene(d, np.float64, seed=1)
    indices = scene.indices if use_indices else None
    n = scene.n_points(indices)
    gradient = gradient_field(scene, n)
    m = d * (d + 1)
    whole = np.empty((m, m))
    K.affine_gram(*scene.grid_args(), indices, 0, n, gradient, whole)
    total = np.zeros((m, m))
    bounds = [0, 1, n // 4, n // 4, n // 2 + 1, n]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part = np.empty((m, m))
        K.affine_gram(*scene.grid_args(), indices, a, b, gradient, part)
        total += part
    assert_close(total, whole)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("use_indices", [False, True])
@pytest.mark.parametrize("d", DIMS)
def test_affine_moments_matches_reference(d, use_indices, weighted):
    scene = Scene(d, np.float64, seed=2)
    indices = scene.indices if use_indices else None
    n = scene.n_points(indices)
    rng = np.random.default_rng(11)
    field = rng.standard_normal((n, d))
    weights = rng.uniform(0.0, 2.0, n) if weighted else None
    for start, stop in [(0, n), (5, n - 7), (4, 4)]:
        out = np.full((d, d + 1), np.nan)
        K.affine_moments(*scene.grid_args(), indices, start, stop, field, weights, out)
        expected = ref.affine_moments(*scene.grid_args(), indices, start, stop, field, weights)
        assert_close(out, expected)


@pytest.mark.parametrize("use_indices", [False, True])
@pytest.mark.parametrize("d", DIMS)
def test_affine_moments_chunks_sum_to_whole(d, use_indices):
    scene = Scene(d, np.float64, seed=3)
    indices = scene.indices if use_indices else None
    n = scene.n_points(indices)
    rng = np.random.default_rng(12)
    field = rng.standard_normal((n, d))
    weights = rng.uniform(0.0, 2.0, n)
    whole = np.empty((d, d + 1))
    K.affine_moments(*scene.grid_args(), indices, 0, n, field, weights, whole)
    total = np.zeros((d, d + 1))
    bounds = [0, 2, n // 3, n // 3, n - 1, n]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part = np.empty((d, d + 1))
        K.affine_moments(*scene.grid_args(), indices, a, b, field, weights, part)
        total += part
    assert_close(total, whole)


def test_affine_moments_unit_weights_equal_none():
    scene = Scene(3, np.float64)
    n = scene.n_grid
    field = np.random.default_rng(13).standard_normal((n, 3))
    a, b = np.empty((3, 4)), np.empty((3, 4))
    K.affine_moments(*scene.grid_args(), None, 0, n, field, None, a)
    K.affine_moments(*scene.grid_args(), None, 0, n, field, np.ones(n), b)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kernel", ["gram", "moments"])
def test_affine_bad_input(kernel):
    scene = Scene(3, np.float64)
    n = scene.n_grid
    field = np.zeros((n, 3))

    def call(
        fixed_size=scene.fixed_size,
        A=scene.A,
        origin=scene.fixed_origin,
        reference=scene.reference,
        indices=None,
        start=0,
        stop=n,
        field=field,
        weights=None,
        out=None,
    ):
        if kernel == "gram":
            out = np.zeros((12, 12)) if out is None else out
            K.affine_gram(fixed_size, A, origin, reference, indices, start, stop, field, out)
        else:
            out = np.zeros((3, 4)) if out is None else out
            K.affine_moments(
                fixed_size, A, origin, reference, indices, start, stop, field, weights, out
            )

    call()
    with pytest.raises(ValueError, match="2-D or 3-D"):
        call(
            fixed_size=np.array([2, 2, 2, 2], dtype=np.int64),
            A=np.eye(4),
            origin=np.zeros(4),
            reference=np.zeros(4),
            field=np.zeros((16, 4)),
            stop=16,
        )
    with pytest.raises(ValueError, match="2-D or 3-D"):
        call(fixed_size=np.array([5], dtype=np.int64))
    with pytest.raises(ValueError, match="fixed_size must have dtype"):
        call(fixed_size=scene.fixed_size.astype(np.float64))
    with pytest.raises(ValueError, match="fixed_index_to_physical must have shape"):
        call(A=np.eye(2))
    with pytest.raises(ValueError, match="reference must have shape"):
        call(reference=np.zeros(2))
    name = "gradient" if kernel == "gram" else "field"
    with pytest.raises(ValueError, match=f"{name} must have shape"):
        call(field=np.zeros((n, 2)))
    with pytest.raises(ValueError, match=f"{name} must have dtype"):
        call(field=np.zeros((n, 3), np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        call(out=np.zeros((3, 3)))
    out_shape = (12, 12) if kernel == "gram" else (3, 4)
    with pytest.raises(ValueError, match="out must not overlap"):
        call(out=field.reshape(-1)[: np.prod(out_shape)].reshape(out_shape))
    with pytest.raises(ValueError, match="start and stop"):
        call(start=3, stop=2)
    indices = np.arange(6, dtype=np.int64)
    call(indices=indices, field=np.zeros((6, 3)), stop=6)
    indices[2] = n
    with pytest.raises(ValueError, match="outside"):
        call(indices=indices, field=np.zeros((6, 3)), stop=6)
    if kernel == "moments":
        with pytest.raises(ValueError, match="weights must have shape"):
            call(weights=np.ones(n - 1))
