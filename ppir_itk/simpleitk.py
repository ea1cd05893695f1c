"""SimpleITK's ``ImageRegistrationMethod``, privately: a SimpleITK script with one changed line.

:class:`ImageRegistrationMethod` takes SimpleITK's calls, in SimpleITK's argument
order and with SimpleITK's defaults (one level, no smoothing, sigmas in physical
units, no sampling, Mattes mutual information with 50 bins until a ``SetMetricAs...``
call, unit optimizer scales, the initial transform optimised in place), and runs them
on :class:`ppir_itk.registration.ImageRegistrationMethod`: the joint terms go through a
private backend (``backend=``, keyword-only). ``Execute(fixed, moving)`` returns a
``SimpleITK.Transform``:

- ``fixed`` a ``SimpleITK.Image`` (or any image :func:`ppir_itk.wrapping.images.as_image_grid`
  reads): both images are on this machine, and the fixed party runs in its own process
  over mutual TLS (:func:`ppir_itk.compose.spawn_fixed_party`, as :func:`ppir_itk.register`);
- ``fixed`` a :class:`RemoteFixedImage`: the fixed party's ``ppir serve`` on another
  machine; the handle holds no pixels, and its ``geometry`` is the public geometry the
  fixed party sends.

A call the library cannot honour raises ``NotImplementedError`` naming the call and why,
never a silent substitute; so does any other SimpleITK method of the class.

Examples
--------
A SimpleITK script changes one line (and its import)::

    import ppir_itk.simpleitk
    R = ppir_itk.simpleitk.ImageRegistrationMethod()   # was sitk.ImageRegistrationMethod()
    R.SetMetricAsMeanSquares()
    R.SetOptimizerAsRegularStepGradientDescent(4.0, 0.01, 200)
    R.SetInitialTransform(sitk.TranslationTransform(fixed.GetDimension()))
    R.AddCommand(sitk.sitkIterationEvent, lambda: print(R.GetOptimizerIteration()))
    outTx = R.Execute(fixed, moving)
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import SimpleITK as sitk

from ppir_itk.backends import check_backend_fixed_mask, check_backend_metric, check_backend_name
from ppir_itk.bspline import BSplineTransform
from ppir_itk.compose import connect, spawn_fixed_party
from ppir_itk.correlation import PrivateCorrelationImageToImageMetric
from ppir_itk.errors import InputError
from ppir_itk.events import Event, as_event
from ppir_itk.image import GridGeometry, ImageGrid, center_of_mass
from ppir_itk.masks import as_mask
from ppir_itk.mattes import PrivateMattesMutualInformationImageToImageMetric
from ppir_itk.metric import PrivateImageToImageMetric, PrivateMeanSquaresImageToImageMetric
from ppir_itk.metric_kinds import CORRELATION, MATTES, MEAN_SQUARES, MEAN_SQUARES_SETTINGS
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.optimizer import (
    JACOBIAN,
    PHYSICAL_SHIFT,
    SMALL_PARAMETER_VARIATION,
    GaussNewtonOptimizer,
    GradientDescentOptimizer,
    LBFGSBOptimizer,
    RegularStepGradientDescentOptimizer,
    StopCondition,
)
from ppir_itk.options import RegistrationOptions
from ppir_itk.parzen import check_histogram_bins
from ppir_itk.protocol.channel import DEFAULT_DEADLINE
from ppir_itk.protocol.session import Session
from ppir_itk.protocol.tls import TLS
from ppir_itk.pyramid import Level, LevelSchedule
from ppir_itk.registration import ImageRegistrationMethod as CoreMethod
from ppir_itk.sampling import URS, NoSampling, Regular, Sampling
from ppir_itk.transforms import LinearTransform
from ppir_itk.wrapping import transforms as transform_io
from ppir_itk.wrapping.images import as_image_grid

__all__ = ["ImageRegistrationMethod", "RemoteFixedImage"]

#: The private backend a method uses unless told: the project's default.
DEFAULT_BACKEND = str(RegistrationOptions.__dataclass_fields__["backend"].default)
# SimpleITK's learning-rate estimation names -> the core optimizer's.
_LEARNING_RATE_ESTIMATIONS = {
    sitk.ImageRegistrationMethod.Never: "never",
    sitk.ImageRegistrationMethod.Once: "once",
    sitk.ImageRegistrationMethod.EachIteration: "each_iteration",
}
# The optimizers with a learning rate, scales and their estimators.
_GRADIENT_DESCENTS = (RegularStepGradientDescentOptimizer, GradientDescentOptimizer)
Optimizer = (
    GaussNewtonOptimizer
    | RegularStepGradientDescentOptimizer
    | GradientDescentOptimizer
    | LBFGSBOptimizer
)
# RegularStep stops ITK takes inside a step, after which ITK still counts the iteration.
_STOPS_INSIDE_A_STEP = (StopCondition.STEP_TOO_SMALL, StopCondition.GRADIENT_MAGNITUDE_TOLERANCE)


@dataclass
class RemoteFixedImage:
    """The fixed image of a ``ppir serve`` at ``address`` (``HOST:PORT``): no pixels.

    ``tls`` is the moving party's bundle (``ppir_itk.TLS.for_role(DIR, "moving-party")``),
    ``dealer`` the ``ppir dealer``'s ``HOST:PORT`` (the ``spdz`` backend). ``geometry`` is
    the fixed party's public geometry, known once an ``Execute`` has started the session.
    """

    address: str
    tls: TLS
    dealer: str | None = None
    geometry: GridGeometry | None = None


GEOMETRY = sitk.CenteredTransformInitializerFilter.GEOMETRY
MOMENTS = sitk.CenteredTransformInitializerFilter.MOMENTS


def CenteredTransformInitializer(  # noqa: N802
    fixedImage: Any,  # noqa: N803
    movingImage: Any,  # noqa: N803
    transform: Any,
    operationMode: int = MOMENTS,  # noqa: N803
    *,
    backend: str = DEFAULT_BACKEND,
) -> Any:
    """SimpleITK's ``CenteredTransformInitializer``, where the fixed image may be a
    :class:`RemoteFixedImage`: the transform's centre at the fixed image's centre and its
    translation to the moving image's. ``GEOMETRY`` takes the fixed party's public geometry;
    ``MOMENTS`` (SimpleITK's default) its centre of mass, which the fixed party discloses
    (d numbers, if its operator allows it) and a warning reports. A short session with
    ``backend`` (one the fixed party offers) carries either. A SimpleITK image is both
    images on this machine: SimpleITK's own call."""
    if not isinstance(fixedImage, RemoteFixedImage):
        return sitk.CenteredTransformInitializer(fixedImage, movingImage, transform, operationMode)
    if operationMode not in (GEOMETRY, MOMENTS):
        _not_built("CenteredTransformInitializer", "the modes are GEOMETRY and MOMENTS")
    moving = as_image_grid(movingImage, name="moving image")
    moments = operationMode == MOMENTS
    session = connect(fixedImage.address, fixedImage.tls, dealer=fixedImage.dealer)
    party = MovingPartySession(session, check_backend_name(backend), None, MEAN_SQUARES_SETTINGS)
    try:
        fixedImage.geometry = party.start(
            LevelSchedule.from_lists([1], [0.0]), NoSampling(), wants_center_of_mass=moments
        )
        if moments:
            fixed_center = party.fixed_center_of_mass()
            moving_center = center_of_mass(moving)
            warnings.warn(
                "CenteredTransformInitializer (MOMENTS): the fixed party disclosed its centre "
                f"of mass ({fixed_center.size} numbers); GEOMETRY discloses nothing",
                stacklevel=2,
            )
        else:
            fixed_center = fixedImage.geometry.center()
            moving_center = moving.geometry.center()
        party.close()
    except BaseException as error:
        party.abort(f"the moving party stopped: {type(error).__name__}")
        raise
    centred = transform.Downcast() if hasattr(transform, "Downcast") else transform
    centred = type(centred)(centred)
    if hasattr(centred, "SetCenter"):
        centred.SetCenter(fixed_center.tolist())
        centred.SetTranslation((moving_center - fixed_center).tolist())
    else:  # a translation: its offset
        centred.SetOffset((moving_center - fixed_center).tolist())
    return centred


@dataclass(frozen=True)
class _OptimizerSettings:
    """A ``SetOptimizerAs...`` call: which optimizer, and its arguments by the core's names."""

    kind: type
    arguments: dict[str, Any]


class ImageRegistrationMethod:
    """SimpleITK's ``ImageRegistrationMethod`` over the private registration (module doc).

    Parameters
    ----------
    backend : str
        The joint-term backend (``"he"``, ``"spdz"``; ``"clear"`` is NOT private); the
        project's default unless given. A metric it does not compute is refused at
        ``SetMetricAs...``.
    backend_parameters : dict, optional
        The backend's parameters (e.g. ``{"protocol": "paper-v1"}``).
    deadline : float
        Seconds to wait for the fixed party's next answer.
    threads : int, optional
        Kernel threads (``SetNumberOfThreads`` sets it too); results do not depend on it.
    """

    # SimpleITK's constants, so that ``R.RANDOM`` and friends read as in a script.
    NONE = sitk.ImageRegistrationMethod.NONE
    REGULAR = sitk.ImageRegistrationMethod.REGULAR
    RANDOM = sitk.ImageRegistrationMethod.RANDOM
    Never = sitk.ImageRegistrationMethod.Never
    Once = sitk.ImageRegistrationMethod.Once
    EachIteration = sitk.ImageRegistrationMethod.EachIteration

    def __init__(
        self,
        *,
        backend: str = DEFAULT_BACKEND,
        backend_parameters: dict[str, str] | None = None,
        deadline: float = DEFAULT_DEADLINE,
        threads: int | None = None,
    ) -> None:
        self._backend = check_backend_name(backend)
        self._backend_parameters = dict(backend_parameters or {})
        self._deadline = float(deadline)
        self._threads = threads
        self._metric = MATTES  # SimpleITK's constructor sets Mattes with 50 bins
        self._histogram_bins = 50
        self._moving_gradient_filter = True  # SimpleITK's default (ITK's too)
        self._optimizer: _OptimizerSettings | None = None
        # Manual scales (SimpleITK's default; none given: ones), or None: estimated from
        # physical shifts at each level.
        self._scales: tuple[float, ...] | None = ()
        # Scales from index shifts: the physical estimate over the fixed grid's squared
        # spacing (the factor, set as each level opens).
        self._index_shift = False
        self._index_factor = 1.0
        self._scales_estimator = PHYSICAL_SHIFT
        self._small_parameter_variation = SMALL_PARAMETER_VARIATION
        self._sampling_strategy = self.NONE
        self._sampling_percentages: tuple[float, ...] = (1.0,)
        self._sampling_seed = 0
        self._shrink_factors: tuple[int, ...] = (1,)
        self._smoothing_sigmas: tuple[float, ...] = (0.0,)
        self._sigmas_in_physical_units = True
        self._initial: Any = None
        self._moving_initial: Any = None
        self._fixed_initial: Any = None
        self._in_place = True
        self._commands: list[tuple[Event, Callable[[], Any]]] = []
        self._core: CoreMethod | None = None
        self._in_iteration = False
        self._fixed_mask: ImageGrid | None = None
        self._moving_mask: ImageGrid | None = None

    # -- metrics --------------------------------------------------------------------
    def SetMetricAsMeanSquares(self) -> None:  # noqa: N802
        self._set_metric(MEAN_SQUARES)

    def SetMetricAsCorrelation(self) -> None:  # noqa: N802
        self._set_metric(CORRELATION)

    def SetMetricAsMattesMutualInformation(self, numberOfHistogramBins: int = 50) -> None:  # noqa: N802, N803
        self._histogram_bins = check_histogram_bins(numberOfHistogramBins)
        self._set_metric(MATTES)

    def SetMetricAsANTSNeighborhoodCorrelation(self, radius: int) -> None:  # noqa: N802
        _not_built("SetMetricAsANTSNeighborhoodCorrelation", _NO_SUCH_METRIC)

    def SetMetricAsJointHistogramMutualInformation(  # noqa: N802
        self,
        numberOfHistogramBins: int = 20,  # noqa: N803
        varianceForJointPDFSmoothing: float = 1.5,  # noqa: N803
    ) -> None:
        _not_built("SetMetricAsJointHistogramMutualInformation", _NO_SUCH_METRIC)

    def SetMetricAsDemons(self, intensityDifferenceThreshold: float = 0.001) -> None:  # noqa: N802, N803
        _not_built("SetMetricAsDemons", _NO_SUCH_METRIC)

    def MetricUseMovingImageGradientFilterOn(self) -> None:  # noqa: N802
        self.SetMetricUseMovingImageGradientFilter(True)

    def MetricUseMovingImageGradientFilterOff(self) -> None:  # noqa: N802
        self.SetMetricUseMovingImageGradientFilter(False)

    def SetMetricUseMovingImageGradientFilter(self, use: bool) -> None:  # noqa: N802
        """ITK's recursive Gaussian gradient (on, SimpleITK's default) or central
        differences (docs/kernels.md), for every metric."""
        self._moving_gradient_filter = bool(use)

    def SetMetricFixedMask(self, binaryMask: Any) -> None:  # noqa: N802, N803
        """SimpleITK's fixed mask: handed to the local fixed party's process only. A remote
        fixed party (:class:`RemoteFixedImage`) serves with its own (``ppir serve
        --fixed-mask``), and ``Execute`` says so."""
        self._fixed_mask = as_mask(binaryMask, name="fixed mask")

    def SetMetricMovingMask(self, binaryMask: Any) -> None:  # noqa: N802, N803
        """SimpleITK's moving mask: a point counts only where ``T(x)`` is inside it."""
        self._moving_mask = as_mask(binaryMask, name="moving mask")

    def _set_metric(self, metric: str) -> None:
        check_backend_metric(self._backend, self._backend_parameters, metric)
        self._metric = metric

    # -- optimizers -----------------------------------------------------------------
    def SetOptimizerAsRegularStepGradientDescent(  # noqa: N802
        self,
        learningRate: float,  # noqa: N803
        minStep: float,  # noqa: N803
        numberOfIterations: int,  # noqa: N803
        relaxationFactor: float = 0.5,  # noqa: N803
        gradientMagnitudeTolerance: float = 1e-4,  # noqa: N803
        estimateLearningRate: int = sitk.ImageRegistrationMethod.Never,  # noqa: N803
        maximumStepSizeInPhysicalUnits: float = 0.0,  # noqa: N803
    ) -> None:
        self._optimizer = _OptimizerSettings(
            RegularStepGradientDescentOptimizer,
            {
                "LearningRate": learningRate,
                "MinimumStepLength": minStep,
                "NumberOfIterations": numberOfIterations,
                "RelaxationFactor": relaxationFactor,
                "GradientMagnitudeTolerance": gradientMagnitudeTolerance,
                "EstimateLearningRate": _learning_rate_estimation(estimateLearningRate),
                "MaximumStepSizeInPhysicalUnits": maximumStepSizeInPhysicalUnits,
            },
        )

    def SetOptimizerAsGaussNewton(  # noqa: N802
        self,
        numberOfIterations: int = 100,  # noqa: N803
        minimumStepLength: float = 1e-4,  # noqa: N803
        relativeValueTolerance: float = 1e-6,  # noqa: N803
        maximumBadSteps: int = 6,  # noqa: N803
    ) -> None:
        """The project's damped Gauss-Newton (mean squares only; not in SimpleITK). Its
        step does not depend on the optimizer scales, so any scales leave it unchanged."""
        self._optimizer = _OptimizerSettings(
            GaussNewtonOptimizer,
            {
                "NumberOfIterations": numberOfIterations,
                "MinimumStepLength": minimumStepLength,
                "RelativeValueTolerance": relativeValueTolerance,
                "MaximumBadSteps": maximumBadSteps,
            },
        )

    def SetOptimizerAsLBFGSB(  # noqa: N802
        self,
        gradientConvergenceTolerance: float = 1e-5,  # noqa: N803
        numberOfIterations: int = 500,  # noqa: N803
        maximumNumberOfCorrections: int = 5,  # noqa: N803
        maximumNumberOfFunctionEvaluations: int = 2000,  # noqa: N803
        costFunctionConvergenceFactor: float = 1e7,  # noqa: N803
        lowerBound: float = sys.float_info.min,  # noqa: N803
        upperBound: float = sys.float_info.max,  # noqa: N803
        trace: bool = False,
    ) -> None:
        """ITK's L-BFGS-B (:class:`~ppir_itk.optimizer.LBFGSBOptimizer`); SimpleITK's
        default bounds (the smallest positive and the largest double) mean unbounded."""
        self._optimizer = _OptimizerSettings(
            LBFGSBOptimizer,
            {
                "GradientConvergenceTolerance": gradientConvergenceTolerance,
                "NumberOfIterations": numberOfIterations,
                "MaximumNumberOfCorrections": maximumNumberOfCorrections,
                "MaximumNumberOfFunctionEvaluations": maximumNumberOfFunctionEvaluations,
                "CostFunctionConvergenceFactor": costFunctionConvergenceFactor,
                "LowerBound": None if lowerBound == sys.float_info.min else lowerBound,
                "UpperBound": None if upperBound == sys.float_info.max else upperBound,
            },
        )

    def SetOptimizerAsGradientDescent(  # noqa: N802
        self,
        learningRate: float,  # noqa: N803
        numberOfIterations: int,  # noqa: N803
        convergenceMinimumValue: float = 1e-6,  # noqa: N803
        convergenceWindowSize: int = 10,  # noqa: N803
        estimateLearningRate: int = sitk.ImageRegistrationMethod.Once,  # noqa: N803
        maximumStepSizeInPhysicalUnits: float = 0.0,  # noqa: N803
    ) -> None:
        self._optimizer = _OptimizerSettings(
            GradientDescentOptimizer,
            {
                "LearningRate": learningRate,
                "NumberOfIterations": numberOfIterations,
                "MinimumConvergenceValue": convergenceMinimumValue,
                "ConvergenceWindowSize": convergenceWindowSize,
                "EstimateLearningRate": _learning_rate_estimation(estimateLearningRate),
                "MaximumStepSizeInPhysicalUnits": maximumStepSizeInPhysicalUnits,
            },
        )

    def SetOptimizerAsGradientDescentLineSearch(  # noqa: N802
        self,
        learningRate: float,  # noqa: N803
        numberOfIterations: int,  # noqa: N803
        convergenceMinimumValue: float = 1e-6,  # noqa: N803
        convergenceWindowSize: int = 10,  # noqa: N803
        lineSearchLowerLimit: float = 0.0,  # noqa: N803
        lineSearchUpperLimit: float = 5.0,  # noqa: N803
        lineSearchEpsilon: float = 0.01,  # noqa: N803
        lineSearchMaximumIterations: int = 20,  # noqa: N803
        estimateLearningRate: int = sitk.ImageRegistrationMethod.Once,  # noqa: N803
        maximumStepSizeInPhysicalUnits: float = 0.0,  # noqa: N803
    ) -> None:
        """Each line-search trial is one more metric evaluation, which the fixed party
        counts against its budget (``ppir serve --budget``) as any other."""
        self.SetOptimizerAsGradientDescent(
            learningRate,
            numberOfIterations,
            convergenceMinimumValue,
            convergenceWindowSize,
            estimateLearningRate,
            maximumStepSizeInPhysicalUnits,
        )
        assert self._optimizer is not None, "set just above"
        self._optimizer.arguments.update(
            LineSearch=True,
            LowerLimit=lineSearchLowerLimit,
            UpperLimit=lineSearchUpperLimit,
            Epsilon=lineSearchEpsilon,
            MaximumLineSearchIterations=lineSearchMaximumIterations,
        )

    def SetOptimizerScales(self, scales: Sequence[float]) -> None:  # noqa: N802
        self._scales = tuple(float(scale) for scale in scales)
        self._index_shift = False

    def SetOptimizerScalesFromPhysicalShift(  # noqa: N802
        self,
        centralRegionRadius: int = 5,  # noqa: N803
        smallParameterVariation: float = 0.01,  # noqa: N803
    ) -> None:
        """ITK's estimator, at each level: a linear transform's shifts at the fixed grid's
        corners (as ITK, which samples the corners of a global transform, so the radius
        does not enter), a B-spline's of one coefficient."""
        if not (math.isfinite(smallParameterVariation) and smallParameterVariation > 0):
            raise InputError(
                "SetOptimizerScalesFromPhysicalShift: smallParameterVariation must be a "
                f"positive number, got {smallParameterVariation}"
            )
        self._small_parameter_variation = float(smallParameterVariation)
        self._scales = None
        self._index_shift = False
        self._scales_estimator = PHYSICAL_SHIFT

    def SetOptimizerScalesFromIndexShift(  # noqa: N802
        self,
        centralRegionRadius: int = 5,  # noqa: N803
        smallParameterVariation: float = 0.01,  # noqa: N803
    ) -> None:
        """ITK's estimator, for the regular step and a fixed grid of one spacing ``s``: the
        physical-shift estimate over ``s^2`` (a shift of ``x`` mm is ``x / s`` voxels), which
        changes a regular step only through its gradient tolerance."""
        self.SetOptimizerScalesFromPhysicalShift(centralRegionRadius, smallParameterVariation)
        self._index_shift = True

    def SetOptimizerScalesFromJacobian(self, centralRegionRadius: int = 5) -> None:  # noqa: N802, N803
        """ITK's estimator, at each level: each parameter's squared Jacobian norm averaged
        over the fixed grid's corners (ITK samples the corners of a linear transform, so the
        radius does not enter); linear transforms only."""
        self._scales = None
        self._index_shift = False
        self._scales_estimator = JACOBIAN

    # -- sampling and levels ----------------------------------------------------------
    def SetMetricSamplingStrategy(self, strategy: int) -> None:  # noqa: N802
        if strategy not in (self.NONE, self.REGULAR, self.RANDOM):
            raise InputError(f"SetMetricSamplingStrategy: unknown strategy {strategy!r}")
        self._sampling_strategy = strategy

    def SetMetricSamplingPercentage(  # noqa: N802
        self, percentage: float, seed: int = sitk.sitkWallClock
    ) -> None:
        self.SetMetricSamplingPercentagePerLevel([percentage], seed)

    def SetMetricSamplingPercentagePerLevel(  # noqa: N802
        self, percentage: Sequence[float], seed: int = sitk.sitkWallClock
    ) -> None:
        """One percentage (a fraction in (0, 1]) for every level, or one per level; the
        seed is public (``sitkWallClock``: one drawn from the clock)."""
        percentages = tuple(float(value) for value in percentage)
        if len(set(percentages)) > 1:
            _not_built(
                "SetMetricSamplingPercentagePerLevel",
                "the sample is one fraction for every level",
            )
        self._sampling_percentages = percentages
        self._sampling_seed = int(seed)

    def SetShrinkFactorsPerLevel(self, shrinkFactors: Sequence[int]) -> None:  # noqa: N802, N803
        self._shrink_factors = tuple(shrinkFactors)

    def SetSmoothingSigmasPerLevel(self, smoothingSigmas: Sequence[float]) -> None:  # noqa: N802, N803
        self._smoothing_sigmas = tuple(smoothingSigmas)

    def SetSmoothingSigmasAreSpecifiedInPhysicalUnits(self, arg: bool) -> None:  # noqa: N802
        self._sigmas_in_physical_units = bool(arg)

    def SmoothingSigmasAreSpecifiedInPhysicalUnitsOn(self) -> None:  # noqa: N802
        self.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(True)

    def SmoothingSigmasAreSpecifiedInPhysicalUnitsOff(self) -> None:  # noqa: N802
        self.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False)

    # -- transforms and interpolator ---------------------------------------------------
    def SetInitialTransform(self, transform: Any, inPlace: bool = True) -> None:  # noqa: N802, N803
        if not isinstance(transform, sitk.Transform):
            raise InputError(
                f"SetInitialTransform: a {type(transform).__name__} is not a SimpleITK.Transform"
            )
        self._initial = transform
        self._in_place = bool(inPlace)

    def SetInitialTransformAsBSpline(  # noqa: N802
        self,
        transform: Any,
        inPlace: bool = True,  # noqa: N803
        scaleFactors: Sequence[int] = (),  # noqa: N803
    ) -> None:
        """A B-spline to optimise at its own mesh size at every level: ``scaleFactors`` of 0
        or 1 only (SimpleITK's "no adapter" and "the initial mesh")."""
        if not isinstance(transform, sitk.BSplineTransform):
            raise InputError(
                f"SetInitialTransformAsBSpline: a {type(transform).__name__} is not a "
                "SimpleITK.BSplineTransform"
            )
        if any(int(factor) not in (0, 1) for factor in scaleFactors):
            _not_built(
                "SetInitialTransformAsBSpline",
                f"the B-spline's mesh is not refined between levels (scaleFactors "
                f"{list(scaleFactors)}; 0 or 1 keep the initial mesh)",
            )
        self.SetInitialTransform(transform, inPlace)

    def GetInitialTransform(self) -> Any:  # noqa: N802
        return self._initial

    def GetInitialTransformInPlace(self) -> bool:  # noqa: N802
        return self._in_place

    def SetMovingInitialTransform(self, transform: Any) -> None:  # noqa: N802
        """A fixed transform the optimised one is composed with (SimpleITK's semantics: the
        moving image is read at ``initial(T(x))``; ``Execute`` returns T alone)."""
        self._moving_initial = transform

    def GetMovingInitialTransform(self) -> Any:  # noqa: N802
        return self._moving_initial

    def SetFixedInitialTransform(self, transform: Any) -> None:  # noqa: N802
        """A fixed linear transform of the fixed points (SimpleITK's semantics: the fixed
        image is read at ``initial(x)``); the fixed party runs it as a mask of the points it
        maps off its image, so the backend must compute the masked metric."""
        self._fixed_initial = transform

    def GetFixedInitialTransform(self) -> Any:  # noqa: N802
        return self._fixed_initial

    def SetInterpolator(self, Interpolator: int) -> None:  # noqa: N802, N803
        if Interpolator != sitk.sitkLinear:
            _not_built("SetInterpolator", "the warp kernel interpolates linearly only (sitkLinear)")

    def GetInterpolator(self) -> int:  # noqa: N802
        return int(sitk.sitkLinear)

    def SetNumberOfThreads(self, n: int) -> None:  # noqa: N802
        self._threads = int(n)

    # -- observers and live measurements ------------------------------------------------
    def AddCommand(self, event: Any, callback: Callable[[], Any]) -> int:  # noqa: N802
        """Call ``callback()`` on ``event``: ``sitkStartEvent``, ``sitkIterationEvent``,
        ``sitkMultiResolutionIterationEvent`` or ``sitkEndEvent``."""
        try:
            ours = as_event(event)
        except InputError:
            _not_built("AddCommand", f"event {event!r} is not raised by the registration")
        if not callable(callback):
            raise InputError("AddCommand: the command must be callable")
        self._commands.append((ours, callback))
        return len(self._commands) - 1

    def RemoveAllCommands(self) -> None:  # noqa: N802
        self._commands.clear()

    def HasCommand(self, event: Any) -> bool:  # noqa: N802
        return any(ours is as_event(event) for ours, _ in self._commands)

    def GetOptimizerIteration(self) -> int:  # noqa: N802
        """From 0 inside an iteration event, as SimpleITK's; afterwards the level's count,
        which (as ITK's regular step) counts a step that stopped the optimizer."""
        core = self._require_core("GetOptimizerIteration")
        iterations = core.GetOptimizerIteration()
        if self._in_iteration:
            return iterations - 1
        optimizer = core.optimizer
        inside_a_step = optimizer.GetStopCondition() in _STOPS_INSIDE_A_STEP
        return iterations + int(
            isinstance(optimizer, RegularStepGradientDescentOptimizer) and inside_a_step
        )

    def GetMetricValue(self) -> float:  # noqa: N802
        return self._require_core("GetMetricValue").GetMetricValue()

    def GetOptimizerPosition(self) -> tuple[float, ...]:  # noqa: N802
        position = self._require_core("GetOptimizerPosition").GetOptimizerPosition()
        return tuple(float(value) for value in position)

    def GetCurrentLevel(self) -> int:  # noqa: N802
        return self._require_core("GetCurrentLevel").GetCurrentLevel()

    def GetOptimizerLearningRate(self) -> float:  # noqa: N802
        optimizer = self._require_core("GetOptimizerLearningRate").optimizer
        if not isinstance(optimizer, _GRADIENT_DESCENTS):
            _not_built(
                "GetOptimizerLearningRate", f"the {type(optimizer).__name__} has no learning rate"
            )
        return optimizer.GetLearningRate()

    def GetOptimizerConvergenceValue(self) -> float:  # noqa: N802
        optimizer = self._require_core("GetOptimizerConvergenceValue").optimizer
        if not isinstance(optimizer, GradientDescentOptimizer):
            _not_built(
                "GetOptimizerConvergenceValue",
                "only the gradient descent optimizers have ITK's windowed convergence monitor",
            )
        # SimpleITK reads ITK's "not yet" (a window not full) as the largest double.
        return min(optimizer.GetConvergenceValue(), sys.float_info.max)

    def GetOptimizerStopConditionDescription(self) -> str:  # noqa: N802
        return self._require_core(
            "GetOptimizerStopConditionDescription"
        ).GetOptimizerStopConditionDescription()

    def GetOptimizerScales(self) -> tuple[float, ...]:  # noqa: N802
        """The scales given; during a run with an estimator, the level's estimate."""
        if self._scales is not None:
            return self._scales
        optimizer = None if self._core is None else self._core.optimizer
        if isinstance(optimizer, _GRADIENT_DESCENTS):
            return tuple(float(value) / self._index_factor for value in optimizer.GetScales())
        return ()

    def GetMetricSamplingPercentagePerLevel(self) -> tuple[float, ...]:  # noqa: N802
        return self._sampling_percentages

    def StopRegistration(self) -> bool:  # noqa: N802
        if self._core is None:
            return False
        self._core.StopRegistration()
        return True

    def GetResult(self) -> Any:  # noqa: N802
        """The last run's :class:`~ppir_itk.registration.RegistrationResult` (its report,
        what each party learned; not in SimpleITK)."""
        return self._require_core("GetResult").GetResult()

    def MetricEvaluate(self, fixed: Any, moving: Any) -> float:  # noqa: N802
        """The metric's value at the initial transform (after the moving initial one), as
        SimpleITK's: at full resolution, every point, no smoothing (the sampling, sigmas and
        shrink factors are not used). One evaluation of a session with the fixed party, which
        counts it as any other."""
        moving_grid = as_image_grid(moving, name="moving image")
        initial = self._checked_initial_transform()
        check_backend_metric(self._backend, self._backend_parameters, self._metric)
        self._check_masks(fixed, moving_grid)
        remote = isinstance(fixed, RemoteFixedImage)
        fixed_grid = None if remote else as_image_grid(fixed, name="fixed image")
        with self._fixed_session(fixed, fixed_grid) as session:
            metric = self._make_metric(session)
            metric.SetMovingImage(moving_grid)
            metric.SetTransform(transform_io.from_sitk(initial))
            if self._moving_initial is not None:
                metric.SetMovingInitialTransform(
                    _linear("SetMovingInitialTransform", self._moving_initial)
                )
            fixed_initial = None
            if self._fixed_initial is not None:
                fixed_initial = _linear("SetFixedInitialTransform", self._fixed_initial)
            moving_party = metric.moving_party
            try:
                moving_party.start(
                    LevelSchedule.from_lists([1], [0.0]), NoSampling(), fixed_initial=fixed_initial
                )
                metric.initialize_level(0, Level(1, 0.0), NoSampling())
                value = metric.GetValue()
                moving_party.close()
            except BaseException as error:
                moving_party.abort(f"the moving party stopped: {type(error).__name__}")
                raise
        return value

    def _check_masks(self, fixed: Any, moving: ImageGrid) -> None:
        """The masks against the images, and the fixed mask against where the fixed party is
        (a remote one serves with its own)."""
        if self._moving_mask is not None:
            as_mask(self._moving_mask, name="moving mask", dimension=moving.dimension)
        if self._fixed_mask is not None:
            if isinstance(fixed, RemoteFixedImage):
                raise InputError(
                    "SetMetricFixedMask: the fixed mask belongs to the remote fixed party: "
                    "give it to 'ppir serve --fixed-mask' on the fixed party's machine"
                )
            check_backend_fixed_mask(self._backend, self._backend_parameters, self._metric)

    @contextlib.contextmanager
    def _fixed_session(self, fixed: Any, fixed_grid: ImageGrid | None) -> Iterator[Session]:
        """A session with the fixed party: the remote one ``fixed`` names, or one in a
        process of its own holding ``fixed_grid`` (local mode)."""
        if isinstance(fixed, RemoteFixedImage):
            yield connect(fixed.address, fixed.tls, deadline=self._deadline, dealer=fixed.dealer)
            return
        assert fixed_grid is not None, "a local fixed party gets the fixed image"
        fixed_mask = self._fixed_mask
        if fixed_mask is not None:  # its dimension: the fixed image's
            fixed_mask = as_mask(fixed_mask, name="fixed mask", dimension=fixed_grid.dimension)
        with spawn_fixed_party(
            fixed_grid, backends=(self._backend,), deadline=self._deadline, fixed_mask=fixed_mask
        ) as fixed_party:
            yield fixed_party.connect(self._deadline)

    def __getattr__(self, name: str) -> Any:
        # Any other SimpleITK method: a sentence, not an AttributeError a script cannot read.
        if not name.startswith("_") and hasattr(sitk.ImageRegistrationMethod, name):
            if name.startswith("SetOptimizerAs"):
                _not_built(name, _NO_SUCH_OPTIMIZER)
            _not_built(name, "it is not built in ppir_itk.simpleitk yet")
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # -- the run ------------------------------------------------------------------------
    def Execute(self, fixed: Any, moving: Any) -> Any:  # noqa: N802
        """Register ``moving`` onto ``fixed`` (module doc); returns a ``SimpleITK.Transform``:
        with ``inPlace`` (the default) of the initial transform's type, which is updated;
        otherwise a ``CompositeTransform`` holding it, as SimpleITK's."""
        moving_grid = as_image_grid(moving, name="moving image")
        initial = self._checked_initial_transform()
        self._index_factor = 1.0
        check_backend_metric(self._backend, self._backend_parameters, self._metric)
        self._check_masks(fixed, moving_grid)
        if self._index_shift and (
            self._optimizer is None
            or self._optimizer.kind is not RegularStepGradientDescentOptimizer
        ):
            _not_built(
                "SetOptimizerScalesFromIndexShift",
                "index shifts are converted for the regular step optimizer only",
            )
        remote = isinstance(fixed, RemoteFixedImage)
        fixed_grid = None if remote else as_image_grid(fixed, name="fixed image")
        sigmas = self._physical_sigmas(fixed_grid, moving_grid)
        with self._fixed_session(fixed, fixed_grid) as session:
            core = self._run(session, moving_grid, initial, sigmas)
        if isinstance(fixed, RemoteFixedImage):
            fixed.geometry = core.GetResult().fixed_geometry
        result = transform_io.to_sitk(core.GetResult().transform)
        if not self._in_place:
            return sitk.CompositeTransform(result)
        self._initial.SetFixedParameters(result.GetFixedParameters())
        self._initial.SetParameters(result.GetParameters())
        return result

    def _run(
        self, session: Session, moving: ImageGrid, initial: Any, sigmas: tuple[float, ...]
    ) -> CoreMethod:
        metric = self._make_metric(session)
        metric.SetMovingImage(moving)
        optimizer = self._make_optimizer(initial)
        core = CoreMethod(
            metric,
            optimizer,
            initial,
            shrink_factors=self._shrink_factors,
            smoothing_sigmas=sigmas,
            sampling=self._sampling(),
            initializer="none",
            threads=self._threads,
        )
        core.SetMovingInitialTransform(self._moving_initial)
        core.SetFixedInitialTransform(self._fixed_initial)
        if isinstance(optimizer, RegularStepGradientDescentOptimizer) and self._index_shift:
            tolerance = optimizer.GradientMagnitudeTolerance
            core.AddObserver(
                Event.MULTI_RESOLUTION_ITERATION,
                functools.partial(self._index_shift_level, core, tolerance),
            )
        for event in Event:
            core.AddObserver(event, functools.partial(self._invoke, event))
        if isinstance(optimizer, _GRADIENT_DESCENTS) and (
            optimizer.EstimateLearningRate != "never" and self._default_maximum_step()
        ):
            core.AddObserver(Event.MULTI_RESOLUTION_ITERATION, lambda: _first_level_step(core))
        self._core = core
        core.run()
        return core

    def _index_shift_level(self, core: CoreMethod, tolerance: float) -> None:
        """The level's index-shift scales. ITK's estimator takes the indices of the virtual
        domain, the full-resolution fixed grid at every level (a level shrinks only the
        points), whose spacing must be one value; the transform must be linear (ITK's
        B-spline estimate is not the squared shift)."""
        spacings = set(core.metric.fixed_geometry.spacing)
        if len(spacings) != 1 or isinstance(core.metric.GetTransform(), BSplineTransform):
            _not_built(
                "SetOptimizerScalesFromIndexShift",
                "index shifts are converted from physical ones on a grid of one spacing "
                "and for a linear transform only",
            )
        self._index_factor = spacings.pop() ** 2
        optimizer = core.optimizer
        assert isinstance(optimizer, RegularStepGradientDescentOptimizer), "checked in _run"
        # |gradient / (scales / s^2)| < tolerance  <=>  |gradient / scales| < tolerance / s^2
        optimizer.GradientMagnitudeTolerance = tolerance / self._index_factor

    def _invoke(self, event: Event) -> None:
        self._in_iteration = event is Event.ITERATION
        try:
            for observed, callback in list(self._commands):
                if observed is event:
                    callback()
        finally:
            self._in_iteration = False

    def _make_metric(self, session: Session) -> PrivateImageToImageMetric:
        backend, parameters = self._backend, self._backend_parameters
        metric: PrivateImageToImageMetric
        if self._metric == MATTES:
            metric = PrivateMattesMutualInformationImageToImageMetric(
                backend,
                session,
                backend_parameters=parameters,
                number_of_histogram_bins=self._histogram_bins,
                use_moving_image_gradient_filter=self._moving_gradient_filter,
            )
        elif self._metric == CORRELATION:
            metric = PrivateCorrelationImageToImageMetric(
                backend,
                session,
                backend_parameters=parameters,
                use_moving_image_gradient_filter=self._moving_gradient_filter,
            )
        else:
            metric = PrivateMeanSquaresImageToImageMetric(
                backend,
                session,
                backend_parameters=parameters,
                use_moving_image_gradient_filter=self._moving_gradient_filter,
            )
        metric.SetMovingImageMask(self._moving_mask)
        return metric

    def _make_optimizer(self, initial: Any) -> Optimizer:
        if self._optimizer is None:
            _not_built(
                "Execute",
                "SimpleITK's implicit optimizer is not built: call one of "
                "SetOptimizerAsRegularStepGradientDescent, SetOptimizerAsGradientDescent, "
                "SetOptimizerAsGradientDescentLineSearch, SetOptimizerAsLBFGSB or "
                "SetOptimizerAsGaussNewton first",
            )
        arguments = dict(self._optimizer.arguments)
        if self._optimizer.kind is GaussNewtonOptimizer:
            return GaussNewtonOptimizer(**arguments)
        if self._optimizer.kind is LBFGSBOptimizer:
            if self._scales is None:
                _not_built(
                    "SetOptimizerAsLBFGSB",
                    "its scales are given or ones; the scales estimators serve the gradient "
                    "descents",
                )
            count = len(initial.GetParameters())
            return LBFGSBOptimizer(**arguments, Scales=self._scales or (1.0,) * count)
        if self._scales is None:
            arguments["Scales"] = None  # the core estimates them at each level
        else:
            # SimpleITK's default is manual scales: ones unless given.
            count = len(initial.GetParameters())
            arguments["Scales"] = self._scales or (1.0,) * count
            # ITK estimates a learning rate only with a scales estimator.
            arguments["EstimateLearningRate"] = "never"
        if self._default_maximum_step() and arguments["EstimateLearningRate"] != "never":
            # ITK's default: the first level's smallest spacing, set as that level opens.
            arguments["MaximumStepSizeInPhysicalUnits"] = 1.0
        optimizer = self._optimizer.kind(**arguments)
        optimizer.ScalesEstimator = self._scales_estimator
        optimizer.SmallParameterVariation = self._small_parameter_variation
        return optimizer

    def _default_maximum_step(self) -> bool:
        assert self._optimizer is not None, "Execute checks that an optimizer is set"
        return self._optimizer.arguments.get("MaximumStepSizeInPhysicalUnits", 1.0) <= 0

    def _sampling(self) -> Sampling:
        if self._sampling_strategy == self.NONE:
            return NoSampling()
        levels = len(self._shrink_factors)
        if len(self._sampling_percentages) not in (1, levels):
            raise InputError(
                f"SetMetricSamplingPercentagePerLevel has {len(self._sampling_percentages)} "
                f"values but there are {levels} levels; give one, or one per level"
            )
        fraction = self._sampling_percentages[0]
        if self._sampling_strategy == self.REGULAR:
            return Regular(fraction)
        seed = self._sampling_seed
        if seed == sitk.sitkWallClock:  # the seed is public, the clock will do
            seed = time.time_ns() % 2**32
        return URS(fraction, seed)

    def _physical_sigmas(self, fixed: ImageGrid | None, moving: ImageGrid) -> tuple[float, ...]:
        """The smoothing sigmas in physical units. ITK smooths each image with its own
        voxel size; one physical sigma does the same where both images have one isotropic
        spacing, the only case converted."""
        sigmas = tuple(float(sigma) for sigma in self._smoothing_sigmas)
        if self._sigmas_in_physical_units or not any(sigmas):
            return sigmas
        spacings = {float(value) for value in moving.geometry.spacing}
        if fixed is None:
            _not_built(
                "SmoothingSigmasAreSpecifiedInPhysicalUnitsOff",
                "a remote fixed image's voxel size is not known before the session",
            )
        spacings |= {float(value) for value in fixed.geometry.spacing}
        if len(spacings) != 1:
            _not_built(
                "SmoothingSigmasAreSpecifiedInPhysicalUnitsOff",
                "sigmas in voxels are converted only when both images have one isotropic spacing",
            )
        spacing = spacings.pop()
        return tuple(sigma * spacing for sigma in sigmas)

    def _checked_initial_transform(self) -> Any:
        if self._initial is None:
            raise InputError(
                "Execute: there is no initial transform; call SetInitialTransform first, "
                "as SimpleITK needs"
            )
        given = self._initial.Downcast().GetName()
        try:
            kept = transform_io.to_sitk(transform_io.from_sitk(self._initial)).GetName()
        except InputError as error:  # a type the core does not optimise
            _not_built("SetInitialTransform", str(error))
        if kept != given:
            _not_built(
                "SetInitialTransform",
                f"a {given} would be optimised as a {kept}, and no other type is substituted",
            )
        return self._initial

    def _require_core(self, call: str) -> CoreMethod:
        if self._core is None:
            raise RuntimeError(f"{call}: the registration has not run: call Execute first")
        return self._core


