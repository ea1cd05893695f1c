"""The fixed party's noise on the sums it returns (``FixedPolicy.joint_term_noise``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppir_itk.backends.base import MovingFields
from ppir_itk.bspline import BSplineTransform
from ppir_itk.compose import in_process_session
from ppir_itk.fixed_point import (
    PLAIN_MODULUS,
    RING,
    Bits,
    budget,
    exponent,
    noise_room,
    voxel_bits,
)
from ppir_itk.image import ImageGrid
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol.channel import PeerError
from ppir_itk.pyramid import LevelSchedule
from ppir_itk.randomness import RESOLUTION_BITS, gaussian_integers

MODULI = {"spdz": RING, "he": PLAIN_MODULUS}


def test_gaussian_integers_have_the_deviation_asked_and_uniform_low_bits():
    bits = 40
    values = gaussian_integers([0.25 * 2.0**bits] * 20000)
    assert all(isinstance(v, int) for v in values)
    scaled = np.array(values, dtype=np.float64) / 2.0**bits
    assert abs(scaled.mean()) < 0.25 * 4 / math.sqrt(scaled.size)
    assert scaled.std() == pytest.approx(0.25, rel=0.03)
    assert np.abs(scaled).max() < 0.25 * 9
    # Below the Gaussian's resolution the bits are uniform: a noisy sum's low bits say
    # nothing of the true sum's. 8 classes of the low 3 bits, chi-square with 7 degrees.
    cell = bits + math.floor(math.log2(0.25)) - RESOLUTION_BITS
    assert cell > 3
    counts = np.bincount([v % 8 for v in values], minlength=8)
    expected = len(values) / 8
    assert np.sum((counts - expected) ** 2 / expected) < 30  # p < 1e-4 under uniformity
    assert gaussian_integers([0.0] * 3) == [0, 0, 0]


@pytest.mark.parametrize("modulus", [RING, PLAIN_MODULUS], ids=["ring", "plain"])
@pytest.mark.parametrize("points, support", [(4096, 1024), (2**20, 16384), (640, None)])
def test_the_noise_room_keeps_every_noisy_sum_below_its_modulus(modulus, points, support):
    weight_bits = 20 if support else 14
    bits = budget(modulus, points, weight_bits, support)
    local = support is not None
    beta = noise_room(modulus, bits, weight_bits, local)
    assert beta >= 1  # room for a deviation of at least one voxel's most
    moment, warped, squared = voxel_bits(bits, weight_bits)
    limits = (
        modulus.bits,
        modulus.warped_bits if local else modulus.bits,
        modulus.squared_bits if local else modulus.bits,
    )
    for limit, scale in zip(limits, (moment, warped, squared), strict=True):
        # the largest sum the budget allows plus the largest noise draw (< 9 deviations)
        assert 2 ** (limit - 2) + 9 * beta * 2**scale <= 2 ** (limit - 1)
    assert voxel_bits(Bits(10, 12, 14), 5) == (5 + 12 + 10 - 2, 14 + 10 - 2, 18)


def _image(size: int = 48) -> ImageGrid:
    rng = np.random.default_rng(3)
    return ImageGrid(rng.uniform(0.0, 100.0, (size, size)))


def _evaluate(backend: str, beta: float, fixed: ImageGrid, spacing: float | None = 8.0):
    """One evaluation of fixed fields (on a control grid of ``spacing`` level pixels, or
    the affine basis), against a fixed party whose policy sets ``beta``: the joint term,
    the point set, the fields and the moving party's close."""
    policy = FixedPolicy.holding_both_images(("he", "spdz"), joint_term_noise=beta)
    party = MovingPartySession(in_process_session(fixed, policy), backend)
    party.start(LevelSchedule.from_lists([1], [0.0]), None)
    level = party.begin_level(0)()
    control = None
    if spacing is not None:
        control = BSplineTransform.over(level, spacing * np.asarray(level.spacing)).control_grid
    points = party.select_points(level, control_grid=control)
    rng = np.random.default_rng(5)
    fields = MovingFields(
        gradient=rng.normal(size=(points.size, 2)),
        warped=rng.uniform(0.0, 100.0, points.size),
        valid=np.ones(points.size, dtype=np.uint8),
        coefficients=np.zeros((0, 0)) if control is not None else np.eye(6),
    )
    joint = party.joint_term(fields)
    closed = party.close()
    return joint, points, fields, closed


@pytest.mark.parametrize("spacing", [8.0, None], ids=["control grid", "affine basis"])
@pytest.mark.parametrize("backend", ["spdz", "he"])
def test_the_fixed_party_adds_noise_of_the_deviation_its_policy_sets(backend, spacing):
    fixed = _image()
    exact, points, fields, closed = _evaluate(backend, 0.0, fixed, spacing)
    again, *_ = _evaluate(backend, 0.0, fixed, spacing)
    np.testing.assert_array_equal(exact.moments, again.moments)  # no noise: exact sums
    assert closed.joint_term_noise == 0.0
    beta = 0.5
    draws = [_evaluate(backend, beta, fixed, spacing) for _ in range(1 if spacing else 24)]
    assert draws[0][3].joint_term_noise == beta
    # One voxel's most, decoded: its column's largest weight times 2^(b_g + b_J - 2), over
    # the exponents of g, J and the column's weights.
    basis, modulus = points.linear_map, MODULI[backend]
    bits = basis.budget(modulus)
    e_g = exponent(float(np.abs(fields.gradient).max()), bits.g_bits)
    e_j = exponent(float(np.abs(fixed.array).max()), bits.j_bits)
    _, warped_bits, squared_bits = voxel_bits(bits, basis.weight_bits)
    decoded = 2.0 ** (bits.g_bits + bits.j_bits - 2 - e_g - e_j - np.asarray(basis.column_bits))
    unit = basis.column_weight_bounds * decoded  # per column: its own largest weight
    scaled = np.concatenate([((d[0].moments - exact.moments) / unit).ravel() for d in draws])
    assert scaled.size > 100
    assert np.std(scaled) == pytest.approx(beta, rel=0.2)
    e_w = exponent(float(np.abs(fields.warped).max()), bits.w_bits)
    noisy = draws[0][0]
    for difference, scale in (
        (noisy.warped_dot_fixed - exact.warped_dot_fixed, warped_bits - e_w - e_j),
        (noisy.fixed_squared - exact.fixed_squared, squared_bits - 2 * e_j),
    ):
        assert difference != 0 and abs(difference) < 9 * beta * 2.0**scale


def test_a_noise_the_sums_cannot_hold_is_refused_with_one_sentence():
    with pytest.raises(PeerError, match=r"joint-term noise \(1e\+09\) does not fit"):
        _evaluate("spdz", 1e9, _image())
