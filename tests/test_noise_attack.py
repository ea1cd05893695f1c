"""Attack 4 of issue 14: the fixed party reads the packed ciphertext's decryption noise.

Without the flood the noise confirms the true moving image and links identical
plaintexts; with it (the default) neither works. Small images, a few ciphertexts
(``benchmarks/noise_attack.py`` runs at least 100).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ppir_itk.backends import he
from ppir_itk.errors import InputError
from ppir_itk.image import ImageGrid
from ppir_itk.noise_attack import PackedSession, correlation, fields_at_identity, z_score
from ppir_itk.phantoms import head_phantom

CIPHERTEXTS = 4


@pytest.fixture(scope="module")
def images():
    """The fixed image, the true moving image, a wrong one and the true one with one pixel
    one grey level brighter (grey levels: whole numbers, as in an 8-bit image)."""
    fixed = head_phantom((32, 32))
    grey = np.round(fixed.array * 200) + np.random.default_rng(1).integers(0, 3, (32, 32))
    poked = grey.copy()
    poked[10, 12] += 1
    return fixed, ImageGrid(grey), ImageGrid(np.roll(grey, 3, axis=0)), ImageGrid(poked)


def _attack(images):
    """Confirmation (z-score, mean correlation) of each candidate (true, wrong, one pixel
    changed) over CIPHERTEXTS ciphertexts of the true image, and the linkability
    correlations of their pairs and with a wrong image's."""
    fixed, true, wrong, poked = images
    session = PackedSession(fixed)
    try:
        attacker, degree = session.attacker, session.side.he.degree
        seen = [
            attacker.observe(session.evaluate(fields_at_identity(true))) for _ in range(CIPHERTEXTS)
        ]
        scores = {}
        for name, candidate in (("true", true), ("wrong", wrong), ("poked", poked)):
            fields = fields_at_identity(candidate)
            found = [correlation(s.noise, attacker.predicted_noise(fields, s)) for s in seen]
            scores[name] = z_score(found, degree), float(np.mean(found))
        other = attacker.observe(session.evaluate(fields_at_identity(wrong)))
        same = [correlation(a.noise, b.noise) for a, b in itertools.combinations(seen, 2)]
        different = [correlation(s.noise, other.noise) for s in seen]
        return scores, same, different
    finally:
        session.close()


def test_without_the_flood_the_noise_confirms_the_moving_image_and_links(images, monkeypatch):
    monkeypatch.setattr(he, "FLOOD_NOISE", False)
    scores, same, different = _attack(images)
    assert scores["true"][0] > 30 and scores["true"][1] > 0.5
    # Not a z-score bound: a wrong candidate keeps a small fixed correlation (measured
    # up to 0.03; every candidate reproduces the same masked slots), which a
    # z-score over more ciphertexts grows.
    assert abs(scores["wrong"][1]) < 0.05 and abs(scores["poked"][1]) < 0.05
    assert min(same) > 0.3
    assert max(np.abs(different)) < 0.05


def test_the_flood_hides_the_moving_image_and_unlinks_identical_plaintexts(images):
    assert he.FLOOD_NOISE  # the default
    scores, same, different = _attack(images)
    assert scores["true"][0] <= 3
    assert max(np.abs(same)) <= 0.05 and max(np.abs(different)) <= 0.05


def test_the_flood_is_wide_and_still_decrypts(images):
    """The flood dwarfs the computation's noise bound by 2^40 N and leaves room below
    q / 2t; the sums stay exact (test_he's agreement with Clear) because it does."""
    fixed, true, _, _ = images
    session = PackedSession(fixed)
    try:
        plan = session.backend.flooding()
        seen = session.attacker.observe(session.evaluate(fields_at_identity(true)))
    finally:
        session.close()
    assert plan.bits >= he.FLOOD_SECURITY_BITS + plan.bound_bits + np.log2(16384)
    assert 2 ** (plan.bits - 1) < np.abs(seen.noise).max() <= 2**plan.bits + 2**plan.bound_bits
    assert seen.switches == plan.switches


def test_a_degree_without_room_for_the_flood_is_refused_with_a_sentence():
    with pytest.raises(InputError, match="poly_modulus_degree=8192 leaves no room to flood"):
        he.he_settings({"poly_modulus_degree": "8192"})
