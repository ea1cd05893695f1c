"""Secret randomness: exact uniformity mod t; masks and shares only from the OS's CSPRNG."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

import ppir_itk
from ppir_itk.bspline import BSplineTransform
from ppir_itk.phantoms import head_phantom
from ppir_itk.policy import FixedPolicy
from ppir_itk.pyramid import Level, LevelSchedule
from ppir_itk.randomness import MODULUS_LIMIT, expand, uniform_below

BFV_T = 1152921504606830593  # the packed protocol's 60-bit batching prime for N = 8192


@pytest.mark.parametrize("count", [0, 1, 2, (1 << 15) - 1, 1 << 15, (1 << 15) + 1, 100_003])
def test_expand_is_the_aes_ctr_keystream(count):
    """The chunked expansion is the one AES-256-CTR keystream of the seed (chunks of 2^15
    values), so both parties and the dealer derive the same values from a seed."""
    seed = bytes(range(32))
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    keystream = np.frombuffer(encryptor.update(bytes(8 * count)), dtype=np.int64)
    values = expand(seed, count)
    assert values.dtype == np.int64 and np.array_equal(values, keystream)


@pytest.mark.parametrize("modulus", [1, 2, 7, (1 << 59) + 1, BFV_T, MODULUS_LIMIT - 1])
def test_uniform_below_fills_the_shape_below_the_modulus(modulus):
    values = uniform_below(modulus, (3, 4000))
    assert values.dtype == np.uint64 and values.shape == (3, 4000)
    assert int(values.max()) < modulus
    if modulus > 1 << 20:  # the top half of the range is reached as often as the bottom
        assert 0.47 < (values >= np.uint64(modulus // 2)).mean() < 0.53


@pytest.mark.parametrize("modulus", [0, MODULUS_LIMIT])
def test_uniform_below_refuses_moduli_out_of_range(modulus):
    with pytest.raises(ValueError, match="between 1 and 2"):
        uniform_below(modulus, 10)


@pytest.mark.parametrize("modulus", [5, 9, 12])
def test_uniform_below_has_no_bias_on_a_small_modulus(modulus):
    # 9 = 2^3 + 1 keeps only 9 of 16 low-bit words: the case a biased reduction gets wrong.
    counts = np.bincount(uniform_below(modulus, 60_000), minlength=modulus)
    assert counts.size == modulus
    statistic = stats.chisquare(counts).statistic
    assert statistic < stats.chi2.ppf(1 - 1e-6, modulus - 1)


def test_uniform_below_draws_afresh_and_without_repeats():
    first, second = uniform_below(BFV_T, 10_000), uniform_below(BFV_T, 10_000)
    # 10^4 draws from 2^60 values collide with probability below 10^-10.
    assert np.unique(first).size == first.size
    assert not np.intersect1d(first, second).size


# PyTorch's generators (CrypTen draws its own shares with them, through torch.randint).
TORCH_DRAWS = (
    "Generator",
    "bernoulli",
    "multinomial",
    "normal",
    "poisson",
    "rand",
    "rand_like",
    "randint",
    "randint_like",
    "randn",
    "randn_like",
    "randperm",
)
TENSOR_DRAWS = (
    "bernoulli",
    "bernoulli_",
    "cauchy_",
    "exponential_",
    "geometric_",
    "log_normal_",
    "normal_",
    "random_",
    "uniform_",
)


def _refuse(name: str):
    def refused(*_, **__):
        raise AssertionError(f"{name} was called during a private joint-term evaluation")

    return refused


def _without_non_cryptographic_generators(monkeypatch) -> None:
    """Every NumPy, ``random`` and PyTorch generator raises from here on (``SystemRandom``,
    which reads ``os.urandom``, stays)."""
    import torch

    for name in dir(np.random):
        if not name.startswith("_") and callable(getattr(np.random, name)):
            monkeypatch.setattr(np.random, name, _refuse(f"numpy.random.{name}"))
    for name in dir(random):
        if not name.startswith("_") and name != "SystemRandom" and callable(getattr(random, name)):
            monkeypatch.setattr(random, name, _refuse(f"random.{name}"))
    for name in TORCH_DRAWS:
        monkeypatch.setattr(torch, name, _refuse(f"torch.{name}"))
    for name in TENSOR_DRAWS:
        monkeypatch.setattr(torch.Tensor, name, _refuse(f"torch.Tensor.{name}"))


EVALUATIONS = 3  # spdz's first evaluation uses the triples asked for when the level opened


def _private_evaluations(
    monkeypatch, backend: str, transform_kind: str, urandom, noise: float = 0.0
) -> tuple[list, list]:
    """Evaluations of the same joint term by a private backend, in one process, with every
    non-cryptographic generator refused and ``os.urandom`` replaced by ``urandom`` once the
    level is open; ``noise``: the fixed party's (``FixedPolicy.joint_term_noise``). Returns
    each evaluation's ``os.urandom`` calls and the fixed party's serialised answers."""
    fixed = head_phantom((40, 36))
    moving = ppir_itk.ImageGrid(fixed.array, origin=(0.4, -0.3))
    transform = (
        BSplineTransform.over(fixed.geometry, 16.0)
        if transform_kind == "bspline"
        else ppir_itk.make_transform(transform_kind, 2)
    )
    _without_non_cryptographic_generators(monkeypatch)  # before the backend exists
    policy = FixedPolicy.holding_both_images(("he", "spdz"), joint_term_noise=noise)
    session = ppir_itk.in_process_session(fixed, policy)
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(backend, session=session)
    metric.SetMovingImage(moving)
    metric.SetTransform(transform)
    metric.moving_party.start(LevelSchedule.from_lists([1], [0.0]), ppir_itk.NoSampling())
    metric.initialize_level(0, Level(1, 0.0), ppir_itk.NoSampling())

    calls: list[int] = []
    answers: list[bytes] = []
    post = session.post

    def recorded_post(envelope):
        answer = post(envelope)

        def recorded_answer(expected):
            reply = answer(expected)
            answers.append(reply.SerializeToString(deterministic=True))
            return reply

        return recorded_answer

    def counted_urandom(size: int) -> bytes:
        calls.append(size)
        return urandom(size)

    monkeypatch.setattr(session, "post", recorded_post)
    monkeypatch.setattr(os, "urandom", counted_urandom)
    per_evaluation_calls, per_evaluation_answers = [], []
    for _ in range(EVALUATIONS):
        calls.clear()
        answers.clear()
        metric.evaluate()
        per_evaluation_calls.append(list(calls))
        per_evaluation_answers.append(list(answers))
    monkeypatch.undo()
    session.close()
    return per_evaluation_calls, per_evaluation_answers


PRIVATE = [("he", "affine"), ("he", "bspline"), ("spdz", "affine"), ("spdz", "bspline")]


@pytest.mark.parametrize("noise", [0.0, 0.5], ids=["exact sums", "noisy sums"])
@pytest.mark.parametrize(("backend", "transform_kind"), PRIVATE)
def test_masks_come_only_from_the_operating_system_csprng(
    monkeypatch, backend, transform_kind, noise
):
    # A constant "os.urandom": if the masks (and the fixed party's noise) come from it alone,
    # the answers are the same twice for the same fields; any other generator would differ.
    calls, answers = _private_evaluations(
        monkeypatch, backend, transform_kind, lambda size: bytes(size), noise
    )
    assert all(calls), "an evaluation drew its masks without os.urandom"
    assert answers[-1], "no evaluation reached the fixed party"
    assert answers[-2] == answers[-1], "one seed gave different masks: another generator drew them"


@pytest.mark.parametrize(("backend", "transform_kind"), PRIVATE)
def test_masks_are_fresh_every_evaluation(monkeypatch, backend, transform_kind):
    _, answers = _private_evaluations(monkeypatch, backend, transform_kind, os.urandom)
    assert answers[-2] != answers[-1], "the fixed party saw the same masked values twice"
