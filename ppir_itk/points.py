"""The points a level's joint term sums over, as both parties derive them.

A :class:`PointSet` is public to both parties: the level grid, the sample
indices (``None`` for the whole grid) and, for a B-spline transform, its
control grid. :func:`draw_points` turns a ``SelectPoints`` request into it the
same way on either side, so the parties never send the points themselves.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ppir_itk.image import GridGeometry
from ppir_itk.linear_map import PublicLinearMap, linear_map
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError, array_from_pb, geometry_from_pb
from ppir_itk.sampling import URS, Regular

MAX_CONTROL_POINTS = 1 << 22  # a B-spline grid's points: bounds the fixed party's memory
MAX_SPACING_RATIO = 1 << 20  # control grid vs level grid spacing: past it the map overflows
# How Hello names a sampling strategy -> the kind of points SelectPoints then asks for.
SAMPLING_KINDS = {
    "none": "all",
    "gms-hidden": "all",
    "urs": "urs",
    "regular": "regular",
    "gms-revealed": "revealed",
}


@dataclass(frozen=True)
class PointSet:
    """The fixed-grid points a level's joint term sums over (public to both parties).

    ``indices`` is ``None`` for the whole grid. ``reference`` is the point the
    affine basis ``phi(x) = (x - reference, 1)`` is centred on. ``control`` is
    a B-spline transform's control grid (its points' geometry), whose cubic
    B-spline basis then replaces the affine one.
    """

    geometry: GridGeometry
    indices: np.ndarray | None
    control: GridGeometry | None = None

    @property
    def size(self) -> int:
        return self.geometry.number_of_points if self.indices is None else int(self.indices.size)

    @functools.cached_property
    def reference(self) -> np.ndarray:
        """The grid's centre (computed once: every evaluation's Jacobian and map take it)."""
        return self.geometry.center()

    @functools.cached_property
    def linear_map(self) -> PublicLinearMap:
        """The joint term's public map on these points (one per point set: it caches)."""
        return linear_map(self)


def draw_points(
    geometry: GridGeometry, level: int, request: pb.SelectPoints, fraction: float, seed: int
) -> PointSet:
    """The point set a ``SelectPoints`` request stands for (either party computes it)."""
    control = None
    if request.HasField("control_grid"):
        control = geometry_from_pb(request.control_grid)
        # An exact count (GridGeometry's int64 product can wrap round to a small one), and
        # spacings not absurdly far from the level grid's (the index map would overflow).
        if (
            control.dimension != geometry.dimension
            or min(control.size) < 4
            or math.prod(control.size) > MAX_CONTROL_POINTS
            or min(control.spacing) * MAX_SPACING_RATIO < min(geometry.spacing)
            or max(control.spacing) > MAX_SPACING_RATIO * max(geometry.spacing)
        ):
            raise ProtocolError("the B-spline control grid does not fit the level grid")
    if request.kind == "all":
        return PointSet(geometry, None, control)
    if request.kind == "urs":
        return PointSet(
            geometry, URS(fraction, seed).draw(geometry.number_of_points, level), control
        )
    if request.kind == "regular":
        return PointSet(geometry, Regular(fraction).draw(geometry.number_of_points, level), control)
    indices = array_from_pb(request.indices, max_elements=geometry.number_of_points)
    if indices.ndim != 1 or indices.dtype != np.int64 or indices.size == 0:
        raise ProtocolError("the revealed sample indices are not a list of grid indices")
    if indices.min() < 0 or indices.max() >= geometry.number_of_points:
        raise ProtocolError("a revealed sample index lies outside the level grid")
    return PointSet(geometry, indices, control)
