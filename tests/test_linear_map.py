"""The public linear map (ppir_itk/linear_map.py) against dense NumPy references.

Each map is written out as its dense n x outputs weight matrix W (from
tests/reference.py), and every arithmetic the backends use is checked against
W: floats (``W^T v``, ``S^T S``), the ring Z_2^64 (with wrap-around) and
integers mod t, with exact Python integers where the map is exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref

from ppir_itk.bspline import BSplineTransform, control_map
from ppir_itk.image import GridGeometry
from ppir_itk.linear_map import PHI_BITS, WEIGHT_BITS, AffineBasis, BSplineBasis
from ppir_itk.points import PointSet

RING = 2**64
T = (1 << 60) - 93  # any modulus below 2^60


def _grid(d: int, seed: int) -> GridGeometry:
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return GridGeometry(
        size=tuple(int(s) for s in rng.integers(9, 13, d)),
        spacing=tuple(rng.uniform(0.8, 1.3, d)),
        origin=tuple(rng.normal(size=d)),
        direction=tuple(rotation.ravel()),
    )


def _points(d: int, kind: str, sampled: bool, seed: int = 0) -> PointSet:
    grid = _grid(d, seed)
    n = grid.number_of_points
    indices = (
        np.sort(np.random.default_rng(seed + 7).choice(n, n // 3, replace=False))
        if sampled
        else None
    )
    control = BSplineTransform.over(grid, 4.0).control_grid if kind == "bspline" else None
    return PointSet(grid, indices, control)


def _dense(points: PointSet, weight_bits: int = 0) -> np.ndarray:
    """W (n x outputs) in floats: (x - c, 1), or each control point's B-spline weight."""
    geometry = points.geometry
    if points.control is None:
        x = ref.physical_points(
            geometry.size_array,
            geometry.index_to_physical,
            geometry.origin_array,
            points.indices,
            0,
            points.size,
        )
        return ref.affine_basis(x, points.reference)
    flat, weight = ref.bspline_support(
        geometry.size_array,
        points.indices,
        0,
        points.size,
        control_map(points.control, geometry),
        weight_bits,
    )
    dense = np.zeros((points.size, points.control.number_of_points))
    for x in range(points.size):
        np.add.at(dense[x], flat[x], weight[x])
    return dense


def _integer_dense(points: PointSet) -> np.ndarray:
    """W's integer weights (object ints): (round(phi 2^e), 1), or prod round(beta 2^b)."""
    if points.control is None:
        phi = _dense(points)[:, :-1]
        scale = PHI_BITS - 1 - math.ceil(math.log2(np.abs(phi).max() * (1 + 1e-12)))
        return (
            np.hstack([np.round(phi * 2.0**scale), np.ones((points.size, 1))])
            .astype(np.int64)
            .astype(object)
        )
    bits = WEIGHT_BITS[points.geometry.dimension]
    scaled = _dense(points, bits) * 2.0 ** (points.geometry.dimension * bits)
    return np.rint(scaled).astype(np.int64).astype(object)


CASES = [
    (d, kind, sampled)
    for d in (2, 3)
    for kind in ("affine", "bspline")
    for sampled in (False, True)
]


@pytest.mark.parametrize("d, kind, sampled", CASES)
def test_the_float_map_and_gram_match_the_dense_basis(d, kind, sampled):
    points = _points(d, kind, sampled)
    basis = points.linear_map
    rng = np.random.default_rng(1)
    field, weights = rng.normal(size=(points.size, d)), rng.normal(size=points.size)
    dense = _dense(points)
    np.testing.assert_allclose(
        basis.moments(field, weights), (field * weights[:, None]).T @ dense, rtol=0, atol=1e-10
    )
    np.testing.assert_allclose(basis.moments(field), field.T @ dense, rtol=0, atol=1e-10)
    # S[x, (k, c)] = field_k(x) w_c(x), columns in ITK order (k slowest for a control grid)
    if kind == "affine":
        steepest = (field[:, :, None] * dense[:, None, :]).reshape(points.size, -1)
        gram = basis.gram(field)
    else:
        steepest = np.concatenate([field[:, [k]] * dense for k in range(d)], axis=1)
        gram = basis.gram(field).toarray()
    np.testing.assert_allclose(gram, steepest.T @ steepest, rtol=0, atol=1e-9)


