"""ITK's Mattes mutual information, as vectorised NumPy functions of the samples.

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
    is skipped by ITK and not counted (``IntensityBins.contains``); fixed
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
>>> windows = moving_parzen(moving, moving_range)
>>> histogram = joint_histogram(fixed_bins(fixed, fixed_range), windows, np.ones(4, bool), 8)
>>> round(mutual_information(histogram), 6)
0.952742
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ppir_itk.errors import InputError

MIN_BINS, MAX_BINS = 5, 256
PADDING = 2  # bins on each side of the range (ITK's `padding`)
CLOSE_TO_ZERO = float(np.finfo(np.float64).eps)  # ITK's `closeToZero`
_OFFSETS = np.arange(4)  # the cubic window's 4 bins, from its first


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

    def contains(self, values: npt.ArrayLike) -> np.ndarray:
        """Which values lie in the range: ITK skips moving samples that do not."""
        array = np.asarray(values, dtype=np.float64)
        return (array >= self.minimum) & (array <= self.maximum)


def _centre_bins(values: npt.ArrayLike, bins: IntensityBins) -> tuple[np.ndarray, np.ndarray]:
    """(term, floor(term) clipped to [P, B - P - 1]): ITK's Parzen window index."""
    term = bins.term(values)
    centre = np.clip(np.floor(term), PADDING, bins.count - PADDING - 1)
    return term, centre.astype(np.int64)


def fixed_bins(values: npt.ArrayLike, bins: IntensityBins) -> np.ndarray:
    """Each fixed value's bin (zero-order window), shape (n,) int64."""
    return _centre_bins(values, bins)[1]


@dataclass(frozen=True)
class MovingParzen:
    """The cubic B-spline windows of n moving values.

    ``first_bin`` (n,) int64: the first of the 4 bins each window touches;
    ``weights`` (n, 4): ``beta3`` at those bins (each row sums to 1);
    ``derivatives`` (n, 4): d weight / d moving value (``1 / bin_size`` included).
    """

    first_bin: np.ndarray
    weights: np.ndarray
    derivatives: np.ndarray


def _cubic_bspline(u: np.ndarray) -> np.ndarray:
    """``beta3(u)``, as ITK's ``BSplineKernelFunction<3>``."""
    a = np.abs(u)
    a2 = a * a
    inner = (4.0 - 6.0 * a2 + 3.0 * a2 * a) / 6.0
    outer = (8.0 - 12.0 * a + 6.0 * a2 - a2 * a) / 6.0
    return np.where(a < 1.0, inner, np.where(a < 2.0, outer, 0.0))


def _cubic_bspline_derivative(u: np.ndarray) -> np.ndarray:
    """``beta3'(u)``, as ITK's ``BSplineDerivativeKernelFunction<3>`` (odd in u)."""
    a = np.abs(u)
    inner = -2.0 * a + 1.5 * a * a
    outer = -2.0 + 2.0 * a - 0.5 * a * a
    return np.sign(u) * np.where(a < 1.0, inner, np.where(a < 2.0, outer, 0.0))


def moving_parzen(values: npt.ArrayLike, bins: IntensityBins) -> MovingParzen:
    """The cubic windows of moving values (out-of-range values: see ``contains``)."""
    term, centre = _centre_bins(values, bins)
    first = centre - 1
    argument = (first - term)[:, None] + _OFFSETS  # ITK's movingImageParzenWindowArg
    weights = _cubic_bspline(argument)
    # w_k = beta3(first + k - term), term = v / bin_size - ...: dw_k/dv = -beta3' / bin_size.
    derivatives = _cubic_bspline_derivative(argument) * (-1.0 / bins.bin_size)
    return MovingParzen(first, weights, derivatives)


