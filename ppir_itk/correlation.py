"""``PrivateCorrelationImageToImageMetric``: ITK's normalised cross correlation, split
between two parties.

ITK's ``CorrelationImageToImageMetricv4``, over the valid points V (``W(x)`` inside
the moving image; ``n = |V|``), with ``f = J - mean_V J`` and ``m = I_w - mean_V I_w``
(its helper threader takes the two means first):

- ``fm = sum_V f m``, ``f2 = sum_V f^2``, ``m2 = sum_V m^2``;
- value ``-fm^2 / (f2 m2)``: the NEGATIVE of the squared correlation, in [-1, 0], -1
  for any linear relation between the intensities (of either sign); 0 (and a zero
  derivative) when ``f2 m2`` is at most the machine epsilon (a flat image);
- ``GetDerivative``: ``2 fm / (f2 m2) (fdm - fm / m2 mdm)`` with
  ``fdm = sum_V f S``, ``mdm = sum_V m S``, ``S = g . dW/dtheta``: the negative of
  ``d value / d theta`` (the means' own derivatives drop out: ``sum_V f = sum_V m = 0``).

Every sum that mixes the images is linear in J, so the split is mean squares' with one
more sum (:mod:`ppir_itk.backends.base`): the backend gives ``I_w . J``, ``sum_V J^2``,
``R = S^T J`` (its moments) and ``sum_V J``; the moving party has ``sum I_w``,
``sum I_w^2``, ``S^T I_w`` and ``S^T m`` itself. Then, with ``a = sum_V J / n`` and
``b = sum_V I_w / n``::

    fm = I_w . J - n a b     f2 = sum_V J^2 - n a^2     m2 = sum I_w^2 - n b^2
    fdm = S^T J - a S^T m    mdm = S^T I_w - b S^T m

The metric is not least squares (no Hessian): it registers with a gradient-descent
optimizer. Linear transforms and B-splines; a B-spline's bending energy enters without
``var(I)`` (the value has no intensity unit).

Examples
--------
Against a fixed party's ``ppir serve`` that serves correlation::

    session = ppir_itk.connect("fixed-site:7443", tls=ppir_itk.TLS.for_role("pki", "moving-party"))
    metric = PrivateCorrelationImageToImageMetric(backend="he", session=session)
    metric.SetMovingImage(moving)
"""

from __future__ import annotations

import numpy as np

from ppir_itk.backends import MovingFields
from ppir_itk.metric import Evaluation, PrivateImageToImageMetric
from ppir_itk.metric_kinds import CORRELATION, MetricSettings

# ITK's guard: NumericTraits<double>::epsilon(), below which f2 m2 counts as zero.
EPSILON = float(np.finfo(np.float64).eps)


class PrivateCorrelationImageToImageMetric(PrivateImageToImageMetric):
    """Normalised cross correlation between the warped moving image and the fixed image,
    privately (ITK's ``CorrelationImageToImageMetricv4``; parameters:
    :class:`~ppir_itk.metric.PrivateImageToImageMetric`)."""

    @property
    def settings(self) -> MetricSettings:
        return MetricSettings(CORRELATION)

    def _bending_energy_scale(self) -> float:
        return 1.0  # the value is a squared correlation: no intensity unit

    def evaluate(self) -> Evaluation:
        """Value and gradient (``d value / d theta``; no Hessian) at the current
        parameters."""
        values, gradient, valid, n_valid = self._overlap()
        jacobian = self._jacobian()
        gradient = jacobian.parameter_gradient(gradient)
        joint = self.moving_party.joint_term(
            MovingFields(gradient, values, valid, jacobian.coefficients)
        )
        assert joint.moments is not None and joint.fixed_sum is not None, (
            "a backend that computes correlation returns the moments and the sum of J"
        )
        bits = joint.basis_weight_bits
        masked = joint.masked
        # The map's moments of g m and g I_w: the moving party's own (computed only when the
        # value is not flat), or with a fixed mask the backend's, of g m M and g I_w M.
        steepest: np.ndarray | None = None
        own: np.ndarray | None = None
        if masked is None:
            count = n_valid
            # Not np.dot: BLAS would start threads that spin against the other party's process.
            warped_sum, warped_squared = float(values.sum()), float(np.square(values).sum())
        else:  # the points inside the fixed party's mask too: its sums of I_w M and g M
            assert masked.warped_sum is not None and masked.gradient_moments is not None, (
                "a backend that computes masked correlation returns its two extra sums"
            )
            count = self._masked_count(masked.count)
            warped_sum, warped_squared = masked.warped_sum, masked.warped_squared
            steepest, own = masked.gradient_moments, masked.warped_moments
        fixed_mean = joint.fixed_sum / count
        warped_mean = warped_sum / count
        fm = joint.warped_dot_fixed - warped_sum * fixed_mean
        f2 = joint.fixed_squared - joint.fixed_sum * fixed_mean
        m2 = warped_squared - warped_sum * warped_mean
        value, derivative = 0.0, np.zeros(self.GetNumberOfParameters())
        if f2 * m2 > EPSILON:
            if steepest is None or own is None:
                rounded = joint.own_gradient(gradient)
                steepest = jacobian.moments(rounded, valid.astype(np.float64), bits)
                own = jacobian.moments(rounded, values, bits)
            steepest_sum = jacobian.from_moments(steepest)
            fdm = jacobian.from_moments(joint.moments) - fixed_mean * steepest_sum
            mdm = jacobian.from_moments(own) - warped_mean * steepest_sum
            value = -fm * fm / (f2 * m2)
            derivative = -2.0 * fm / (f2 * m2) * (fdm - fm / m2 * mdm)
        value, derivative, _ = self._penalized(jacobian, value, derivative, None)
        return Evaluation(
            value=value, gradient=derivative, hessian=None, number_of_valid_points=count
        )
