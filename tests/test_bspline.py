"""Cubic B-spline transforms: kernels against NumPy and ITK, I/O, and registration."""

from __future__ import annotations

import os
import warnings

import itk
import numpy as np
import pytest
import reference as ref
import SimpleITK as sitk
from conftest import register_in_process

import ppir_itk
from ppir_itk import _kernels
from ppir_itk.bspline import BSplineTransform, _assemble, control_map, scatter_ring
from ppir_itk.image import GridGeometry
from ppir_itk.phantoms import head_phantom
from ppir_itk.pyramid import Level, LevelSchedule
from ppir_itk.registration import resample
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.images import as_image_grid
from ppir_itk.wrapping.images import to_sitk as image_to_sitk
from ppir_itk.wrapping.transforms import from_itk, from_sitk, to_itk, to_sitk, write_transform


def _grid(d: int, seed: int = 0) -> GridGeometry:
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return GridGeometry(
        size=tuple(int(s) for s in rng.integers(9, 15, d)),
        spacing=tuple(rng.uniform(0.8, 1.3, d)),
        origin=tuple(rng.normal(size=d)),
        direction=tuple(rotation.ravel()),
    )


def _transform(grid: GridGeometry, spacing: float = 4.0, seed: int = 1) -> BSplineTransform:
    transform = BSplineTransform.over(grid, spacing)
    transform.parameters = np.random.default_rng(seed).normal(size=transform.number_of_parameters)
    return transform


