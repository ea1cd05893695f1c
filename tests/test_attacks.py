"""The attacks of issue 14 with the defence off: today they recover the fixed image.

Each test plays the adversary with the project's own moving-party client against an
in-process fixed party (:mod:`ppir_itk.attacks`) on a small phantom. They assert what
the attacks recover *without* a policy bounding the linear measurements: when the
fixed party's policy lands, the same calls must recover at most 1/64 of J.
"""

from __future__ import annotations

import numpy as np
import pytest

from ppir_itk.attacks import (
    RecordingMovingParty,
    reconstruct_from_view,
    recover_by_fine_grid,
    recover_by_one_hot,
)
from ppir_itk.backends import BACKENDS
from ppir_itk.compose import in_process_session
from ppir_itk.metric import PrivateMeanSquaresImageToImageMetric
from ppir_itk.optimizer import GaussNewtonOptimizer
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.policy import FixedPolicy
from ppir_itk.registration import ImageRegistrationMethod
from ppir_itk.transforms import make_transform

PRIVATE = ["he", "spdz"]


@pytest.fixture(scope="module")
def fixed():
    return head_phantom((32, 32))


def serving(fixed, budget: int = 1000):
    """Sessions with an in-process fixed party holding ``fixed`` under ``budget``."""
    policy = lambda: FixedPolicy(backends=tuple(BACKENDS), evaluation_budget=budget)  # noqa: E731
    return lambda: in_process_session(fixed, policy())


@pytest.mark.parametrize("backend", PRIVATE)
def test_defence_off_a_1px_grid_reads_every_pixel_in_one_evaluation(fixed, backend):
    result = recover_by_fine_grid(serving(fixed), backend=backend)
    j = fixed.array.astype(np.float64)
    assert (result.evaluations, result.sessions, result.stopped) == (1, 1, None)
    assert result.exact_fraction(j) >= 0.99
    assert result.psnr(j) > 80


@pytest.mark.parametrize("backend", PRIVATE)
def test_defence_off_one_hot_weights_read_j_across_sessions(backend):
    fixed = head_phantom((16, 16))
    result = recover_by_one_hot(serving(fixed, budget=10), backend=backend)
    j = fixed.array.astype(np.float64)
    # 8 pixels per affine evaluation: 256 pixels need 32 evaluations, 4 sessions of 10.
    assert (result.evaluations, result.sessions, result.stopped) == (32, 4, None)
    assert result.read.all() and result.exact_fraction(j) >= 0.99


def test_defence_off_one_hot_weights_on_a_4px_grid_read_j_in_8_evaluations(fixed):
    result = recover_by_one_hot(serving(fixed), backend="he", grid_spacing=4)
    j = fixed.array.astype(np.float64)
    assert (result.evaluations, result.sessions) == (8, 1)
    assert result.exact_fraction(j) >= 0.99


def test_an_attack_stopped_by_the_fixed_party_reports_what_it_read():
    fixed = head_phantom((16, 16))
    result = recover_by_one_hot(serving(fixed, budget=2), backend="he", max_sessions=2)
    j = fixed.array.astype(np.float64)
    assert (result.evaluations, result.sessions) == (4, 2)
    assert "used up the fixed party's budget of 2" in result.stopped
    assert result.read.sum() == 32 and result.exact_fraction(j) >= 31 / 256
    assert np.isfinite(result.psnr(j))


def test_an_attack_refused_at_the_start_reports_that_it_recovered_nothing():
    fixed = head_phantom((16, 16))
    refusing = lambda: in_process_session(fixed, FixedPolicy(backends=("clear",)))  # noqa: E731
    result = recover_by_one_hot(refusing, backend="he")
    j = fixed.array.astype(np.float64)
    assert (result.evaluations, result.sessions, result.geometry) == (0, 1, None)
    assert "he" in result.stopped
    assert result.exact_fraction(j) <= np.mean(j == 0) and result.correlation(j) == 0.0


def test_defence_off_an_honest_bspline_view_beats_its_own_image_prior():
    fixed = head_phantom((48, 48))
    truth = make_transform("affine", 2)
    truth.center = fixed.geometry.center()
    truth.parameters = [1.03, 0.02, -0.01, 0.98, 1.5, -1.0]
    moving = moved_copy(fixed, truth)
    party = RecordingMovingParty(in_process_session(fixed), "spdz")
    metric = PrivateMeanSquaresImageToImageMetric(party, bending_energy_weight=100.0)
    metric.SetMovingImage(moving)
    method = ImageRegistrationMethod(
        metric, GaussNewtonOptimizer(NumberOfIterations=10), "bspline", grid_spacing=8.0
    )
    prior = method.run().resample(moving).array
    j = fixed.array.astype(np.float64)
    scores = {
        r.method: r for r in reconstruct_from_view(party.view, fixed.geometry, j, prior=prior)
    }
    assert scores["towards the prior"].psnr > scores["prior alone"].psnr + 0.5
    assert scores["tikhonov"].correlation > 0.95
    moments_only = {
        r.method: r
        for r in reconstruct_from_view(
            party.view, fixed.geometry, j, warped_dot=False, tv_weights=()
        )
    }
    assert moments_only["tikhonov"].correlation > 0.95  # the sums alone, as across modalities
