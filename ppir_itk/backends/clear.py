"""The ``clear`` backend: NOT PRIVATE. The fixed party sends J in the clear.

The insecure baseline of the paper's "Clear" rows and of the tests. Once per
level the fixed party sends its level image's values on the agreed point set
(one ``ClearLevel`` message; for Mattes mutual information, each point's fixed
bin instead, :func:`ppir_itk.parzen.fixed_bins`); the moving party then computes
the joint term alone, with no message per iteration: Clear Mattes is
:mod:`ppir_itk.parzen`'s reference arithmetic. Every run with this backend warns,
and its report says the fixed image was disclosed.

With a fixed mask the level's message carries the mask at the points too (NOT private
either), and the moving party computes the masked sums of ``backends/base.py``
(:class:`~ppir_itk.backends.base.MaskedSums`, :class:`~ppir_itk.backends.base.MaskedHistogram`)
from their definitions: the reference every private backend's masked result must match.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np

from ppir_itk.backends.base import (
    LINEAR_SUMS_METRICS,
    FixedSide,
    HistogramBackend,
    HistogramTerm,
    JointTerm,
    JointTermBackend,
    MaskedHistogram,
    MaskedSums,
    MovingChannel,
    MovingFields,
    MovingHalf,
    ParzenFields,
    wants_fixed_sum,
)
from ppir_itk.disclosure import Disclosure, Message, ProtocolTable
from ppir_itk.metric_kinds import MATTES, MEAN_SQUARES_SETTINGS, MetricSettings
from ppir_itk.parzen import (
    CLOSE_TO_ZERO,
    entropy_difference,
    joint_histogram,
    log_ratio,
    sample_weights,
)
from ppir_itk.points import PointSet
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError, array_from_pb, array_to_pb
from ppir_itk.roles import FIXED_PARTY, MOVING_PARTY

TABLE = ProtocolTable(
    title="clear (NOT private)",
    messages=(
        Message("clear_level_request", MOVING_PARTY, "once per level", "nothing", "nothing"),
        Message(
            "clear_level",
            FIXED_PARTY,
            "once per level",
            "J on the agreed points (float64), or their fixed bins (Mattes); with a fixed "
            "mask, the mask at the points",
            "the fixed image itself (and its mask): NOT PRIVATE",
        ),
    ),
    disclosures=(
        Disclosure(
            "fixed_image",
            MOVING_PARTY,
            "the fixed image itself, in the clear",
            "pixel values",
            "level",
        ),
        Disclosure(
            "fixed_bins",
            MOVING_PARTY,
            "the fixed image's histogram bin at every point, in the clear",
            "bins",
            "level",
        ),
        Disclosure(
            "fixed_mask",
            MOVING_PARTY,
            "the fixed party's mask at every point, in the clear",
            "points",
            "level",
        ),
    ),
)


class InsecureBackendWarning(UserWarning):
    """The run discloses a party's image."""


def _clear_level(channel: MovingChannel) -> pb.ClearLevel:
    """The fixed party's one message of the level."""
    reply = channel.exchange(pb.BackendMessage(clear_level_request=pb.ClearLevelRequest()))
    if reply.WhichOneof("body") != "clear_level":
        raise ProtocolError("the fixed party's clear values are missing")
    return reply.clear_level


def _fixed_mask(half: MovingHalf, level: pb.ClearLevel, points: PointSet) -> np.ndarray | None:
    """The fixed mask at the points (uint8, 1 inside) when the fixed party has one."""
    if not half.fixed_masked:
        return None
    mask = array_from_pb(level.fixed_mask, max_elements=points.size)
    if mask.shape != (points.size,) or mask.dtype != np.uint8 or np.any(mask > 1):
        raise ProtocolError("the fixed party's clear mask does not fit the point set")
    half.received.add("fixed_mask", mask.size)
    return mask


