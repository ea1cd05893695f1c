"""The ``clear`` backend: NOT PRIVATE. The fixed party sends J in the clear.

The insecure baseline of the paper's "Clear" rows and of the tests. Once per
level the fixed party sends its level image's values on the agreed point set
(one ``clear.fixed_values`` message); the moving party then computes the
joint term alone, with no message per iteration. Every run with this backend
warns, and its report says the fixed image was disclosed.
"""

from __future__ import annotations

import warnings

import numpy as np

from ppir_itk.backends.base import FixedSide, JointTerm, JointTermBackend, MovingFields
from ppir_itk.points import PointSet
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError, array_from_pb, array_to_pb

FIXED_VALUES = "clear.fixed_values"


class InsecureBackendWarning(UserWarning):
    """The run discloses a party's image."""


class ClearBackend(JointTermBackend):
    """Joint term computed by the moving party on the fixed image it received in the clear."""

    name = "clear"
    private = False
    bspline = True

    def __init__(self, session, parameters=None) -> None:
        super().__init__(session, parameters)
        warnings.warn(
            "backend 'clear' is NOT private: the fixed party sends its image in the clear",
            InsecureBackendWarning,
            stacklevel=2,
        )
        self._fixed_values: np.ndarray | None = None
        self._received = 0

    def _on_points(self, points: PointSet) -> None:
        reply = self.session.request(
            pb.Envelope(backend=pb.BackendMessage(kind=FIXED_VALUES)), "backend")
        if reply.backend.kind != FIXED_VALUES or len(reply.backend.arrays) != 1:
            raise ProtocolError("the fixed party's clear values are missing")
        values = array_from_pb(reply.backend.arrays[0], max_elements=points.size)
        if values.shape != (points.size,) or values.dtype != np.float64:
            raise ProtocolError("the fixed party's clear values do not fit the point set")
        self._received += values.size
        self._fixed_values = values

    def _joint_term(self, fields: MovingFields) -> JointTerm:
        fixed = self._fixed_values
        return JointTerm(
            moments=self.points.linear_map.moments(fields.gradient, fixed),
            warped_dot_fixed=float(np.dot(fields.warped, fixed)),
            fixed_squared=float(np.dot(fields.valid.astype(np.float64), fixed * fixed)),
        )

    def learned(self) -> list[str]:
        return [f"the fixed image itself, in the clear: {self._received} pixel values",
                *super().learned()]


class ClearFixedSide(FixedSide):
    """Sends J on the agreed points when asked; nothing per iteration."""

    bspline = True

    def on_points(self, values: np.ndarray, points: PointSet) -> None:
        self._values = values

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        if message.kind != FIXED_VALUES:
            raise ProtocolError(f"'{message.kind[:40]}' is not a clear-backend message")
        return pb.BackendMessage(kind=FIXED_VALUES, arrays=[array_to_pb(self._values)])
