"""The fixed-point budget (ppir_itk/fixed_point.py): the bits the backends always had,
and every sum exact at the budget's extremes."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from ppir_itk.bspline import BSplineTransform, control_map
from ppir_itk.errors import InputError
from ppir_itk.fixed_point import (
    PLAIN_MODULUS,
    RING,
    RING_BITS,
    SUM_BITS,
    Bits,
    budget,
    decode,
    encode,
    exponent,
    log2_ceiling,
)
from ppir_itk.image import GridGeometry
from ppir_itk.linear_map import WEIGHT_BITS
from ppir_itk.points import PointSet

T = (1 << 60) - 93  # a plain modulus of PLAIN_BITS bits (SEAL's are primes near 2^60)

# (modulus, points, weight bits, support, (j, g, w) bits or None: refused), as
# he.fixed_point_bits / he.mapped_bits / spdz.ring_basis computed them before this
# module (spdz's affine case by its formula: it needed the point arrays).
BUDGETS = [
    (PLAIN_MODULUS, 1, 12, None, (23, 23, 35)),
    (RING, 1, 12, None, (25, 26, 38)),
    (PLAIN_MODULUS, 2, 12, None, (23, 23, 35)),
    (RING, 2, 12, None, (25, 26, 38)),
    (PLAIN_MODULUS, 3, 12, None, (22, 23, 35)),
    (RING, 3, 12, None, (25, 25, 37)),
    (PLAIN_MODULUS, 4096, 12, None, (17, 18, 30)),
    (RING, 4096, 12, None, (20, 20, 32)),
    (PLAIN_MODULUS, 8448, 12, None, (16, 17, 29)),
    (RING, 8448, 12, None, (19, 19, 31)),
    (PLAIN_MODULUS, 65537, 12, None, (15, 15, 27)),
    (RING, 65537, 12, None, (17, 18, 30)),
    (PLAIN_MODULUS, 1048576, 12, None, (13, 14, 26)),
    (RING, 1048576, 12, None, (16, 16, 28)),
    (PLAIN_MODULUS, 16777216, 12, None, (11, 12, 24)),
    (RING, 16777216, 12, None, (14, 14, 26)),
    (PLAIN_MODULUS, 134217733, 12, None, (9, 10, 22)),
    (RING, 134217733, 12, None, (12, 12, 24)),
    (PLAIN_MODULUS, 2147483648, 12, None, (8, 8, 20)),
    (RING, 2147483648, 12, None, (10, 11, 23)),
    (PLAIN_MODULUS, 2147483649, 12, None, None),
    (RING, 2147483649, 12, None, (10, 10, 22)),
    (PLAIN_MODULUS, 68719476736, 12, None, None),
    (RING, 68719476736, 12, None, (8, 8, 20)),
    (PLAIN_MODULUS, 68719476737, 12, None, None),
    (RING, 68719476737, 12, None, None),
    (PLAIN_MODULUS, 8448, 20, 289, (15, 15, 30)),
    (RING, 8448, 20, 289, (17, 18, 31)),
    (PLAIN_MODULUS, 1048576, 20, 289, (15, 15, 24)),
    (RING, 1048576, 20, 289, (17, 18, 25)),
    (PLAIN_MODULUS, 16777216, 20, 65536, (11, 12, 24)),
    (RING, 16777216, 20, 65536, (14, 14, 24)),
    (PLAIN_MODULUS, 1073741824, 20, 4096, (13, 14, 16)),
    (RING, 1073741824, 20, 4096, (16, 16, 16)),
    (PLAIN_MODULUS, 4194304, 20, 4194304, (8, 9, 29)),
    (RING, 4194304, 20, 4194304, (11, 11, 29)),
    (PLAIN_MODULUS, 4096, 20, 4194304, (8, 9, 39)),
    (RING, 4096, 20, 4194304, (11, 11, 39)),
    (PLAIN_MODULUS, 64000, 21, 4913, (12, 13, 31)),
    (RING, 64000, 21, 4913, (15, 15, 31)),
    (PLAIN_MODULUS, 16777216, 21, 4913, (12, 13, 23)),
    (RING, 16777216, 21, 4913, (15, 15, 23)),
    (PLAIN_MODULUS, 1073741824, 21, 8192, (12, 13, 17)),
    (RING, 1073741824, 21, 8192, (15, 15, 17)),
    (PLAIN_MODULUS, 67108864, 21, 1048576, (9, 9, 24)),
    (RING, 67108864, 21, 1048576, (11, 12, 25)),
    (PLAIN_MODULUS, 1099511627776, 21, 1024, (9, 19, 10)),
    (RING, 1099511627776, 21, 1024, (11, 22, 11)),
    (PLAIN_MODULUS, 256, 21, 256, (15, 15, 36)),
    (RING, 256, 21, 256, (17, 18, 37)),
    (PLAIN_MODULUS, 1125899906842624, 21, 1024, None),
    (RING, 1125899906842624, 21, 1024, None),
    (PLAIN_MODULUS, 1048576, 20, 1099511627776, None),
    (RING, 1048576, 20, 1099511627776, None),
    (PLAIN_MODULUS, 2199023255552, 21, 1024, (8, 20, 10)),
    (RING, 2199023255552, 21, 1024, (10, 23, 11)),
    (PLAIN_MODULUS, 8589934593, 20, 4096, (12, 15, 13)),
    (RING, 8589934593, 20, 4096, (14, 18, 14)),
]
ACCEPTED = [case for case in BUDGETS if case[-1] is not None]


def _signed(value: int, modulus: int) -> int:
    """The centred representative of ``value`` mod ``modulus``: what a party decodes."""
    value %= modulus
    return value - modulus if value > modulus // 2 else value


@pytest.mark.parametrize("modulus, points, weight_bits, support, expected", BUDGETS)
def test_the_budget_gives_the_bits_the_backends_had(
    modulus, points, weight_bits, support, expected
):
    if expected is None:
        with pytest.raises(
            InputError, match=f"^{points} points .* for exact sums {modulus.where}: sample them"
        ):
            budget(modulus, points, weight_bits, support)
    else:
        assert budget(modulus, points, weight_bits, support) == Bits(*expected)


@pytest.mark.parametrize("modulus, points, weight_bits, support, expected", ACCEPTED)
def test_worst_case_sums_are_exact(modulus, points, weight_bits, support, expected):
    """Every factor at its largest magnitude, the largest weight, as many terms as the
    budget allows for: each sum is below the modulus's bound, so decoding gives it back."""
    bits = budget(modulus, points, weight_bits, support)
    j, g, w = (2 ** (b - 1) for b in (bits.j_bits, bits.g_bits, bits.w_bits))
    terms = 2 ** log2_ceiling(points if support is None else support)
    totals = 2 ** log2_ceiling(points)
    sums = [terms * (2**weight_bits - 1) * g * j, totals * w * j, totals * j * j]
    bound = 2**SUM_BITS if modulus is PLAIN_MODULUS else 2 ** (RING_BITS - 1)
    size = T if modulus is PLAIN_MODULUS else 2**RING_BITS
    for total in sums:
        assert total < bound
        assert _signed(total, size) == total and _signed(-total, size) == -total


