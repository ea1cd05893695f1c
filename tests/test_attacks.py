"""The attacks of issue 14, with the fixed party's defence off and on.

Each test plays the adversary with the project's own moving-party client
(:mod:`ppir_itk.attacks`) on a small phantom. With the defence off (a fixed party that
grants without limit, as one holding both images does) the attacks recover J; with the
default policy of ``ppir serve`` (a real process, its SQLite ledger, restarted between
sessions) they recover at most 1/64 of it and stop at the fixed party's sentence.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest
from conftest import ppir_serve

import ppir_itk
from ppir_itk.attacks import (
    RecordingMovingParty,
    psnr,
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
from ppir_itk.protocol.tls import TLS
from ppir_itk.registration import ImageRegistrationMethod
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.images import write_image

PRIVATE = ["he", "spdz"]


@pytest.fixture(scope="module")
def fixed():
    return head_phantom((32, 32))


def serving(fixed, budget: int = 1000):
    """Sessions with an in-process fixed party holding ``fixed`` under ``budget``."""
    policy = lambda: FixedPolicy.holding_both_images(  # noqa: E731 - the defence off
        tuple(BACKENDS), evaluation_budget=budget
    )
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
    method = ImageRegistrationMethod(  # one full-size level: the view the attack reads
        metric,
        GaussNewtonOptimizer(NumberOfIterations=10),
        "bspline",
        grid_spacing=8.0,
        shrink_factors=[1],
        smoothing_sigmas=[0.0],
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


# -- the defence on: the default policy of a real ppir serve --------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A PKI and the fixed image written for ``ppir serve``: 48 x 48, so its default grant
    is 2304 / 64 = 36 measurements (four affine evaluations); textured everywhere, so that
    no pixel is guessed exactly without being read (a zero background would be)."""
    folder = tmp_path_factory.mktemp("served")
    image = head_phantom((48, 48))
    image.array[...] += np.random.default_rng(3).uniform(0.05, 0.15, image.array.shape)
    write_image(image, folder / "fixed.nrrd")
    return ppir_itk.init_pki(folder / "pki"), folder, image


def _restarting(served, stack: ExitStack):
    """Sessions with a ``ppir serve`` under the default policy that is stopped and started
    again before every session, on the same ledger file."""
    pki, folder, _ = served
    tls = TLS.for_role(pki, "moving-party")

    def connect():
        stack.close()  # the previous fixed party process ends
        address = stack.enter_context(
            ppir_serve(
                pki,
                folder / "fixed.nrrd",
                folder / "serve.log",
                "--ledger",
                str(folder / "ledger.sqlite"),
            )
        )
        return ppir_itk.connect(address, tls, deadline=20)

    return connect


def test_defence_on_a_1px_grid_is_refused_before_any_product(served):
    with ExitStack() as stack:
        result = recover_by_fine_grid(_restarting(served, stack))
    j = served[2].array.astype(np.float64)
    assert result.evaluations == 0
    assert "asks finer detail of the fixed image" in result.stopped
    assert result.exact_fraction(j) <= 1 / 64


def test_defence_on_one_hot_weights_read_at_most_1_64_of_j_over_sessions_and_restarts(served):
    with ExitStack() as stack:
        result = recover_by_one_hot(_restarting(served, stack), max_sessions=6)
    j = served[2].array.astype(np.float64)
    assert result.evaluations == 4  # 32 of the grant's 36 measurements; a fifth would pass it
    assert result.sessions >= 2  # the next session, on a restarted fixed party, is refused
    assert "grants this client (all its sessions together)" in result.stopped
    assert result.exact_fraction(j) <= 1 / 64


@pytest.mark.parametrize("noise", ["0.01", None], ids=["noise 0.01", "default: exact sums"])
def test_under_a_grant_noise_on_the_sums_leaves_one_hot_reads_no_exact_pixel(served, noise):
    """Every measurement limit lifted (a grant), 32 evaluations of one-hot affine reads
    (256 pixels) against a real ``ppir serve``: with ``--joint-term-noise 0.01`` none of
    the pixels read is exact and J is blurred; with the default exact sums, every one."""
    pki, folder, image = served
    options = ["--grant-measurements", "inf", "--max-measurements-per-evaluation", "inf"]
    options += ["--max-measurements-per-level", "inf", "--min-control-spacing", "0"]
    options += ["--ledger", str(folder / "granted.sqlite")]
    if noise is not None:
        options += ["--joint-term-noise", noise]
    tls = TLS.for_role(pki, "moving-party")
    with ppir_serve(pki, folder / "fixed.nrrd", folder / "granted.log", *options) as address:
        result = recover_by_one_hot(
            lambda: ppir_itk.connect(address, tls, deadline=20), max_evaluations=32
        )
    j = image.array.astype(np.float64)
    assert result.evaluations == 32 and result.read is not None and result.read.sum() == 256
    read = result.quantised(result.estimate, j)[result.read] == result.quantised(j, j)[result.read]
    if noise is None:
        assert read.all()
    else:
        assert read.mean() <= 0.016
        assert psnr(result.estimate[result.read], j[result.read]) < 35
