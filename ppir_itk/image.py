"""Images as one party holds them: pixels plus ITK's physical-space geometry.

An :class:`ImageGrid` is the package's internal image: a NumPy array in NumPy
axis order (``[z, y, x]``) and the grid geometry in ITK order (``spacing[0]``
is x). Physical points follow ITK exactly::

    p = origin + direction @ diag(spacing) @ index

Only the geometry (:class:`GridGeometry`) is ever published to the other
party; the pixels never leave the process that loaded them.

Examples
--------
>>> import numpy as np
>>> grid = ImageGrid(np.zeros((4, 5)), spacing=(0.5, 2.0))
>>> grid.geometry.size
(5, 4)
>>> grid.geometry.physical_points(np.array([4, 0])).tolist()
[2.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppir_itk.errors import InputError


@dataclass(frozen=True)
class GridGeometry:
    """Public geometry of a regular grid, in ITK order.

    Parameters
    ----------
    size : tuple of int
        Number of pixels along each ITK axis (x first).
    spacing, origin : tuple of float
        As in ITK, in physical units (mm).
    direction : tuple of float
        Row-major d x d direction cosine matrix.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        d = len(self.size)
        if d not in (2, 3):
            raise InputError(f"images must be 2-D or 3-D; this one has {d} dimensions")
        if len(self.spacing) != d or len(self.origin) != d or len(self.direction) != d * d:
            raise InputError("size, spacing, origin and direction disagree on the dimension")
        if min(self.size) < 1:
            raise InputError(f"image size {self.size} has an empty axis")
        if not all(s > 0 and np.isfinite(s) for s in self.spacing):
            raise InputError(f"image spacing {self.spacing} must be positive and finite")
        direction = self.direction_matrix
        if not np.allclose(direction.T @ direction, np.eye(d), atol=1e-4):
            raise InputError("the direction cosines are not orthonormal")

    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def number_of_points(self) -> int:
        return int(np.prod(self.size))

    @property
    def direction_matrix(self) -> np.ndarray:
        d = len(self.size)
        return np.asarray(self.direction, dtype=np.float64).reshape(d, d)

    @property
    def size_array(self) -> np.ndarray:
        return np.asarray(self.size, dtype=np.int64)

    @property
    def origin_array(self) -> np.ndarray:
        return np.asarray(self.origin, dtype=np.float64)

    @property
    def index_to_physical(self) -> np.ndarray:
        """``direction @ diag(spacing)``: continuous index to physical offset."""
        if "i2p" not in self._cache:
            self._cache["i2p"] = self.direction_matrix @ np.diag(self.spacing)
        return self._cache["i2p"]

    @property
    def physical_to_index(self) -> np.ndarray:
        if "p2i" not in self._cache:
            self._cache["p2i"] = np.linalg.inv(self.index_to_physical)
        return self._cache["p2i"]

    def physical_points(self, index: np.ndarray) -> np.ndarray:
        """Physical coordinates of ITK-order (continuous) indices, shape (..., d)."""
        return self.origin_array + np.asarray(index, dtype=np.float64) @ self.index_to_physical.T

    def flat_to_index(self, flat: np.ndarray) -> np.ndarray:
        """ITK-order indices (n, d) of flat positions (``array.ravel()`` order)."""
        numpy_order = np.unravel_index(np.asarray(flat), self.size[::-1])
        return np.stack(numpy_order[::-1], axis=-1)

    def corners(self) -> np.ndarray:
        """Physical coordinates of the 2**d corner pixels' centres."""
        d = self.dimension
        upper = np.asarray(self.size, dtype=np.float64) - 1.0
        bits = (np.arange(2**d)[:, None] >> np.arange(d)) & 1
        return self.physical_points(bits * upper)

    def center(self) -> np.ndarray:
        """Physical centre of the grid (middle of the first and last pixel centres)."""
        return self.physical_points((np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0)


class ImageGrid:
    """Pixels (NumPy order) and geometry (ITK order) of one party's image.

    Parameters
    ----------
    array : ndarray, shape (M, N) or (P, M, N)
        Pixel values, NumPy axis order; kept as float32 or float64.
    spacing, origin, direction : sequence of float, optional
        ITK geometry; defaults are unit spacing, zero origin, identity direction.
    """

    def __init__(
        self,
        array: np.ndarray,
        spacing: Any = None,
        origin: Any = None,
        direction: Any = None,
    ) -> None:
        array = np.asarray(array)
        if array.dtype not in (np.float32, np.float64):
            array = array.astype(np.float64)
        self.array = np.ascontiguousarray(array)
        d = self.array.ndim
        self.geometry = GridGeometry(
            size=tuple(int(s) for s in self.array.shape[::-1]),
            spacing=tuple(float(s) for s in (spacing if spacing is not None else [1.0] * d)),
            origin=tuple(float(o) for o in (origin if origin is not None else [0.0] * d)),
            direction=tuple(
                float(v) for v in (np.eye(d).ravel() if direction is None else np.ravel(direction))
            ),
        )

    @property
    def dimension(self) -> int:
        return self.geometry.dimension

    def __repr__(self) -> str:
        g = self.geometry
        return f"ImageGrid(size={g.size}, spacing={g.spacing}, dtype={self.array.dtype})"


def center_of_mass(image: ImageGrid) -> np.ndarray:
    """Physical centre of gravity of the intensities, as ITK's ``ImageMomentsCalculator``
    (the ``MOMENTS`` initializer's centre): ``sum I(x) x / sum I(x)``."""
    weights = image.array.astype(np.float64).ravel()
    flat = np.flatnonzero(weights)
    total = float(weights[flat].sum())
    if not total or not np.isfinite(total):
        raise InputError(
            "the image's intensities sum to zero, so it has no centre of mass: use the "
            "'geometry' initialiser"
        )
    index = image.geometry.flat_to_index(flat)
    mean_index = (weights[flat, None] * index).sum(0) / total
    return image.geometry.physical_points(mean_index)


#: Fewest pixels along every axis of the moving image and of each level's fixed grid.
#: Below it ITK's recursive Gaussian does not run, and a Gauss-Newton step on so few
#: points is near singular and often throws every point out of the moving image
#: (benchmarks/image_limits.py counts how often).
LEAST_PIXELS_PER_AXIS = 4


def check_large_enough(geometry: GridGeometry, *, name: str, shrink_factor: int = 1) -> None:
    """Refuse an image with fewer than :data:`LEAST_PIXELS_PER_AXIS` pixels along an axis
    once shrunk by ``shrink_factor`` (the coarsest level's, for the fixed image)."""
    least = LEAST_PIXELS_PER_AXIS
    # As the level's shrink filter: the factor is at most the axis' size, the size rounds down.
    level = tuple(size // min(shrink_factor, size) for size in geometry.size)
    if min(level) >= least:
        return
    shown = "x".join(str(size) for size in geometry.size)
    if shrink_factor == 1:
        raise InputError(
            f"{name} is {shown} pixels, too small to register: every axis needs at least "
            f"{least} pixels"
        )
    raise InputError(
        f"{name} is {shown} pixels, too small to register with shrink factor "
        f"{shrink_factor}: its coarsest level would be {'x'.join(map(str, level))} pixels "
        f"and every axis needs at least {least} (so at least {least * shrink_factor} pixels "
        "along every axis, or smaller shrink factors)"
    )
