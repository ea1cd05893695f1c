"""Fixed and moving masks, as ITK's metrics read them (``ImageMaskSpatialObject``).

A mask is an image of the same dimension as the image it restricts, on any grid: a
physical point is inside when the mask's pixel nearest to it (ITK's
``TransformPhysicalPointToIndex``, halves rounded up) lies on the mask's grid and is not
zero. A point the metric would use counts only where it is inside: the fixed mask at the
point ``x`` of the fixed grid, the moving mask at ``T(x)``.

The fixed party's mask never leaves it (DESIGN.md §5: the moving party learns only how many
points fall inside both, which a mean over them needs); the moving party's is its own.

>>> import numpy as np
>>> mask = as_mask(ImageGrid(np.array([[0, 1, 1], [0, 0, 1]])), name="fixed mask")
>>> inside(mask, np.array([[1.0, 0.0], [0.4, 0.0], [2.0, 1.4], [3.0, 0.0]])).tolist()
[1, 0, 1, 0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppir_itk.errors import InputError
from ppir_itk.image import ImageGrid
from ppir_itk.wrapping.images import as_image_grid


def as_mask(mask: Any, *, name: str, dimension: int | None = None) -> ImageGrid:
    """An image (or an ``itk.ImageMaskSpatialObject``: its image) as a mask (nonzero:
    inside), refused in one sentence if it cannot be one: not an image, another dimension
    than ``dimension``, or no pixel inside."""
    if type(mask).__name__.startswith("itkImageMaskSpatialObject"):
        mask = mask.GetImage()
    grid = as_image_grid(mask, name=name, check=False)  # one value everywhere is a mask too
    if not np.all(np.isfinite(grid.array)):
        raise InputError(f"{name} has NaN or infinite pixels")
    if dimension is not None and grid.dimension != dimension:
        raise InputError(
            f"{name} is {grid.dimension}-D but the image it restricts is {dimension}-D"
        )
    inside_pixels = np.asarray(grid.array != 0, dtype=np.uint8)
    if not inside_pixels.any():
        raise InputError(f"{name} has no pixel inside (every pixel is zero)")
    return ImageGrid(
        inside_pixels,
        grid.geometry.spacing,
        grid.geometry.origin,
        grid.geometry.direction_matrix,
    )


def inside(
    mask: ImageGrid,
    physical: np.ndarray,
    matrix: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """1 where each physical point (shape (n, d)) is inside the mask, else 0 (uint8); with
    ``matrix`` and ``offset``, where its image ``matrix p + offset`` is (a transform's map,
    composed with the mask's index map so that the n points are mapped once)."""
    geometry = mask.geometry
    to_index = geometry.physical_to_index
    shift = -geometry.origin_array
    if matrix is not None and offset is not None:
        shift = shift + offset
        to_index = to_index @ matrix
    # Not a BLAS product: it would start threads that spin against the other party's process.
    continuous = np.einsum("nk,jk->nj", np.asarray(physical, dtype=np.float64), to_index)
    continuous += geometry.physical_to_index @ shift
    index = np.floor(continuous + 0.5).astype(np.int64)  # ITK rounds halves up
    on_grid = np.ones(len(index), dtype=bool)
    flat = np.zeros(len(index), dtype=np.int64)
    stride = 1
    for axis, size in enumerate(geometry.size):  # ITK's index order: axis 0 is the fastest
        on_grid &= (index[:, axis] >= 0) & (index[:, axis] < size)
        flat += index[:, axis] * stride
        stride *= size
    result = np.zeros(len(index), dtype=np.uint8)
    result[on_grid] = mask.array.ravel()[flat[on_grid]]
    return result


def pixels_inside(image: ImageGrid, mask: ImageGrid | None, *, name: str) -> np.ndarray:
    """The image's pixel values whose centres are inside ``mask`` (all of them without one):
    what ITK's Mattes metric takes an intensity range over. Refused in one sentence if the
    mask covers none of the image's pixels."""
    if mask is None:
        return image.array.ravel()
    geometry = image.geometry
    centres = geometry.physical_points(geometry.flat_to_index(np.arange(geometry.number_of_points)))
    values = image.array.ravel()[inside(mask, centres) == 1]
    if values.size == 0:
        raise InputError(f"{name} covers no pixel of the image it restricts")
    return values