def _points(grid: GridGeometry, sampled: bool):
    n = grid.number_of_points
    indices = (
        np.sort(np.random.default_rng(5).choice(n, n // 3, replace=False)) if sampled else None
    )
    return indices, (n if indices is None else indices.size)


# -- kernels against the NumPy reference ----------------------------------------------
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("sampled", [False, True])
def test_kernels_match_the_reference(d, sampled):
    grid = _grid(d)
    transform = _transform(grid)
    control = transform.control(grid)
    indices, n = _points(grid, sampled)
    start, stop = n // 5, n - 3
    size = grid.size_array
    rng = np.random.default_rng(2)
    coefficients = transform.parameters.reshape(d, -1)

    out = np.full((n, d), np.nan)
    _kernels.bspline_displacement(size, indices, start, stop, control, coefficients, out)
    np.testing.assert_allclose(
        out[start:stop],
        ref.bspline_displacement(size, indices, start, stop, control, coefficients),
        rtol=0,
        atol=1e-12,
    )

    values = rng.normal(size=(n, 3))
    for bits in (0, 9):
        out = np.empty((transform.control_points, 3))
        _kernels.bspline_scatter(size, indices, start, stop, control, values, out, bits)
        np.testing.assert_allclose(
            out,
            ref.bspline_scatter(size, indices, start, stop, control, values, bits),
            rtol=0,
            atol=1e-12,
        )

    gradient = rng.normal(size=(n, d))
    blocks = np.empty((transform.control_points, 7**d, d * (d + 1) // 2))
    _kernels.bspline_hessian(size, indices, start, stop, control, gradient, blocks)
    np.testing.assert_allclose(
        _assemble(blocks, transform.size).toarray(),
        ref.bspline_hessian(size, indices, start, stop, control, gradient),
        rtol=0,
        atol=1e-11,
    )


@pytest.mark.parametrize("d", [2, 3])
def test_ring_scatter_is_exact_modulo_2_64(d):
    grid = _grid(d, seed=3)
    transform = _transform(grid)
    bits = 8
    values = np.random.default_rng(4).integers(-(2**62), 2**62, size=(grid.number_of_points, 2))
    ours = scatter_ring(transform.control_grid, grid, None, values, bits)
    flat, weight = ref.bspline_support(
        grid.size_array, None, 0, grid.number_of_points, transform.control(grid), bits
    )
    integer_weight = np.rint(weight * 2.0 ** (d * bits)).astype(np.int64).astype(object)
    expected = np.zeros(ours.shape, dtype=object)
    for x in range(grid.number_of_points):
        for c, w in zip(flat[x], integer_weight[x], strict=True):
            expected[c] += w * values[x].astype(object)
    wrapped = [(int(v) + 2**63) % 2**64 - 2**63 for v in expected.ravel()]
    assert ours.ravel().tolist() == wrapped


def test_kernels_refuse_a_control_grid_too_small():
    grid = _grid(2)
    control = (np.array([3, 5]), np.eye(2), np.zeros(2))
    with pytest.raises(ValueError, match=">= 4"):
        _kernels.bspline_displacement(
            grid.size_array,
            None,
            0,
            1,
            control,
            np.zeros((2, 15)),
            np.zeros((grid.number_of_points, 2)),
        )


# -- the transform against ITK ----------------------------------------------------------
@pytest.mark.parametrize("d", [2, 3])
def test_displacement_equals_itk_and_refinement_keeps_it(d):
    grid = _grid(d, seed=d)
    transform = _transform(grid)
    itk_transform = to_itk(transform)
    points = grid.physical_points(grid.flat_to_index(np.arange(grid.number_of_points)))
    expected = np.array(
        [list(itk_transform.TransformPoint(itk.Point[itk.D, d](p.tolist()))) for p in points]
    )
    np.testing.assert_allclose(
        transform.transform_points(points[:20]), expected[:20], rtol=0, atol=1e-12
    )
    moved = points + transform.displacement(grid, None)
    np.testing.assert_allclose(moved, expected, rtol=0, atol=1e-12)
    finer = transform.refined()
    assert [s - 3 for s in finer.size] == [2 * (s - 3) for s in transform.size]
    np.testing.assert_allclose(
        finer.displacement(grid, None), transform.displacement(grid, None), rtol=0, atol=1e-12
    )


def test_bending_energy_is_zero_for_affine_displacements_only():
    grid = _grid(2, seed=7)
    transform = BSplineTransform.over(grid, 4.0)
    energy = transform.bending_energy()
    assert abs(energy - energy.T).max() < 1e-12
    # Coefficients sampled from an affine displacement field make exactly that field.
    control = transform.control_grid
    positions = control.physical_points(control.flat_to_index(np.arange(control.number_of_points)))
    affine = positions @ np.array([[0.03, -0.02], [0.01, 0.04]]).T + [1.0, -2.0]
    theta = affine.T.ravel()
    assert abs(theta @ energy @ theta) < 1e-9 * (theta @ theta)
    bent = np.random.default_rng(0).normal(size=theta.size)
    assert bent @ energy @ bent > 1e-3 * (bent @ bent)


def test_itk_and_simpleitk_read_the_written_transform_and_resample_like_the_result(tmp_path):
    grid = GridGeometry(
        size=(30, 24), spacing=(1.0, 1.2), origin=(0.5, -1.0), direction=(1.0, 0.0, 0.0, 1.0)
    )
    bulk = make_transform("affine", 2)
    bulk.parameters = [1.02, 0.03, -0.02, 0.97, 1.0, -0.5]
    transform = BSplineTransform.over(grid, 6.0, bulk=bulk)
    transform.parameters = np.random.default_rng(0).normal(size=transform.number_of_parameters)
    moving = head_phantom((30, 24), spacing=(1.0, 1.2))
    ours = resample(moving, transform, grid).array
    points = grid.physical_points(np.array([[3.0, 4.0], [20.0, 17.0]]))
    for suffix in (".tfm", ".h5"):
        path = tmp_path / f"t{suffix}"
        write_transform(transform, path)
        by_sitk = sitk.ReadTransform(str(path))
        by_itk = itk.transformread(str(path))[0]
        reference = sitk.Image(list(grid.size), sitk.sitkFloat64)
        reference.SetSpacing(grid.spacing)
        reference.SetOrigin(grid.origin)
        warped = sitk.Resample(
            image_to_sitk(moving), reference, by_sitk, sitk.sitkLinear, 0.0, sitk.sitkFloat64
        )
        np.testing.assert_allclose(sitk.GetArrayFromImage(warped), ours, rtol=0, atol=1e-12)
        for back in (from_sitk(by_sitk), from_itk(by_itk)):
            np.testing.assert_allclose(
                back.transform_points(points),
                transform.transform_points(points),
                rtol=0,
                atol=1e-12,
            )
    assert to_sitk(transform).GetName() == "CompositeTransform"


# -- registration ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deformed_slice(nibabel_data):
    """A real T1 slice (resampled to 1 mm) as the moving image and, as the fixed image,
    the same slice seen through a known smooth deformation W: registration must find W."""
    volume = as_image_grid(os.path.join(nibabel_data, "anatomical.nii"))
    slice_ = ppir_itk.ImageGrid(
        volume.array[12].astype(np.float64), spacing=volume.geometry.spacing[:2]
    )
    fine = GridGeometry(
        size=tuple(2 * s for s in slice_.geometry.size),
        spacing=tuple(s / 2 for s in slice_.geometry.spacing),
        origin=slice_.geometry.origin,
        direction=slice_.geometry.direction,
    )
    moving = resample(slice_, make_transform("translation", 2), fine)
    truth = BSplineTransform.over(moving.geometry, 32.0)
    truth.parameters = np.random.default_rng(11).normal(scale=2.0, size=truth.number_of_parameters)
    fixed = resample(moving, truth, moving.geometry)
    brain = fixed.array.ravel() > 0.15 * fixed.array.max()
    return fixed, moving, truth, np.flatnonzero(brain)


def _rms(first, second, grid, where) -> float:
    """RMS distance between two transforms' images of the grid points ``where``, in pixels."""
    points = grid.physical_points(grid.flat_to_index(where))
    moved = first.transform_points(points) - second.transform_points(points)
    return float(np.sqrt((moved**2).sum(axis=1).mean()) / min(grid.spacing))


BSPLINE = dict(
    transform="bspline",
    grid_spacing=8.0,
    shrink_factors=[4, 2, 1],
    smoothing_sigmas=[2.0, 1.0, 0.0],
    iterations=60,
    bending_energy_weight=100.0,
)


@pytest.fixture(scope="module")
def clear_result(deformed_slice):
    fixed, moving, _, _ = deformed_slice
    with warnings.catch_warnings():  # module scope: conftest's per-test filter is not on yet
        warnings.simplefilter("ignore", ppir_itk.InsecureBackendWarning)
        return register_in_process(fixed, moving, **BSPLINE)


def test_clear_recovers_a_known_deformation(deformed_slice, clear_result):
    fixed, _, truth, brain = deformed_slice
    before = _rms(make_transform("translation", 2), truth, fixed.geometry, brain)
    error = _rms(clear_result.transform, truth, fixed.geometry, brain)
    assert error < 0.5 < before, (error, before)


@pytest.mark.parametrize("backend", ["spdz", "he"])
def test_private_backends_follow_clear(deformed_slice, clear_result, backend):
    fixed, moving, _, brain = deformed_slice
    private = register_in_process(fixed, moving, backend=backend, **BSPLINE)
    assert _rms(private.transform, clear_result.transform, fixed.geometry, brain) < 0.05
    assert "B-spline-basis moments" in private.learned["moving"][0]


@pytest.mark.parametrize("metric_class", ["MeanSquares", "Correlation"])
@pytest.mark.parametrize("backend", ["spdz", "he"])
def test_a_private_gradient_rounds_g_alike_in_both_its_moments(phantom_2d, backend, metric_class):
    """Where the image terms cancel (the fixed image is the moving one, theta 0) the data
    gradient 2/n (S^T I_w - S^T J) is 0. With integer intensities q(J) is J, so a private
    one is 0 too if the moving party's own S^T I_w takes the q(g) the backend's S^T J took;
    with the exact g it would be g's rounding times the whole image. Correlation's
    derivative, from the same two moments (and S^T m), cancels the same way."""
    integers = np.round(100.0 * phantom_2d.array / phantom_2d.array.max())
    image = ppir_itk.ImageGrid(integers.astype(np.float64), spacing=(1.1, 0.9))
    metric = getattr(ppir_itk, f"Private{metric_class}ImageToImageMetric")(
        backend, session=ppir_itk.in_process_session(image)
    )
    metric.SetMovingImage(image)
    metric.SetTransform(BSplineTransform.over(image.geometry, 8.0))
    metric.moving_party.start(LevelSchedule.from_lists([1], [0.0]), ppir_itk.NoSampling())
    points = metric.initialize_level(0, Level(1, 0.0), None)
    seen = []
    joint_term = metric.moving_party.joint_term
    metric.moving_party.joint_term = lambda fields: seen.append(fields) or joint_term(fields)
    gradient = metric.evaluate().gradient
    (fields,) = seen
    # The scale of either moment: what the two cancel down from.
    own = 2.0 / points.size * points.linear_map.moments(fields.gradient, fields.warped)
    assert np.abs(gradient).max() <= 1e-12 * np.abs(own).max()  # 0 here


def test_refined_grid_and_bending_energy_and_an_affine_bulk(deformed_slice):
    fixed, moving, truth, brain = deformed_slice
    bulk = make_transform("affine", 2)  # identity: the composite must change nothing (below)
    options = {**BSPLINE, "refine_grid": True, "bulk_transform": bulk}
    result = register_in_process(fixed, moving, **options)
    assert result.transform.bulk is not None
    # Three levels: a 32 mm grid refined twice, ending at 8 mm or a little finer.
    assert (
        result.transform.size
        == BSplineTransform.over(fixed.geometry, 32.0).refined().refined().size
    )
    assert np.all(result.transform.spacing <= 8.0)
    assert _rms(result.transform, truth, fixed.geometry, brain) < 0.5
    alone = register_in_process(fixed, moving, **{**BSPLINE, "refine_grid": True})
    assert alone.transform.bulk is None and alone.iterations == result.iterations
    np.testing.assert_allclose(
        result.transform.parameters, alone.transform.parameters, rtol=1e-12, atol=1e-12
    )
    without = register_in_process(fixed, moving, **{**BSPLINE, "bending_energy_weight": 0.0})
    assert _rms(without.transform, truth, fixed.geometry, brain) > 0.5  # the regulariser helps


def test_the_paper_protocols_refuse_b_splines_with_one_sentence(deformed_slice):
    fixed, moving, _, _ = deformed_slice
    with pytest.raises(ppir_itk.InputError, match="linear transforms only"):
        register_in_process(
            fixed, moving, backend="he", backend_parameters={"protocol": "paper-v1"}, **BSPLINE
        )


def test_a_b_spline_needs_a_grid_spacing(deformed_slice):
    fixed, moving, _, _ = deformed_slice
    with pytest.raises(ppir_itk.InputError, match="grid_spacing"):
        ppir_itk.register(fixed, moving, transform="bspline")


def test_the_he_map_mod_t_is_exact():
    from ppir_itk.points import PointSet

    grid = _grid(2, seed=9)
    control = BSplineTransform.over(grid, 4.0).control_grid
    points = PointSet(grid, None, control)
    t = (1 << 60) - 93  # any modulus below 2^60
    values = np.random.default_rng(3).integers(
        0, t, size=(grid.number_of_points, 2), dtype=np.uint64
    )
    flat, weight = ref.bspline_support(
        grid.size_array, None, 0, grid.number_of_points, control_map(control, grid), 10
    )
    integer_weight = np.rint(weight * 2.0**20).astype(np.int64).astype(object)
    expected = np.zeros((control.number_of_points, 2), dtype=object)
    for x in range(grid.number_of_points):
        for c, w in zip(flat[x], integer_weight[x], strict=True):
            expected[c] += w * values[x].astype(object)
    assert points.linear_map.mod_t(values, t).T.tolist() == (expected % t).tolist()


@pytest.mark.parametrize("backend", ["he", "spdz"])
def test_private_b_spline_through_the_two_party_runtime(backend, phantom_2d):
    """Separate processes (and a dealer for spdz), mutual TLS: same result as in-process."""
    truth = BSplineTransform.over(phantom_2d.geometry, 32.0)
    truth.parameters = np.random.default_rng(2).normal(scale=1.5, size=truth.number_of_parameters)
    fixed = resample(phantom_2d, truth, phantom_2d.geometry)
    options = dict(
        BSPLINE,
        grid_spacing=16.0,
        shrink_factors=[2, 1],
        smoothing_sigmas=[1.0, 0.0],
        iterations=15,
    )
    over_the_wire = ppir_itk.register(fixed, phantom_2d, backend=backend, **options)
    in_process = register_in_process(fixed, phantom_2d, backend=backend, **options)
    assert over_the_wire.transport == "grpc+mtls"
    everywhere = np.arange(fixed.geometry.number_of_points)
    assert _rms(over_the_wire.transform, in_process.transform, fixed.geometry, everywhere) < 1e-6
