"""The ``clear`` backend: NOT PRIVATE. The fixed party sends J in the clear.

The insecure baseline of the paper's "Clear" rows and of the tests. Once per
level the fixed party sends its level image's values on the agreed point set
(one ``ClearLevel`` message); the moving party then computes the
joint term alone, with no message per iteration. Every run with this backend
warns, and its report says the fixed image was disclosed.
"""

from __future__ import annotations

import warnings

import numpy as np

from ppir_itk.backends.base import (
    LINEAR_SUMS_METRICS,
    FixedSide,
    JointTerm,
    JointTermBackend,
    MovingChannel,
    MovingFields,
    wants_fixed_sum,
)
from ppir_itk.disclosure import Disclosure, Message, ProtocolTable
from ppir_itk.metric_kinds import MEAN_SQUARES_SETTINGS, MetricSettings
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
            "J on the agreed points (float64)",
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
    ),
)


class InsecureBackendWarning(UserWarning):
    """The run discloses a party's image."""


class ClearBackend(JointTermBackend):
    """Joint term computed by the moving party on the fixed image it received in the clear."""

    name = "clear"
    protocol = "clear"
    scheme = "none: NOT private"
    private = False
    table = TABLE
    bspline = True
    metrics = LINEAR_SUMS_METRICS

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
            stacklevel=2,
        )
        self._fixed_values: np.ndarray | None = None

    def _on_points(self, points: PointSet) -> None:
        reply = self.channel.exchange(pb.BackendMessage(clear_level_request=pb.ClearLevelRequest()))
        if reply.WhichOneof("body") != "clear_level":
            raise ProtocolError("the fixed party's clear values are missing")
        values = array_from_pb(reply.clear_level.fixed_values, max_elements=points.size)
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
    """Sends J on the agreed points when asked; nothing per iteration."""

    table = TABLE
    bspline = True
    metrics = LINEAR_SUMS_METRICS

    def on_points(self, values: np.ndarray, points: PointSet) -> None:
        self._values = values

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        if message.WhichOneof("body") != "clear_level_request":
            raise ProtocolError(f"'{message.WhichOneof('body')}' is not a clear-backend request")
        return pb.BackendMessage(clear_level=pb.ClearLevel(fixed_values=array_to_pb(self._values)))
