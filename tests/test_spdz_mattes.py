"""Mattes mutual information on the spdz backend: Z_2^128 shares, the dealer's batches,
the two halves against a float reference, and real parties over mutual TLS."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest

import ppir_itk
from ppir_itk import ring128
from ppir_itk.backends.base import ParzenFields
from ppir_itk.backends.spdz_mattes import (
    DELTA,
    ROUND_TRIPS,
    SPDZMattesFixedSide,
    _lifted,
    batch_items,
)
from ppir_itk.bspline import BSplineTransform
from ppir_itk.compose import in_process_session, local_dealer, spawn_fixed_party
from ppir_itk.dealer import TriplePool
from ppir_itk.dealer_client import (
    LEVEL_MASK,
    batch_values,
    item_shapes,
    mask_item,
    mask_values,
    product_item,
    triples_item,
)
from ppir_itk.fixed_point import mattes_budget
from ppir_itk.image import ImageGrid
from ppir_itk.metric_kinds import MetricSettings
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.parzen import IntensityBins, fixed_bins
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError, array_from_pb
from ppir_itk.pyramid import LevelSchedule
from ppir_itk.roles import FIXED, FIXED_PARTY, MOVING

BINS = 32
# What the fixed point and the log allow (measured: Q within 6e-8, moments within 1.4e-4 of
# their largest): Q absolute, the moments relative to the largest.
Q_TOLERANCE = 1e-5
MOMENTS_TOLERANCE = 3e-4


# -- Z_2^128 shares ----------------------------------------------------------------------
# The reference: Python integers mod 2^128, against ring128's vectorised words.
def _ints(words: np.ndarray) -> np.ndarray:
    pairs = np.asarray(words).view(np.uint64)
    return np.array(
        [int(low) + (int(high) << 64) for low, high in pairs.reshape(-1, 2)], dtype=object
    ).reshape(pairs.shape[:-1])


def _words(values) -> np.ndarray:
    values = np.asarray(values, dtype=object) & ring128.MASK
    out = np.empty((*values.shape, 2), dtype=np.uint64)
    out[..., 0] = (values & ring128.WORD_MASK).astype(np.uint64)
    out[..., 1] = (values >> 64).astype(np.uint64)
    return out


def _signed(values: np.ndarray) -> list[int]:
    return [v - ring128.MODULUS if v >= ring128.MODULUS // 2 else v for v in _ints(values).ravel()]


def _random(count: int) -> np.ndarray:
    return np.frombuffer(secrets.token_bytes(16 * count), dtype=np.uint64).reshape(count, 2)


def _split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    share = _random(int(np.prod(values.shape[:-1]))).reshape(values.shape)
    return share, _words(_ints(values) - _ints(share))


def _triples(count: int) -> tuple[ring128.Triples, ring128.Triples]:
    a, b = _random(count), _random(count)
    (a0, a1), (b0, b1) = _split(a), _split(b)
    c0, c1 = _split(_words(_ints(a) * _ints(b)))
    return ring128.Triples(a0, b0, c0), ring128.Triples(a1, b1, c1)


def _opened(shares: tuple) -> np.ndarray:
    return _words(_ints(shares[0]) + _ints(shares[1]))


def test_word_arithmetic_equals_python_integers():
    rng = np.random.default_rng(5)
    edges = [0, 1, ring128.MASK, ring128.WORD_MASK, 1 << 64, 1 << 127, (1 << 127) - 1]
    xs = np.array([int(v) for v in rng.integers(0, 1 << 62, 500)] + edges, dtype=object)
    xs = xs * (1 << 66) + xs  # both words in use
    full = [int.from_bytes(secrets.token_bytes(16), "little") for _ in range(500)]
    xs = np.concatenate([xs, np.array(full, dtype=object)])  # carries out of the low words
    ys = xs[::-1].copy()
    x, y = _words(xs), _words(ys)
    modulus = ring128.MODULUS
    assert list(_ints(ring128.add(x, y))) == list((xs + ys) % modulus)
    assert list(_ints(ring128.subtract(x, y))) == list((xs - ys) % modulus)
    assert list(_ints(ring128.multiply_values(x, y))) == list((xs * ys) % modulus)
    assert list(_ints(ring128.times(x, -12345))) == list((xs * -12345) % modulus)
    for bits in (0, 7, 28, 63, 64, 70):
        assert list(_ints(ring128.shift_right(x, bits))) == [v % modulus >> bits for v in xs]
        assert list(_ints(ring128.shift_left(x, bits))) == list((xs << bits) % modulus)
    assert int(_ints(ring128.total(x))) == int(xs.sum() % modulus)
    # the low words' two halves each fit, their recombination carries: 2^64 exactly
    carried = _words([(1 << 64) - (1 << 32), (1 << 32) - 1, 1])
    assert int(_ints(ring128.total(carried))) == 1 << 64
    assert np.allclose(ring128.signed(x), np.array(_signed(x), dtype=np.float64), rtol=1e-15)


def test_beaver_products_and_words_round_trip():
    x, y = _words([3, -7, 1 << 100, 0]), _words([5, 9, 3, 11])
    exact = [3 * 5, -7 * 9, (1 << 100) * 3, 0]
    x0, x1 = _split(x)
    y0, y1 = _split(y)
    t0, t1 = _triples(4)
    out = ring128.run_pair(
        ring128.multiply([(x0, y0)], t0, 0, exact=True),
        ring128.multiply([(x1, y1)], t1, 1, exact=True),
    )
    assert _signed(_opened((out[0][0], out[1][0]))) == exact
    assert (ring128.from_words(ring128.to_words(x0)) == x0).all()
    # fixed point: (1.5 * -2.25) = -3.375 exactly, truncated to within an ulp
    a, b = ring128.encode(np.array([1.5])), ring128.encode(np.array([-2.25]))
    (a0, a1), (b0, b1) = _split(a), _split(b)
    t0, t1 = _triples(1)
    out = ring128.run_pair(ring128.multiply([(a0, b0)], t0, 0), ring128.multiply([(a1, b1)], t1, 1))
    assert abs(ring128.decode(_opened((out[0][0], out[1][0])))[0] + 3.375) <= 2.0**-28


def test_truncation_is_within_an_ulp_below_the_bound():
    rng = np.random.default_rng(1)
    values = np.array(
        [int(v) * (1 << 20) for v in rng.integers(-(1 << 62), 1 << 62, 4000)], dtype=object
    )  # below 2^82 in absolute value
    share0, share1 = _split(_words(values))
    out = _opened((ring128.truncate(share0, 28, 0), ring128.truncate(share1, 28, 1)))
    error = np.array(_signed(out), dtype=object) - np.array([v >> 28 for v in values], dtype=object)
    assert set(error.tolist()) <= {0, 1}


def test_the_lift_recovers_the_histogram_from_shares_that_wrap():
    rng = np.random.default_rng(2)
    histogram = rng.integers(0, 1 << 62, 5000).astype(np.uint64)
    histogram[:3] = [0, (1 << 62) - 1, 1]
    share0 = rng.integers(0, 1 << 63, 5000).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    share1 = histogram - share0  # wraps for most elements
    top0, top1 = share0 >> np.uint64(63), share1 >> np.uint64(63)
    assert (top0 & top1).any() and (top0 ^ top1).any() and (1 - (top0 | top1)).any()
    a, b = (rng.integers(0, 1 << 63, 5000).astype(np.uint64) for _ in range(2))
    c0 = rng.integers(0, 1 << 63, 5000).astype(np.uint64)
    c1 = a * b - c0
    e0, e1 = (top0 - a).view(np.int64), (top1 - b).view(np.int64)  # what each opens
    lifted = _opened(
        (
            ring128.from_words(_lifted(share0.view(np.int64), top0, top0, e1, c0.view(np.int64))),
            ring128.from_words(_lifted(share1.view(np.int64), top1, e0, b, c1.view(np.int64))),
        )
    )
    assert list(_ints(lifted)) == [int(h) for h in histogram]


def test_the_secure_log_matches_numpy_over_its_range():
    x = np.geomspace(1e-6, 1.0, 1200)
    share0, share1 = _split(ring128.encode(ring128.LOG_SCALE * x))
    t0, t1 = _triples(x.size * ring128.LOG_PRODUCTS)
    out = ring128.run_pair(ring128.log(share0, t0, 0), ring128.log(share1, t1, 1))
    error = np.abs(ring128.decode(_opened(out)) - np.log(x))
    # the bounds of ring128's docstring; above 1e-4 the truncations' random ulps set the
    # error (at most 1.28e-6 in 300 draws), so the bound leaves them room
    assert error.max() < 8e-5
    assert error[x >= 1e-5].max() < 2.5e-6
    assert error[x >= 1e-4].max() < 1.6e-6


def test_below_its_range_the_secure_log_saturates_within_the_truncation_bound():
    # an empty cell (X = DELTA) and cells below 1e-6: y stays above -13 (ring128.log)
    x = np.concatenate([[0.0], np.geomspace(1e-12, 1e-6, 300)])
    scaled = ring128.LOG_SCALE * x + DELTA
    share0, share1 = _split(ring128.encode(scaled))
    t0, t1 = _triples(x.size * ring128.LOG_PRODUCTS)
    out = ring128.run_pair(ring128.log(share0, t0, 0), ring128.log(share1, t1, 1))
    logs = ring128.decode(_opened(out))
    assert logs.min() > -13 - np.log(ring128.LOG_SCALE)
    assert (logs > np.log(scaled / ring128.LOG_SCALE) - 1e-4).all()  # an overestimate


def test_the_mattes_budget_keeps_every_sum_exact_and_refuses_too_many_points():
    bits = mattes_budget(100_000, 12)
    # |s q(g)| < 2^(6 + f_L + b_D + b_g) = 2^61: with the 2^61 offset, the top bit is clear
    assert 6 + bits.log_fraction + bits.derivative_bits + bits.g_bits == 61
    assert np.log2(100_000) + bits.weight_fraction < 62  # H < 2^62
    assert mattes_budget(1 << 20, 20, support=5000) == bits
    with pytest.raises(ppir_itk.InputError, match="too many for the Mattes histogram"):
        mattes_budget(1 << 35, 12)  # the map's 16-bit limbs would wrap


# -- the dealer's batches ----------------------------------------------------------------
def _batch(pool: TriplePool, token: bytes, request: pb.BatchRequest) -> tuple:
    return pool.batch(token, MOVING, request), pool.batch(token, FIXED, request)


def test_a_batch_reconstructs_and_sends_seeds_and_the_fixed_shares_only():
    pool, token, bins, count = TriplePool(), os.urandom(16), 4, 300
    level = pool.masks(token, FIXED, pb.MaskRequest(sequence=0, rows=bins, count=count))
    items = batch_items(bins, count, 2)
    shapes = item_shapes(items, (bins, count))
    moving, fixed = _batch(pool, token, pb.BatchRequest(sequence=0, items=items))
    # the moving party gets one seed; the fixed party a seed and one array per product
    assert len(moving.seed) == 32 and not moving.c and moving.ListFields()[-1][0].name == "seed"
    assert len(fixed.seed) == 32 and len(fixed.c) == sum(i.kind != "mask" for i in items)
    own = batch_values(moving.seed, items, shapes, MOVING)
    theirs = batch_values(fixed.seed, items, shapes, FIXED)
    shares = iter(array_from_pb(c) for c in fixed.c)
    u = mask_values(level.seed, bins, count).view(np.uint64)
    for index, item in enumerate(items):
        if item.kind == "mask":
            continue
        c1 = next(shares)
        if item.kind == "triples":
            a = _ints(own[index][0]) + _ints(theirs[index][0])
            b = _ints(own[index][1]) + _ints(theirs[index][1])
            c = _ints(own[index][2]) + _ints(c1)
            assert ((a * b - c) & ring128.MASK == 0).all()
            continue
        m = own[item.moving].view(np.uint64)
        f = u if item.fixed == LEVEL_MASK else theirs[item.fixed].view(np.uint64)
        expected = _product(item.product, m, f)
        np.testing.assert_array_equal(expected, own[index].view(np.uint64) + c1.view(np.uint64))
    assert pool.held_bytes == bins * count * 8  # the level mask only: the batch is gone


def _product(product: str, m: np.ndarray, f: np.ndarray) -> np.ndarray:
    if product == "elementwise":
        return m * f
    if product == "gram":
        return f @ m.T
    if product == "left":
        return f @ m
    return (m * f).sum(axis=0, keepdims=True)


def test_the_dealer_refuses_batches_out_of_bounds_or_asked_differently():
    pool, token = TriplePool(max_request_values=1 << 16), os.urandom(16)
    moving_mask = mask_item(MOVING, 4, 100)
    with pytest.raises(ProtocolError, match="does not hold"):
        pool.batch(token, MOVING, pb.BatchRequest(items=[moving_mask, product_item("gram", 0, -1)]))
    pool.masks(token, FIXED, pb.MaskRequest(sequence=0, rows=4, count=100))
    with pytest.raises(ProtocolError, match="1 to 256 rows"):
        pool.batch(token, MOVING, pb.BatchRequest(items=[mask_item(MOVING, 257, 10)]))
    with pytest.raises(ProtocolError, match="--max-request-values raises it"):
        pool.batch(token, MOVING, pb.BatchRequest(items=[triples_item(1 << 14)]))
    with pytest.raises(ProtocolError, match="item 1 of the batch"):  # a fixed mask as m
        pool.batch(
            token,
            MOVING,
            pb.BatchRequest(items=[mask_item(FIXED, 4, 100), product_item("gram", 0, -1)]),
        )
    with pytest.raises(ProtocolError, match="item 1 of the batch"):  # shapes that do not fit
        pool.batch(
            token,
            MOVING,
            pb.BatchRequest(items=[mask_item(MOVING, 4, 99), product_item("gram", 0, -1)]),
        )
    asked = pb.BatchRequest(sequence=0, items=[moving_mask, product_item("gram", 0, -1)])
    pool.batch(token, MOVING, asked)
    with pytest.raises(ProtocolError, match="already taken"):
        pool.batch(token, MOVING, asked)
    other = pb.BatchRequest(sequence=0, items=[moving_mask, product_item("column_sums", 0, -1)])
    with pytest.raises(ProtocolError, match="asked differently"):
        pool.batch(token, FIXED, other)
    assert ppir_itk.dealer.MAX_MASK_ROWS == 256


# -- the two halves against a float reference --------------------------------------------
def _fields(count: int, valid_fraction: float = 0.9, seed: int = 5) -> ParzenFields:
    """Random Parzen rows: 4 positive weights summing to 1, derivatives summing to 0."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.05, 1.0, (count, 4))
    weights /= weights.sum(axis=1, keepdims=True)
    derivatives = rng.normal(size=(count, 4))
    derivatives -= derivatives.mean(axis=1, keepdims=True)
    valid = (rng.uniform(size=count) < valid_fraction).astype(np.uint8)
    gradient = rng.normal(size=(count, 2)) * valid[:, None]
    return ParzenFields(rng.integers(0, BINS - 3, count), weights, derivatives, valid, gradient)


