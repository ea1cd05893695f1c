"""Linear transforms with ITK's parameter conventions, in pure NumPy.

Registration maps a fixed-space physical point ``x`` to the moving-space point
``W_theta(x)`` (ITK's convention). Every transform here is linear,
``W(x) = M x + offset``, and a restriction of the affine transform, so its
Jacobian with respect to the parameters is exact in the *affine basis*
``phi(x) = (x_1 - c_1, ..., x_d - c_d, 1)`` of a public reference point ``c``::

    dW_k / dtheta_p (x) = sum_j C[p, k, j] * phi_j(x)

with ``C = transform.jacobian_in_affine_basis(c)`` of shape ``(P, d, d + 1)``.

The classes use ITK's exact parameter order and semantics, so that parameters
copied to and from ``itk`` / ``SimpleITK`` objects (see
``ppir_itk.wrapping.transforms``) mean the same thing:

==============================  ===============================================================
class                           parameters (ITK order); fixed parameters
==============================  ===============================================================
``TranslationTransform``        ``(t_1, ..., t_d)``; none
``Euler2DTransform``            ``(angle, tx, ty)``; centre
``CenteredRigid2DTransform``    ``(angle, cx, cy, tx, ty)``, the centre optimised; ``(0, 0)``
``Euler3DTransform``            ``(angleX, angleY, angleZ, tx, ty, tz)``; centre (+ ZYX flag 0)
``VersorRigid3DTransform``      ``(vx, vy, vz, tx, ty, tz)``; centre
``Similarity2DTransform``       ``(scale, angle, tx, ty)``; centre
``Similarity3DTransform``       ``(vx, vy, vz, tx, ty, tz, scale)``; centre
``ScaleSkewVersor3DTransform``  ``(vx, vy, vz, tx, ty, tz, sx, sy, sz, k_1, ..., k_6)``; centre
``AffineTransform``             ``(M row-major (d*d values), t_1, ..., t_d)``; centre
==============================  ===============================================================

For every centred transform ``W(x) = M (x - c) + c + t``, i.e.
``offset = t + c - M c``. The versor transforms take ITK's steps: their rotation is
composed with the step's (:meth:`_VersorTransform.update`). This module does not
import ``itk`` or ``SimpleITK``.

Examples
--------
>>> import numpy as np
>>> from ppir_itk.transforms import make_transform
>>> t = make_transform("rigid", 2)
>>> t.itk_name
'Euler2DTransform'
>>> t.center = [10.0, 20.0]
>>> t.parameters = [np.pi / 2, 1.0, 0.0]
>>> np.round(t.transform_points([[11.0, 20.0]]), 12)
array([[11., 21.]])
>>> C = t.jacobian_in_affine_basis(np.array([10.0, 20.0]))
>>> C.shape
(3, 2, 3)
>>> t.update([0.0, 0.5, 0.5])
>>> t.parameters
array([1.57079633, 1.5       , 0.5       ])
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from ppir_itk.errors import InputError

__all__ = [
    "TRANSFORM_KINDS",
    "AffineTransform",
    "CenteredRigid2DTransform",
    "Euler2DTransform",
    "Euler3DTransform",
    "LinearTransform",
    "RigidTransform",
    "ScaleSkewVersor3DTransform",
    "Similarity2DTransform",
    "Similarity3DTransform",
    "SimilarityTransform",
    "TranslationTransform",
    "VersorRigid3DTransform",
    "make_transform",
]

_DIMENSIONS = (2, 3)

# ITK's VersorRigid3DTransform::SetParameters rescales versor vectors whose norm is
# >= 1 - 1e-10; rejecting those keeps this class and ITK in exact agreement.
_VERSOR_NORM_LIMIT = 1.0 - 1e-10


def _check_dimension(dimension: object) -> int:
    if isinstance(dimension, bool) or not isinstance(dimension, (int, np.integer)):
        raise InputError(f"the dimension must be the integer 2 or 3, not {dimension!r}")
    if int(dimension) not in _DIMENSIONS:
        raise InputError(
            f"dimension {dimension} is refused: only 2-D and 3-D transforms are supported"
        )
    return int(dimension)


def _as_finite_vector(values: ArrayLike, length: int, what: str) -> np.ndarray:
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the {what} must be {length} real numbers") from exc
    if array.ndim != 1 or array.shape[0] != length:
        raise InputError(
            f"the {what} must be a vector of length {length}, not an array of shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise InputError(f"the {what} must be finite, not {array.tolist()}")
    return array


def _rotation_2d(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the 2-D rotation matrix and its derivative with respect to ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    derivative = np.array([[-s, -c], [c, -s]])
    return rotation, derivative


def _rotation_x(a: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(a), math.sin(a)
    return (
        np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]),
        np.array([[0.0, 0.0, 0.0], [0.0, -s, -c], [0.0, c, -s]]),
    )


def _rotation_y(a: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(a), math.sin(a)
    return (
        np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]),
        np.array([[-s, 0.0, c], [0.0, 0.0, 0.0], [-c, 0.0, -s]]),
    )


def _rotation_z(a: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(a), math.sin(a)
    return (
        np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]),
        np.array([[-s, -c, 0.0], [c, -s, 0.0], [0.0, 0.0, 0.0]]),
    )


def _versor_matrix(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation matrix of the unit quaternion ``(v, w)``, ``w = sqrt(1 - |v|^2)``.

    Returns the matrix (as ``itk::Versor::GetMatrix``) and its derivatives with
    respect to ``v_x, v_y, v_z`` (shape ``(3, 3, 3)``), with ``w`` depending on ``v``.
    """
    x, y, z = (float(a) for a in v)
    w = math.sqrt(1.0 - (x * x + y * y + z * z))
    rotation = np.array(
        [
            [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - z * w), 2.0 * (x * z + y * w)],
            [2.0 * (x * y + z * w), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - x * w)],
            [2.0 * (x * z - y * w), 2.0 * (y * z + x * w), 1.0 - 2.0 * (x * x + y * y)],
        ]
    )
    d_x = np.array([[0.0, 2 * y, 2 * z], [2 * y, -4 * x, -2 * w], [2 * z, 2 * w, -4 * x]])
    d_y = np.array([[-4 * y, 2 * x, 2 * w], [2 * x, 0.0, 2 * z], [-2 * w, 2 * z, -4 * y]])
    d_z = np.array([[-4 * z, -2 * w, 2 * x], [2 * w, -4 * z, 2 * y], [2 * x, 2 * y, 0.0]])
    d_w = np.array([[0.0, -2 * z, 2 * y], [2 * z, 0.0, -2 * x], [-2 * y, 2 * x, 0.0]])
    # dw/dv_i = -v_i / w
    derivatives = np.stack([d_x - d_w * (x / w), d_y - d_w * (y / w), d_z - d_w * (z / w)])
    return rotation, derivatives


