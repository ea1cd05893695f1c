"""``PrivateMattesMutualInformationImageToImageMetric``: Mattes mutual information, split
between two parties.

ITK's ``MattesMutualInformationImageToImageMetricv4`` (:mod:`ppir_itk.parzen` has its
estimator): the fixed image's box window and the moving image's cubic B-spline window
fill a joint histogram of ``B`` bins squared over the level's points; the value is
minus the mutual information, and the derivative weighs each point's moving gradient
by ITK's log ratio of the histogram read at its bins. Here the moving party holds I and
its window; the fixed party holds J and its bins; the histogram needs both, so the
backend computes (:class:`~ppir_itk.backends.base.HistogramTerm`):

- the entropy difference ``sum x log x - sum r log r`` of ``x = H / n`` and its row
  sums (one number), from which the moving party, which knows its own marginal,
  gets the mutual information;
- the public map's moments of ``s g`` with ``s`` each point's weight: the derivative,
  once the moving party applies its transform's own factor.

On the ``spdz`` backend the histogram stays on shares and only these reach the moving
party (:mod:`ppir_itk.backends.spdz_mattes`); ``clear`` is ITK's arithmetic in the clear.

Examples
--------
::

    metric = PrivateMattesMutualInformationImageToImageMetric(
        "spdz", session=session, number_of_histogram_bins=32
    )
    metric.SetMovingImage(moving)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppir_itk.backends import ParzenFields
from ppir_itk.errors import InputError
from ppir_itk.masks import pixels_inside
from ppir_itk.metric import Evaluation, PrivateImageToImageMetric
from ppir_itk.metric_kinds import (
    DEFAULT_HISTOGRAM_BINS,
    MATTES,
    MetricSettings,
)
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.parzen import (
    IntensityBins,
    check_histogram_bins,
    gradient_factor,
    has_enough_overlap,
    moving_parzen,
)
from ppir_itk.points import PointSet
from ppir_itk.protocol.session import Session
from ppir_itk.pyramid import Level


class PrivateMattesMutualInformationImageToImageMetric(PrivateImageToImageMetric):
    """Minus the Mattes mutual information of the warped moving image and the fixed image,
    privately (ITK's ``MattesMutualInformationImageToImageMetricv4``).

    Parameters
    ----------
    backend, session, backend_parameters, bending_energy_weight
        As :class:`~ppir_itk.metric.PrivateImageToImageMetric`'s; the backend is ``spdz``
        (private) or ``clear`` (NOT private).
    number_of_histogram_bins : int
        ``B``, 5 to 256 (default 32, as ANTs and elastix; ITK's is 50), 4 of which pad the
        cubic window at the two ends of each intensity range.
    use_moving_image_gradient_filter : bool
        As every metric's (:class:`~ppir_itk.metric.PrivateImageToImageMetric`). On the
        MNI152 3-D pair central differences end nearer the truth (0.145 against 0.288
        voxels, docs/results.md), the filter nearer in 2-D (0.054 against 0.069 mm).
    """

    def __init__(
        self,
        backend: str | MovingPartySession = "spdz",
        session: Session | None = None,
        *,
        number_of_histogram_bins: int = DEFAULT_HISTOGRAM_BINS,
        backend_parameters: dict[str, str] | None = None,
        bending_energy_weight: float = 0.0,
        use_moving_image_gradient_filter: bool = False,
    ) -> None:
        self._settings = MetricSettings(MATTES, check_histogram_bins(number_of_histogram_bins))
        super().__init__(
            backend,
            session,
            backend_parameters=backend_parameters,
            bending_energy_weight=bending_energy_weight,
            use_moving_image_gradient_filter=use_moving_image_gradient_filter,
        )
        self._moving_bins: IntensityBins | None = None

    @property
    def settings(self) -> MetricSettings:
        return self._settings

    def _bending_energy_scale(self) -> float:
        return 1.0  # mutual information has no intensity unit

    def GetNumberOfHistogramBins(self) -> int:  # noqa: N802
        return self._settings.histogram_bins

    def initialize_level(self, level_index: int, level: Level, sampling: Any) -> PointSet:
        points = super().initialize_level(level_index, level, sampling)
        # ITK's moving range: the moving image the metric is given at this level (its pixels
        # inside the moving mask, with one).
        self._moving_bins = IntensityBins.from_values(
            pixels_inside(self._require_level().moving, self._moving_mask, name="moving mask"),
            self._settings.histogram_bins,
        )
        return points

    def evaluate(self) -> Evaluation:
        """Value (minus the mutual information) and its gradient; no Hessian."""
        values, gradient, valid, n_warped = self._overlap()
        bins = self._moving_bins
        assert bins is not None, "initialize_level() sets the moving bins"
        # ITK skips a moving value outside the level image's range (linear interpolation
        # stays inside it, up to rounding): the windows count only the values inside.
        window = moving_parzen(values, valid, bins)
        n_valid = window.count
        points = self._require_level().points.size
        self._check_enough_overlap(n_valid, points)
        if n_valid < n_warped:  # the warp zeroed the gradient where W(x) is not valid only
            gradient = np.where(window.inside[:, None], gradient, 0.0)
        jacobian = self._jacobian()
        term = self.moving_party.histogram_term(
            ParzenFields(
                window.first_bin,
                window.weights,
                window.derivatives,
                window.inside,
                jacobian.parameter_gradient(gradient),
            )
        )
        # The moving marginal's entropy is the moving party's own (its windows'), or, with
        # the fixed party's mask, over the points inside it (the backend's).
        negative_entropy = window.negative_entropy
        if term.masked is not None:
            n_valid = term.masked.count
            self._check_enough_overlap(n_valid, points)
            negative_entropy = term.masked.moving_negative_entropy
        information = points / n_valid * term.entropy_difference - negative_entropy
        derivative = gradient_factor(n_valid) * jacobian.from_moments(term.moments)
        value, derivative, _ = self._penalized(jacobian, -information, derivative, None)
        return Evaluation(
            value=value, gradient=derivative, hessian=None, number_of_valid_points=n_valid
        )

    def _check_enough_overlap(self, count: int, points: int) -> None:
        if not has_enough_overlap(count, points):
            raise InputError(
                f"only {count} of the level's {points} points {self._within_masks}map inside "
                "the moving image under the current transform; Mattes needs a sixteenth of "
                "them, as ITK (try the 'geometry' or 'moments' initialiser)"
            )