class _ClearHalf(MovingHalf):
    """What both clear moving halves are: NOT private, and they say so when made."""

    name = "clear"
    protocol = "clear"
    scheme = "none: NOT private"
    private = False
    table = TABLE
    bspline = True

    def __init__(
        self,
        channel: MovingChannel,
        parameters: dict[str, str] | None = None,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        super().__init__(channel, parameters, metric)
        warnings.warn(
            "backend 'clear' is NOT private: the fixed party sends its image in the clear",
            InsecureBackendWarning,
            stacklevel=4,
        )


class ClearBackend(_ClearHalf, JointTermBackend):
    """Joint term computed by the moving party on the fixed image it received in the clear."""

    metrics = LINEAR_SUMS_METRICS
    fixed_mask_metrics = LINEAR_SUMS_METRICS
    _fixed_values: np.ndarray | None = None
    _mask: np.ndarray | None = None  # the fixed mask at the points (float64), or None

    def _on_points(self, points: PointSet) -> None:
        level = _clear_level(self.channel)
        values = array_from_pb(level.fixed_values, max_elements=points.size)
        if values.shape != (points.size,) or values.dtype != np.float64:
            raise ProtocolError("the fixed party's clear values do not fit the point set")
        self.received.add("fixed_image", values.size)
        mask = _fixed_mask(self, level, points)
        self._mask = None if mask is None else mask.astype(np.float64)
        # With a mask, every sum of J is one of M J (MaskedSums).
        self._fixed_values = values if self._mask is None else values * self._mask

    def _joint_term(self, fields: MovingFields) -> JointTerm:
        fixed = self._fixed_values
        assert fixed is not None, "joint_term() runs only after on_points() received J"
        valid = fields.valid.astype(np.float64)
        linear_map = self.level_points.linear_map
        correlation = wants_fixed_sum(self.metric)
        masked = None
        if self._mask is not None:
            inside = valid * self._mask
            warped = fields.warped * self._mask
            masked = MaskedSums(
                count=float(inside.sum()),
                warped_squared=float(np.dot(warped, fields.warped)),
                warped_moments=linear_map.moments(fields.gradient, warped),
                warped_sum=float(warped.sum()) if correlation else None,
                gradient_moments=linear_map.moments(fields.gradient, inside)
                if correlation
                else None,
            )
        return JointTerm(
            moments=linear_map.moments(fields.gradient, fixed),
            warped_dot_fixed=float(np.dot(fields.warped, fixed)),
            fixed_squared=float(np.dot(valid, fixed * fixed)),
            fixed_sum=float(np.dot(valid, fixed)) if correlation else None,
            masked=masked,
        )


class ClearFixedSide(FixedSide):
    """Sends J on the agreed points when asked (for Mattes, their fixed bins); nothing per
    iteration."""

    table = TABLE
    bspline = True
    metrics: ClassVar[tuple[str, ...]] = LINEAR_SUMS_METRICS
    fixed_mask_metrics: ClassVar[tuple[str, ...]] = LINEAR_SUMS_METRICS

    def on_points(
        self, values: np.ndarray, points: PointSet, fixed_mask: np.ndarray | None = None
    ) -> None:
        self._values = values
        self._mask = fixed_mask

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        if message.WhichOneof("body") != "clear_level_request":
            raise ProtocolError(f"'{message.WhichOneof('body')}' is not a clear-backend request")
        if self.metric.name == MATTES:
            level = pb.ClearLevel(fixed_bins=array_to_pb(self._values))
        else:
            level = pb.ClearLevel(fixed_values=array_to_pb(self._values))
        if self._mask is not None:  # NOT private: the mask goes with J
            level.fixed_mask.CopyFrom(array_to_pb(self._mask))
        return pb.BackendMessage(clear_level=level)


class ClearHistogramFixedSide(ClearFixedSide):
    """:class:`ClearFixedSide` for Mattes: its values are the points' fixed bins."""

    metrics = (MATTES,)
    fixed_mask_metrics = (MATTES,)


class ClearHistogramBackend(_ClearHalf, HistogramBackend):
    """Mattes mutual information computed by the moving party on the fixed bins it received
    in the clear: :mod:`ppir_itk.parzen`'s arithmetic, ITK's (the reference for the private
    backends)."""

    metrics = (MATTES,)
    fixed_mask_metrics = (MATTES,)
    _fixed_bins: np.ndarray | None = None
    _mask: np.ndarray | None = None  # the fixed mask at the points (uint8), or None

    def _on_points(self, points: PointSet) -> None:
        level = _clear_level(self.channel)
        bins = array_from_pb(level.fixed_bins, max_elements=points.size)
        count = self.metric.histogram_bins
        if (
            bins.shape != (points.size,)
            or bins.dtype != np.int64
            or (bins.size and not 0 <= bins.min() <= bins.max() < count)
        ):
            raise ProtocolError("the fixed party's clear bins do not fit the point set")
        self.received.add("fixed_bins", bins.size)
        self._fixed_bins = bins
        self._mask = _fixed_mask(self, level, points)

    def _histogram_term(self, fields: ParzenFields) -> HistogramTerm:
        fixed_bin = self._fixed_bins
        assert fixed_bin is not None, "histogram_term() runs only after on_points()"
        points = self.level_points
        # A point outside the fixed mask drops out as if its moving window were not valid.
        valid = fields.valid if self._mask is None else fields.valid & self._mask
        histogram = joint_histogram(
            fixed_bin, fields.first_bin, fields.weights, valid, self.metric.histogram_bins
        )
        weights = sample_weights(
            log_ratio(histogram), fixed_bin, fields.first_bin, fields.derivatives
        )
        masked = None
        if self._mask is not None:
            weights = weights * self._mask
            count = int(np.count_nonzero(valid))
            masked = MaskedHistogram(
                count, _moving_negative_entropy(fields, valid, count, self.metric.histogram_bins)
            )
        return HistogramTerm(
            entropy_difference=entropy_difference(histogram / points.size),
            moments=points.linear_map.moments(fields.gradient, weights),
            masked=masked,
        )


def _moving_negative_entropy(
    fields: ParzenFields, valid: np.ndarray, count: int, bins: int
) -> float:
    """``sum_j p_m(j) log p_m(j)`` of the moving marginal over the ``valid`` points (ITK's,
    :class:`~ppir_itk.parzen.MovingParzen`'s ``negative_entropy``): each window's weights
    summed into its 4 bins, over ``count``; bins at most ITK's eps add nothing."""
    marginal = np.zeros(bins)
    rows = valid.astype(bool)
    columns = fields.first_bin[rows, None] + np.arange(4)
    np.add.at(marginal, columns.ravel(), fields.weights[rows].ravel())
    probability = marginal / max(count, 1)
    kept = probability[probability > CLOSE_TO_ZERO]
    return float(np.sum(kept * np.log(kept)))