def _versor_step(versor: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The versor vector after ITK's step ``step`` (``VersorRigid3DTransform::
    UpdateTransformParameters``): the rotation by the angle ``|step|`` about the axis
    ``step`` is applied first, then the current one (the versor product ``v * q``).

    The product's scalar part is kept >= 0 (``-q`` is the same rotation): the vector part
    alone then names it, as ITK's parameters do; ITK keeps the sign and so turns a
    rotation past 180 degrees into another one.
    """
    angle = math.sqrt(float(np.square(step).sum()))
    if angle == 0.0:
        return versor.copy()
    q_vector = step * (math.sin(angle / 2.0) / angle)
    q_scalar = math.cos(angle / 2.0)
    v_scalar = math.sqrt(1.0 - float(np.square(versor).sum()))
    scalar = v_scalar * q_scalar - float(versor @ q_vector)
    vector = v_scalar * q_vector + q_scalar * versor + np.cross(versor, q_vector)
    return -vector if scalar < 0.0 else vector


class LinearTransform(abc.ABC):
    """A linear transform ``W(x) = M x + offset`` with ITK's parameters.

    Parameters
    ----------
    dimension : int
        Spatial dimension, 2 or 3.
    parameters : array_like, optional
        The ``number_of_parameters`` parameters in ITK's order; the identity
        transform when omitted.
    center : array_like, optional
        Centre of rotation/scaling (ITK's fixed parameters), a point of the
        fixed space; the origin when omitted. Translations have no centre and
        accept only ``None``.

    Raises
    ------
    InputError
        If the dimension is not 2 or 3 (or not supported by the class), or if
        the parameters or centre have the wrong length or are not finite.

    Notes
    -----
    Subclasses implement ``_matrix_and_derivatives`` (``M`` and ``dM/dtheta``)
    and set ``_translation_slice`` (where the translation ``t`` sits in the
    parameter vector). Everything else (offset, points, Jacobians) follows from
    ``W(x) = M (x - c) + c + t``.
    """

    #: One of :data:`TRANSFORM_KINDS`.
    kind: ClassVar[str]
    #: ITK / SimpleITK class name for each supported dimension.
    itk_names: ClassVar[dict[int, str]]
    #: Whether the transform has a centre (ITK fixed parameters).
    has_center: ClassVar[bool] = True
    #: Where the centre sits in the parameter vector when it is optimised (ITK's
    #: CenteredRigid2DTransform); None: the centre is the fixed parameters.
    _center_parameters: ClassVar[slice | None] = None
    #: Whether :meth:`jacobian_in_affine_basis` is the same at every parameter vector
    #: (affine and translation: their matrix and translation are the parameters).
    constant_jacobian: ClassVar[bool] = False

    def __init__(
        self,
        dimension: int,
        parameters: ArrayLike | None = None,
        center: ArrayLike | None = None,
    ) -> None:
        dimension = _check_dimension(dimension)
        if dimension not in self.itk_names:
            supported = " or ".join(f"{d}-D" for d in sorted(self.itk_names))
            raise InputError(
                f"dimension {dimension} is refused: {type(self).__name__} is {supported} only"
            )
        self._dimension = dimension
        self._center = np.zeros(dimension)
        self._parameters = self._identity_parameters()
        self.center = center
        if parameters is not None:
            self.parameters = parameters

    # ------------------------------------------------------------------ hooks
    @classmethod
    @abc.abstractmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        """Number of parameters for ``dimension``."""

    @abc.abstractmethod
    def _identity_parameters(self) -> np.ndarray:
        """Parameters of the identity transform."""

    @abc.abstractmethod
    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``M`` (d, d) and ``dM/dtheta`` (P, d, d) at the current parameters."""

    @abc.abstractmethod
    def _translation_slice(self) -> slice:
        """Position of the translation ``t`` in the parameter vector."""

    def _validate_parameters(self, parameters: np.ndarray) -> None:  # noqa: B027
        """Extra checks on a finite parameter vector of the right length."""

    # ------------------------------------------------------------- properties
    @property
    def dimension(self) -> int:
        """Spatial dimension (2 or 3)."""
        return self._dimension

    @property
    def itk_name(self) -> str:
        """Name of the matching ITK / SimpleITK class, e.g. ``"Euler2DTransform"``."""
        return self.itk_names[self._dimension]

    @property
    def number_of_parameters(self) -> int:
        """Number of (optimised) parameters ``P``."""
        return self._number_of_parameters(self._dimension)

    @property
    def parameters(self) -> np.ndarray:
        """A copy of the parameter vector, in ITK's order.

        Setting it checks the length and that every value is finite (and, for
        :class:`Similarity3DTransform`, that the versor vector has norm < 1);
        the transform is unchanged when the check fails.
        """
        return self._parameters.copy()

    @parameters.setter
    def parameters(self, values: ArrayLike) -> None:
        array = _as_finite_vector(values, self.number_of_parameters, "parameters")
        self._validate_parameters(array)
        self._parameters = array

    @property
    def translation(self) -> np.ndarray:
        """A copy of the translation ``t`` (ITK's translation parameters)."""
        return self._parameters[self._translation_slice()].copy()

    @translation.setter
    def translation(self, values: ArrayLike) -> None:
        parameters = self._parameters.copy()
        parameters[self._translation_slice()] = _as_finite_vector(
            values, self._dimension, "translation"
        )
        self._parameters = parameters

    @property
    def center(self) -> np.ndarray | None:
        """A copy of the centre (ITK's fixed parameters, or the centre parameters of a
        :class:`CenteredRigid2DTransform`), or ``None`` for translations."""
        if not self.has_center:
            return None
        return self._centre().copy()

    @center.setter
    def center(self, values: ArrayLike | None) -> None:
        if values is not None and not self.has_center:
            raise InputError(f"a {type(self).__name__} has no centre: pass center=None")
        centre = (
            np.zeros(self._dimension)
            if values is None
            else _as_finite_vector(values, self._dimension, "center")
        )
        if self._center_parameters is None:
            self._center = centre
        else:
            parameters = self._parameters.copy()
            parameters[self._center_parameters] = centre
            self._parameters = parameters

    def _centre(self) -> np.ndarray:
        """The centre ``c`` of ``W(x) = M (x - c) + c + t`` (not a copy)."""
        if self._center_parameters is None:
            return self._center
        return self._parameters[self._center_parameters]

    @property
    def fixed_parameters(self) -> np.ndarray:
        """ITK's fixed parameters: the centre (empty for translations).

        ``Euler3DTransform`` appends ITK's ``ComputeZYX`` flag, always 0 here.
        """
        if not self.has_center:
            return np.zeros(0)
        return self._center.copy()

    # ---------------------------------------------------------------- methods
    def matrix_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(M, offset)`` with ``W(x) = M x + offset``.

        Returns
        -------
        matrix : ndarray, shape (d, d)
        offset : ndarray, shape (d,)
            ``t + c - M c`` (just ``t`` for translations).
        """
        matrix, _ = self._matrix_and_derivatives()
        translation = self._parameters[self._translation_slice()]
        centre = self._centre()
        offset = translation + centre - matrix @ centre
        return matrix, offset

    def transform_points(self, points: ArrayLike) -> np.ndarray:
        """Map fixed-space points to moving space.

        Parameters
        ----------
        points : array_like, shape (n, d)

        Returns
        -------
        ndarray, shape (n, d)
            ``W(x) = M x + offset`` for every row ``x``.
        """
        array = np.asarray(points, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != self._dimension:
            raise InputError(
                f"the points must be an array of shape (n, {self._dimension}), not {array.shape}"
            )
        matrix, offset = self.matrix_offset()
        return array @ matrix.T + offset

    def jacobian_in_affine_basis(self, reference: ArrayLike) -> np.ndarray:
        """Parameter Jacobian at the current parameters, in the affine basis.

        Parameters
        ----------
        reference : array_like, shape (d,)
            The public reference point ``c`` of ``phi(x) = (x - c, 1)``.

        Returns
        -------
        ndarray, shape (P, d, d + 1)
            ``C`` with ``dW_k/dtheta_p (x) = sum_j C[p, k, j] phi_j(x)`` for every x.
            ``C[p, :, :d] = dM/dtheta_p`` and
            ``C[p, :, d] = dM/dtheta_p (reference - center) + dt/dtheta_p
            + (I - M) dc/dtheta_p`` (the last term for a centre that is a parameter).
        """
        ref = _as_finite_vector(reference, self._dimension, "reference point")
        d = self._dimension
        matrix, derivatives = self._matrix_and_derivatives()
        jac = np.zeros((self.number_of_parameters, d, d + 1))
        jac[:, :, :d] = derivatives
        jac[:, :, d] = derivatives @ (ref - self._centre())
        positions = np.arange(self.number_of_parameters)
        jac[positions[self._translation_slice()], np.arange(d), d] += 1.0
        if self._center_parameters is not None:
            jac[positions[self._center_parameters], :, d] += (np.eye(d) - matrix).T
        return jac

    def update(self, delta: ArrayLike) -> None:
        """Add a step to the parameters in place: ``theta <- theta + delta``.

        The update is additive in ITK's parameters; the versor transforms compose
        their rotation with the step's instead, as ITK does (:class:`_VersorTransform`).
        The step is validated like ``parameters``; on failure the transform is unchanged.

        Parameters
        ----------
        delta : array_like, shape (P,)

        Raises
        ------
        InputError
            If ``delta`` has the wrong length or the result is not finite.
        """
        step = _as_finite_vector(delta, self.number_of_parameters, "parameter update")
        self.parameters = self._parameters + step

    def copy(self) -> LinearTransform:
        """Return an independent copy."""
        return type(self)(self._dimension, self._parameters, self.center)

    def __repr__(self) -> str:
        params = [float(v) for v in self._parameters]
        text = f"{type(self).__name__}(dimension={self._dimension}, parameters={params}"
        if self.has_center:
            text += f", center={[float(v) for v in self._centre()]}"
        return text + ")"


class TranslationTransform(LinearTransform):
    """Translation ``W(x) = x + t``; parameters ``t`` (ITK ``TranslationTransform``).

    Examples
    --------
    >>> TranslationTransform(2, [1.0, 2.0]).transform_points([[0.0, 0.0]])
    array([[1., 2.]])
    """

    kind = "translation"
    itk_names: ClassVar[dict[int, str]] = {2: "TranslationTransform", 3: "TranslationTransform"}
    has_center = False
    constant_jacobian = True

    @classmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        return dimension

    def _identity_parameters(self) -> np.ndarray:
        return np.zeros(self._dimension)

    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        d = self._dimension
        return np.eye(d), np.zeros((d, d, d))

    def _translation_slice(self) -> slice:
        return slice(0, self._dimension)


class Euler2DTransform(LinearTransform):
    """2-D rigid transform; parameters ``(angle, tx, ty)``, angle in radians.

    ``M = [[cos a, -sin a], [sin a, cos a]]`` about the centre (ITK ``Euler2DTransform``).
    """

    kind = "rigid"
    itk_names: ClassVar[dict[int, str]] = {2: "Euler2DTransform"}

    @classmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        return 3

    def _identity_parameters(self) -> np.ndarray:
        return np.zeros(3)

    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        rotation, d_rotation = _rotation_2d(self._parameters[0])
        derivatives = np.zeros((3, 2, 2))
        derivatives[0] = d_rotation
        return rotation, derivatives

    def _translation_slice(self) -> slice:
        return slice(1, 3)


class Euler3DTransform(LinearTransform):
    """3-D rigid transform; parameters ``(angleX, angleY, angleZ, tx, ty, tz)``.

    Uses ITK's default rotation order (``ComputeZYX`` off):
    ``M = Rz(angleZ) @ Rx(angleX) @ Ry(angleY)``, i.e. a point is rotated about
    y first, then x, then z. ITK's fixed parameters are ``(cx, cy, cz, 0)``, the
    last value being the ``ComputeZYX`` flag.
    """

    kind = "rigid"
    itk_names: ClassVar[dict[int, str]] = {3: "Euler3DTransform"}

    @classmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        return 6

    def _identity_parameters(self) -> np.ndarray:
        return np.zeros(6)

    @property
    def fixed_parameters(self) -> np.ndarray:
        """ITK's fixed parameters ``(cx, cy, cz, ComputeZYX=0)``."""
        return np.append(self._center, 0.0)

    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        rx, drx = _rotation_x(self._parameters[0])
        ry, dry = _rotation_y(self._parameters[1])
        rz, drz = _rotation_z(self._parameters[2])
        derivatives = np.zeros((6, 3, 3))
        derivatives[0] = rz @ drx @ ry
        derivatives[1] = rz @ rx @ dry
        derivatives[2] = drz @ rx @ ry
        return rz @ rx @ ry, derivatives

    def _translation_slice(self) -> slice:
        return slice(3, 6)

    @staticmethod
    def angles_from_matrix(matrix: ArrayLike) -> np.ndarray:
        """Angles ``(angleX, angleY, angleZ)`` of a rotation ``Rz @ Rx @ Ry``.

        Follows ``itk::Euler3DTransform::ComputeMatrixParameters`` (ZXY order),
        including its gimbal-lock branch (``|cos angleX| <= 5e-5`` sets angleZ = 0).
        """
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (3, 3) or not np.all(np.isfinite(m)):
            raise InputError("the rotation matrix must be a finite 3 x 3 array")
        angle_x = math.asin(min(1.0, max(-1.0, m[2, 1])))
        a = math.cos(angle_x)
        if abs(a) > 0.00005:
            angle_y = math.atan2(-m[2, 0] / a, m[2, 2] / a)
            angle_z = math.atan2(-m[0, 1] / a, m[1, 1] / a)
        else:
            angle_z = 0.0
            angle_y = math.atan2(m[0, 2], m[0, 0])
        return np.array([angle_x, angle_y, angle_z])


class CenteredRigid2DTransform(LinearTransform):
    """2-D rigid transform whose centre is optimised; parameters ``(angle, cx, cy, tx, ty)``
    (ITK ``CenteredRigid2DTransform``): ``W(x) = R(angle) (x - c) + c + t``.

    ITK's fixed parameters are two unused zeros; :attr:`center` reads and sets the
    centre parameters. SimpleITK has no such class (:func:`~ppir_itk.wrapping.transforms.
    to_sitk` gives its ``Euler2DTransform`` of the same map).
    """

    kind = "rigid"
    itk_names: ClassVar[dict[int, str]] = {2: "CenteredRigid2DTransform"}
    _center_parameters = slice(1, 3)

    @classmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        return 5

    def _identity_parameters(self) -> np.ndarray:
        return np.zeros(5)

    @property
    def fixed_parameters(self) -> np.ndarray:
        """ITK's fixed parameters: ``(0, 0)``, unused (the centre is a parameter)."""
        return np.zeros(2)

    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        rotation, d_rotation = _rotation_2d(self._parameters[0])
        derivatives = np.zeros((5, 2, 2))
        derivatives[0] = d_rotation
        return rotation, derivatives

    def _translation_slice(self) -> slice:
        return slice(3, 5)


class Similarity2DTransform(LinearTransform):
    """2-D similarity; parameters ``(scale, angle, tx, ty)``.

    ``M = scale * [[cos a, -sin a], [sin a, cos a]]`` about the centre
    (ITK ``Similarity2DTransform``).
    """

    kind = "similarity"
    itk_names: ClassVar[dict[int, str]] = {2: "Similarity2DTransform"}

    @classmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        return 4

    def _identity_parameters(self) -> np.ndarray:
        return np.array([1.0, 0.0, 0.0, 0.0])

    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        scale = self._parameters[0]
        rotation, d_rotation = _rotation_2d(self._parameters[1])
        derivatives = np.zeros((4, 2, 2))
        derivatives[0] = rotation
        derivatives[1] = scale * d_rotation
        return scale * rotation, derivatives

    def _translation_slice(self) -> slice:
        return slice(2, 4)


class _VersorTransform(LinearTransform):
    """A 3-D transform whose first three parameters are ITK's versor vector ``v``: the
    rotation of the unit quaternion ``(v, sqrt(1 - |v|^2))``, ``v = sin(angle / 2) axis``.

    The versor vector must have norm below ``1 - 1e-10``, where ITK would silently
    rescale it.

    :meth:`update` takes ITK's step (``VersorRigid3DTransform::UpdateTransformParameters``,
    which ``Similarity3DTransform`` inherits), not a sum: the rotation by ``|delta[:3]|``
    radians about the axis ``delta[:3]`` is applied before the current rotation, and every
    later parameter (translation, scale, ...) is added.
    """

    def update(self, delta: ArrayLike) -> None:
        """Take ITK's step ``delta`` in place: the versor composed with the rotation of
        ``delta[:3]``, the other parameters added; on failure the transform is unchanged.

        Raises
        ------
        InputError
            If ``delta`` has the wrong length or the result is not finite.
        """
        step = _as_finite_vector(delta, self.number_of_parameters, "parameter update")
        parameters = self._parameters + step
        parameters[:3] = _versor_step(self._parameters[:3], step[:3])
        self.parameters = parameters

    def _validate_parameters(self, parameters: np.ndarray) -> None:
        norm = float(np.linalg.norm(parameters[:3]))
        if norm >= _VERSOR_NORM_LIMIT:
            raise InputError(
                f"the versor vector (the first three {type(self).__name__} parameters) "
                f"must have norm < 1, not {norm!r}"
            )


class Similarity3DTransform(_VersorTransform):
    """3-D similarity; parameters ``(vx, vy, vz, tx, ty, tz, scale)``.

    ITK's ``Similarity3DTransform`` (a ``VersorRigid3DTransform`` with a scale):
    the rotation is the unit quaternion ``(vx, vy, vz, w)`` with
    ``w = sqrt(1 - |v|^2)`` (so ``v = sin(angle / 2) * axis``), and
    ``M = scale * R(v)``. The versor vector must have norm < 1 (more precisely
    below ``1 - 1e-10``, where ITK would silently rescale it).
    """

    kind = "similarity"
    itk_names: ClassVar[dict[int, str]] = {3: "Similarity3DTransform"}

    @classmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        return 7

    def _identity_parameters(self) -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])

    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        scale = self._parameters[6]
        rotation, d_rotation = _versor_matrix(self._parameters[:3])
        derivatives = np.zeros((7, 3, 3))
        derivatives[:3] = scale * d_rotation
        derivatives[6] = rotation
        return scale * rotation, derivatives

    def _translation_slice(self) -> slice:
        return slice(3, 6)


