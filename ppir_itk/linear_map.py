"""The joint term's public linear map: the affine basis or a control grid's B-spline basis.

The joint term is d + 2 element-wise products of private vectors (``g_k J``,
``I_w J``, ``m J^2``, :mod:`ppir_itk.backends.base`) followed by a public linear
map that turns each of the d gradient products into ``outputs`` moments:
``moments[k, c] = sum_x w_c(x) g_k(x) J(x)``. Linear transforms use the affine
basis ``w(x) = phi(x) = (x - reference, 1)`` (d + 1 outputs), B-spline transforms
the cubic B-spline weight of each of their K control points at x. Both parties
derive the map from the agreed :class:`~ppir_itk.points.PointSet`
(``points.linear_map``), so it never crosses the wire.

A :class:`PublicLinearMap` applies itself in the three arithmetics the backends
and the metric use: floats (:meth:`~PublicLinearMap.moments`, with
:meth:`~PublicLinearMap.gram` for ``S^T S``), the ring Z_2^64 on shares
(:meth:`~PublicLinearMap.ring`) and integers mod t (:meth:`~PublicLinearMap.mod_t`),
and states what :func:`ppir_itk.fixed_point.budget` needs to keep every sum exact
(:attr:`~PublicLinearMap.support`, :attr:`~PublicLinearMap.weight_bits`). A metric
other than SSD reuses it as it is: it names its own products, the map is the same.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np

from ppir_itk import _kernels
from ppir_itk.bspline import gauss_newton_hessian, points_per_control_point, scatter, scatter_ring
from ppir_itk.fixed_point import Bits, Modulus, budget, encode, exponent
from ppir_itk.image import GridGeometry
from ppir_itk.parallel import sum_chunks


class PointSet(Protocol):
    """What a map needs of the agreed points (:class:`ppir_itk.points.PointSet`, which
    builds its map: the map does not import it)."""

    @property
    def geometry(self) -> GridGeometry: ...

    @property
    def indices(self) -> np.ndarray | None: ...

    @property
    def control(self) -> GridGeometry | None: ...

    @property
    def size(self) -> int: ...

    @property
    def reference(self) -> np.ndarray: ...


PHI_BITS = 12  # fixed-point bits (sign included) of the affine basis coordinates
# Fixed-point bits per axis of the B-spline weights when a party applies the basis to
# integers (spdz's shares, he's masked values): what the 64-bit sums leave room for.
WEIGHT_BITS = {2: 10, 3: 7}
LIMB_BITS = 20  # mod_t splits values below 2^60 into three limbs


class PublicLinearMap(abc.ABC):
    """``out[k, c] = sum_x w_c(x) values[x, k]`` over a point set's points (public weights).

    Values come one column per vector, ``(n, m)``; results one row per vector,
    ``(m, outputs)``, as the moments are laid out.
    """

    #: How the disclosures name the moments ("affine-basis moments").
    name: ClassVar[str]

    def __init__(self, points: PointSet) -> None:
        self.points = points

    @property
    def dimension(self) -> int:
        return self.points.geometry.dimension

    @property
    @abc.abstractmethod
    def outputs(self) -> int:
        """Moments per product vector: d + 1 for the affine basis, K for a control grid."""

    @property
    def sums_per_evaluation(self) -> int:
        """What the moving party learns per evaluation: d x outputs moments, I_w.J, sum J^2."""
        return self.dimension * self.outputs + 2

    @property
    @abc.abstractmethod
    def support(self) -> int | None:
        """A bound on the points one output sums over; None when each sums over all."""

    @property
    @abc.abstractmethod
    def weight_bits(self) -> int:
        """The integer weights (:meth:`ring`) are below ``2^weight_bits`` in absolute value."""

    @property
    @abc.abstractmethod
    def axis_weight_bits(self) -> int:
        """Bits per axis the float map rounds its weights to when the moving party's own
        moments must use the integer weights (a B-spline's); 0: exact weights."""

    @property
    @abc.abstractmethod
    def column_bits(self) -> np.ndarray:
        """Per output, the power of two its integer weights carry (divided out on decoding)."""

    @property
    def column_weight_bounds(self) -> np.ndarray:
        """Per output, a bound on its largest integer weight in absolute value (the fixed
        party's noise is scaled to it)."""
        return np.full(self.outputs, 2.0**self.weight_bits)

    #: Whether the outputs are few enough for each of the d x outputs moments to have its
    #: own range of slots in one ciphertext (he's packed layout, which then needs
    #: :meth:`dense_weights`); else a party applies the map itself (:meth:`mod_t`).
    few_outputs: ClassVar[bool] = False

    def dense_weights(self) -> np.ndarray:
        """The integer weights as an (n, outputs) int64 matrix (maps with few outputs)."""
        raise TypeError(f"the {self.name} map has too many outputs for a dense weight matrix")

    def budget(self, modulus: Modulus) -> Bits:
        """The fixed-point bits of J, g and I_w that keep every sum exact in ``modulus``."""
        return budget(modulus, self.points.size, self.weight_bits, self.support)

    @abc.abstractmethod
    def moments(
        self, field: np.ndarray, weights: np.ndarray | None = None, weight_bits: int = 0
    ) -> np.ndarray:
        """The float map of ``field * weights`` (field (n, d), weights (n,) or None):
        (d, outputs). ``weight_bits`` > 0 rounds a B-spline's weights to the private
        backends' fixed point (the affine basis is exact either way)."""

    @abc.abstractmethod
    def gram(self, gradient: np.ndarray) -> Any:
        """``sum_x v v^T`` with ``v[(k, c)] = gradient_k(x) w_c(x)``: S^T S in the map's basis
        (dense (d outputs)^2 for the affine basis, sparse in ITK order for a control grid)."""

    @abc.abstractmethod
    def ring(self, values: np.ndarray) -> np.ndarray:
        """The map over Z_2^64 with the integer weights: values (n, m) int64, wrapping."""

    def mod_t(self, values: np.ndarray, t: int) -> np.ndarray:
        """The integer map mod t of values in [0, t), t < 2^60: three 20-bit limbs, each
        mapped exactly while (points per output) x 2^(weight_bits + 20) < 2^63."""
        values = np.ascontiguousarray(values, dtype=np.uint64)
        limb_mask = np.uint64((1 << LIMB_BITS) - 1)
        low, middle, high = (
            self.ring(
                ((values >> np.uint64(LIMB_BITS * limb)) & limb_mask).astype(np.int64)
            ).astype(object)
            * (1 << (LIMB_BITS * limb))
            for limb in range(3)
        )
        return ((low + middle + high) % t).astype(np.int64)


class AffineBasis(PublicLinearMap):
    """``phi(x) = (x - reference, 1)``; integer weights ``(q(phi), 1)`` with
    ``q(phi) = round(phi 2^e_phi)`` below ``2^(PHI_BITS - 1)``."""

    name = "affine-basis"
    few_outputs = True

    @property
    def outputs(self) -> int:
        return self.dimension + 1

    @property
    def support(self) -> None:
        return None

    @property
    def weight_bits(self) -> int:
        return PHI_BITS

    @property
    def axis_weight_bits(self) -> int:
        return 0  # phi enters the private sums rounded to 2^-e_phi, the own moments exactly

    @property
    def phi(self) -> np.ndarray:
        """``x - reference`` at the points (n, d), physical (computed on each call: n x d)."""
        points = self.points
        geometry = points.geometry
        flat = np.arange(geometry.number_of_points) if points.indices is None else points.indices
        return geometry.physical_points(geometry.flat_to_index(flat)) - points.reference

    @functools.cached_property
    def phi_exponent(self) -> int:
        return exponent(float(np.abs(self.phi).max(initial=0.0)), PHI_BITS)

    @property
    def column_bits(self) -> np.ndarray:
        return np.array([self.phi_exponent] * self.dimension + [0])

    @property
    def column_weight_bounds(self) -> np.ndarray:
        return np.array([2.0 ** (PHI_BITS - 1)] * self.dimension + [1.0])

    def dense_weights(self) -> np.ndarray:
        ones = np.ones((self.points.size, 1), dtype=np.int64)
        return np.concatenate([encode(self.phi, self.phi_exponent), ones], axis=1)

    @functools.cached_property
    def _ring_weights(self) -> np.ndarray:  # kept: spdz maps every iteration's shares
        return self.dense_weights().view(np.uint64)

    def _kernel_sum(
        self, kernel: Callable[..., None], shape: tuple[int, ...], *arrays: Any
    ) -> np.ndarray:
        points = self.points
        geometry = points.geometry
        return sum_chunks(
            lambda start, stop, out: kernel(
                geometry.size_array,
                geometry.index_to_physical,
                geometry.origin_array,
                points.reference,
                points.indices,
                start,
                stop,
                *arrays,
                out,
            ),
            points.size,
            shape,
        )

    def moments(
        self, field: np.ndarray, weights: np.ndarray | None = None, weight_bits: int = 0
    ) -> np.ndarray:
        return self._kernel_sum(
            _kernels.affine_moments, (self.dimension, self.outputs), field, weights
        )

    def gram(self, gradient: np.ndarray) -> np.ndarray:
        size = self.dimension * self.outputs
        return self._kernel_sum(_kernels.affine_gram, (size, size), gradient)

    def ring(self, values: np.ndarray) -> np.ndarray:
        # Unsigned: C's unsigned products and sums wrap mod 2^64 by definition.
        product = np.asarray(values).T.view(np.uint64) @ self._ring_weights
        return product.view(np.int64)


class BSplineBasis(PublicLinearMap):
    """The cubic B-spline weights ``beta_c(x)`` of the points' control grid (K outputs);
    integer weights ``prod_k round(beta3 2^WEIGHT_BITS[d])``
    (:func:`~ppir_itk.bspline.scatter_ring`)."""

    name = "B-spline-basis"

    def __init__(self, points: PointSet) -> None:
        if points.control is None:
            raise ValueError("a B-spline basis needs the points' control grid")
        super().__init__(points)
        self.control: GridGeometry = points.control

    @property
    def outputs(self) -> int:
        return self.control.number_of_points

    @property
    def support(self) -> int:
        return points_per_control_point(self.control, self.points.geometry)

    @property
    def axis_weight_bits(self) -> int:
        return WEIGHT_BITS[self.dimension]

    @property
    def weight_bits(self) -> int:
        return self.dimension * self.axis_weight_bits

    @property
    def column_bits(self) -> np.ndarray:
        return np.full(self.outputs, self.weight_bits)

    def moments(
        self, field: np.ndarray, weights: np.ndarray | None = None, weight_bits: int = 0
    ) -> np.ndarray:
        points = self.points
        values = field if weights is None else field * weights[:, None]
        return scatter(self.control, points.geometry, points.indices, values, weight_bits).T

    def gram(self, gradient: np.ndarray) -> Any:
        points = self.points
        return gauss_newton_hessian(self.control, points.geometry, points.indices, gradient)

    def ring(self, values: np.ndarray) -> np.ndarray:
        points = self.points
        return scatter_ring(
            self.control,
            points.geometry,
            points.indices,
            np.ascontiguousarray(values),
            self.axis_weight_bits,
        ).T


def linear_map(points: PointSet) -> PublicLinearMap:
    """The map of a point set: its control grid's B-spline basis, or the affine basis."""
    return AffineBasis(points) if points.control is None else BSplineBasis(points)
