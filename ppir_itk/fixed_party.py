"""The fixed party (P2): holds the fixed image J and never sees the moving image.

What the fixed party does on its own, whatever the backend:

- publishes the geometry of its image (size, spacing, origin, direction);
- at each level, smooths and shrinks J (:mod:`ppir_itk.pyramid`) and publishes
  the level grid's geometry;
- agrees the level's point set: every point, the URS draw it makes itself from
  the public seed, or GMS indices the moving party chose to reveal;
- on request, discloses its centre of mass (for the ``moments`` initialiser
  only; a named disclosure).

How J then enters the joint term is the backend's business
(:mod:`ppir_itk.backends`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ppir_itk.image import GridGeometry, ImageGrid, center_of_mass
from ppir_itk.pyramid import Level, fixed_level_image
from ppir_itk.sampling import URS
from ppir_itk.wrapping.images import as_image_grid


@dataclass(frozen=True)
class PointSet:
    """The fixed-grid points a level's joint term sums over (public to both parties).

    ``indices`` is ``None`` for the whole grid. ``reference`` is the point the
    affine basis ``phi(x) = (x - reference, 1)`` is centred on.
    """

    geometry: GridGeometry
    indices: np.ndarray | None

    @property
    def size(self) -> int:
        return self.geometry.number_of_points if self.indices is None else int(self.indices.size)

    @property
    def reference(self) -> np.ndarray:
        return self.geometry.center()

    def physical_points(self) -> np.ndarray:
        flat = np.arange(self.geometry.number_of_points) if self.indices is None else self.indices
        return self.geometry.physical_points(self.geometry.flat_to_index(flat))


@dataclass(frozen=True)
class PointSetRequest:
    """What the moving party asks for: ``all`` points, a ``urs`` draw, or ``revealed`` indices."""

    kind: str = "all"
    fraction: float = 1.0
    seed: int = 0
    indices: np.ndarray | None = None


class FixedParty:
    """Holds the fixed image (an itk/SimpleITK image, a path or an ImageGrid).

    Computes only what needs the fixed image alone.
    """

    def __init__(self, fixed: Any) -> None:
        self._image = as_image_grid(fixed, name="fixed image")
        self._level_image: ImageGrid | None = None
        self._points: PointSet | None = None

    @property
    def geometry(self) -> GridGeometry:
        return self._image.geometry

    def center_of_mass(self) -> np.ndarray:
        """Intensity centre (physical). Disclosed only for the moments initialiser."""
        return center_of_mass(self._image)

    def open_level(self, level: Level) -> GridGeometry:
        self._level_image = fixed_level_image(self._image, level)
        self._points = None
        return self._level_image.geometry

    def select_points(self, level_index: int, request: PointSetRequest) -> PointSet:
        """Agree the level's point set from the moving party's request."""
        geometry = self.level_image.geometry
        if request.kind == "revealed":
            indices = np.asarray(request.indices, dtype=np.int64)
            if indices.ndim != 1 or indices.size == 0 or indices.min() < 0 or (
                indices.max() >= geometry.number_of_points
            ):
                raise ValueError("the revealed sample indices do not fit the level grid")
        elif request.kind == "urs":
            indices = URS(request.fraction, request.seed).draw(
                geometry.number_of_points, level_index
            )
        else:
            indices = None
        self._points = PointSet(geometry, indices)
        return self._points

    @property
    def level_image(self) -> ImageGrid:
        if self._level_image is None:
            raise RuntimeError("no level is open")
        return self._level_image

    def level_values(self) -> np.ndarray:
        """J at the agreed points, float64. Stays in this process except in ``clear``."""
        if self._points is None:
            raise RuntimeError("no point set was agreed for this level")
        values = self.level_image.array.ravel().astype(np.float64)
        return values if self._points.indices is None else values[self._points.indices]
