"""ITK's Mattes mutual information, as functions of the samples (C kernels:
``src/ppir_parzen.c``, docs/kernels.md).

This is the arithmetic of ``itk::MattesMutualInformationImageToImageMetricv4``
(ITK 5.4: the metric's ``Initialize`` and ``ComputeResults``, its
``GetValueAndDerivativeThreader::ProcessPoint``, ``BSplineKernelFunction<3>``
and ``BSplineDerivativeKernelFunction<3>``), split so that each party can
compute its own half: the fixed party its fixed bins, the moving party its
Parzen windows, and only the joint histogram and the per-sample weights mix
the two.

Intensity ranges
    ``B`` bins (``check_histogram_bins``: ITK clamps its count to at least 5),
    padding ``P = 2``. Each image's range is the minimum and maximum over the
    **whole image given to the metric** (its buffered region; only the voxels
    inside the image's mask when the metric has one): not over the sample
    points and not over the overlap. ``ImageRegistrationMethodv4`` hands the
    metric, at each level, the fixed and the moving image smoothed with the
    level's Gaussian (``SmoothingRecursiveGaussianImageFilter``, or the
    original images when the level's sigma is 0) at their FULL resolution;
    only the virtual domain (the grid of points the metric sums over) is
    shrunk. So a level's range is that of the smoothed full-resolution image,
    also under sampling (``IntensityBins.from_values`` of those voxels).

    ``bin_size = (max - min) / (B - 2 P)``, ``normalized_minimum = min /
    bin_size - P`` and a value's window position is ``term(v) = v / bin_size -
    normalized_minimum`` (``(v - min) / bin_size + P``, in ITK's order of
    operations), in ``[P, B - P]`` for values in the range.

Windows
    Fixed image, zero order (a box): bin ``clip(floor(term), P, B - P - 1)``.
    Moving image, cubic B-spline ``beta3``: the 4 bins from ``first =
    clip(floor(term), P, B - P - 1) - 1``, bin ``first + k`` with weight
    ``w_k = beta3(first + k - term)`` (they sum to 1; at the range's maximum the
    clip makes the first weight 0). A moving sample outside ``[min, max]``
    is skipped by ITK and not counted (``MovingParzen.inside``); fixed
    values are always inside their image's range.

Value
    ``h`` is the joint histogram (rows: fixed bins, columns: moving bins) of
    the ``N`` valid samples; ``p = h / sum(h)``, ``p_m(j) = sum_i p(i, j)``,
    ``p_f(i) = sum_j p(i, j)`` (ITK counts the fixed samples per bin and
    divides by their number: the same numbers, to rounding). With ITK's
    ``closeToZero = DBL_EPSILON``::

        MI = sum over p(i, j) > eps, p_m(j) > eps, p_f(i) > eps of
             p(i, j) (log(p(i, j) / p_m(j)) - log p_f(i))

    and ITK's metric value is ``-MI``. ITK's ``PRatio`` is ``R(i, j) =
    log(p(i, j) / p_m(j))`` where ``p(i, j) > eps`` and ``p_m(j) > eps``, else 0
    (``log_ratio``).

Derivative (a global transform: linear, or any whose Jacobian is dense)
    With ``M`` the moving image, ``W`` the transform, ``f_i`` sample i's fixed
    bin and ``s_i = sum_k R(f_i, first_i + k) dw_k/dM`` (``sample_weights``;
    ``dw_k/dM = -beta3'(first + k - term) / moving_bin_size``)::

        d(-MI)/dtheta = c * sum_i s_i (grad M(W(x_i)) . dW/dtheta(x_i)),
        c = -1 / N                                       (gradient_factor)

    ITK builds this as ``sum_ij R(i, j) dp(i, j)/dtheta``, with ``beta3'`` and
    the factor ``-1 / (moving_bin_size N)`` in ``dp/dtheta``: the exact
    derivative of MI while the set of valid samples stays the same (``p_f``
    does not move and the marginals' terms sum to zero, as in Thevenaz and
    Unser). ITK v4's ``GetDerivative`` returns the NEGATIVE
    gradient of its value, ``-c * sum_i ...``: the direction that lowers the
    value, so it points up the mutual information. ``grad M`` is the moving
    image's gradient in physical space where ITK's metric takes it: by default
    (``UseMovingImageGradientFilter``) the image of
    ``GradientRecursiveGaussianImageFilter`` with sigma the largest moving
    spacing, linearly interpolated at ``W(x)``.

ITK also refuses an evaluation with fewer than ``number_of_points // 16`` valid
samples (``has_enough_overlap``) and a joint histogram that sums to zero.

Examples
--------
>>> fixed = np.array([0.0, 1.0, 2.0, 3.0])
>>> moving = np.array([3.0, 2.0, 0.0, 1.0])
>>> fixed_range = IntensityBins.from_values(fixed, 8)
>>> moving_range = IntensityBins.from_values(moving, 8)
>>> fixed_bins(fixed, fixed_range).tolist()
[2, 3, 4, 5]
>>> windows = moving_parzen(moving, np.ones(4, np.uint8), moving_range)
>>> windows.first_bin.tolist(), windows.count
([4, 3, 1, 2], 4)
>>> histogram = joint_histogram(
...     fixed_bins(fixed, fixed_range), windows.first_bin, windows.weights, windows.inside, 8
... )
>>> round(entropy_difference(histogram / 4) - windows.negative_entropy, 6)  # MI (n = N = 4)
0.952742
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ppir_itk import _kernels
from ppir_itk.errors import InputError

MIN_BINS, MAX_BINS = 5, 256
PADDING = 2  # bins on each side of the range (ITK's `padding`)
CLOSE_TO_ZERO = float(np.finfo(np.float64).eps)  # ITK's `closeToZero`


def check_histogram_bins(count: object) -> int:
    """The number of histogram bins: a whole number from 5 (ITK's least) to 256."""
    if (
        isinstance(count, numbers.Real)
        and not isinstance(count, bool)
        and float(count).is_integer()
        and MIN_BINS <= float(count) <= MAX_BINS
    ):
        return int(float(count))
    raise InputError(f"histogram bins {count} must be a whole number from {MIN_BINS} to {MAX_BINS}")


@dataclass(frozen=True)
class IntensityBins:
    """ITK's ``count`` bins over one image's intensity range ``[minimum, maximum]``."""

    count: int
    minimum: float
    maximum: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", check_histogram_bins(self.count))
        if not np.isfinite(self.minimum) or not np.isfinite(self.maximum):
            raise ValueError(f"intensity range [{self.minimum}, {self.maximum}] is not finite")
        if not self.maximum > self.minimum:  # a constant image has no bins (refused earlier)
            raise ValueError(f"intensity range [{self.minimum}, {self.maximum}] is empty")

    @classmethod
    def from_values(cls, values: npt.ArrayLike, count: int) -> IntensityBins:
        """The bins of an image from its voxels (all of them, or those in its mask)."""
        array = np.asarray(values)
        return cls(count, float(array.min()), float(array.max()))

    @property
    def bin_size(self) -> float:
        return (self.maximum - self.minimum) / (self.count - 2 * PADDING)

    @property
    def normalized_minimum(self) -> float:
        return self.minimum / self.bin_size - PADDING

    def term(self, values: npt.ArrayLike) -> np.ndarray:
        """Each value's continuous window position: ``P`` at the minimum, ``B - P`` at the max."""
        return np.asarray(values, dtype=np.float64) / self.bin_size - self.normalized_minimum


def fixed_bins(values: npt.ArrayLike, bins: IntensityBins) -> np.ndarray:
    """Each fixed value's bin (zero-order window): ``clip(floor(term), P, B - P - 1)``,
    shape (n,) int64."""
    centre = np.clip(np.floor(bins.term(values)), PADDING, bins.count - PADDING - 1)
    return centre.astype(np.int64)


@dataclass(frozen=True)
class MovingParzen:
    """The cubic B-spline windows of n moving values, and which of them ITK counts.

    ``inside`` (n,) uint8: valid and in the range ``[minimum, maximum]``; ``count``: how
    many; ``first_bin`` (n,) int64: the first of the 4 bins each window touches (``P - 1``,
    the minimum's window, where not inside); ``weights`` (n, 4): ``beta3`` at those bins
    (each inside row sums to 1; zeros where not inside); ``derivatives`` (n, 4): d weight /
    d moving value (``1 / bin_size`` included; zeros where not inside);
    ``negative_entropy``: ``sum_j p_m(j) log p_m(j)`` of the moving marginal ``p_m`` (the
    inside weights' sum per bin over ``count``), over ``p_m(j) > eps``.
    """

    first_bin: np.ndarray
    weights: np.ndarray
    derivatives: np.ndarray
    inside: np.ndarray
    count: int
    negative_entropy: float


def moving_parzen(values: np.ndarray, valid: np.ndarray, bins: IntensityBins) -> MovingParzen:
    """The cubic windows of moving values (float64, n) where ``valid`` (uint8, n)."""
    return MovingParzen(
        *_kernels.parzen_windows(
            values,
            valid,
            bins.count,
            bins.minimum,
            bins.maximum,
            bins.bin_size,
            bins.normalized_minimum,
        )
    )


def joint_histogram(
    fixed_bin: np.ndarray,
    first_bin: np.ndarray,
    weights: np.ndarray,
    valid: np.ndarray,
    count: int,
) -> np.ndarray:
    """(B, B) sums of the valid samples' window weights: rows fixed bins, columns moving bins
    (int64 bins, (n, 4) weights, uint8 ``valid``)."""
    return _kernels.parzen_joint_histogram(fixed_bin, first_bin, weights, valid, count)


def log_ratio(histogram: np.ndarray) -> np.ndarray:
    """ITK's PRatio: ``log(p(i, j) / p_m(j))`` where both exceed eps, else 0; shape (B, B)."""
    ratio, total = _kernels.parzen_log_ratio(histogram)
    if total < CLOSE_TO_ZERO:
        raise ValueError("the joint histogram is empty: no valid sample")
    return ratio


def entropy_difference(fractions: np.ndarray) -> float:
    """``sum x log x - sum r log r`` over the entries of ``x``, a joint histogram divided by
    any constant (``h / n``), and its row sums ``r``; entries of ``x <= eps`` add nothing.

    It is the part of MI that needs both images
    (:class:`~ppir_itk.backends.base.HistogramTerm`): with ``N`` valid samples,
    ``MI = (n / N) entropy_difference(h / n) - sum_j p_m(j) log p_m(j)``, the last sum
    the moving party's own.
    """
    return float(_kernels.parzen_entropy_difference(fractions))


def sample_weights(
    ratio: np.ndarray, fixed_bin: np.ndarray, first_bin: np.ndarray, derivatives: np.ndarray
) -> np.ndarray:
    """``s_i = sum_k ratio[fixed_bin_i, first_bin_i + k] derivatives[i, k]``, shape (n,).

    A sample whose derivatives are zeros (not inside) gets 0.
    """
    return _kernels.parzen_sample_weights(ratio, fixed_bin, first_bin, derivatives)


def gradient_factor(number_of_valid_points: int) -> float:
    """``c`` of ``d(-MI)/dtheta = c sum_i s_i (grad M . dW/dtheta)``: ``-1 / N``.

    ITK's ``GetDerivative`` is ``-c sum_i ...`` (v4 returns the negative gradient).
    """
    return -1.0 / number_of_valid_points


def has_enough_overlap(number_of_valid_points: int, number_of_points: int) -> bool:
    """ITK's rule: at least ``number_of_points // 16`` samples valid, or it refuses."""
    return number_of_valid_points >= number_of_points // 16