def joint_histogram(
    fixed_bin: np.ndarray, parzen: MovingParzen, valid: np.ndarray, count: int
) -> np.ndarray:
    """(B, B) sums of the valid samples' weights: rows fixed bins, columns moving bins."""
    keep = np.asarray(valid, dtype=bool)
    cells = (np.asarray(fixed_bin)[keep] * count + parzen.first_bin[keep])[:, None] + _OFFSETS
    flat = np.bincount(cells.ravel(), parzen.weights[keep].ravel(), minlength=count * count)
    return flat.reshape(count, count)


def _probabilities(histogram: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, p_f, R) of an unnormalised joint histogram; R = ITK's PRatio, 0 where ITK skips."""
    total = float(histogram.sum())
    if total < CLOSE_TO_ZERO:
        raise ValueError("the joint histogram is empty: no valid sample")
    p = histogram / total
    moving_marginal = p.sum(axis=0)
    used = (p > CLOSE_TO_ZERO) & (moving_marginal > CLOSE_TO_ZERO)[None, :]
    ratio = np.zeros_like(p)
    ratio[used] = np.log((p / np.where(used, moving_marginal, 1.0))[used])
    return p, p.sum(axis=1), ratio


def mutual_information(histogram: np.ndarray) -> float:
    """MI (>= 0) of an unnormalised joint histogram; ITK's metric value is ``-MI``."""
    p, fixed_marginal, ratio = _probabilities(histogram)
    # ITK adds p (R - log p_f) where p, p_m and p_f exceed eps; p_m >= p, so p > eps is
    # ITK's test on p and p_m.
    used = (p > CLOSE_TO_ZERO) & (fixed_marginal > CLOSE_TO_ZERO)[:, None]
    log_fixed = np.log(np.where(fixed_marginal > CLOSE_TO_ZERO, fixed_marginal, 1.0))
    return float(np.sum((p * (ratio - log_fixed[:, None]))[used]))


def entropy_difference(fractions: np.ndarray) -> float:
    """``sum x log x - sum r log r`` over the entries of ``x``, a joint histogram divided by
    any constant (``h / n``), and its row sums ``r``; entries of ``x <= eps`` add nothing.

    It is the part of MI that needs both images
    (:class:`~ppir_itk.backends.base.HistogramTerm`): with ``N`` valid samples,
    ``MI = (n / N) entropy_difference(h / n) - sum_j p_m(j) log p_m(j)``, the last sum
    the moving party's own.
    """
    rows = fractions.sum(axis=1)
    used, used_rows = fractions > CLOSE_TO_ZERO, rows > CLOSE_TO_ZERO
    return float(
        np.sum(fractions[used] * np.log(fractions[used]))
        - np.sum(rows[used_rows] * np.log(rows[used_rows]))
    )


def log_ratio(histogram: np.ndarray) -> np.ndarray:
    """ITK's PRatio: ``log(p(i, j) / p_m(j))`` where both exceed eps, else 0; shape (B, B)."""
    return _probabilities(histogram)[2]


def sample_weights(ratio: np.ndarray, fixed_bin: np.ndarray, parzen: MovingParzen) -> np.ndarray:
    """``s_i = sum_k ratio[fixed_bin_i, first_bin_i + k] derivatives[i, k]``, shape (n,).

    Invalid samples get a number too: leave them out of the sum (multiply by ``valid``).
    """
    columns = parzen.first_bin[:, None] + _OFFSETS
    rows = np.asarray(fixed_bin)[:, None]
    return np.sum(ratio[rows, columns] * parzen.derivatives, axis=1)


def gradient_factor(number_of_valid_points: int) -> float:
    """``c`` of ``d(-MI)/dtheta = c sum_i s_i (grad M . dW/dtheta)``: ``-1 / N``.

    ITK's ``GetDerivative`` is ``-c sum_i ...`` (v4 returns the negative gradient).
    """
    return -1.0 / number_of_valid_points


def has_enough_overlap(number_of_valid_points: int, number_of_points: int) -> bool:
    """ITK's rule: at least ``number_of_points // 16`` samples valid, or it refuses."""
    return number_of_valid_points >= number_of_points // 16