_NO_SUCH_METRIC = (
    "the private metrics are mean squares, correlation and Mattes mutual information "
    "(SetMetricAsMeanSquares, SetMetricAsCorrelation, SetMetricAsMattesMutualInformation)"
)


_NO_SUCH_OPTIMIZER = (
    "the private optimizers are regular step gradient descent, gradient descent with or "
    "without a line search, L-BFGS-B and Gauss-Newton "
    "(SetOptimizerAsRegularStepGradientDescent, SetOptimizerAsGradientDescent, "
    "SetOptimizerAsGradientDescentLineSearch, SetOptimizerAsLBFGSB, SetOptimizerAsGaussNewton)"
)


def _linear(call: str, transform: Any) -> LinearTransform:
    """A SimpleITK initial transform given to ``call``, which must be linear."""
    converted = transform_io.from_sitk(transform)
    if not isinstance(converted, LinearTransform):
        _not_built(call, "the initial transform must be linear")
    return converted


def _not_built(call: str, why: str) -> NoReturn:
    raise NotImplementedError(f"{call}: {why}")


def _learning_rate_estimation(estimate: int) -> str:
    if estimate not in _LEARNING_RATE_ESTIMATIONS:
        raise InputError(f"estimateLearningRate {estimate!r} is not Never, Once or EachIteration")
    return _LEARNING_RATE_ESTIMATIONS[estimate]


def _first_level_step(core: CoreMethod) -> None:
    """ITK's default largest step of an estimated learning rate: the smallest spacing of
    the first level's virtual domain, the fixed grid shrunk by that level's factor (ITK
    sets it as the first level starts and keeps it for the others)."""
    if core.GetCurrentLevel() != 0:
        return
    optimizer = core.optimizer
    assert isinstance(optimizer, _GRADIENT_DESCENTS), "set with a gradient descent"
    shrink_factor = core.schedule.levels[0].shrink_factor
    optimizer.MaximumStepSizeInPhysicalUnits = shrink_factor * min(
        core.metric.fixed_geometry.spacing
    )
