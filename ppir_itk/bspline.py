"""Cubic B-spline free-form deformation, as ITK's ``BSplineTransform`` (order 3).

``W(x) = bulk(x + D(x))`` with ``D(x) = sum_c beta3(u(x) - c) theta_c``: the
displacement is a tensor-product cubic B-spline over a regular control grid,
optionally followed by a fixed linear ``bulk`` transform (ITK's composite
transform of an affine then a B-spline, the usual pipeline). The parameters
are ITK's: the control-point coefficients of axis 0 for every control point
(x fastest), then of axis 1, and so on; the fixed parameters are the control
grid's size, origin, spacing and direction.

Each fixed-grid point touches 4^d control points, so everything the
registration needs is sparse (C kernels, :mod:`ppir_itk._kernels`):
``S^T v`` is a scatter onto control points, ``S^T S`` a banded matrix with
7^d neighbours per control point. Nothing of size n x |theta| is built.

Examples
--------
>>> from ppir_itk.image import GridGeometry
>>> grid = GridGeometry(size=(64, 48), spacing=(1.0, 1.0), origin=(0.0, 0.0),
...                     direction=(1.0, 0.0, 0.0, 1.0))
>>> transform = BSplineTransform.over(grid, grid_spacing=8.0)
>>> transform.size, transform.number_of_parameters
((11, 9), 198)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ppir_itk import _kernels
from ppir_itk.errors import InputError
from ppir_itk.image import GridGeometry
from ppir_itk.parallel import for_chunks, sum_chunks
from ppir_itk.transforms import LinearTransform

ORDER = 3
REACH = 2 * ORDER + 1  # neighbouring control points per axis in S^T S


class BSplineTransform:
    """ITK's ``BSplineTransform`` (order 3), optionally after a fixed linear ``bulk``.

    Parameters
    ----------
    size : control points per axis (ITK order; mesh size + 3)
    origin, spacing, direction : the control grid's geometry (physical)
    parameters : d x M coefficients (flattened, ITK order); zeros by default
    bulk : LinearTransform applied after the B-spline (``W = bulk(x + D(x))``)
    """

    itk_name = "BSplineTransform"
    kind = "bspline"
    has_center = False
    center = None

    def __init__(
        self,
        size: Iterable[int],
        origin: ArrayLike,
        spacing: ArrayLike,
        direction: ArrayLike,
        parameters: Any = None,
        bulk: LinearTransform | None = None,
    ) -> None:
        self.size = tuple(int(s) for s in size)
        d = len(self.size)
        if d not in (2, 3) or min(self.size) < ORDER + 1:
            raise InputError(
                f"a B-spline control grid needs 2 or 3 axes of at least "
                f"{ORDER + 1} points, got {self.size}"
            )
        self.origin = np.asarray(origin, dtype=np.float64).reshape(d)
        self.spacing = np.asarray(spacing, dtype=np.float64).reshape(d)
        self.direction = np.asarray(direction, dtype=np.float64).reshape(d, d)
        self.bulk = bulk
        self._parameters = np.zeros(self.number_of_parameters)
        if parameters is not None:
            self.parameters = parameters

    @classmethod
    def over(
        cls,
        geometry: GridGeometry,
        grid_spacing: float | Sequence[float] | np.ndarray,
        bulk: LinearTransform | None = None,
    ) -> BSplineTransform:
        """A zero deformation whose control grid covers ``geometry``'s image.

        The domain is the image's full extent (pixel centres plus half a pixel
        each side), so no sample lies on its edge; the mesh has
        ``ceil(extent / grid_spacing)`` cells per axis, as ITK's
        ``BSplineTransformInitializer`` would with that mesh size.
        """
        d = geometry.dimension
        wanted = np.broadcast_to(np.asarray(grid_spacing, dtype=np.float64), (d,))
        if not np.all(wanted > 0):
            raise InputError(f"the B-spline grid spacing must be positive, got {grid_spacing}")
        spacing = np.asarray(geometry.spacing, dtype=np.float64)
        extent = spacing * np.asarray(geometry.size, dtype=np.float64)
        mesh = np.maximum(np.ceil(extent / wanted - 1e-9), 1).astype(int)
        control_spacing = extent / mesh
        direction = geometry.direction_matrix
        domain_origin = geometry.physical_points(np.full(d, -0.5))
        origin = domain_origin - direction @ control_spacing
        return cls(mesh + ORDER, origin, control_spacing, direction.ravel(), bulk=bulk)

    # -- ITK's parameters --------------------------------------------------------
    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def control_points(self) -> int:
        return math.prod(self.size)

    @property
    def number_of_parameters(self) -> int:
        return self.dimension * self.control_points

    @property
    def parameters(self) -> np.ndarray:
        return self._parameters.copy()

    @parameters.setter
    def parameters(self, values: Any) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size != self.number_of_parameters:
            raise InputError(
                f"a {self.size} B-spline grid has {self.number_of_parameters} "
                f"parameters, got {values.size}"
            )
        self._parameters = values.copy()

    @property
    def fixed_parameters(self) -> np.ndarray:
        """ITK's fixed parameters: size, origin, spacing, direction (row-major)."""
        return np.concatenate(
            [
                np.asarray(self.size, dtype=np.float64),
                self.origin,
                self.spacing,
                self.direction.ravel(),
            ]
        )

    @classmethod
    def from_fixed_parameters(
        cls, fixed: Any, parameters: Any = None, bulk: LinearTransform | None = None
    ) -> BSplineTransform:
        fixed = np.asarray(fixed, dtype=np.float64)
        d = {10: 2, 18: 3}.get(fixed.size)  # size, origin, spacing: d each; direction: d^2
        if d is None:
            raise InputError(
                f"{fixed.size} fixed parameters do not describe a 2-D or 3-D B-spline grid"
            )
        return cls(
            np.rint(fixed[:d]).astype(int),
            fixed[d : 2 * d],
            fixed[2 * d : 3 * d],
            fixed[3 * d :],
            parameters,
            bulk,
        )

    def update(self, delta: Any) -> None:
        self.parameters = self._parameters + np.asarray(delta, dtype=np.float64)

    def copy(self) -> BSplineTransform:
        return BSplineTransform(
            self.size,
            self.origin,
            self.spacing,
            self.direction,
            self._parameters,
            self.bulk.copy() if self.bulk else None,
        )

    def __repr__(self) -> str:
        bulk = f", bulk={self.bulk.itk_name}" if self.bulk else ""
        return f"BSplineTransform(size={self.size}, spacing={self.spacing.tolist()}{bulk})"

    # -- geometry -------------------------------------------------------------
    @property
    def control_grid(self) -> GridGeometry:
        """The control points' grid (public: both parties build the basis from it)."""
        return GridGeometry(
            size=self.size,
            spacing=tuple(self.spacing),
            origin=tuple(self.origin),
            direction=tuple(self.direction.ravel()),
        )

    def control(self, geometry: GridGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return control_map(self.control_grid, geometry)

    def displacement(self, geometry: GridGeometry, indices: np.ndarray | None) -> np.ndarray:
        """``D(x)`` (n x d) at the grid points ``indices`` of ``geometry`` (all if None)."""
        n = geometry.number_of_points if indices is None else indices.size
        out = np.empty((n, self.dimension))
        control = self.control(geometry)
        coefficients = self._parameters.reshape(self.dimension, -1)
        for_chunks(
            lambda start, stop: _kernels.bspline_displacement(
                geometry.size_array, indices, start, stop, control, coefficients, out
            ),
            n,
        )
        return out

    def transform_points(self, points: Any) -> np.ndarray:
        """``W(x)`` for physical points (n x d), through a 1 x n grid along the points."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        moved = points + self._displacement_at(points)
        return self.bulk.transform_points(moved) if self.bulk else moved

    def _displacement_at(self, points: np.ndarray) -> np.ndarray:
        """D at arbitrary physical points, vectorised over them (the kernels' rule)."""
        d = self.dimension
        size = np.asarray(self.size)
        u = (points - self.origin) @ self.control_grid.physical_to_index.T
        inside = np.all((u >= 1) & (u <= size - 2), axis=1)
        floor = np.minimum(np.floor(u), size - 3)
        t = u - floor
        base = floor.astype(np.int64) - 1
        weights = (
            np.stack(
                [(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3],
                axis=-1,
            )
            / 6.0
        )
        coefficients = self._parameters.reshape(d, -1)
        strides = np.cumprod((1,) + self.size[:-1])
        out = np.zeros_like(points)
        for shift in np.ndindex(*(4,) * d):
            corner = np.clip(base + np.asarray(shift), 0, size - 1)
            weight = np.prod(weights[:, np.arange(d), list(shift)], axis=1) * inside
            out += weight[:, None] * coefficients[:, corner @ strides].T
        return out

    def matrix_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """The bulk transform's matrix and offset (identity without one)."""
        if self.bulk is None:
            return np.eye(self.dimension), np.zeros(self.dimension)
        return self.bulk.matrix_offset()

    # -- the registration's sparse pieces -------------------------------------
    def gauss_newton_hessian(
        self, geometry: GridGeometry, indices: np.ndarray | None, gradient: np.ndarray
    ) -> Any:
        """``S^T S`` on this transform's control grid (:func:`gauss_newton_hessian`)."""
        return gauss_newton_hessian(self.control_grid, geometry, indices, gradient)

    def bending_energy(self) -> Any:
        key = (self.size, tuple(self.spacing))
        if getattr(self, "_energy_key", None) != key:  # depends on the grid only
            self._energy, self._energy_key = self._bending_energy(), key
        return self._energy

    def _bending_energy(self) -> Any:
        """``E`` with ``theta^T E theta`` the thin-plate bending energy
        ``sum_k integral sum_ij (d2 D_k / dx_i dx_j)^2 dx`` over the control grid's valid
        region (physical units for an axis-aligned grid; sparse, ITK order)."""
        import scipy.sparse as sparse

        d = self.dimension
        grams = [[_gram_1d(n, order) for order in range(3)] for n in self.size]
        energy = None
        for orders in _second_derivative_orders(d):
            term = grams[0][orders[0]]
            for axis in range(1, d):
                term = sparse.kron(grams[axis][orders[axis]], term)  # axis 0 fastest
            weight = 2.0 if max(orders) == 1 else 1.0  # the mixed terms appear twice
            # d/dx = d/du / spacing per axis; dx = prod(spacing) du
            weight *= float(np.prod(self.spacing ** (1.0 - 2.0 * np.asarray(orders))))
            energy = weight * term if energy is None else energy + weight * term
        return sparse.kron(sparse.identity(d), energy).tocsr()

    def refined(self) -> BSplineTransform:
        """The same deformation on a control grid twice as fine (exact subdivision)."""
        d = self.dimension
        coefficients = self._parameters.reshape((d, *self.size[::-1]))
        for axis in range(d):
            coefficients = np.apply_along_axis(_subdivide, d - axis, coefficients)
        size = tuple(2 * (s - ORDER) + ORDER for s in self.size)
        spacing = self.spacing / 2.0
        domain_origin = self.origin + self.direction @ self.spacing
        origin = domain_origin - self.direction @ spacing
        return BSplineTransform(
            size, origin, spacing, self.direction.ravel(), coefficients.ravel(), self.bulk
        )


def control_map(
    control_grid: GridGeometry, geometry: GridGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(control_size, point_to_control, control_offset)`` for the kernels: the affine map
    from a grid index of ``geometry`` to the continuous index of ``control_grid``."""
    to_control = control_grid.physical_to_index
    matrix = to_control @ geometry.index_to_physical
    offset = to_control @ (geometry.origin_array - control_grid.origin_array)
    return control_grid.size_array, matrix, offset


def points_per_control_point(control_grid: GridGeometry, geometry: GridGeometry) -> int:
    """A bound on the grid points of ``geometry`` in one control point's support
    (4 control cells per axis); the whole grid if the two grids are not aligned."""
    _, matrix, _ = control_map(control_grid, geometry)
    if not np.allclose(matrix, np.diag(np.diag(matrix)), atol=1e-9 * np.abs(matrix).max()):
        return geometry.number_of_points
    per_axis = [
        min(size, math.floor((ORDER + 1) / abs(step)) + 1)
        for size, step in zip(geometry.size, np.diag(matrix), strict=True)
    ]
    return min(math.prod(per_axis), geometry.number_of_points)


def gauss_newton_hessian(
    control_grid: GridGeometry,
    geometry: GridGeometry,
    indices: np.ndarray | None,
    gradient: np.ndarray,
) -> Any:
    """``S^T S`` for ``S[x, (k, c)] = gradient_k(x) beta_c(x)``, sparse, ITK order."""
    d, count = geometry.dimension, control_grid.number_of_points
    control = control_map(control_grid, geometry)
    blocks = sum_chunks(
        lambda start, stop, out: _kernels.bspline_hessian(
            geometry.size_array, indices, start, stop, control, gradient, out
        ),
        gradient.shape[0],
        (count, REACH**d, d * (d + 1) // 2),
    )
    return _assemble(blocks, tuple(int(s) for s in control_grid.size))


def scatter(
    control_grid: GridGeometry,
    geometry: GridGeometry,
    indices: np.ndarray | None,
    values: np.ndarray,
    weight_bits: int = 0,
) -> np.ndarray:
    """``out (M x m) = sum_x beta_c(x) values[x]`` over the points (chunk order fixed);
    ``weight_bits`` > 0 uses the fixed-point weights of :func:`scatter_ring`."""
    control = control_map(control_grid, geometry)
    return sum_chunks(
        lambda start, stop, out: _kernels.bspline_scatter(
            geometry.size_array, indices, start, stop, control, values, out, weight_bits
        ),
        values.shape[0],
        (control_grid.number_of_points, values.shape[1]),
    )


def scatter_ring(
    control_grid: GridGeometry,
    geometry: GridGeometry,
    indices: np.ndarray | None,
    values: np.ndarray,
    weight_bits: int,
) -> np.ndarray:
    """``scatter`` over the ring Z_2^64 (int64, wrapping), fixed-point weights
    ``prod_k round(beta3 2^weight_bits)``; exact, so both parties' shares add up."""
    control = control_map(control_grid, geometry)
    out = np.empty((control_grid.number_of_points, values.shape[1]), dtype=np.int64)
    # One pass: ring sums are exact, but chunk partial sums would need a wrapping add.
    _kernels.bspline_scatter(
        geometry.size_array, indices, 0, values.shape[0], control, values, out, weight_bits
    )
    return out


def _subdivide(c: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients on a grid twice as fine (same first knot)."""
    n = c.size  # mesh m = n - 3; refined size 2m + 3
    out = np.empty(2 * (n - ORDER) + ORDER)
    # Refined point 2j - 1 sits on coarse point j; refined point 2j halfway after j - 1.
    out[0::2] = (c[:-1] + c[1:]) / 2.0
    out[1::2] = (c[:-2] + 6.0 * c[1:-1] + c[2:]) / 8.0
    return out


def _assemble(blocks: np.ndarray, size: tuple[int, ...]) -> Any:
    """Sparse d M x d M matrix from the kernel's (M, 7^d, d (d + 1) / 2) neighbour blocks."""
    import scipy.sparse as sparse

    order, indices, indptr = _hessian_layout(size)
    count = math.prod(size) * len(size)
    return sparse.csr_matrix((blocks.ravel()[order], indices, indptr), shape=(count, count))


@functools.lru_cache(maxsize=8)
def _hessian_layout(size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each entry of the blocks goes in a CSR matrix (the same for every iteration
    on one control grid): block entries in CSR order, column indices, row pointers. The
    kernel fills half the offsets, and of each block its upper triangle (k <= j); each of
    those blocks also lands transposed, and each entry also at (j, k)."""
    d = len(size)
    pairs = d * (d + 1) // 2
    packed = np.zeros((d, d), dtype=np.int64)  # (k, j) -> the kernel's upper-triangle entry
    packed[np.triu_indices(d)] = np.arange(pairs)
    packed = np.maximum(packed, packed.T)
    count = math.prod(size)
    grid = np.indices(size[::-1]).reshape(d, -1)[::-1].T  # control index per flat (ITK order)
    offsets = np.indices((REACH,) * d).reshape(d, -1)[::-1].T - ORDER  # offset per index
    rows, cols, positions = [], [], []
    for o, offset in enumerate(offsets):
        forward = int(offset @ (4 ** np.arange(d)))  # the kernel fills offsets with >= 0
        if forward < 0:
            continue
        neighbour = grid + offset
        inside = np.all((neighbour >= 0) & (neighbour < np.asarray(size)), axis=1)
        source = np.flatnonzero(inside)
        target = (neighbour[inside] * np.cumprod((1,) + size[:-1])).sum(axis=1)
        for k in range(d):
            for j in range(d):
                position = (source * REACH**d + o) * pairs + packed[k, j]
                rows.append(k * count + source)
                cols.append(j * count + target)
                positions.append(position)
                if forward > 0:  # the symmetric block, (c + o, c), is this one transposed
                    rows.append(j * count + target)
                    cols.append(k * count + source)
                    positions.append(position)
    row, col, position = (np.concatenate(a) for a in (rows, cols, positions))
    order = np.lexsort((col, row))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=d * count))])
    return position[order], col[order].astype(np.int32), indptr.astype(np.int32)


def _second_derivative_orders(d: int) -> list[tuple[int, ...]]:
    """Derivative order per axis of each distinct second derivative (d2/dxi dxj, i <= j)."""
    orders = []
    for i in range(d):
        for j in range(i, d):
            order = [0] * d
            order[i] += 1
            order[j] += 1
            orders.append(tuple(order))
    return orders


def _gram_1d(n: int, order: int) -> Any:
    """``G[a, b] = integral over [1, n - 2] of beta3^(order)(u - a + 1) beta3^(order)(u - b + 1)``
    for the n control points of one axis, by 4-point Gauss-Legendre per cell (exact)."""
    import scipy.sparse as sparse

    nodes, weights = np.polynomial.legendre.leggauss(4)
    nodes, weights = (nodes + 1.0) / 2.0, weights / 2.0
    gram = np.zeros((n, n))
    for cell in range(1, n - 2):  # the valid region [1, n - 2], one cell at a time
        values = np.array([_beta3(nodes, s, order) for s in range(4)])  # (4, nodes)
        local = (values * weights) @ values.T
        base = cell - 1
        gram[base : base + 4, base : base + 4] += local
    return sparse.csr_matrix(gram)


def _beta3(t: np.ndarray, s: int, order: int) -> np.ndarray:
    """Weight of support position s (0..3) at offset t in [0, 1) of a cell, or its
    first / second derivative."""
    polynomials = [
        np.array([-1.0, 3.0, -3.0, 1.0]),
        np.array([3.0, -6.0, 0.0, 4.0]),
        np.array([-3.0, 3.0, 3.0, 1.0]),
        np.array([1.0, 0.0, 0.0, 0.0]),
    ]
    coefficients: np.ndarray = polynomials[s] / 6.0  # np.polyder's result is any floating
    for _ in range(order):
        coefficients = np.polyder(coefficients)
    return np.polyval(coefficients, t)
