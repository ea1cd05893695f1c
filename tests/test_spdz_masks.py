"""The fixed party's mask on the spdz backend: the masked JointTerm (mean squares, correlation)
and HistogramTerm (Mattes) of the backend halves against NumPy references of base.py's
definitions, what the fixed party receives, and the traffic audit of a masked session."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import test_spdz_mattes as mattes
from audit import Secret, audit, recording

import ppir_itk
from ppir_itk.backends.base import MovingFields
from ppir_itk.backends.spdz_mattes import ROUND_TRIPS
from ppir_itk.compose import in_process_session, local_dealer
from ppir_itk.dealer import TriplePool
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.fixed_point import RING, encode, exponent, masked_budget
from ppir_itk.image import ImageGrid
from ppir_itk.masks import as_mask, inside
from ppir_itk.metric_kinds import MetricSettings
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.parzen import IntensityBins, fixed_bins
from ppir_itk.policy import FixedPolicy
from ppir_itk.pyramid import Level, LevelSchedule, fixed_level_image
from ppir_itk.roles import FIXED_PARTY, MOVING_PARTY

SHRINK = {2: 1, 3: 2}  # the 3-D phantom's level at half size: 8800 points, as the 2-D one's
# The Mattes moments on the phantoms, relative to the largest: measured up to 4.3e-4 with
# and without the mask (the 3-D level's histogram, not the mask, sets it).
PHANTOM_MOMENTS_TOLERANCE = 1e-3


def _mask_dropping_a_third(image: ImageGrid) -> ImageGrid:
    """A mask on the fixed image's grid: the first third of its x columns outside."""
    pixels = np.ones(image.array.shape, dtype=np.uint8)
    pixels[..., : image.array.shape[-1] // 3] = 0
    geometry = image.geometry
    return ImageGrid(pixels, geometry.spacing, geometry.origin, geometry.direction_matrix)


def _masked_session(fixed: ImageGrid, mask: ImageGrid, policy: FixedPolicy | None = None):
    """An in-process session whose fixed party serves with ``mask``."""
    session = in_process_session(fixed, policy)
    session.serving.fixed_mask = as_mask(mask, name="fixed mask", dimension=fixed.dimension)
    return session


def _level(session, metric: MetricSettings, shrink: int = 1):
    """The moving party's session on one level (shrink, no smoothing), all its points."""
    party = MovingPartySession(session, "spdz", metric=metric)
    party.start(LevelSchedule.from_lists([shrink], [0.0]), None)
    level = party.begin_level(0)()
    return party, party.select_points(level)


def _fields(points, seed: int = 3) -> MovingFields:
    """Random moving fields: 90 % valid, the gradient and I_w zero where invalid."""
    rng = np.random.default_rng(seed)
    n, d = points.size, points.geometry.dimension
    valid = (rng.uniform(size=n) < 0.9).astype(np.uint8)
    gradient = rng.normal(size=(n, d)) * valid[:, None]
    warped = rng.uniform(0.0, 2.0, n) * valid
    return MovingFields(gradient, warped, valid, None)


def _fixed_and_mask(fixed: ImageGrid, mask: ImageGrid, points, shrink: int):
    """J at the level's points and the fixed mask there (masks.inside, as ITK reads it)."""
    level = fixed_level_image(fixed, Level(shrink, 0.0))
    geometry = points.geometry
    flat = np.arange(geometry.number_of_points)
    physical = geometry.physical_points(geometry.flat_to_index(flat))
    return level.array.ravel().astype(np.float64), inside(mask, physical).astype(np.float64)


def _map(points, products: np.ndarray) -> np.ndarray:
    """The public affine map with the integer weights the private sums use (``(q(phi), 1)``,
    :class:`~ppir_itk.linear_map.AffineBasis`) of (n, d) products, exactly (Python ints)."""
    return products.T.astype(object) @ points.linear_map.dense_weights().astype(object)


def _quantised(values: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """``q(x)`` at the exponent that puts the largest |x| just below 2^(bits - 1)."""
    scale = exponent(float(np.abs(values).max(initial=0.0)), bits)
    return encode(values, scale), scale


def _reference(values, fixed_mask, fields: MovingFields, points, correlation: bool, exact: bool):
    """base.py's definitions: JointTerm's sums of M J, and MaskedSums. ``exact``: of the
    fixed-point factors at the budget's bits, summed as integers (what the ring sums open:
    equal to the decoded term to float64's rounding); else of the floats themselves."""
    basis, m = points.linear_map, fields.valid.astype(np.int64)
    mask = fixed_mask.astype(np.int64)
    g, w = fields.gradient, fields.warped
    column_bits = 2.0**basis.column_bits
    if not exact:  # the float map of the same integer weights
        masked_j, e_j = values * fixed_mask, 0
        q = {"g": (g, 0), "w": (w, 0), "gw": (g * w[:, None], 0), "ww": (w * w, 0)}
        dense = basis.dense_weights().astype(np.float64)
        mapped = lambda products: products.T @ dense  # noqa: E731
    else:
        bits, extra = basis.budget(RING), masked_budget(RING, points.size, basis.weight_bits)
        masked_j, e_j = _quantised(values * fixed_mask, bits.j_bits)
        q = {
            "g": _quantised(g, bits.g_bits),
            "w": _quantised(w, bits.w_bits),
            "gw": _quantised(g * w[:, None], extra.product_bits),
            "ww": _quantised(w * w, extra.squared_bits),
        }
        masked_j = masked_j.astype(object)
        mapped = lambda products: _map(points, products)  # noqa: E731
    (qg, e_g), (qw, e_w), (qgw, e_gw), (qww, e_ww) = q["g"], q["w"], q["gw"], q["ww"]
    if exact:
        qg, qw, qgw, qww = (x.astype(object) for x in (qg, qw, qgw, qww))
    as_float = lambda total, scale: float(total) / 2.0**scale  # noqa: E731
    reference = {
        "moments": np.asarray(mapped(qg * masked_j[:, None]), dtype=np.float64)
        / 2.0 ** (e_g + e_j)
        / column_bits,
        "warped_dot_fixed": as_float((qw * masked_j).sum(), e_w + e_j),
        "fixed_squared": as_float((m * masked_j * masked_j).sum(), 2 * e_j),
        "count": float((m * mask).sum()),
        "warped_squared": as_float((qww * mask).sum(), e_ww),
        "warped_moments": np.asarray(mapped(qgw * mask[:, None]), dtype=np.float64)
        / 2.0**e_gw
        / column_bits,
    }
    if correlation:
        reference |= {
            "fixed_sum": as_float((m * masked_j).sum(), e_j),
            "warped_sum": as_float((qw * mask).sum(), e_w),
            "gradient_moments": np.asarray(mapped(qg * mask[:, None]), dtype=np.float64)
            / 2.0**e_g
            / column_bits,
        }
    return reference


def _as_dict(term) -> dict[str, object]:
    masked = term.masked
    found = {
        "moments": term.moments,
        "warped_dot_fixed": term.warped_dot_fixed,
        "fixed_squared": term.fixed_squared,
        "fixed_sum": term.fixed_sum,
        "count": masked.count,
        "warped_squared": masked.warped_squared,
        "warped_moments": masked.warped_moments,
        "warped_sum": masked.warped_sum,
        "gradient_moments": masked.gradient_moments,
    }
    return {name: value for name, value in found.items() if value is not None}


# -- linear sums: mean squares and correlation ------------------------------------------
@pytest.mark.parametrize("metric", ["meansquares", "correlation"])
@pytest.mark.parametrize("dimension", [2, 3])
def test_the_masked_joint_term_matches_numpy(phantom_2d, phantom_3d, dimension, metric):
    fixed = phantom_2d if dimension == 2 else phantom_3d
    mask = _mask_dropping_a_third(fixed)
    shrink = SHRINK[dimension]
    party, points = _level(_masked_session(fixed, mask), MetricSettings(metric), shrink)
    values, fixed_mask = _fixed_and_mask(fixed, mask, points, shrink)
    assert 0.6 < fixed_mask.mean() <= 0.7  # the mask drops about a third of the points
    fields = _fields(points)
    found = _as_dict(party.joint_term(fields))
    correlation = metric == "correlation"
    exact = _reference(values, fixed_mask, fields, points, correlation, exact=True)
    floats = _reference(values, fixed_mask, fields, points, correlation, exact=False)
    assert found.keys() == exact.keys() == floats.keys()
    for name, value in exact.items():  # the integer sums, to float64's last bits
        np.testing.assert_allclose(found[name], value, rtol=1e-13, atol=0, err_msg=name)
    for name, value in floats.items():  # only the factors' rounding: ~2^-18 of the largest
        largest = np.abs(value).max()
        np.testing.assert_allclose(found[name], value, rtol=0, atol=1e-4 * largest, err_msg=name)
    closed = party.close()
    d, outputs = dimension, points.linear_map.outputs
    joint = d * outputs + 2 + (1 if metric == "correlation" else 0)
    masked = d * outputs + 2 + (d * outputs + 1 if metric == "correlation" else 0)
    assert closed.measurements == joint + masked
    assert any("the sums a fixed mask adds" in line for line in party.learned()), party.learned()


def test_a_masked_fixed_party_receives_only_uniform_openings(phantom_2d):
    mask = _mask_dropping_a_third(phantom_2d)
    session = _masked_session(phantom_2d, mask)
    party, points = _level(session, MetricSettings("correlation"))
    side = session.serving.backend_side
    communicator = side._communicator
    fill = communicator.fill_inbox
    received: list[np.ndarray] = []

    def recorded(arrays, max_elements):  # what the fixed party takes off the wire
        fill(arrays, max_elements)
        received.extend(communicator.inbox)

    communicator.fill_inbox = recorded
    for seed in (1, 2):
        party.joint_term(_fields(points, seed))
    closed = party.close()
    assert side.fixed_masked and not list(closed.learned)
    rows = 3 * points.geometry.dimension + 6  # correlation's rows with a mask
    assert side.received.total("opened_rows") == 2 * rows * points.size
    # The openings E = X - a themselves: uniform on Z_2^64, where the rows X are fixed point
    # of about 20 bits. Below 2^56 in absolute value: 1/128 of uniform values, all of X.
    openings = np.concatenate([array.ravel() for array in received])
    assert openings.size == 2 * rows * points.size
    assert np.mean(np.abs(openings.astype(np.float64)) < 2.0**56) < 0.02


def test_the_policy_s_noise_reaches_the_masked_sums(phantom_2d):
    """With the fixed party's noise, the masked sums move by about beta times one voxel's
    most; without it they are the quantised sums (the same fields, twice)."""
    mask = _mask_dropping_a_third(phantom_2d)
    fields = None
    terms = []
    for noise in (0.0, 0.0, 1.0):
        policy = FixedPolicy.holding_both_images(("spdz",), joint_term_noise=noise)
        party, points = _level(_masked_session(phantom_2d, mask, policy), MetricSettings())
        fields = fields or _fields(points)
        terms.append(party.joint_term(fields).masked)
        party.close()
    quiet, again, noisy = terms
    assert quiet.warped_squared == again.warped_squared and quiet.count == again.count
    np.testing.assert_array_equal(quiet.warped_moments, again.warped_moments)
    assert noisy.warped_squared != quiet.warped_squared
    assert not np.array_equal(noisy.warped_moments, quiet.warped_moments)
    # about one deviation: far below the sums, far above their last bit
    relative = abs(noisy.warped_squared - quiet.warped_squared) / quiet.warped_squared
    assert 1e-9 < relative < 1e-2


# -- Mattes -----------------------------------------------------------------------------
def _parzen_fields(points, seed: int = 5):
    """tests/test_spdz_mattes.py's random Parzen rows, with a gradient of the level's d."""
    fields = mattes._fields(points.size, seed=seed)
    rng = np.random.default_rng(seed)
    gradient = rng.normal(size=(points.size, points.geometry.dimension))
    return dataclasses.replace(fields, gradient=gradient * fields.valid[:, None])


def _mattes_reference(bins, fixed_mask, fields, points, weight_bits: int):
    """The masked term by base.py's definitions: the points outside the mask dropped as if
    their window were not valid; ITK's count N and the moving marginal's sum p log p over
    the points inside; the value's part (n / N) difference - that sum, and the moments."""
    inside = fields.valid * fixed_mask.astype(np.uint8)
    dropped = dataclasses.replace(fields, valid=inside)
    difference, moments = mattes._reference(bins, dropped, points, weight_bits)
    columns = np.zeros(mattes.BINS)
    for k in range(4):
        np.add.at(columns, fields.first_bin + k, fields.weights[:, k] * inside)
    p = columns[columns > 0] / columns.sum()
    count = int(inside.sum())
    return count, points.size / count * difference - float(p @ np.log(p)), moments


@pytest.mark.parametrize("dimension", [2, 3])
def test_the_masked_histogram_term_matches_numpy(phantom_2d, phantom_3d, dimension):
    fixed = phantom_2d if dimension == 2 else phantom_3d
    mask = _mask_dropping_a_third(fixed)
    shrink = SHRINK[dimension]
    party, points = _level(
        _masked_session(fixed, mask), MetricSettings("mattes", mattes.BINS), shrink
    )
    values, fixed_mask = _fixed_and_mask(fixed, mask, points, shrink)
    bins = fixed_bins(values, IntensityBins.from_values(fixed.array, mattes.BINS))
    fields = _parzen_fields(points)
    term = party.histogram_term(fields)
    count, value, moments = _mattes_reference(
        bins, fixed_mask, fields, points, term.basis_weight_bits
    )
    assert term.masked is not None and term.masked.count == count
    found = points.size / count * term.entropy_difference - term.masked.moving_negative_entropy
    assert abs(found - value) < mattes.Q_TOLERANCE * points.size / count
    largest = np.abs(moments).max()
    assert np.abs(term.moments - moments).max() < PHANTOM_MOMENTS_TOLERANCE * largest
    assert party.backend.round_trips == ROUND_TRIPS  # the marginal rides the histogram's log
    closed = party.close()
    assert closed.measurements == dimension * points.linear_map.outputs + 2  # and N
    assert not list(closed.learned)  # the fixed party: uniform openings only


@pytest.mark.parametrize("metric", ["meansquares", "mattes"])
def test_the_mask_is_nowhere_in_what_the_moving_party_receives(tmp_path, metric):
    """A masked session over mutual TLS, the fixed party's server given the mask: no window
    of the mask's pixels and no correlation with them in any envelope the moving party
    received (the fixed party's openings F are image-sized arrays, so they are compared)."""
    size = 128  # 16384 points: the audit's correlation limit means something
    fixed = mattes._bins_image(size, seed=7)
    mask = _mask_dropping_a_third(fixed)
    pki = ppir_itk.init_pki(tmp_path / "pki")
    pool = TriplePool()
    policy = FixedPolicy.holding_both_images(
        ("spdz",), dealer=local_dealer(pool, FIXED_PARTY), single_process=False
    )
    server = FixedPartyServer(
        fixed,
        "127.0.0.1:0",
        ppir_itk.TLS.for_role(pki, "fixed-party"),
        policy=policy,
        deadline=30,
        fixed_mask=mask,
    ).start()
    try:
        session = ppir_itk.connect(server.address, ppir_itk.TLS.for_role(pki, "moving-party"))
        session.dealer = local_dealer(pool, MOVING_PARTY)
        with recording() as recorder:
            party, points = _level(session, MetricSettings(metric, mattes.BINS))
            if metric == "mattes":
                term = party.histogram_term(_parzen_fields(points))
            else:
                term = party.joint_term(_fields(points))
            party.close()
    finally:
        server.stop(grace=None)
    _, fixed_mask = _fixed_and_mask(fixed, mask, points, 1)
    secret = Secret.of("M", mask.array, {"M at the points": fixed_mask})
    received = audit(recorder.envelopes("received"), secret)
    assert received.passed and received.views, str(received)
    assert term.masked is not None and term.masked.count < points.size  # a masked session