def _reference(bins: np.ndarray, fields: ParzenFields, points, weight_bits: int):
    """Q and the moments in float64 (H = A W^T, L = log(H / C) where H > 0)."""
    count = bins.size
    columns = np.arange(count)
    w, d = np.zeros((BINS, count)), np.zeros((BINS, count))
    for k in range(4):
        w[fields.first_bin + k, columns] += fields.weights[:, k] * fields.valid
        d[fields.first_bin + k, columns] += fields.derivatives[:, k] * fields.valid
    one_hot = np.zeros((BINS, count))
    one_hot[bins, columns] = 1
    histogram = one_hot @ w.T
    x, rows = histogram / count, histogram.sum(axis=1) / count
    entropy = (x[x > 0] * np.log(x[x > 0])).sum() - (rows[rows > 0] * np.log(rows[rows > 0])).sum()
    logs = np.zeros_like(histogram)
    filled = histogram > 0
    logs[filled] = np.log((histogram / w.sum(axis=1)[None, :])[filled])
    s = (logs[bins] * d.T).sum(axis=1)
    return entropy, points.linear_map.moments(s[:, None] * fields.gradient, weight_bits=weight_bits)


def _bins_image(size: int, seed: int = 1) -> ImageGrid:
    """A fixed image of random grey levels (its bins: :func:`_fixed_bins`)."""
    return ImageGrid(np.random.default_rng(seed).integers(0, BINS, (size, size)).astype(float))