class VersorRigid3DTransform(_VersorTransform):
    """3-D rigid transform; parameters ``(vx, vy, vz, tx, ty, tz)``, ``M = R(v)`` about
    the centre (ITK ``VersorRigid3DTransform``).

    :meth:`update` takes ITK's composed step (:class:`_VersorTransform`). The Jacobian is
    ITK's, with respect to ``v`` itself.
    """

    kind = "rigid"
    itk_names: ClassVar[dict[int, str]] = {3: "VersorRigid3DTransform"}

    @classmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        return 6

    def _identity_parameters(self) -> np.ndarray:
        return np.zeros(6)

    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        rotation, d_rotation = _versor_matrix(self._parameters[:3])
        derivatives = np.zeros((self.number_of_parameters, 3, 3))
        derivatives[:3] = d_rotation
        return rotation, derivatives

    def _translation_slice(self) -> slice:
        return slice(3, 6)


class ScaleSkewVersor3DTransform(VersorRigid3DTransform):
    """3-D versor, scale and skew; parameters ``(vx, vy, vz, tx, ty, tz, sx, sy, sz,
    k_1, ..., k_6)`` (ITK ``ScaleSkewVersor3DTransform``).

    As ITK builds it, the matrix is a sum, not a product:
    ``M = R(v) + diag(s - 1) + K`` with ``K`` zero on the diagonal and
    ``(K01, K02, K10, K12, K20, K21) = (k_1, ..., k_6)``. It is updated as the
    :class:`VersorRigid3DTransform` it extends.
    """

    kind = "affine"
    itk_names: ClassVar[dict[int, str]] = {3: "ScaleSkewVersor3DTransform"}
    _SKEW_ENTRIES: ClassVar[tuple[tuple[int, int], ...]] = (
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 2),
        (2, 0),
        (2, 1),
    )

    @classmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        return 15

    def _identity_parameters(self) -> np.ndarray:
        return np.concatenate([np.zeros(6), np.ones(3), np.zeros(6)])

    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        rotation, derivatives = super()._matrix_and_derivatives()
        matrix = rotation + np.diag(self._parameters[6:9] - 1.0)
        for axis in range(3):
            derivatives[6 + axis, axis, axis] = 1.0
        for position, (row, column) in enumerate(self._SKEW_ENTRIES, start=9):
            matrix[row, column] += self._parameters[position]
            derivatives[position, row, column] = 1.0
        return matrix, derivatives


