"""Mattes mutual information through the metric, the method and the command line (Clear).

The estimator's arithmetic is checked against ITK in tests/test_parzen.py; here the whole
path: the fixed party's bins over its smoothed level image, the moving party's windows
and marginal, the value rebuilt from the backend's HistogramTerm, the optimizer chosen per
metric, the refusals, and what a run reports. The private backend's own tests are
tests/test_spdz_mattes.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import known_pair, register_in_process
from test_parzen import itk_mattes, mattes_scene

import ppir_itk
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.mattes import PrivateMattesMutualInformationImageToImageMetric
from ppir_itk.metric import PrivateMeanSquaresImageToImageMetric
from ppir_itk.metric_kinds import MetricSettings
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.optimizer import GaussNewtonOptimizer
from ppir_itk.parzen import IntensityBins, fixed_bins
from ppir_itk.phantoms import head_phantom, second_modality
from ppir_itk.policy import FixedPolicy
from ppir_itk.pyramid import Level, LevelSchedule, smooth
from ppir_itk.registration import ImageRegistrationMethod
from ppir_itk.sampling import NoSampling


def _metric_at(fixed, moving, transform, bins, backend="clear", gradient_filter=False):
    session = ppir_itk.in_process_session(fixed)
    metric = PrivateMattesMutualInformationImageToImageMetric(
        backend, session=session, number_of_histogram_bins=bins
    )
    metric.SetUseMovingImageGradientFilter(gradient_filter)
    metric.SetMovingImage(moving)
    metric.SetTransform(transform)
    metric.moving_party.start(LevelSchedule.from_lists([1], [0.0]), NoSampling())
    metric.initialize_level(0, Level(1, 0.0), NoSampling())
    return metric


@pytest.mark.parametrize(("dimension", "kind", "bins"), [(2, "affine", 32), (3, "translation", 16)])
def test_the_metric_value_and_derivative_are_itks(dimension, kind, bins):
    """The two parties' split (bins at the fixed party, windows and marginal at the moving
    party, the value from the entropy difference) gives ITK's own value; with ITK's
    gradient filter (ITK's default), ITK's GetDerivative too."""
    fixed, moving, transform = mattes_scene(dimension, kind)
    itk_value, itk_derivative, itk_valid, _ = itk_mattes(fixed, moving, transform, bins)
    metric = _metric_at(fixed, moving, transform, bins, gradient_filter=True)
    assert metric.GetUseMovingImageGradientFilter()
    evaluation = metric.evaluate()
    assert evaluation.number_of_valid_points == itk_valid
    np.testing.assert_allclose(evaluation.value, itk_value, rtol=1e-6)
    np.testing.assert_allclose(
        -evaluation.gradient, itk_derivative, rtol=1e-5, atol=1e-5 * np.abs(itk_derivative).max()
    )


def test_clear_mattes_registers_a_second_modality_where_mean_squares_fails(phantom_2d):
    moving, truth = known_pair(phantom_2d, "rigid", [0.06, 2.5, -1.5])
    remapped = second_modality(moving)
    mattes = register_in_process(phantom_2d, remapped, metric="mattes", transform="rigid")
    squares = register_in_process(phantom_2d, remapped, transform="rigid")
    spacing = min(phantom_2d.geometry.spacing)
    mattes_error = displacement_rmse(mattes.transform, truth, phantom_2d.geometry) / spacing
    squares_error = displacement_rmse(squares.transform, truth, phantom_2d.geometry) / spacing
    assert mattes_error < 0.05, mattes_error
    assert squares_error > 1.0, squares_error
    report = mattes.report()
    assert (report["metric"], report["histogram_bins"]) == ("mattes", 32)
    assert report["optimizer"] == "RegularStepGradientDescentOptimizer"
    assert squares.report()["optimizer"] == "GaussNewtonOptimizer"
    assert any("histogram bin" in line for line in report["learned_in_the_clear"]["moving"])


def test_clear_mattes_registers_a_3d_affine(phantom_3d):
    moving, truth = known_pair(
        phantom_3d, "affine", [1.02, 0.01, 0, -0.01, 0.98, 0.02, 0, 0, 1.01, 1.5, -1.0, 0.8]
    )
    result = register_in_process(
        phantom_3d,
        second_modality(moving),
        metric="mattes",
        transform="affine",
        sampling="urs",
        sampling_fraction=0.2,
        shrink_factors=[2, 1],
        smoothing_sigmas=[1.0, 0.0],
    )
    error = displacement_rmse(result.transform, truth, phantom_3d.geometry)
    assert error / min(phantom_3d.geometry.spacing) < 0.2, error  # 0.12 measured


def test_a_metric_the_fixed_party_does_not_serve_ends_the_session(phantom_2d):
    session = ppir_itk.in_process_session(
        phantom_2d, FixedPolicy.holding_both_images(("clear",), metrics=("meansquares",))
    )
    with pytest.raises(ppir_itk.PeerError, match="metric 'mattes' is not served here"):
        ppir_itk.register_with(session, phantom_2d, backend="clear", metric="mattes")


def test_refusals_before_any_party_starts(phantom_2d):
    with pytest.raises(
        ppir_itk.InputError,
        match="backend 'he' does not compute metric 'mattes': register it with backend "
        r"spdz or clear, which is NOT private",
    ):
        ppir_itk.register(phantom_2d, phantom_2d, metric="mattes", backend="he")
    with pytest.raises(ppir_itk.InputError, match="histogram bins 3 must be"):
        PrivateMattesMutualInformationImageToImageMetric(
            "clear", session=ppir_itk.in_process_session(phantom_2d), number_of_histogram_bins=3
        )
    metric = PrivateMattesMutualInformationImageToImageMetric(
        "clear", session=ppir_itk.in_process_session(phantom_2d)
    )
    with pytest.raises(ppir_itk.InputError, match="the gauss-newton optimizer minimises"):
        ImageRegistrationMethod(metric, GaussNewtonOptimizer(), "rigid")
    with pytest.raises(ppir_itk.InputError, match="computes metric 'mattes', not 'meansquares'"):
        PrivateMeanSquaresImageToImageMetric(metric.moving_party)


@pytest.mark.parametrize("dimension", [2, 3])
def test_private_mattes_follows_clear(dimension):
    """spdz's shared histogram and secure log end where Clear's arithmetic does (the issue's
    bar: 0.05 voxel over the fixed grid), on a second modality, with the same sample."""
    if dimension == 2:
        fixed = head_phantom((64, 60), spacing=(1.1, 0.9))
        parameters = [0.05, 2.0, -1.5]
    else:
        fixed = head_phantom((24, 28, 26))
        parameters = [0.03, -0.02, 0.04, 1.5, -1.0, 0.8]
    moving, _ = known_pair(fixed, "rigid", parameters)
    options = dict(
        metric="mattes",
        transform="rigid",
        sampling="urs",
        sampling_fraction=0.3,
        shrink_factors=[2, 1],
        smoothing_sigmas=[1.0, 0.0],
    )
    clear = register_in_process(fixed, second_modality(moving), **options)
    private = register_in_process(fixed, second_modality(moving), backend="spdz", **options)
    spacing = min(fixed.geometry.spacing)
    rmse = displacement_rmse(private.transform, clear.transform, fixed.geometry) / spacing
    assert rmse < 0.05, rmse
    report = private.report()
    assert report["parties"]["dealer"]["bytes_sent"] > 0  # the dealer's figures are reported
    assert any("Mattes term" in line for line in report["learned_in_the_clear"]["moving"])
    assert report["learned_in_the_clear"]["fixed"] == []


def test_regular_sampling_takes_every_kth_point_at_both_parties(phantom_2d):
    """ITK's REGULAR sampling on the fixed grid: every ceil(1 / fraction)-th point in flat
    order, from the first; the fixed party draws the same points from the fraction alone."""
    moving, _ = known_pair(phantom_2d, "rigid", [0.02, 1.0, -0.5])
    result = register_in_process(
        phantom_2d,
        second_modality(moving),
        metric="mattes",
        transform="rigid",
        sampling="regular",
        sampling_fraction=0.3,
        shrink_factors=[2, 1],
        smoothing_sigmas=[1.0, 0.0],
    )
    assert result.sampling == "REGULAR (every 4th point)"
    for level in result.levels:
        assert level.points == -(-int(np.prod(level.grid_size)) // 4)


def test_the_fixed_bins_span_the_smoothed_full_resolution_level(phantom_2d):
    """ITK's method hands its metric the level's smoothed image at full resolution (only
    the grid of points shrinks): the fixed party's bins span that image's range, not the
    shrunk grid's."""
    session = ppir_itk.in_process_session(phantom_2d)
    party = MovingPartySession(session, "clear", metric=MetricSettings("mattes", 32))
    party.start(LevelSchedule.from_lists([4], [2.0]), NoSampling())
    party.select_points(party.begin_level(0)())
    fixed = session.serving
    smoothed = smooth(phantom_2d, 2.0).array
    assert fixed.level_range == (smoothed.min(), smoothed.max())
    shrunk = fixed.level_image.array
    assert fixed.level_range != (shrunk.min(), shrunk.max())  # the test tells them apart
    expected = fixed_bins(shrunk.ravel(), IntensityBins(32, *fixed.level_range))
    assert (party.backend._fixed_bins == expected).all()
