"""``GaussNewtonOptimizer``: Gauss-Newton with Levenberg-Marquardt damping, ITK style.

Each iteration solves ``(H + lambda diag(H)) delta = -gradient`` with the
metric's Gauss-Newton Hessian, tries ``theta + delta`` and keeps it if the
value decreased (then ``lambda /= 10``); otherwise it restores theta,
multiplies lambda by 10 and counts a bad step. Each iteration is one metric
evaluation, hence one joint-term evaluation with the fixed party.

The optimizer does not know about images or parties: it consumes the
metric's :class:`~ppir_itk.metric.Evaluation` and moves the transform only
through the metric (``SetParameters``, ``UpdateTransformParameters``), as in
ITK's v4 framework.

Stop conditions (:class:`StopCondition`): the maximum number of iterations,
a step (accepted or not) that moves no fixed-grid corner by more than
``MinimumStepLength`` (physical units), a relative value change below ``RelativeValueTolerance``,
``MaximumBadSteps`` rejected steps in a row (no lower value nearby: converged), or an
observer calling :meth:`StopOptimization`. ``GetStopConditionDescription()`` says which,
with its numbers (``STOP_SENTENCES``): "converged: relative change in value 3.1e-07
below 1e-06 after 12 iterations", "maximum number of iterations (100) reached".

``RegularStepGradientDescentOptimizer`` is ITK's ``RegularStepGradientDescentOptimizerv4``
with ``SetOptimizerScalesFromPhysicalShift()``, for metrics that are not least squares
(it never reads the Hessian). Both optimizers have one contract, the one
:class:`~ppir_itk.registration.ImageRegistrationMethod` drives: observers of START,
ITERATION and END, ``SetMetric``, ``StartOptimization``, ``StopOptimization``,
``NumberOfIterations`` (set per level), ``values`` (``GetValue()`` at each ITERATION
event) and the getters.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ppir_itk.bspline import BSplineTransform
from ppir_itk.errors import InputError
from ppir_itk.events import Event, Observable

logger = logging.getLogger(__name__)

SPARSE_DAMPING_FLOOR = 1e-2  # x the mean diagonal of a sparse (B-spline) Gauss-Newton matrix
SPARSE_TOLERANCE = 1e-6  # relative residual of the damped step's conjugate-gradient solve
SPARSE_ITERATIONS = 1000
# ITK's RegistrationParameterScalesFromShiftBase: each parameter's scale is the physical
# shift of this change of it alone (then squared and divided by its square).
SMALL_PARAMETER_VARIATION = 0.01
LEARNING_RATE_ESTIMATIONS = ("never", "once", "each_iteration")
# The scales estimators (ITK's RegistrationParameterScalesFrom...): the largest corner shift
# of a small change of each parameter, or the transform Jacobian's squared norm at the corners.
PHYSICAL_SHIFT, JACOBIAN = "physical_shift", "jacobian"
SCALES_ESTIMATORS = (PHYSICAL_SHIFT, JACOBIAN)


class StopCondition(enum.Enum):
    """Why an optimizer stopped (the API); :meth:`_Optimizer.GetStopConditionDescription`
    says it with its numbers."""

    MAXIMUM_NUMBER_OF_ITERATIONS = "maximum number of iterations reached"
    STEP_TOO_SMALL = "step below the minimum step length"
    CONVERGENCE = "relative change of the value below the tolerance"
    TOO_MANY_BAD_STEPS = "no lower value in the most damped steps in a row"
    GRADIENT_MAGNITUDE_TOLERANCE = "scaled gradient magnitude below the tolerance"
    USER_STOP = "stopped by an observer"
    MAXIMUM_NUMBER_OF_FUNCTION_EVALUATIONS = "maximum number of function evaluations reached"


# What happened, as a sentence with its numbers (``value``: the quantity that stopped the
# run, ``limit``: the setting it met), ITK style; each optimizer may say its own.
STOP_SENTENCES = {
    StopCondition.MAXIMUM_NUMBER_OF_ITERATIONS: "maximum number of iterations ({limit}) reached",
    StopCondition.STEP_TOO_SMALL: (
        "converged: step length {value:.3g} below the minimum {limit:.3g}"
    ),
    StopCondition.CONVERGENCE: "converged: relative change in value {value:.3g} below {limit:.3g}",
    StopCondition.GRADIENT_MAGNITUDE_TOLERANCE: (
        "converged: scaled gradient magnitude {value:.3g} below {limit:.3g}"
    ),
    StopCondition.USER_STOP: "stopped by an observer",
    StopCondition.MAXIMUM_NUMBER_OF_FUNCTION_EVALUATIONS: (
        "maximum number of function evaluations ({limit}) reached"
    ),
}


class _Optimizer(Observable):
    """What every optimizer shows the registration method and its observers."""

    _stop_sentences = STOP_SENTENCES

    def __init__(self, NumberOfIterations: int) -> None:  # noqa: N803
        super().__init__()
        if NumberOfIterations < 1:
            raise InputError(
                f"the optimizer's NumberOfIterations {NumberOfIterations} must be at least 1"
            )
        self.NumberOfIterations = int(NumberOfIterations)
        self._metric: Any = None
        self._iteration = 0
        self._value = float("nan")
        self._stop: StopCondition | None = None
        self._stop_value: float | None = None
        self._stop_limit: float | None = None
        self._stop_requested = False
        self.values: list[float] = []

    def SetMetric(self, metric: Any) -> None:  # noqa: N802
        self._metric = metric

    def GetMetric(self) -> Any:  # noqa: N802
        return self._metric

    def GetCurrentIteration(self) -> int:  # noqa: N802
        return self._iteration

    def GetValue(self) -> float:  # noqa: N802
        return self._value

    def GetCurrentPosition(self) -> np.ndarray:  # noqa: N802
        return self._metric.GetParameters()

    def GetStopCondition(self) -> StopCondition | None:  # noqa: N802
        return self._stop

    def GetStopConditionDescription(self) -> str:  # noqa: N802
        """What happened, with its numbers: "converged: ... after 12 iterations"."""
        if self._stop is None:
            return "not started"
        sentence = self._stop_sentences[self._stop].format(
            value=self._stop_value, limit=self._stop_limit
        )
        if self._stop is StopCondition.MAXIMUM_NUMBER_OF_ITERATIONS:
            return sentence
        return f"{sentence} after {self._iteration} iterations"

    def _stop_with(
        self, condition: StopCondition, value: float | None = None, limit: float | None = None
    ) -> None:
        """Stop for ``condition``: ``value`` met the setting ``limit``."""
        self._stop, self._stop_value, self._stop_limit = condition, value, limit

    def _stop_at_the_most_iterations(self) -> bool:
        """Stop if every iteration of the level has run."""
        if self._iteration >= self.NumberOfIterations:
            self._stop_with(
                StopCondition.MAXIMUM_NUMBER_OF_ITERATIONS, limit=self.NumberOfIterations
            )
        return self._stop is not None

    def StopOptimization(self) -> None:  # noqa: N802
        self._stop_requested = True

    # -- ITK's setters (an ITK script's calls; each checked as the constructor checks it)
    def SetNumberOfIterations(self, number: int) -> None:  # noqa: N802
        self._set_checked("NumberOfIterations", number)

    def GetNumberOfIterations(self) -> int:  # noqa: N802
        return self.NumberOfIterations

    def _set_checked(self, name: str, value: Any) -> None:
        """Set the constructor argument ``name``, checked and converted by the constructor
        given it alone (one check of each argument: the constructor's)."""
        probe = type(self)(**{name: value})
        setattr(self, name, getattr(probe, name))

    def _begin(self) -> Any:
        """Reset the run's state; the metric."""
        if self._metric is None:
            raise RuntimeError("the optimizer has no metric: call SetMetric first")
        self._iteration = 0
        self._stop = self._stop_value = self._stop_limit = None
        self._stop_requested = False
        self.values = []
        return self._metric


class GaussNewtonOptimizer(_Optimizer):
    """Levenberg-Marquardt damped Gauss-Newton optimizer.

    Parameters
    ----------
    NumberOfIterations : int
        Maximum iterations per level.
    MinimumStepLength : float
        Stop when a step moves no corner of the fixed grid more than this (mm).
    RelativeValueTolerance : float
        Stop when an accepted step changes the value by less than this, relatively.
    MaximumBadSteps : int
        Stop after this many rejected steps in a row.
    InitialDamping : float
        Initial Levenberg-Marquardt lambda (relative to diag(H)).
    """

    _stop_sentences = {
        **STOP_SENTENCES,
        StopCondition.STEP_TOO_SMALL: (
            "converged: step moved the fixed grid at most {value:.3g} mm, "
            "below the minimum {limit:.3g}"
        ),
        StopCondition.TOO_MANY_BAD_STEPS: (
            "converged: no lower value in {limit} damped steps in a row"
        ),
    }

    def __init__(
        self,
        NumberOfIterations: int = 100,  # noqa: N803
        MinimumStepLength: float = 1e-4,  # noqa: N803
        RelativeValueTolerance: float = 1e-6,  # noqa: N803
        MaximumBadSteps: int = 6,  # noqa: N803
        InitialDamping: float = 1e-3,  # noqa: N803
    ) -> None:
        super().__init__(NumberOfIterations)
        self.MinimumStepLength = float(MinimumStepLength)
        self.RelativeValueTolerance = float(RelativeValueTolerance)
        self.MaximumBadSteps = int(MaximumBadSteps)
        self.InitialDamping = float(InitialDamping)
        self._damping = self.InitialDamping

    def StartOptimization(self) -> None:  # noqa: N802
        metric = self._begin()
        self._damping = self.InitialDamping
        self.InvokeEvent(Event.START)
        current = metric.evaluate()
        self._value = current.value
        bad_steps = 0
        while self._stop is None:
            if self._stop_at_the_most_iterations():
                break
            delta = self._solve(current.hessian, current.gradient)
            position = metric.GetParameters()
            shift = metric.maximum_physical_shift(delta)
            metric.UpdateTransformParameters(delta)
            trial = metric.evaluate()
            self._iteration += 1
            accepted = trial.value < current.value
            if accepted:
                change = (current.value - trial.value) / max(abs(current.value), 1e-300)
                current = trial
                self._value = trial.value
                self._damping = max(self._damping / 10.0, 1e-12)
                bad_steps = 0
            else:
                metric.SetParameters(position)
                self._damping *= 10.0
                bad_steps += 1
            self.values.append(self._value)
            self.InvokeEvent(Event.ITERATION)
            if self._stop_requested:
                self._stop_with(StopCondition.USER_STOP)
            elif accepted and change < self.RelativeValueTolerance:
                self._stop_with(StopCondition.CONVERGENCE, change, self.RelativeValueTolerance)
            elif shift < self.MinimumStepLength:
                self._stop_with(StopCondition.STEP_TOO_SMALL, shift, self.MinimumStepLength)
            elif bad_steps >= self.MaximumBadSteps:
                self._stop_with(StopCondition.TOO_MANY_BAD_STEPS, limit=self.MaximumBadSteps)
        self.InvokeEvent(Event.END)

    def _solve(self, hessian: Any, gradient: np.ndarray) -> np.ndarray:
        if not isinstance(hessian, np.ndarray):  # sparse (B-spline): banded, thousands wide
            return self._solve_sparse(hessian, gradient)
        diagonal = np.diag(hessian).copy()
        floor = 1e-12 * max(float(diagonal.max(initial=0.0)), 1e-300)
        damped = hessian + np.diag(self._damping * np.maximum(diagonal, floor))
        try:
            return np.linalg.solve(damped, -gradient)
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(damped, -gradient, rcond=None)[0]

    def _solve_sparse(self, hessian: Any, gradient: np.ndarray) -> np.ndarray:
        import scipy.sparse as sparse
        from scipy.sparse.linalg import LinearOperator, cg

        diagonal = hessian.diagonal()
        # Control points over flat image regions see little curvature: a floor on the
        # Marquardt scaling, relative to the mean curvature, keeps their steps in check
        # and lets the damping shrink every step when a trial is rejected.
        floor = SPARSE_DAMPING_FLOOR * max(float(diagonal.mean()), 1e-300)
        scaling = np.maximum(self._damping * diagonal, floor)
        damped = (hessian + sparse.diags(scaling)).tocsr()
        # Symmetric positive definite and banded: conjugate gradients with a Jacobi
        # preconditioner converge in tens of products, where a direct solve fills in.
        inverse = 1.0 / (diagonal + scaling)
        preconditioner = LinearOperator(damped.shape, matvec=lambda v: inverse * v)
        step, _ = cg(
            damped, -gradient, rtol=SPARSE_TOLERANCE, maxiter=SPARSE_ITERATIONS, M=preconditioner
        )
        return step


class _GradientOptimizer(_Optimizer):
    """What the gradient descents share, as ITK's optimizers with a scales estimator: the
    learning rate, the scales (given, or estimated from physical shifts at each
    :meth:`StartOptimization`, each level) and the learning rate's estimate from
    ``MaximumStepSizeInPhysicalUnits`` (see :class:`RegularStepGradientDescentOptimizer`)."""

    def __init__(
        self,
        NumberOfIterations: int,  # noqa: N803
        LearningRate: float,  # noqa: N803
        Scales: Sequence[float] | None,  # noqa: N803
        EstimateLearningRate: str,  # noqa: N803
        MaximumStepSizeInPhysicalUnits: float,  # noqa: N803
    ) -> None:
        super().__init__(NumberOfIterations)
        if not (math.isfinite(LearningRate) and LearningRate > 0):
            raise InputError(
                f"the optimizer's LearningRate {LearningRate} must be a positive number"
            )
        self.Scales: np.ndarray | None = None
        if Scales is not None:
            self.Scales = np.asarray(Scales, dtype=np.float64)
            if self.Scales.ndim != 1 or not np.all(np.isfinite(self.Scales) & (self.Scales > 0)):
                raise InputError("the optimizer's Scales must be a list of positive numbers")
        if EstimateLearningRate not in LEARNING_RATE_ESTIMATIONS:
            raise InputError(
                f"the optimizer's EstimateLearningRate '{EstimateLearningRate}' is not one of "
                f"{', '.join(LEARNING_RATE_ESTIMATIONS)}"
            )
        if EstimateLearningRate != "never" and not (
            math.isfinite(MaximumStepSizeInPhysicalUnits) and MaximumStepSizeInPhysicalUnits > 0
        ):
            raise InputError(
                f"the optimizer's EstimateLearningRate '{EstimateLearningRate}' needs a "
                f"MaximumStepSizeInPhysicalUnits > 0, got {MaximumStepSizeInPhysicalUnits}"
            )
        self.EstimateLearningRate = EstimateLearningRate
        self.MaximumStepSizeInPhysicalUnits = float(MaximumStepSizeInPhysicalUnits)
        self.LearningRate = float(LearningRate)
        # How scales not given are estimated (ITK's scales estimator objects, by name).
        self.ScalesEstimator = PHYSICAL_SHIFT
        # The physical-shift estimator's probe of each parameter (ITK's
        # SmallParameterVariation).
        self.SmallParameterVariation = SMALL_PARAMETER_VARIATION
        self._scales = np.ones(0)
        self._learning_rate = self.LearningRate

    def GetScales(self) -> np.ndarray:  # noqa: N802
        """The scales of the last :meth:`StartOptimization`."""
        return self._scales.copy()

    def SetScales(self, scales: Sequence[float]) -> None:  # noqa: N802
        """Fixed scales (a sequence or ``itk.OptimizerParameters``) instead of the estimate."""
        self._set_checked("Scales", list(scales))

    def SetLearningRate(self, rate: float) -> None:  # noqa: N802
        self._set_checked("LearningRate", rate)
        self._learning_rate = self.LearningRate

    def GetLearningRate(self) -> float:  # noqa: N802
        """The learning rate of the last step: ``LearningRate``, estimated, or the line
        search's."""
        return self._learning_rate

    def _begin(self) -> Any:
        """Reset the run's state, with this level's scales; the metric."""
        metric = super()._begin()
        self._scales = self._estimate_scales(metric)
        self._learning_rate = self.LearningRate
        return metric

    def _estimates_learning_rate_now(self) -> bool:
        return self.EstimateLearningRate == "each_iteration" or (
            self.EstimateLearningRate == "once" and self._iteration == 0
        )

    def _estimated_learning_rate(self, metric: Any, scaled: np.ndarray, magnitude: float) -> float:
        epsilon = np.finfo(np.float64).eps
        if self.ScalesEstimator == JACOBIAN:  # ITK's: |dT/dtheta step| at the corners, mean
            step_scale = metric.mean_jacobian_step(-scaled)
        elif isinstance(metric.GetTransform(), BSplineTransform):
            step_scale = float(metric.maximum_physical_shift(-scaled))
        else:
            # The shift of a small step, scaled back: a linear estimate for a transform
            # that is not linear in its parameters (angles).
            factor = self.SmallParameterVariation / float(np.abs(scaled).max())
            step_scale = float(metric.maximum_physical_shift(-factor * scaled)) / factor
        if step_scale <= epsilon:
            return magnitude  # ITK's learning rate of 1, before the normalisation
        return self.MaximumStepSizeInPhysicalUnits / step_scale * magnitude

    def _estimate_scales(self, metric: Any) -> np.ndarray:
        count = metric.GetNumberOfParameters()
        if self.Scales is not None:
            if len(self.Scales) != count:
                raise InputError(
                    f"the optimizer's Scales has {len(self.Scales)} values but the transform "
                    f"has {count} parameters"
                )
            return self.Scales.copy()
        if self.ScalesEstimator not in SCALES_ESTIMATORS:
            raise InputError(
                f"the optimizer's ScalesEstimator '{self.ScalesEstimator}' is not one of "
                f"{', '.join(SCALES_ESTIMATORS)}"
            )
        epsilon = np.finfo(np.float64).eps
        if self.ScalesEstimator == JACOBIAN:
            norms = metric.squared_jacobian_norms()
            # ITK keeps a zero (a parameter that moves no corner) and then divides by it.
            return np.where(norms > epsilon, norms, 1.0)

        def shift(parameter: int) -> float:
            delta = np.zeros(count)
            delta[parameter] = self.SmallParameterVariation
            return float(metric.maximum_physical_shift(delta))

        if isinstance(metric.GetTransform(), BSplineTransform):
            # Each coefficient moves its own control point by the same amount: one probe
            # instead of one per coefficient (thousands, each over every coefficient).
            local = shift(0)
            return np.full(count, local if local > epsilon else 1.0)
        shifts = np.array([shift(parameter) for parameter in range(count)])
        moving = shifts > epsilon
        if not moving.any():
            logger.warning("no parameter moves a corner of the fixed grid: scales of 1 are used")
            return np.ones(count)
        shifts = np.where(moving, shifts, shifts[moving].min())
        return np.square(shifts / self.SmallParameterVariation)


class RegularStepGradientDescentOptimizer(_GradientOptimizer):
    """ITK's ``RegularStepGradientDescentOptimizerv4``, with scales from physical shift.

    Each iteration evaluates the metric once and steps along the negative scaled
    gradient ``-(gradient / scales)``, normalised, by the step length
    ``LearningRate * relaxation`` (so ``LearningRate`` is the parameter step of the
    first iteration: mm for translations). When the direction reverses (a negative
    product of the scaled gradient with the previous one) the relaxation is
    multiplied by ``RelaxationFactor``. There is no line search and no value check:
    every step is taken. Stop conditions: ``NumberOfIterations`` steps, a scaled
    gradient of norm below ``GradientMagnitudeTolerance``, a step length below
    ``MinimumStepLength``, or an observer calling :meth:`StopOptimization`.
    :meth:`GetValue` is the value where the last step started (as ITK: the position
    after it is not evaluated); ``values`` holds it at each ITERATION event.

    Scales, estimated at each :meth:`StartOptimization` (each level) unless given, as
    ITK's ``RegistrationParameterScalesFromPhysicalShift``: for a change of 0.01 of
    parameter i alone, the metric's ``maximum_physical_shift(delta)`` (the largest
    move of a fixed-grid corner, mm) gives ``scale_i = (shift_i / 0.01)^2``: 1 for a
    translation, about the squared corner distance for an angle or a matrix
    element; a zero shift takes the smallest nonzero one, and no shift at all gives
    scales of 1. For a B-spline (``metric.GetTransform()`` a
    :class:`~ppir_itk.bspline.BSplineTransform`) every scale is the shift itself of
    one coefficient's change, neither squared nor normalised, as ITK. The optimizer
    uses only ``evaluate()`` (value and gradient; the Hessian may be None),
    ``GetParameters``, ``SetParameters``, ``UpdateTransformParameters``,
    ``GetNumberOfParameters``, ``GetTransform`` and ``maximum_physical_shift``, so it
    works for any metric with the mean squares metric's set-up.

    ITK's details kept: the reversal test multiplies the new scaled gradient with the
    previous one scaled a second time (ITK rescales, in place, the gradient it kept,
    which its last step had already scaled), so it weighs parameter i by
    ``1 / scale_i^3``; the gradient check, the reversal test and the step-length
    check come in that order; the first iteration never relaxes.

    ``EstimateLearningRate`` (``"never"``, ITK's and SimpleITK's default for this
    optimizer; ``"once"``, at each level's first iteration; ``"each_iteration"``)
    sets the learning rate, after that iteration's step-length check, so that the
    step moves no corner of the fixed grid more than the relaxation times
    ``MaximumStepSizeInPhysicalUnits`` (mm), as ITK: the step's shift (ITK's
    ``EstimateStepScale``: for a linear transform, of the step shrunk to a largest
    change of 0.01, then scaled back) divides it, and the scaled gradient's norm
    multiplies it, the step being normalised. ITK's default for that size is the
    level's smallest pixel spacing, which the optimizer does not see: give it.

    Parameters
    ----------
    LearningRate : float
        The first iteration's step length (> 0).
    MinimumStepLength : float
        Stop when the step length falls below this (>= 0).
    NumberOfIterations : int
        Maximum iterations (steps) per level.
    RelaxationFactor : float
        In [0, 1): what a reversal multiplies the step length by.
    GradientMagnitudeTolerance : float
        Stop when the scaled gradient's norm falls below this (>= 0).
    ReturnBestParametersAndValue : bool
        On any stop, go back to the evaluated position of smallest value and report it.
    Scales : sequence of float, optional
        One positive scale per parameter instead of the physical-shift estimate.
    EstimateLearningRate : {"never", "once", "each_iteration"}
        When to set the learning rate from ``MaximumStepSizeInPhysicalUnits``.
    MaximumStepSizeInPhysicalUnits : float
        The largest corner move of an estimated step (mm; > 0 when estimating).
    """

    def __init__(
        self,
        LearningRate: float = 1.0,  # noqa: N803
        MinimumStepLength: float = 1e-4,  # noqa: N803
        NumberOfIterations: int = 100,  # noqa: N803
        RelaxationFactor: float = 0.5,  # noqa: N803
        GradientMagnitudeTolerance: float = 1e-4,  # noqa: N803
        ReturnBestParametersAndValue: bool = False,  # noqa: N803
        Scales: Sequence[float] | None = None,  # noqa: N803
        EstimateLearningRate: str = "never",  # noqa: N803
        MaximumStepSizeInPhysicalUnits: float = 0.0,  # noqa: N803
    ) -> None:
        super().__init__(
            NumberOfIterations,
            LearningRate,
            Scales,
            EstimateLearningRate,
            MaximumStepSizeInPhysicalUnits,
        )
        if not (math.isfinite(MinimumStepLength) and MinimumStepLength >= 0):
            raise InputError(
                f"the optimizer's MinimumStepLength {MinimumStepLength} must be a number >= 0"
            )
        if not 0 <= RelaxationFactor < 1:
            raise InputError(
                f"the optimizer's RelaxationFactor {RelaxationFactor} must be in [0, 1)"
            )
        if not (math.isfinite(GradientMagnitudeTolerance) and GradientMagnitudeTolerance >= 0):
            raise InputError(
                f"the optimizer's GradientMagnitudeTolerance {GradientMagnitudeTolerance} "
                "must be a number >= 0"
            )
        self.MinimumStepLength = float(MinimumStepLength)
        self.RelaxationFactor = float(RelaxationFactor)
        self.GradientMagnitudeTolerance = float(GradientMagnitudeTolerance)
        self.ReturnBestParametersAndValue = bool(ReturnBestParametersAndValue)
        self._relaxation = 1.0

    # -- ITK's setters of RegularStepGradientDescentOptimizerv4
    def SetMinimumStepLength(self, length: float) -> None:  # noqa: N802
        self._set_checked("MinimumStepLength", length)

    def GetMinimumStepLength(self) -> float:  # noqa: N802
        return self.MinimumStepLength

    def SetRelaxationFactor(self, factor: float) -> None:  # noqa: N802
        self._set_checked("RelaxationFactor", factor)

    def GetRelaxationFactor(self) -> float:  # noqa: N802
        return self.RelaxationFactor

    def SetGradientMagnitudeTolerance(self, tolerance: float) -> None:  # noqa: N802
        self._set_checked("GradientMagnitudeTolerance", tolerance)

    def GetGradientMagnitudeTolerance(self) -> float:  # noqa: N802
        return self.GradientMagnitudeTolerance

    def SetReturnBestParametersAndValue(self, flag: bool) -> None:  # noqa: N802
        self.ReturnBestParametersAndValue = bool(flag)

    def ReturnBestParametersAndValueOn(self) -> None:  # noqa: N802
        self.ReturnBestParametersAndValue = True

    def ReturnBestParametersAndValueOff(self) -> None:  # noqa: N802
        self.ReturnBestParametersAndValue = False

    def GetCurrentLearningRateRelaxation(self) -> float:  # noqa: N802
        return self._relaxation

    def GetCurrentStepLength(self) -> float:  # noqa: N802
        return self._relaxation * self._learning_rate

    def StartOptimization(self) -> None:  # noqa: N802
        metric = self._begin()
        self._relaxation = 1.0
        best_value, best_position = math.inf, metric.GetParameters()
        previous = np.zeros_like(self._scales)  # the last scaled gradient; none yet
        self.InvokeEvent(Event.START)
        while self._stop is None:
            if self._stop_at_the_most_iterations():
                break
            evaluation = metric.evaluate()
            self._value = evaluation.value
            if evaluation.value < best_value:
                best_value, best_position = evaluation.value, metric.GetParameters()
            scaled = evaluation.gradient / self._scales
            # Sums, not np.dot: BLAS would start threads that spin against the other party.
            magnitude = math.sqrt(float(np.square(scaled).sum()))
            # A zero gradient has no direction, whatever the tolerance (ITK would divide by 0).
            if magnitude < self.GradientMagnitudeTolerance or magnitude == 0.0:
                self._stop_with(
                    StopCondition.GRADIENT_MAGNITUDE_TOLERANCE,
                    magnitude,
                    self.GradientMagnitudeTolerance,
                )
                break
            if float((scaled * previous / self._scales).sum()) < 0:
                self._relaxation *= self.RelaxationFactor
            step_length = self.GetCurrentStepLength()
            if step_length < self.MinimumStepLength:
                self._stop_with(StopCondition.STEP_TOO_SMALL, step_length, self.MinimumStepLength)
                break
            if self._estimates_learning_rate_now():
                self._learning_rate = self._estimated_learning_rate(metric, scaled, magnitude)
                step_length = self.GetCurrentStepLength()
            metric.UpdateTransformParameters(-(step_length / magnitude) * scaled)
            previous = scaled
            self._iteration += 1
            self.values.append(self._value)
            self.InvokeEvent(Event.ITERATION)
            if self._stop_requested:
                self._stop_with(StopCondition.USER_STOP)
        if self.ReturnBestParametersAndValue and math.isfinite(best_value):
            metric.SetParameters(best_position)
            self._value = best_value
        self.InvokeEvent(Event.END)


def window_convergence_value(window: Sequence[float], total_energy: float) -> float:
    """ITK's ``WindowConvergenceMonitoringFunction``: minus the slope, at the window's end,
    of a line fitted to the last values, each divided by ``total_energy`` (the sum of
    every absolute value seen so far, not only the window's).

    ITK fits a one-span linear B-spline to the window at ``t = n / (W - 1)`` by its
    scattered-data approximation (one level): each control point is the average of the
    points' local solutions ``w_c z / (w_0^2 + w_1^2)``, weighted by ``w_c^2``, with
    weights ``1 - t`` and ``t``; the slope is ``phi_1 - phi_0``.
    """
    values = np.asarray(window, dtype=np.float64) / total_energy
    t = np.arange(values.size) / (values.size - 1)
    t[-1] = 1.0 - BSPLINE_EPSILON  # ITK moves a point on the closing end just inside
    weights = np.stack([1.0 - t, t])
    local = weights * values / np.square(weights).sum(axis=0)
    control = (np.square(weights) * local).sum(axis=1) / np.square(weights).sum(axis=1)
    return float(control[0] - control[1])


# ITK's BSplineScatteredDataPointSetToImageFilter: how far inside a point on the end goes.
BSPLINE_EPSILON = 1e-4
# ITK's GradientDescentLineSearchOptimizerv4: the golden section's step, 2 - golden ratio.
GOLDEN_SECTION = 2.0 - (1.0 + math.sqrt(5.0)) / 2.0


class GradientDescentOptimizer(_GradientOptimizer):
    """ITK's ``GradientDescentOptimizerv4``, and with ``LineSearch`` its
    ``GradientDescentLineSearchOptimizerv4``.

    Each iteration evaluates the metric, adds the value to ITK's windowed convergence
    monitor (:func:`window_convergence_value`: stop once the last
    ``ConvergenceWindowSize`` values' normalised slope is at most
    ``MinimumConvergenceValue``), then steps by ``-LearningRate * gradient / scales``.
    ``EstimateLearningRate`` (``"once"``, ITK's default, at each level's first iteration;
    ``"each_iteration"``; ``"never"``, the default here, since ITK's default largest step,
    the level's smallest spacing, is not the optimizer's to see) sets the learning rate
    so that the step moves no fixed-grid corner more than
    ``MaximumStepSizeInPhysicalUnits``, and the scales are the physical-shift estimate
    unless given, both by the estimators the regular step uses (one each, in
    :class:`_GradientOptimizer`). With ``LineSearch``, the learning rate of each step is
    then ITK's golden-section search between ``LowerLimit`` and ``UpperLimit`` times it,
    to a relative ``Epsilon`` or ``MaximumLineSearchIterations`` (each trial one more metric
    evaluation, counted by the fixed party as any). Stop conditions: ``NumberOfIterations``,
    the convergence monitor, or an observer calling :meth:`StopOptimization`.
    :meth:`GetValue` is the value where the last step started, as ITK's.
    """

    _stop_sentences = {
        **STOP_SENTENCES,
        StopCondition.CONVERGENCE: (
            "converged: windowed convergence value {value:.3g} at most {limit:.3g}"
        ),
    }

    def __init__(
        self,
        LearningRate: float = 1.0,  # noqa: N803
        NumberOfIterations: int = 100,  # noqa: N803
        MinimumConvergenceValue: float = 1e-8,  # noqa: N803
        ConvergenceWindowSize: int = 50,  # noqa: N803
        Scales: Sequence[float] | None = None,  # noqa: N803
        EstimateLearningRate: str = "never",  # noqa: N803
        MaximumStepSizeInPhysicalUnits: float = 0.0,  # noqa: N803
        LineSearch: bool = False,  # noqa: N803
        LowerLimit: float = 0.0,  # noqa: N803
        UpperLimit: float = 5.0,  # noqa: N803
        Epsilon: float = 0.01,  # noqa: N803
        MaximumLineSearchIterations: int = 20,  # noqa: N803
    ) -> None:
        super().__init__(
            NumberOfIterations,
            LearningRate,
            Scales,
            EstimateLearningRate,
            MaximumStepSizeInPhysicalUnits,
        )
        if ConvergenceWindowSize < 2:
            raise InputError(
                f"the optimizer's ConvergenceWindowSize {ConvergenceWindowSize} must be at least 2"
            )
        if not 0 <= LowerLimit < UpperLimit:
            raise InputError(
                f"the line search's limits {LowerLimit} and {UpperLimit} must satisfy "
                "0 <= lower < upper"
            )
        self.MinimumConvergenceValue = float(MinimumConvergenceValue)
        self.ConvergenceWindowSize = int(ConvergenceWindowSize)
        self.LineSearch = bool(LineSearch)
        self.LowerLimit = float(LowerLimit)
        self.UpperLimit = float(UpperLimit)
        self.Epsilon = float(Epsilon)
        self.MaximumLineSearchIterations = int(MaximumLineSearchIterations)
        self._convergence_value = math.inf

    # -- ITK's setters of GradientDescentOptimizerv4
    def SetMinimumConvergenceValue(self, value: float) -> None:  # noqa: N802
        self._set_checked("MinimumConvergenceValue", value)

    def SetConvergenceWindowSize(self, size: int) -> None:  # noqa: N802
        self._set_checked("ConvergenceWindowSize", size)

    def GetConvergenceValue(self) -> float:  # noqa: N802
        """The convergence monitor's last value (infinite until the window is full)."""
        return self._convergence_value

    def StartOptimization(self) -> None:  # noqa: N802
        metric = self._begin()
        self._convergence_value = math.inf
        window: list[float] = []
        total_energy = 0.0
        self.InvokeEvent(Event.START)
        while self._stop is None:
            if self._stop_at_the_most_iterations():
                break
            evaluation = metric.evaluate()
            self._value = evaluation.value
            window = [*window, evaluation.value][-self.ConvergenceWindowSize :]
            total_energy += abs(evaluation.value)
            if len(window) == self.ConvergenceWindowSize:
                self._convergence_value = window_convergence_value(window, total_energy)
                if self._convergence_value <= self.MinimumConvergenceValue:
                    self._stop_with(
                        StopCondition.CONVERGENCE,
                        self._convergence_value,
                        self.MinimumConvergenceValue,
                    )
                    break
            scaled = evaluation.gradient / self._scales
            if self._estimates_learning_rate_now():
                # The estimate with a unit gradient norm: ITK's maximum step over the
                # step's shift (1 when it moves nothing).
                self._learning_rate = self._estimated_learning_rate(metric, scaled, 1.0)
            if self.LineSearch:
                self._learning_rate = self._golden_section(
                    metric,
                    scaled,
                    self._learning_rate * self.LowerLimit,
                    self._learning_rate,
                    self._learning_rate * self.UpperLimit,
                )
            metric.UpdateTransformParameters(-self._learning_rate * scaled)
            self._iteration += 1
            self.values.append(self._value)
            self.InvokeEvent(Event.ITERATION)
            if self._stop_requested:
                self._stop_with(StopCondition.USER_STOP)
        self.InvokeEvent(Event.END)

    def _golden_section(
        self, metric: Any, scaled: np.ndarray, low: float, middle: float, high: float
    ) -> float:
        """ITK's ``GoldenSectionSearch``, as a loop: the learning rate in [low, high]."""
        position = metric.GetParameters()

        def value_at(rate: float) -> float:
            metric.UpdateTransformParameters(-rate * scaled)
            value = float(metric.evaluate().value)
            metric.SetParameters(position)
            return value

        middle_value = math.inf  # not evaluated yet
        for _ in range(self.MaximumLineSearchIterations + 1):
            if high - middle > middle - low:
                trial = middle + GOLDEN_SECTION * (high - middle)
            else:
                trial = middle - GOLDEN_SECTION * (middle - low)
            if abs(high - low) < self.Epsilon * (abs(middle) + abs(trial)):
                break
            trial_value = value_at(trial)
            if middle_value == math.inf:
                middle_value = value_at(middle)
            if trial_value < middle_value:
                if high - middle > middle - low:
                    low, middle, middle_value = middle, trial, trial_value
                else:
                    high, middle, middle_value = middle, trial, trial_value
            elif high - middle > middle - low:
                high = trial
            else:
                low = trial
        return (high + low) / 2.0


class LBFGSBOptimizer(_Optimizer):
    """ITK's ``LBFGSBOptimizerv4``: limited-memory BFGS with bounds (the L-BFGS-B 3.0 code,
    through SciPy; ITK runs the same code through vnl), for any metric's value and gradient.

    As ITK's vnl adaptor, it works on the scaled parameters ``theta * Scales`` (ones unless
    given; ITK's scales estimators are the gradient descents' here) and bounds them by
    ``LowerBound`` / ``UpperBound`` (None: unbounded). Every function evaluation, line search
    included, is one metric evaluation, which the fixed party counts as any; an ITERATION
    event follows each iteration, at its accepted position. Stop conditions: the iterations
    or the evaluations used up, the projected gradient below ``GradientConvergenceTolerance``
    or the value's relative reduction below ``CostFunctionConvergenceFactor`` times the
    machine epsilon (``CONVERGENCE``), or an observer's :meth:`StopOptimization`.
    """

    _stop_sentences = {
        **STOP_SENTENCES,
        StopCondition.CONVERGENCE: "converged: {value}",  # SciPy's words for which test
        StopCondition.STEP_TOO_SMALL: "converged: no lower value along the search direction",
    }

    def __init__(
        self,
        NumberOfIterations: int = 500,  # noqa: N803
        GradientConvergenceTolerance: float = 1e-5,  # noqa: N803
        MaximumNumberOfCorrections: int = 5,  # noqa: N803
        MaximumNumberOfFunctionEvaluations: int = 2000,  # noqa: N803
        CostFunctionConvergenceFactor: float = 1e7,  # noqa: N803
        Scales: Sequence[float] | None = None,  # noqa: N803
        LowerBound: float | None = None,  # noqa: N803
        UpperBound: float | None = None,  # noqa: N803
    ) -> None:
        super().__init__(NumberOfIterations)
        positive = {
            "GradientConvergenceTolerance": GradientConvergenceTolerance,
            "CostFunctionConvergenceFactor": CostFunctionConvergenceFactor,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"the optimizer's {name} {value} must be a positive number")
        counts = {
            "MaximumNumberOfCorrections": MaximumNumberOfCorrections,
            "MaximumNumberOfFunctionEvaluations": MaximumNumberOfFunctionEvaluations,
        }
        for name, count in counts.items():
            if int(count) < 1:
                raise InputError(f"the optimizer's {name} {count} must be at least 1")
        self.GradientConvergenceTolerance = float(GradientConvergenceTolerance)
        self.MaximumNumberOfCorrections = int(MaximumNumberOfCorrections)
        self.MaximumNumberOfFunctionEvaluations = int(MaximumNumberOfFunctionEvaluations)
        self.CostFunctionConvergenceFactor = float(CostFunctionConvergenceFactor)
        self.Scales = None if Scales is None else np.asarray(Scales, dtype=np.float64)
        if self.Scales is not None and not np.all(np.isfinite(self.Scales) & (self.Scales > 0)):
            raise InputError("the optimizer's Scales must be a list of positive numbers")
        if LowerBound is not None and UpperBound is not None and not LowerBound < UpperBound:
            raise InputError(
                f"the optimizer's LowerBound {LowerBound} must be below its UpperBound {UpperBound}"
            )
        self.LowerBound, self.UpperBound = LowerBound, UpperBound
        self.evaluations = 0

    def StartOptimization(self) -> None:  # noqa: N802
        from scipy.optimize import minimize

        metric = self._begin()
        count = metric.GetNumberOfParameters()
        scales = np.ones(count) if self.Scales is None else self.Scales
        if len(scales) != count:
            raise InputError(
                f"the optimizer's Scales has {len(scales)} values but the transform has "
                f"{count} parameters"
            )
        self.evaluations = 0
        last: dict[str, Any] = {}

        def value_and_gradient(scaled: np.ndarray) -> tuple[float, np.ndarray]:
            metric.SetParameters(scaled / scales)
            evaluation = metric.evaluate()
            self.evaluations += 1
            last.update(position=scaled.copy(), value=float(evaluation.value))
            return float(evaluation.value), evaluation.gradient / scales

        def iteration(scaled: np.ndarray) -> None:
            metric.SetParameters(scaled / scales)
            self._iteration += 1
            if "position" in last and np.array_equal(last["position"], scaled):
                self._value = last["value"]
            self.values.append(self._value)
            self.InvokeEvent(Event.ITERATION)
            if self._stop_requested:
                self._stop_with(StopCondition.USER_STOP)
                raise StopIteration

        self.InvokeEvent(Event.START)
        result = minimize(
            value_and_gradient,
            metric.GetParameters() * scales,
            jac=True,
            method="L-BFGS-B",
            bounds=[(self.LowerBound, self.UpperBound)] * count,
            callback=iteration,
            options={
                "maxcor": self.MaximumNumberOfCorrections,
                "ftol": self.CostFunctionConvergenceFactor * np.finfo(np.float64).eps,
                "gtol": self.GradientConvergenceTolerance,
                "maxiter": self.NumberOfIterations,
                "maxfun": self.MaximumNumberOfFunctionEvaluations,
            },
        )
        metric.SetParameters(result.x / scales)
        self._value = float(result.fun)
        if self._stop is None:
            self._stop_with(*self._condition(result))
        self.InvokeEvent(Event.END)

    def _condition(self, result: Any) -> tuple[StopCondition, Any, Any]:
        """The stop condition of SciPy's L-BFGS-B result, with its own words."""
        message = str(result.message).lower()
        if result.nit >= self.NumberOfIterations:
            return StopCondition.MAXIMUM_NUMBER_OF_ITERATIONS, None, self.NumberOfIterations
        if self.evaluations >= self.MaximumNumberOfFunctionEvaluations:
            limit = self.MaximumNumberOfFunctionEvaluations
            return StopCondition.MAXIMUM_NUMBER_OF_FUNCTION_EVALUATIONS, None, limit
        if "convergence" in message:  # the relative reduction, or the projected gradient
            return StopCondition.CONVERGENCE, message.replace("convergence: ", ""), None
        return StopCondition.STEP_TOO_SMALL, None, None  # the line search found no decrease