def _fixed_bins(fixed: ImageGrid) -> np.ndarray:
    """The bins the fixed party's session gives its side: ITK's, over the level image (one
    level, unsmoothed: the image)."""
    return fixed_bins(fixed.array.ravel(), IntensityBins.from_values(fixed.array, BINS))


def _party(session, spacing: float | None = None):
    party = MovingPartySession(session, "spdz", metric=MetricSettings("mattes", BINS))
    party.start(LevelSchedule.from_lists([1], [0.0]), None)
    level = party.begin_level(0)()
    control = None
    if spacing is not None:
        control = BSplineTransform.over(level, spacing * np.asarray(level.spacing)).control_grid
    return party, party.select_points(level, control_grid=control)


@pytest.mark.parametrize("spacing", [None, 8.0], ids=["affine basis", "B-spline basis"])
def test_the_histogram_term_matches_a_float_reference(spacing):
    fixed = _bins_image(48)
    party, points = _party(
        in_process_session(fixed, FixedPolicy.holding_both_images(("spdz",))), spacing
    )
    fields = _fields(points.size)
    term = party.histogram_term(fields)
    entropy, moments = _reference(_fixed_bins(fixed), fields, points, term.basis_weight_bits)
    assert abs(term.entropy_difference - entropy) < Q_TOLERANCE
    assert np.abs(term.moments - moments).max() < MOMENTS_TOLERANCE * np.abs(moments).max()
    assert party.backend.round_trips == ROUND_TRIPS
    closed = party.close()
    assert closed.measurements == points.geometry.dimension * points.linear_map.outputs + 1
    assert party.backend.learned() and not list(closed.learned)