class AffineTransform(LinearTransform):
    """Affine transform; parameters ``(M row-major, t)``, ``d * (d + 1)`` values.

    ``W(x) = M (x - c) + c + t`` (ITK ``AffineTransform``).
    """

    kind = "affine"
    itk_names: ClassVar[dict[int, str]] = {2: "AffineTransform", 3: "AffineTransform"}
    constant_jacobian = True

    @classmethod
    def _number_of_parameters(cls, dimension: int) -> int:
        return dimension * (dimension + 1)

    def _identity_parameters(self) -> np.ndarray:
        d = self._dimension
        return np.concatenate([np.eye(d).ravel(), np.zeros(d)])

    def _matrix_and_derivatives(self) -> tuple[np.ndarray, np.ndarray]:
        d = self._dimension
        matrix = self._parameters[: d * d].reshape(d, d).copy()
        derivatives = np.zeros((d * (d + 1), d, d))
        derivatives[: d * d] = np.eye(d * d).reshape(d * d, d, d)
        return matrix, derivatives

    def _translation_slice(self) -> slice:
        d = self._dimension
        return slice(d * d, d * (d + 1))

    @classmethod
    def from_matrix_offset(
        cls,
        matrix: ArrayLike,
        offset: ArrayLike,
        center: ArrayLike | None = None,
    ) -> AffineTransform:
        """Build ``W(x) = matrix @ x + offset`` with the given centre.

        The translation parameter is ``t = offset - center + matrix @ center``.
        """
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise InputError(f"the matrix must be square, not of shape {m.shape}")
        d = _check_dimension(m.shape[0])
        o = _as_finite_vector(offset, d, "offset")
        c = np.zeros(d) if center is None else _as_finite_vector(center, d, "center")
        t = o - c + m @ c
        return cls(d, np.concatenate([m.ravel(), t]), c)