@pytest.mark.parametrize("d", [2, 3])
def test_a_b_spline_float_map_can_use_the_integer_weights(d):
    points = _points(d, "bspline", sampled=False)
    field = np.random.default_rng(2).normal(size=(points.size, d))
    bits = WEIGHT_BITS[d]
    np.testing.assert_allclose(
        points.linear_map.moments(field, None, bits),
        field.T @ _dense(points, bits),
        rtol=0,
        atol=1e-10,
    )
    assert points.linear_map.axis_weight_bits == bits
    assert _points(d, "affine", False).linear_map.axis_weight_bits == 0


@pytest.mark.parametrize("d, kind, sampled", CASES)
def test_the_ring_map_is_exact_modulo_2_64(d, kind, sampled):
    points = _points(d, kind, sampled)
    basis = points.linear_map
    values = np.random.default_rng(3).integers(
        -(2**63), 2**63 - 1, (points.size, 2), dtype=np.int64, endpoint=True
    )
    expected = values.astype(object).T @ _integer_dense(points)  # exact, then wrapped
    wrapped = [(int(v) + 2**63) % RING - 2**63 for v in expected.ravel()]
    assert basis.ring(values).ravel().tolist() == wrapped


@pytest.mark.parametrize("d, kind, sampled", CASES)
def test_the_map_mod_t_is_exact(d, kind, sampled):
    points = _points(d, kind, sampled)
    values = np.random.default_rng(4).integers(0, T, (points.size, d), dtype=np.uint64)
    expected = (values.astype(object).T @ _integer_dense(points)) % T
    assert points.linear_map.mod_t(values, T).tolist() == expected.tolist()


@pytest.mark.parametrize("d", [2, 3])
def test_outputs_and_sums_per_evaluation(d):
    affine = _points(d, "affine", sampled=True).linear_map
    bspline = _points(d, "bspline", sampled=True).linear_map
    control_points = bspline.points.control.number_of_points
    assert isinstance(affine, AffineBasis) and isinstance(bspline, BSplineBasis)
    assert (affine.outputs, affine.sums_per_evaluation) == (d + 1, d * (d + 1) + 2)
    assert (bspline.outputs, bspline.sums_per_evaluation) == (
        control_points,
        d * control_points + 2,
    )
    assert affine.few_outputs and not bspline.few_outputs
    # the support bounds the points any one output sums over (the budget counts on it)
    assert affine.support is None
    assert (_dense(bspline.points) != 0).sum(axis=0).max() <= bspline.support
    assert (affine.weight_bits, bspline.weight_bits) == (PHI_BITS, d * WEIGHT_BITS[d])


@pytest.mark.parametrize("d", [2, 3])
def test_column_bits_and_dense_weights_are_the_integer_map(d):
    affine = _points(d, "affine", sampled=True).linear_map
    dense = affine.dense_weights()
    assert dense.dtype == np.int64
    assert dense.tolist() == _integer_dense(affine.points).tolist()
    # decoding by the column bits gives back the float basis to 2^-e_phi
    np.testing.assert_allclose(
        dense / 2.0**affine.column_bits,
        _dense(affine.points),
        rtol=0,
        atol=2.0 ** -affine.column_bits[0],
    )
    assert np.abs(dense[:, :-1]).max() <= 2 ** (PHI_BITS - 1)
    bspline = _points(d, "bspline", sampled=False).linear_map
    assert bspline.column_bits.tolist() == [d * WEIGHT_BITS[d]] * bspline.outputs
    # the integer weights stay below 2^weight_bits, as the budget assumes
    assert max(_integer_dense(bspline.points).ravel()) < 2**bspline.weight_bits
    with pytest.raises(TypeError, match="too many outputs"):
        bspline.dense_weights()


def test_a_point_set_keeps_one_map():
    points = _points(2, "affine", sampled=False)
    assert points.linear_map is points.linear_map