def _extreme_rows(bits: Bits) -> tuple[int, int, int]:
    """q(g) q(J), q(I_w) q(J), q(J)^2 at their largest: each factor at 2^(bits - 1)."""
    j, g, w = (1 << (b - 1) for b in (bits.j_bits, bits.g_bits, bits.w_bits))
    return g * j, w * j, j * j


def _weight_sums(points: PointSet) -> list[int]:
    """Per output, the sum of its integer weights over the points (B-spline weights are
    non-negative; the affine basis's signed ones are summed exactly by the caller)."""
    geometry = points.geometry
    bits = WEIGHT_BITS[geometry.dimension]
    flat, weight = ref.bspline_support(
        geometry.size_array,
        points.indices,
        0,
        points.size,
        control_map(points.control, geometry),
        bits,
    )
    integer = np.rint(weight * 2.0 ** (geometry.dimension * bits)).astype(np.int64)
    out = np.zeros(points.control.number_of_points, dtype=np.int64)
    np.add.at(out, flat.ravel(), integer.ravel())
    return [int(v) for v in out]


@pytest.mark.parametrize("kind", ["affine", "bspline"])
def test_sums_at_the_extremes_are_exact_in_the_ring_and_mod_t(kind):
    """A 2^16-point grid, every product at the budget's largest: the ring map (spdz), the
    map mod t (he) and both totals are the exact integer sums, for either sign."""
    grid = GridGeometry(
        size=(256, 256), spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0)
    )
    control = BSplineTransform.over(grid, 8.0).control_grid if kind == "bspline" else None
    points = PointSet(grid, None, control)
    basis, n = points.linear_map, points.size
    weight_sums = _weight_sums(points) if kind == "bspline" else []
    for modulus in (RING, PLAIN_MODULUS):
        moment, warped, squared = _extreme_rows(basis.budget(modulus))
        for sign in (1, -1):
            if modulus is RING:  # int64 arithmetic wraps mod 2^64
                mapped = basis.ring(np.full((n, 1), sign * moment, dtype=np.int64))[0].tolist()
                totals = [
                    int(np.full(n, sign * warped, dtype=np.int64).sum()),
                    int(np.full(n, squared, dtype=np.int64).sum()),
                ]
            else:  # what the fixed party decrypts: the values mod t, summed mod t
                products = np.full((n, 1), (sign * moment) % T, dtype=np.uint64)
                mapped = [_signed(int(v), T) for v in basis.mod_t(products, T)[0]]
                totals = [_signed(n * ((sign * warped) % T), T), _signed(n * squared, T)]
            if kind == "affine":  # signed weights: the exact signed sums
                exact = (
                    np.full(n, sign * moment, dtype=object) @ basis.dense_weights().astype(object)
                ).tolist()
            else:
                exact = [sign * moment * total for total in weight_sums]
            assert mapped == exact
            assert totals == [sign * n * warped, n * squared]


def test_encode_and_decode_are_power_of_two_scalings():
    values = np.array([-3.25, 0.0, 1.5, 1e-3, 2.5])
    scale = exponent(float(np.abs(values).max()), 12)
    q = encode(values, scale)
    assert q.dtype == np.int64 and np.abs(q).max() <= 2**11
    assert scale == 12 - 1 - 2  # 3.25 < 2^2
    assert q.tolist() == np.round(values * 2.0**scale).astype(np.int64).tolist()
    np.testing.assert_array_equal(decode(q, scale), q / 2.0**scale)
    np.testing.assert_array_equal(
        decode(q.reshape(1, -1), np.arange(5)), q.reshape(1, -1) / 2.0 ** np.arange(5)
    )
    # the largest value is just below 2^(bits - 1), also when it is a power of two
    assert encode(np.array([4.0]), exponent(4.0, 12))[0] < 2**11
    assert exponent(0.0, 12) == 11 and exponent(float("nan"), 12) == 11
