"""The he fixed party's level upload: seeded symmetric ciphertexts at the lowest level of the
modulus chain that leaves the moving party room for its flood (backends/he.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ppir_itk import _kernels
from ppir_itk.backends import he as he_backend
from ppir_itk.backends.he import HEContext, flooding, one_point_per_slot, upload_level
from ppir_itk.errors import InputError
from ppir_itk.protocol.messages import ProtocolError


@pytest.fixture(scope="module")
def he() -> HEContext:
    context = HEContext(16384, 128)
    yield context
    context.close()


@pytest.fixture(scope="module")
def keys(he):
    generator = he.seal.KeyGenerator(he.context)
    secret = generator.secret_key()
    return he.seal.Encryptor(he.context, secret), he.seal.Decryptor(he.context, secret)


def _scaled_reference(plain, t, primes, c0):
    """BFV's scaling on Python integers: c0 + floor((q m + floor((t + 1) / 2)) / t) mod p."""
    q = 1
    for p in primes:
        q *= int(p)
    scaled = [(q * int(m) + (t + 1) // 2) // t for m in plain]
    return np.array(
        [
            [(int(c) + s) % int(p) for c, s in zip(row, scaled, strict=True)]
            for row, p in zip(c0, primes, strict=True)
        ],
        dtype=np.uint64,
    )


def test_the_scaling_kernel_is_bfvs_rounding_on_integers(he):
    rng = np.random.default_rng(5)
    primes = np.array(he.moduli(upload_level(he, 1)), dtype=np.uint64)
    t = he.t
    q = 1
    for p in primes:
        q *= int(p)
    # the extremes of m, and a tie (q m = (t - 1) / 2 mod t: q m / t is k + 1/2, up to k + 1)
    tie = (t - 1) // 2 * pow(q % t, -1, t) % t
    plain = np.array([0, 1, t - 1, tie, *rng.integers(0, t, 59)], dtype=np.uint64)
    c0 = np.stack([rng.integers(0, int(p), plain.size, dtype=np.uint64) for p in primes])
    c0[:, 0] = primes - 1  # a sum that reaches past its prime
    delta = np.array([(q // t) % int(p) for p in primes], dtype=np.uint64)
    expected = _scaled_reference(plain, t, primes, c0)
    _kernels.bfv_add_scaled(plain, t, q % t, primes, delta, c0)
    np.testing.assert_array_equal(c0, expected)


def test_the_kernel_refuses_values_past_their_moduli(he):
    primes = np.array(he.moduli(upload_level(he, 1)), dtype=np.uint64)
    c0 = np.zeros((primes.size, 4), dtype=np.uint64)
    delta = np.zeros(primes.size, dtype=np.uint64)
    with pytest.raises(ValueError, match="plain must be below t"):
        _kernels.bfv_add_scaled(np.full(4, he.t, dtype=np.uint64), he.t, 0, primes, delta, c0)
    with pytest.raises(ValueError, match="c0 must have shape"):
        _kernels.bfv_add_scaled(np.zeros(5, dtype=np.uint64), he.t, 0, primes, delta, c0)


def test_the_plaintext_is_added_as_seals_own_add_plain_adds_it(he, keys):
    encryptor, _ = keys
    level = upload_level(he, 1)
    values = np.random.default_rng(2).integers(-(2**40), 2**40, he.slots)
    zero = he.seal.Ciphertext()
    encryptor.encrypt_zero_symmetric(level, zero)
    c0 = he.coefficients(zero)[0].copy()
    primes = np.array(he.moduli(level), dtype=np.uint64)
    q = 1
    for p in primes:
        q *= int(p)
    delta = np.array([(q // he.t) % int(p) for p in primes], dtype=np.uint64)
    _kernels.bfv_add_scaled(he._plain_coefficients(values), he.t, q % he.t, primes, delta, c0)
    he.evaluator.add_plain_inplace(zero, he.encode(values))
    np.testing.assert_array_equal(he.coefficients(zero)[0], c0)


def test_a_seeded_upload_decrypts_to_its_values_at_the_lowest_level_with_room(he, keys):
    encryptor, decryptor = keys
    rows = 40
    level = upload_level(he, rows)
    levels = he.levels()
    below = levels[levels.index(level) + 1]
    flooding(he.degree, he.t, he.moduli(level), rows)
    with pytest.raises(InputError, match="no room to flood"):
        flooding(he.degree, he.t, he.moduli(below), rows)
    assert len(he.moduli(level)) < len(he.moduli(levels[0]))
    values = np.random.default_rng(3).integers(-(2**59), 2**59, he.slots)
    blob = he.encrypt_seeded(encryptor, values, level)
    ciphertext = he.from_bytes("Ciphertext", blob)
    assert ciphertext.parms_id() == level
    plain = he.seal.Plaintext()
    decryptor.decrypt(ciphertext, plain)
    np.testing.assert_array_equal(he.encoder.decode_int64(plain), values)
    # Measured: 567 kB against 913 kB seeded at the top level and 1.83 MB unseeded there.
    top = he.seal.Ciphertext()
    encryptor.encrypt_symmetric(he.encode(values), top)
    assert len(blob) < 0.35 * len(he.to_bytes(top))


def test_without_the_flood_the_upload_stays_at_the_top_level(he, monkeypatch):
    monkeypatch.setattr(he_backend, "FLOOD_NOISE", False)
    assert upload_level(he, 1) == he.levels()[0]


def _session_level(monkeypatch, phantom_2d, choose):
    """The he backend in process, the fixed party's upload level chosen by ``choose``."""
    import ppir_itk

    monkeypatch.setattr(he_backend, "upload_level", choose)
    return ppir_itk.register(
        phantom_2d,
        phantom_2d,
        transport="in-process",
        backend="he",
        transform="translation",
        shrink_factors=[4],
        smoothing_sigmas=[0.0],
        iterations=1,
    )


def test_the_moving_party_refuses_an_upload_that_leaves_no_room_for_its_flood(
    monkeypatch, phantom_2d
):
    with pytest.raises(ProtocolError, match="leave no room to flood the noise"):
        _session_level(monkeypatch, phantom_2d, lambda he, products: he.levels()[-1])


def _terms_in_both_layouts(monkeypatch, metric: str, masked: bool):
    """One evaluation on a 96 x 96 level (9216 points: 5 interleaved rows or 3 rows one
    point per slot), laid out each way."""
    import test_he_masks as masks

    from ppir_itk.fixed_party import FixedPartySession
    from ppir_itk.phantoms import head_phantom
    from ppir_itk.policy import FixedPolicy
    from ppir_itk.protocol.session import LocalSession

    fixed = head_phantom((96, 96))
    terms, uploads = {}, {}
    for layout, evaluations in (("interleaved", 20), ("one point per slot", 0)):
        monkeypatch.setattr(he_backend, "REPLY_EVALUATIONS", evaluations)
        policy = FixedPolicy.holding_both_images(("he",))
        session = (
            masks._masked_session(fixed, policy) if masked else FixedPartySession(fixed, policy)
        )
        party = masks._party(LocalSession(session), metric)
        points = party.select_points(party.begin_level(0)())
        assert party.backend._interleaved == (evaluations != 0)
        assert session.backend_side._interleaved == (evaluations != 0)
        terms[layout] = party.joint_term(masks._fields(points))
        uploads[layout] = len(session.backend_side._level_blobs)
        party.close()
    return terms, uploads


@pytest.mark.parametrize("masked", [False, True], ids=["no mask", "fixed mask"])
@pytest.mark.parametrize("metric", ["meansquares", "correlation"])
def test_one_point_per_slot_gives_the_interleaved_sums_exactly(monkeypatch, metric, masked):
    terms, uploads = _terms_in_both_layouts(monkeypatch, metric, masked)
    interleaved, per_point = terms["interleaved"], terms["one point per slot"]
    np.testing.assert_array_equal(per_point.moments, interleaved.moments)
    assert per_point.warped_dot_fixed == interleaved.warped_dot_fixed
    assert per_point.fixed_squared == interleaved.fixed_squared
    assert per_point.fixed_sum == interleaved.fixed_sum
    assert (per_point.masked is not None) == masked == (interleaved.masked is not None)
    if masked:
        for name in ("count", "warped_squared", "warped_moments", "warped_sum", "gradient_moments"):
            expected = getattr(interleaved.masked, name)
            np.testing.assert_array_equal(getattr(per_point.masked, name), expected)
    assert uploads["one point per slot"] == (3 if masked else 2)
    assert uploads["interleaved"] > uploads["one point per slot"]


def test_the_layout_is_one_point_per_slot_where_it_saves_bytes_over_an_evaluation_budget():
    slots = 16384
    # The brain pair's full resolution (56,576 points, 8 sums): 28 rows interleaved against
    # 12 at most one point per slot, too few for 20 evaluations' 7 more replies each.
    assert not one_point_per_slot(56_576, 8, slots)
    # The MNI volume at 2 mm (1,068,592 points, 14 sums): 914 rows against 198.
    assert one_point_per_slot(1_068_592, 14, slots)
