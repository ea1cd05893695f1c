"""The ``clear`` backend: NOT PRIVATE. The fixed party sends J in the clear.

The insecure baseline of the paper's "Clear" rows and of the tests. Once per
level the fixed party sends its level image's values on the agreed point set
to the moving party, which then computes the joint term alone. Every run
with this backend warns, and its report says the fixed image was disclosed.
"""

from __future__ import annotations

import warnings

import numpy as np

from ppir_itk import _kernels
from ppir_itk.backends.base import JointTerm, JointTermBackend, MovingFields
from ppir_itk.fixed_party import FixedParty, PointSet
from ppir_itk.parallel import sum_chunks


class InsecureBackendWarning(UserWarning):
    """The run discloses a party's image."""


class ClearBackend(JointTermBackend):
    """Joint term computed by the moving party on the fixed image it received in the clear."""

    name = "clear"
    private = False

    def __init__(self, fixed_party: FixedParty) -> None:
        super().__init__(fixed_party)
        warnings.warn(
            "backend 'clear' is NOT private: the fixed party sends its image in the clear",
            InsecureBackendWarning,
            stacklevel=2,
        )
        self._fixed_values: np.ndarray | None = None
        self.disclosed_values = 0

    def _on_points(self, points: PointSet) -> None:
        # The one message of this backend: J on the point set, in the clear.
        with self.traffic.timing("fixed"):
            values = self._fixed_party.level_values()
        self.traffic.send("fixed", values.nbytes)
        self.disclosed_values += values.size
        self._fixed_values = values

    def _joint_term(self, fields: MovingFields) -> JointTerm:
        points = self.points
        fixed = self._fixed_values
        with self.traffic.timing("moving"):
            geometry = points.geometry

            def moments(start: int, stop: int, out: np.ndarray) -> None:
                _kernels.affine_moments(
                    geometry.size_array, geometry.index_to_physical, geometry.origin_array,
                    points.reference, points.indices, start, stop, fields.gradient, fixed, out,
                )

            dimension = geometry.dimension
            result = JointTerm(
                moments=sum_chunks(moments, points.size, (dimension, dimension + 1)),
                warped_dot_fixed=float(np.dot(fields.warped, fixed)),
                fixed_squared=float(np.dot(fields.valid.astype(np.float64), fixed * fixed)),
            )
        return result

    def disclosures(self) -> dict[str, list[str]]:
        told = super().disclosures()
        told["moving"].insert(
            0, f"the fixed image itself, in the clear: {self.disclosed_values} pixel values"
        )
        return told
