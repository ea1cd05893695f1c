"""Synthetic head phantoms with known transforms, for the demo, tests and benchmarks.

A phantom is a smoothed Shepp-Logan-like arrangement of ellipses (2-D) or
ellipsoids (3-D) with a faint smooth texture, so that intensity-based
registration has edges and gradients everywhere inside the head.

Examples
--------
>>> grid = head_phantom((64, 64))
>>> grid.geometry.size
(64, 64)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ppir_itk.errors import InputError
from ppir_itk.image import ImageGrid
from ppir_itk.transforms import AffineTransform, LinearTransform
from ppir_itk.wrapping.resample import resample

# (intensity, centre, semi-axes, angle in degrees) in a [-1, 1] box, Shepp-Logan style.
_ELLIPSES = (
    (1.0, (0.0, 0.0), (0.69, 0.92), 0.0),
    (-0.8, (0.0, -0.0184), (0.6624, 0.874), 0.0),
    (-0.3, (0.22, 0.0), (0.11, 0.31), -18.0),
    (-0.3, (-0.22, 0.0), (0.16, 0.41), 18.0),
    (0.25, (0.0, 0.35), (0.21, 0.25), 0.0),
    (0.2, (0.0, 0.1), (0.046, 0.046), 0.0),
    (0.2, (-0.08, -0.605), (0.046, 0.023), 0.0),
    (0.15, (0.06, -0.605), (0.023, 0.046), 0.0),
    (0.3, (0.35, -0.3), (0.08, 0.12), 30.0),
)


def head_phantom(
    shape: Sequence[int],
    spacing: Sequence[float] | None = None,
    *,
    smoothing: float = 1.5,
    dtype: type = np.float32,
) -> ImageGrid:
    """A smooth 2-D or 3-D head phantom, intensities in about [0, 100].

    Parameters
    ----------
    shape : sequence of int
        NumPy shape, ``(rows, columns)`` or ``(slices, rows, columns)``.
    spacing : sequence of float, optional
        ITK-order spacing (x first); unit spacing by default.
    smoothing : float
        Gaussian sigma in pixels (edges of a real scan are not steps).
    """
    import SimpleITK as sitk

    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise InputError(f"phantom shape {shape} has {len(shape)} axes; a phantom is 2-D or 3-D")
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    grid = np.meshgrid(*axes, indexing="ij")
    x, y = grid[-1], -grid[-2]
    z = grid[0] if len(shape) == 3 else None
    image = np.zeros(shape)
    for value, (cx, cy), (ax, ay), angle in _ELLIPSES:
        theta = np.deg2rad(angle)
        u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
        inside = (u / ax) ** 2 + (v / ay) ** 2
        if z is not None:
            inside = inside + (z / (0.9 * max(ax, ay))) ** 2
        image[inside <= 1.0] += value
    texture = 0.05 * np.sin(5.0 * x + 2.0 * y) * np.cos(4.0 * y - (3.0 * z if z is not None else 0))
    image = np.where(image > 0, image + texture, image)
    smoothed = sitk.GetArrayFromImage(
        sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(100.0 * image), float(smoothing))
    )
    return ImageGrid(smoothed.astype(dtype), spacing=spacing)


def moved_copy(fixed: ImageGrid, truth: LinearTransform) -> ImageGrid:
    """A moving image such that registering it onto ``fixed`` must find ``truth``.

    ``fixed`` is resampled through the inverse of ``truth``, so that
    ``moving(truth(x)) == fixed(x)`` (up to interpolation) on the fixed grid.
    """
    matrix, offset = truth.matrix_offset()
    inverse_matrix = np.linalg.inv(matrix)
    inverse = AffineTransform(fixed.dimension)
    inverse.parameters = np.concatenate([inverse_matrix.ravel(), -inverse_matrix @ offset])
    moved = resample(fixed, inverse, fixed.geometry)
    return ImageGrid(
        moved.array.astype(fixed.array.dtype),
        fixed.geometry.spacing,
        fixed.geometry.origin,
        fixed.geometry.direction,
    )


def second_modality(image: ImageGrid, *, period: float = 120.0, gain: float = 1.0) -> ImageGrid:
    """The phantom as another modality would show it: ``v -> gain (50 + 45 sin(2 pi v / period))``.

    The map is not monotonic on the phantom's intensities (about -10 to 100): with the
    default period the skull (100) becomes the darkest tissue (11) and the brain (20)
    the brightest (89), so no affine intensity map relates the two images. Mean squares
    fails on such a pair; mutual information does not need the tissues' order. ``gain``
    is a further linear change of contrast (a different scanner's scale).

    Examples
    --------
    >>> grid = ImageGrid(np.array([[0.0, 20.0, 100.0]]))
    >>> second_modality(grid).array.round(1).tolist()
    [[50.0, 89.0, 11.0]]
    >>> second_modality(grid, gain=2.0).array.round(1).tolist()
    [[100.0, 177.9, 22.1]]
    """
    values = image.array.astype(np.float64)
    mapped = gain * (50.0 + 45.0 * np.sin(2.0 * np.pi * values / period))
    return ImageGrid(
        mapped.astype(image.array.dtype),
        image.geometry.spacing,
        image.geometry.origin,
        image.geometry.direction,
    )


def multimodal_moved_copy(
    fixed: ImageGrid, truth: LinearTransform, *, period: float = 120.0, gain: float = 1.0
) -> ImageGrid:
    """A moving image of another modality that registering onto ``fixed`` must align by
    ``truth``: :func:`moved_copy`, then :func:`second_modality`, so that
    ``moving(truth(x)) == second_modality(fixed)(x)`` on the fixed grid (up to
    interpolation). Remapping after the resampling maps its zeros outside the image to the
    second modality's background, as it maps the fixed image's."""
    return second_modality(moved_copy(fixed, truth), period=period, gain=gain)
