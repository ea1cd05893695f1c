"""The ``clear`` backend: NOT PRIVATE. The fixed party sends J in the clear.

The insecure baseline of the paper's "Clear" rows and of the tests. Once per
level the fixed party sends its level image's values on the agreed point set
(one ``ClearLevel`` message; for Mattes mutual information, each point's fixed
bin instead, :func:`ppir_itk.parzen.fixed_bins`); the moving party then computes
the joint term alone, with no message per iteration: Clear Mattes is
:mod:`ppir_itk.parzen`'s reference arithmetic. Every run with this backend warns,
and its report says the fixed image was disclosed.
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
    MovingChannel,
    MovingFields,
    MovingHalf,
    ParzenFields,
    wants_fixed_sum,
)
from ppir_itk.disclosure import Disclosure, Message, ProtocolTable
from ppir_itk.metric_kinds import MATTES, MEAN_SQUARES_SETTINGS, MetricSettings
from ppir_itk.parzen import (
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
            "J on the agreed points (float64), or their fixed bins (Mattes)",
            "the fixed image itself: NOT PRIVATE",
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
    _fixed_values: np.ndarray | None = None

    def _on_points(self, points: PointSet) -> None:
        values = array_from_pb(_clear_level(self.channel).fixed_values, max_elements=points.size)
        if values.shape != (points.size,) or values.dtype != np.float64:
            raise ProtocolError("the fixed party's clear values do not fit the point set")
        self.received.add("fixed_image", values.size)
        self._fixed_values = values

    def _joint_term(self, fields: MovingFields) -> JointTerm:
        fixed = self._fixed_values
        assert fixed is not None, "joint_term() runs only after on_points() received J"
        valid = fields.valid.astype(np.float64)
        return JointTerm(
            moments=self.level_points.linear_map.moments(fields.gradient, fixed),
            warped_dot_fixed=float(np.dot(fields.warped, fixed)),
            fixed_squared=float(np.dot(valid, fixed * fixed)),
            fixed_sum=float(np.dot(valid, fixed)) if wants_fixed_sum(self.metric) else None,
        )


class ClearFixedSide(FixedSide):
    """Sends J on the agreed points when asked (for Mattes, their fixed bins); nothing per
    iteration."""

    table = TABLE
    bspline = True
    metrics: ClassVar[tuple[str, ...]] = LINEAR_SUMS_METRICS

    def on_points(
        self, values: np.ndarray, points: PointSet, fixed_mask: np.ndarray | None = None
    ) -> None:
        self._values = values

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        if message.WhichOneof("body") != "clear_level_request":
            raise ProtocolError(f"'{message.WhichOneof('body')}' is not a clear-backend request")
        if self.metric.name == MATTES:
            level = pb.ClearLevel(fixed_bins=array_to_pb(self._values))
        else:
            level = pb.ClearLevel(fixed_values=array_to_pb(self._values))
        return pb.BackendMessage(clear_level=level)


class ClearHistogramFixedSide(ClearFixedSide):
    """:class:`ClearFixedSide` for Mattes: its values are the points' fixed bins."""

    metrics = (MATTES,)


class ClearHistogramBackend(_ClearHalf, HistogramBackend):
    """Mattes mutual information computed by the moving party on the fixed bins it received
    in the clear: :mod:`ppir_itk.parzen`'s arithmetic, ITK's (the reference for the private
    backends)."""

    metrics = (MATTES,)
    _fixed_bins: np.ndarray | None = None

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

    def _histogram_term(self, fields: ParzenFields) -> HistogramTerm:
        fixed_bin = self._fixed_bins
        assert fixed_bin is not None, "histogram_term() runs only after on_points()"
        points = self.level_points
        histogram = joint_histogram(
            fixed_bin, fields.first_bin, fields.weights, fields.valid, self.metric.histogram_bins
        )
        weights = sample_weights(
            log_ratio(histogram), fixed_bin, fields.first_bin, fields.derivatives
        )
        return HistogramTerm(
            entropy_difference=entropy_difference(histogram / points.size),
            moments=points.linear_map.moments(fields.gradient, weights),
        )