def test_several_evaluations_are_each_charged_once_to_the_policy():
    fixed = _bins_image(32)
    policy = FixedPolicy.holding_both_images(("spdz",), evaluation_budget=3)
    party, points = _party(in_process_session(fixed, policy))
    bins = _fixed_bins(fixed)
    for seed in (1, 2, 3):
        fields = _fields(points.size, seed=seed)
        entropy, _ = _reference(bins, fields, points, 0)
        assert abs(party.histogram_term(fields).entropy_difference - entropy) < Q_TOLERANCE
    with pytest.raises(ppir_itk.PeerError, match="budget of 3"):
        party.histogram_term(fields)


def test_the_fixed_side_refuses_values_that_are_not_bins():
    policy = FixedPolicy.holding_both_images(("spdz",))
    policy.single_process = True
    policy.dealer = local_dealer(TriplePool(), FIXED_PARTY)
    side = SPDZMattesFixedSide(
        {"session_token": os.urandom(16).hex()}, policy, MetricSettings("mattes", BINS)
    )
    _, points = _party(in_process_session(_bins_image(16)))
    for values in (np.full(points.size, 2.5), np.full(points.size, float(BINS))):
        with pytest.raises(ProtocolError, match="integers in"):
            side.on_points(values, points)
    with pytest.raises(ProtocolError, match="does not fit"):
        side.on_points(np.zeros(points.size), points)
        side.handle(pb.BackendMessage(spdz_mattes_step=pb.SpdzMattesStep()))


def test_three_processes_over_mutual_tls_match_the_reference():
    """ppir serve and ppir dealer as child processes (local mode's spawn_fixed_party), the
    moving party here, mutual TLS on every connection."""
    fixed = _bins_image(40, seed=3)
    with spawn_fixed_party(fixed, backends=("spdz",)) as child:
        session = ppir_itk.connect(child.address, child.client_tls, dealer=child.dealer_address)
        party, points = _party(session)
        fields = _fields(points.size, seed=9)
        term = party.histogram_term(fields)
        closed = party.close()
    entropy, moments = _reference(_fixed_bins(fixed), fields, points, 0)
    assert abs(term.entropy_difference - entropy) < Q_TOLERANCE
    assert np.abs(term.moments - moments).max() < MOMENTS_TOLERANCE * np.abs(moments).max()
    assert closed.dealer.payload_bytes_received > 0  # the fixed party's shares from the dealer
