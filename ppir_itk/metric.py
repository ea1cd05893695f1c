"""The metrics' common part, and ``PrivateMeanSquaresImageToImageMetric``: SSD, split
between two parties.

ITK's ``MeanSquaresImageToImageMetricv4`` computes, over the fixed grid,
``value = sum (I(W(x)) - J(x))^2 / n_valid``. Here the moving party holds I
and the fixed party holds J, so the metric is split (DESIGN.md §2):

- local to the moving party, by the C kernels: the warped image ``I_w``, its
  gradient ``g``, the valid-point mask, ``S^T S`` and ``S^T I_w`` (through the
  affine-basis Gram matrix and moments, then the transform's small
  coefficient matrix ``C``: ``S^T S = C G C^T``);
- joint, through a backend: ``S^T J = C moments``, ``I_w^T J`` and
  ``sum_valid J^2`` (:mod:`ppir_itk.backends.base`).

The metric never reads J. Derivatives follow ITK's v4 convention:
:meth:`GetDerivative` returns the *negative* gradient of the value (the
direction that decreases it), like ITK's mean squares metric.

Examples
--------
Against a fixed party's ``ppir serve`` (or ``ppir_itk.in_process_session(fixed)``
in tests)::

    session = ppir_itk.connect("fixed-site:7443", tls=ppir_itk.TLS.for_role("pki", "moving-party"))
    metric = PrivateMeanSquaresImageToImageMetric(backend="he", session=session)
    metric.SetMovingImage(moving)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from ppir_itk import _kernels
from ppir_itk.backends import MovingFields
from ppir_itk.bspline import BSplineTransform
from ppir_itk.errors import InputError
from ppir_itk.fixed_party import FixedPartySession
from ppir_itk.image import GridGeometry, ImageGrid
from ppir_itk.linear_map import PublicLinearMap
from ppir_itk.masks import as_mask, inside
from ppir_itk.metric_kinds import MEAN_SQUARES_SETTINGS, MetricSettings
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.parallel import for_chunks
from ppir_itk.points import PointSet
from ppir_itk.protocol.session import LocalSession, Session
from ppir_itk.pyramid import Level, moving_level_image
from ppir_itk.sampling import GMS, URS, NoSampling, Regular
from ppir_itk.transforms import LinearTransform
from ppir_itk.wrapping.images import as_image_grid, to_sitk


@dataclass(frozen=True)
class Evaluation:
    """What an optimizer consumes: value, gradient and (least-squares metrics) the
    Gauss-Newton Hessian."""

    value: float
    gradient: np.ndarray  # d value / d theta
    hessian: Any  # Gauss-Newton approximation of d2 value / d theta2; None: not least squares
    number_of_valid_points: int


class PrivateImageToImageMetric(abc.ABC):
    """What every private metric shares, ITK style: the moving image, the transform, the
    session with the fixed party and each level's points and warp. A metric class adds
    :meth:`evaluate` (and its name, :attr:`settings`).

    Parameters
    ----------
    backend : str or MovingPartySession
        The joint-term backend's name (``"he"``; ``"clear"`` is NOT private), or
        the moving party's session already made with one.
    session : Session, optional
        The session with the fixed party (:func:`ppir_itk.connect` or
        :func:`ppir_itk.in_process_session`), when ``backend`` is a name.
    backend_parameters : dict, optional
        The backend's parameters, when ``backend`` is a name.
    bending_energy_weight : float
        B-spline transforms only: ``w`` in ``value + w var(I) theta^T E theta / |Omega|``,
        with ``E`` the thin-plate bending energy of the deformation
        (:meth:`ppir_itk.bspline.BSplineTransform.bending_energy`), ``|Omega|``
        the area (volume) of the control grid's domain and ``var(I)`` the
        moving image's intensity variance (left out by a metric whose value has
        no intensity unit, as correlation's: :meth:`_bending_energy_scale`), so
        that ``w`` (mm^2, a smoothing length squared) does not depend on the
        intensity scale or the image size. 0 (the default) adds nothing; around
        the squared control-point spacing is a strong regulariser.
    use_moving_image_gradient_filter : bool
        ITK's ``UseMovingImageGradientFilter``: the moving gradient from ITK's recursive
        Gaussian gradient image (ITK's and SimpleITK's default: the derivative is then
        ITK's), or, by default here, central differences (:meth:`_moving_gradient`).
    """

    def __init__(
        self,
        backend: str | MovingPartySession = "he",
        session: Session | None = None,
        *,
        backend_parameters: dict[str, str] | None = None,
        bending_energy_weight: float = 0.0,
        use_moving_image_gradient_filter: bool = False,
    ) -> None:
        if not bending_energy_weight >= 0:
            raise InputError(f"the bending-energy weight must be >= 0, got {bending_energy_weight}")
        self.bending_energy_weight = float(bending_energy_weight)
        self.use_moving_image_gradient_filter = bool(use_moving_image_gradient_filter)
        if isinstance(backend, str):
            if not isinstance(session, Session):
                raise InputError(f"backend '{backend}' needs a session with the fixed party")
            backend = MovingPartySession(session, backend, backend_parameters, self.settings)
        elif backend.metric != self.settings:
            raise InputError(
                f"the moving party's session computes metric '{backend.metric.name}', "
                f"not '{self.settings.name}'"
            )
        self.moving_party = backend
        self._moving: ImageGrid | None = None
        self._moving_mask: ImageGrid | None = None
        self._mask_points: tuple[PointSet, np.ndarray] | None = None  # the level's x, kept
        self._transform: LinearTransform | BSplineTransform | None = None
        self._moving_initial: LinearTransform | None = None
        self._level: _LevelData | None = None
        self._kept_jacobian: tuple[tuple[type, bytes], PointSet, _Jacobian] | None = None

    # -- set-up ---------------------------------------------------------------
    def SetMovingImage(self, moving: Any) -> None:  # noqa: N802
        self._moving = as_image_grid(moving, name="moving image")
        self._moving_variance = float(np.var(self._moving.array, dtype=np.float64))

    def GetMovingImage(self) -> ImageGrid | None:  # noqa: N802
        return self._moving

    def SetMovingImageMask(self, mask: Any) -> None:  # noqa: N802
        """ITK's moving mask (an ``itk.ImageMaskSpatialObject``, an image or a path; None:
        no mask): a point counts only where ``T(x)`` is inside it. It is the moving party's
        own and stays here."""
        self._moving_mask = None if mask is None else as_mask(mask, name="moving mask")

    def GetMovingImageMask(self) -> ImageGrid | None:  # noqa: N802
        return self._moving_mask

    def SetFixedImageMask(self, mask: Any) -> None:  # noqa: N802
        """ITK's fixed mask. It is the fixed party's, private to it: only a fixed party in
        this process (:func:`ppir_itk.in_process_session`) can be given one here, before the
        session starts; a remote one serves with its own (``ppir serve --fixed-mask``)."""
        session = self.moving_party.session
        serving = session.serving if isinstance(session, LocalSession) else None
        if not isinstance(serving, FixedPartySession) or serving.hello is not None:
            raise InputError(
                "SetFixedImageMask: the fixed mask belongs to the fixed party: give it to "
                "'ppir serve --fixed-mask' on the fixed party's machine"
            )
        serving.fixed_mask = (
            None
            if mask is None
            else as_mask(mask, name="fixed mask", dimension=serving.image.dimension)
        )

    @property
    def fixed_masked(self) -> bool:
        """Whether the fixed party restricts the metric to its private mask (its Welcome)."""
        return self.moving_party.backend.fixed_masked

    def SetTransform(self, transform: LinearTransform | BSplineTransform) -> None:  # noqa: N802
        self._transform = transform

    def GetTransform(self) -> LinearTransform | BSplineTransform:  # noqa: N802
        if self._transform is None:
            raise RuntimeError("the metric has no transform: call SetTransform first")
        return self._transform

    def SetMovingInitialTransform(self, transform: LinearTransform | None) -> None:  # noqa: N802
        """A fixed linear transform applied after the optimised one (ITK's moving initial
        transform: the moving image is read at ``initial(T(x))``; None: none). It is not
        optimised and not part of the result, as in ITK."""
        if transform is not None and not isinstance(transform, LinearTransform):
            raise InputError(
                f"the moving initial transform must be linear, not {type(transform).__name__}"
            )
        self._moving_initial = transform

    def GetMovingInitialTransform(self) -> LinearTransform | None:  # noqa: N802
        return self._moving_initial

    def GetNumberOfParameters(self) -> int:  # noqa: N802
        return self.GetTransform().number_of_parameters

    def GetParameters(self) -> np.ndarray:  # noqa: N802
        return self.GetTransform().parameters

    def SetParameters(self, parameters: np.ndarray) -> None:  # noqa: N802
        self.GetTransform().parameters = parameters

    def UpdateTransformParameters(self, delta: np.ndarray) -> None:  # noqa: N802
        self.GetTransform().update(delta)

    @property
    def fixed_geometry(self) -> GridGeometry:
        if self.moving_party.fixed_geometry is None:
            raise RuntimeError("the session has not started: the fixed geometry is unknown")
        return self.moving_party.fixed_geometry

    def initialize_level(self, level_index: int, level: Level, sampling: Any) -> PointSet:
        """Open a level with the fixed party and agree its point set."""
        if self._moving is None:
            raise RuntimeError("the metric has no moving image: call SetMovingImage first")
        if self._moving.dimension != self.fixed_geometry.dimension:
            raise InputError(
                f"the fixed image is {self.fixed_geometry.dimension}-D and the moving image is "
                f"{self._moving.dimension}-D; both must have the same dimension"
            )
        fixed_level_ready = self.moving_party.begin_level(level_index)
        moving = moving_level_image(self._moving, level)  # while the fixed party does its own
        gradient = self._moving_gradient(moving)
        fixed_level = fixed_level_ready()
        self._level = _LevelData(moving, gradient, PointSet(fixed_level, None), None)

        private_sample, revealed = None, None
        if isinstance(sampling, GMS):
            magnitude = np.linalg.norm(self._warp()[1], axis=1)
            drawn = sampling.draw(magnitude, level_index)
            if sampling.reveal_indices:
                revealed = drawn
            else:
                private_sample = np.zeros(fixed_level.number_of_points, dtype=np.uint8)
                private_sample[drawn] = 1
        elif not (sampling is None or isinstance(sampling, NoSampling | URS | Regular)):
            raise InputError(f"unknown sampling {sampling!r}")
        transform = self.GetTransform()
        control_grid = None
        if isinstance(transform, BSplineTransform):  # the basis both parties will use
            control_grid = transform.control_grid
        points = self.moving_party.select_points(
            fixed_level, revealed=revealed, control_grid=control_grid
        )
        self._level = _LevelData(moving, gradient, points, private_sample)
        return points

    @property
    @abc.abstractmethod
    def settings(self) -> MetricSettings:
        """The metric, as the session's Hello names it."""

    def SetUseMovingImageGradientFilter(self, use: bool) -> None:  # noqa: N802
        """ITK's switch of the moving gradient's source, read as each level opens."""
        self.use_moving_image_gradient_filter = bool(use)

    def GetUseMovingImageGradientFilter(self) -> bool:  # noqa: N802
        return self.use_moving_image_gradient_filter

    def _moving_gradient(self, moving: ImageGrid) -> np.ndarray:
        """The level's moving gradient image, in index space (:func:`_kernels.warp`
        interpolates it): central differences (docs/kernels.md), or with
        ``use_moving_image_gradient_filter`` ITK's metrics' default: the recursive Gaussian
        gradient image, sigma the largest moving spacing, normalised across scale, in
        physical directions, with which the derivative is ITK's GetDerivative
        (``tests/test_mattes.py``)."""
        if not self.use_moving_image_gradient_filter:
            gradient = np.empty(moving.array.shape + (moving.dimension,))
            _kernels.central_gradient(moving.array, gradient)
            return gradient
        image = sitk.Cast(to_sitk(moving), sitk.sitkFloat64)
        sigma = float(max(moving.geometry.spacing))
        physical = sitk.GetArrayFromImage(
            sitk.GradientRecursiveGaussian(
                image, sigma=sigma, normalizeAcrossScale=True, useImageDirection=True
            )
        )
        # physical = P^T index (docs/kernels.md: warp), so index = physical P^-1 per row
        to_index = moving.geometry.physical_to_index
        return np.ascontiguousarray(physical.astype(np.float64) @ np.linalg.inv(to_index))

    # -- evaluation -----------------------------------------------------------
    def _warp(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """I_w, g and the valid mask on the point set, at the current transform."""
        level = self._require_level()
        points = level.points
        fixed = points.geometry
        moving = level.moving
        transform = self.GetTransform()
        matrix, offset = transform.matrix_offset()
        if self._moving_initial is not None:  # initial(A x + b): one affine map for the kernel
            initial_matrix, initial_offset = self._moving_initial.matrix_offset()
            matrix, offset = initial_matrix @ matrix, initial_matrix @ offset + initial_offset
        displacement = None
        if isinstance(transform, BSplineTransform):
            displacement = transform.displacement(fixed, points.indices)
        n, d = points.size, fixed.dimension
        values = np.empty(n)
        gradient = np.empty((n, d))
        valid = np.empty(n, dtype=np.uint8)

        def warp(start: int, stop: int) -> int:
            return _kernels.warp(
                moving.array,
                level.moving_gradient,
                moving.geometry.physical_to_index,
                moving.geometry.origin_array,
                fixed.size_array,
                fixed.index_to_physical,
                fixed.origin_array,
                matrix,
                offset,
                points.indices,
                start,
                stop,
                values,
                gradient,
                valid,
                displacement,
            )

        n_valid = sum(for_chunks(warp, n))
        if self._moving_initial is not None:
            # The chain rule through the initial transform: dI(initial(y))/dy = A^T grad I.
            gradient = gradient @ self._moving_initial.matrix_offset()[0]
        kept = level.private_sample
        if self._moving_mask is not None:  # ITK's: the moving point inside the moving mask too
            physical = self._level_physical_points(points)
            if displacement is not None:
                physical = physical + displacement
            moving_mask = inside(self._moving_mask, physical, matrix, offset)
            kept = moving_mask if kept is None else kept & moving_mask
        if kept is not None:
            valid &= kept
            values *= kept
            gradient *= kept[:, None]
            n_valid = int(np.count_nonzero(valid))
        return values, gradient, valid, n_valid

    def _level_physical_points(self, points: PointSet) -> np.ndarray:
        """The physical x of the point set's points (n, d), kept while the set is the same."""
        if self._mask_points is None or self._mask_points[0] is not points:
            geometry = points.geometry
            flat = (
                np.arange(geometry.number_of_points) if points.indices is None else points.indices
            )
            self._mask_points = (points, geometry.physical_points(geometry.flat_to_index(flat)))
        return self._mask_points[1]

    @abc.abstractmethod
    def evaluate(self) -> Evaluation:
        """Value and gradient (and a least-squares metric's Hessian) at the current
        parameters."""

    def _penalized(
        self, jacobian: _Jacobian, value: float, derivative: np.ndarray, hessian: Any
    ) -> tuple[float, np.ndarray, Any]:
        """Value, derivative and Hessian (None: none) plus a B-spline's bending energy, its
        weight already in the jacobian's penalty."""
        penalty = jacobian.penalty
        if penalty is None:
            return value, derivative, hessian
        theta = self.GetTransform().parameters
        value += float(theta @ (penalty @ theta))
        derivative = derivative + 2.0 * (penalty @ theta)
        if hessian is not None:
            hessian = hessian + 2.0 * penalty
        return value, derivative, hessian

    def _overlap(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """:meth:`_warp`, refusing a transform under which the images do not overlap."""
        warped = self._warp()
        self._check_overlap(warped[3])
        return warped

    @property
    def _within_masks(self) -> str:
        """How a refusal names the points it counts: those inside the masks, with one."""
        return "inside the masks " if self._moving_mask is not None or self.fixed_masked else ""

    def _check_overlap(self, count: int) -> None:
        if count == 0:
            raise InputError(
                f"no fixed-grid point {self._within_masks}maps inside the moving image: the "
                "images do not overlap under the current transform (try the 'geometry' or "
                "'moments' initialiser)"
            )

    def _masked_count(self, count: float) -> int:
        """The points inside both masks (a joint term's ``masked.count``, rounded: a private
        backend's may carry the policy's noise), refused as :meth:`_overlap` refuses none."""
        points = max(round(count), 0)
        self._check_overlap(points)
        return points

    def _jacobian(self) -> _Jacobian:
        """dW/dtheta on the level's points, with the bending energy's weight; kept over a
        level for a transform whose Jacobian does not depend on its parameters (affine,
        translation: at 10^3 points computing it was a fifth of an evaluation)."""
        transform, points = self.GetTransform(), self._require_level().points
        if isinstance(transform, LinearTransform) and transform.constant_jacobian:
            key = (type(transform), transform.fixed_parameters.tobytes())
            kept = self._kept_jacobian
            if kept is None or kept[0] != key or kept[1] is not points:
                kept = (key, points, _jacobian(transform, points, 0.0))
                self._kept_jacobian = kept
            return kept[2]
        return _jacobian(
            transform, points, self.bending_energy_weight * self._bending_energy_scale()
        )

    def _bending_energy_scale(self) -> float:
        """What puts the bending energy in the value's unit: the moving image's intensity
        variance (mean squares' value is in squared intensities)."""
        return self._moving_variance

    def GetValue(self) -> float:  # noqa: N802
        return self.evaluate().value

    def GetDerivative(self) -> np.ndarray:  # noqa: N802
        """Negative gradient of the value (ITK v4's convention)."""
        return -self.evaluate().gradient

    def GetValueAndDerivative(self) -> tuple[float, np.ndarray]:  # noqa: N802
        evaluation = self.evaluate()
        return evaluation.value, -evaluation.gradient

    def maximum_physical_shift(self, delta: np.ndarray) -> float:
        """Largest move of a fixed-grid corner if the parameters changed by ``delta`` (mm);
        for a B-spline, the largest control-point move (it bounds every point's)."""
        transform = self.GetTransform()
        if isinstance(transform, BSplineTransform):
            moves = np.asarray(delta).reshape(transform.dimension, -1)
            return float(np.max(np.linalg.norm(moves, axis=0)))
        trial = transform.copy()
        trial.update(delta)
        corners = self._require_level().points.geometry.corners()
        moved = trial.transform_points(corners) - transform.transform_points(corners)
        return float(np.max(np.linalg.norm(moved, axis=1)))

    def squared_jacobian_norms(self) -> np.ndarray:
        """``sum_k (dT_k / dtheta_p)^2`` per parameter, averaged over the level grid's corners
        (ITK's ``RegistrationParameterScalesFromJacobian`` for a linear transform, which
        samples the corners); the moving party's own, from the public grid."""
        jacobians = self._corner_jacobians()
        return np.mean(np.sum(np.square(jacobians), axis=2), axis=0)

    def mean_jacobian_step(self, delta: np.ndarray) -> float:
        """The mean over the level grid's corners of ``|dT/dtheta delta|`` (mm): the Jacobian
        estimator's step scale (ITK's ``EstimateStepScale``)."""
        moves = np.einsum("cpk,p->ck", self._corner_jacobians(), np.asarray(delta))
        return float(np.mean(np.linalg.norm(moves, axis=1)))

    def _corner_jacobians(self) -> np.ndarray:
        """dT/dtheta at the level grid's corners, shape (corners, |theta|, d)."""
        transform = self.GetTransform()
        if not isinstance(transform, LinearTransform):
            raise InputError(
                "scales from the transform's Jacobian are estimated for a linear transform "
                "only (ITK's estimate of a B-spline's samples the central region, where most "
                "coefficients have none); use scales from physical shift"
            )
        d = transform.dimension
        corners = self._require_level().points.geometry.corners()
        coefficients = transform.jacobian_in_affine_basis(np.zeros(d))  # (p, d, d + 1)
        phi = np.concatenate([corners, np.ones((len(corners), 1))], axis=1)
        return np.einsum("pkj,cj->cpk", coefficients, phi)

    def _require_level(self) -> _LevelData:
        if self._level is None:
            raise RuntimeError("no level is open: call initialize_level first")
        return self._level


class PrivateMeanSquaresImageToImageMetric(PrivateImageToImageMetric):
    """Mean squares between the warped moving image and the fixed image, privately
    (ITK's ``MeanSquaresImageToImageMetricv4``; parameters: :class:`PrivateImageToImageMetric`).
    """

    @property
    def settings(self) -> MetricSettings:
        return MEAN_SQUARES_SETTINGS

    def evaluate(self) -> Evaluation:
        """Value, gradient and Gauss-Newton Hessian at the current parameters."""
        values, gradient, valid, n_valid = self._overlap()
        jacobian = self._jacobian()
        gradient = jacobian.parameter_gradient(gradient)
        joint = self.moving_party.joint_term(
            MovingFields(gradient, values, valid, jacobian.coefficients)
        )
        joint_r = joint.parameter_term
        if joint_r is None:
            assert joint.moments is not None, "a JointTerm holds its moments or its parameter term"
            joint_r = jacobian.from_moments(joint.moments)
        masked = joint.masked
        if masked is None:
            # Not np.dot: BLAS would start threads that spin against the other party's process.
            warped_squared = float(np.square(values).sum())
            own = jacobian.moments(joint.own_gradient(gradient), values, joint.basis_weight_bits)
            count = n_valid
        else:  # the points inside the fixed party's mask too: its sums of I_w M
            warped_squared, own = masked.warped_squared, masked.warped_moments
            count = self._masked_count(masked.count)
        ssd = warped_squared - 2.0 * joint.warped_dot_fixed + joint.fixed_squared
        value = max(ssd, 0.0) / count
        derivative = 2.0 / count * (jacobian.from_moments(own) - joint_r)
        # Gauss-Newton's matrix is the moving party's own, over its valid points: the fixed
        # mask is private, and the value and gradient are exact, so the minimum is the
        # masked one. 2 / n_valid keeps the step's scale that of the mean over those points.
        hessian = 2.0 / n_valid * jacobian.hessian(gradient)
        value, derivative, hessian = self._penalized(jacobian, value, derivative, hessian)
        return Evaluation(
            value=value, gradient=derivative, hessian=hessian, number_of_valid_points=count
        )


@dataclass(frozen=True)
class _LevelData:
    moving: ImageGrid
    moving_gradient: np.ndarray
    points: PointSet
    private_sample: np.ndarray | None


@dataclass(frozen=True)
class _Jacobian:
    """dW/dtheta on the level's points: the public map's basis (the float side of
    :class:`~ppir_itk.linear_map.PublicLinearMap`) and the transform's own factor.

    A linear transform: ``S = g . C phi``, with ``C`` (``coefficients``) its small
    matrix in the affine basis. A B-spline ``bulk(x + D(x))``: ``M e_k beta_c(x)`` for
    parameter (k, c), M the bulk matrix (``gradient_matrix``), so S = (M^T g)_k beta_c
    and R in ITK order is the moments, raveled (``coefficients`` None: the identity).
    """

    basis: PublicLinearMap
    coefficients: np.ndarray | None
    gradient_matrix: np.ndarray | None
    penalty: Any  # the weighted bending energy (sparse), or None

    def parameter_gradient(self, gradient: np.ndarray) -> np.ndarray:
        return gradient if self.gradient_matrix is None else gradient @ self.gradient_matrix

    def moments(self, gradient: np.ndarray, values: np.ndarray, weight_bits: int) -> np.ndarray:
        return self.basis.moments(gradient, values, weight_bits)

    def from_moments(self, moments: np.ndarray) -> np.ndarray:
        if self.coefficients is None:
            return moments.ravel()
        return self.coefficients @ moments.ravel()

    def hessian(self, gradient: np.ndarray) -> Any:
        gram = self.basis.gram(gradient)
        if self.coefficients is None:
            return gram
        return self.coefficients @ gram @ self.coefficients.T


def _jacobian(transform: Any, points: PointSet, bending_energy_weight: float) -> _Jacobian:
    basis = points.linear_map
    if isinstance(transform, BSplineTransform):
        penalty = None
        if bending_energy_weight != 0:
            domain = float(np.prod((np.asarray(transform.size) - 3) * transform.spacing))
            penalty = (bending_energy_weight / domain) * transform.bending_energy()
        return _Jacobian(basis, None, transform.matrix_offset()[0], penalty)
    d = points.geometry.dimension
    coefficients = transform.jacobian_in_affine_basis(points.reference)
    return _Jacobian(basis, coefficients.reshape(coefficients.shape[0], d * (d + 1)), None, None)