def RigidTransform(  # noqa: N802 - a factory named like the classes it returns
    dimension: int,
    parameters: ArrayLike | None = None,
    center: ArrayLike | None = None,
) -> Euler2DTransform | Euler3DTransform:
    """Return an :class:`Euler2DTransform` (d = 2) or :class:`Euler3DTransform` (d = 3)."""
    dimension = _check_dimension(dimension)
    cls = Euler2DTransform if dimension == 2 else Euler3DTransform
    return cls(dimension, parameters, center)


def SimilarityTransform(  # noqa: N802 - a factory named like the classes it returns
    dimension: int,
    parameters: ArrayLike | None = None,
    center: ArrayLike | None = None,
) -> Similarity2DTransform | Similarity3DTransform:
    """Return a :class:`Similarity2DTransform` (d = 2) or :class:`Similarity3DTransform`."""
    dimension = _check_dimension(dimension)
    cls = Similarity2DTransform if dimension == 2 else Similarity3DTransform
    return cls(dimension, parameters, center)


#: What builds each kind :func:`make_transform` takes, from the most to the least constrained.
_LINEAR_KINDS: dict[str, Callable[[int], LinearTransform]] = {
    "translation": TranslationTransform,
    "rigid": RigidTransform,
    "similarity": SimilarityTransform,
    "affine": AffineTransform,
}

#: Names accepted by :func:`make_transform` (:mod:`ppir_itk.transform_kinds` adds B-splines).
TRANSFORM_KINDS: tuple[str, ...] = tuple(_LINEAR_KINDS)


def make_transform(kind: str, dimension: int) -> LinearTransform:
    """Return the identity transform of a kind, centred at the origin.

    Parameters
    ----------
    kind : str
        One of :data:`TRANSFORM_KINDS`: ``"translation"``, ``"rigid"``,
        ``"similarity"``, ``"affine"``.
    dimension : int
        2 or 3.

    Raises
    ------
    InputError
        For an unknown kind (the message lists the valid ones) or a dimension
        other than 2 or 3.
    """
    dimension = _check_dimension(dimension)
    if kind not in _LINEAR_KINDS:
        raise InputError(
            f"unknown linear transform '{kind}': choose one of {', '.join(TRANSFORM_KINDS)}"
        )
    return _LINEAR_KINDS[kind](dimension)
