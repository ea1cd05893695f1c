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
``MaximumBadSteps`` rejected steps in a row, or an observer calling
:meth:`StopOptimization`.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from ppir_itk.errors import InputError
from ppir_itk.events import Event, Observable

SPARSE_DAMPING_FLOOR = 1e-2  # x the mean diagonal of a sparse (B-spline) Gauss-Newton matrix
SPARSE_TOLERANCE = 1e-6  # relative residual of the damped step's conjugate-gradient solve
SPARSE_ITERATIONS = 1000


class StopCondition(enum.Enum):
    MAXIMUM_NUMBER_OF_ITERATIONS = "maximum number of iterations reached"
    STEP_TOO_SMALL = "step smaller than the minimum step length"
    CONVERGENCE = "relative change of the value below the tolerance"
    TOO_MANY_BAD_STEPS = "too many rejected steps in a row"
    USER_STOP = "stopped by an observer"


class GaussNewtonOptimizer(Observable):
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

    def __init__(
        self,
        NumberOfIterations: int = 100,  # noqa: N803
        MinimumStepLength: float = 1e-4,  # noqa: N803
        RelativeValueTolerance: float = 1e-6,  # noqa: N803
        MaximumBadSteps: int = 6,  # noqa: N803
        InitialDamping: float = 1e-3,  # noqa: N803
    ) -> None:
        super().__init__()
        if NumberOfIterations < 1:
            raise InputError(
                f"the optimizer's NumberOfIterations {NumberOfIterations} must be at least 1"
            )
        self.NumberOfIterations = int(NumberOfIterations)
        self.MinimumStepLength = float(MinimumStepLength)
        self.RelativeValueTolerance = float(RelativeValueTolerance)
        self.MaximumBadSteps = int(MaximumBadSteps)
        self.InitialDamping = float(InitialDamping)
        self._metric: Any = None
        self._iteration = 0
        self._value = float("nan")
        self._damping = self.InitialDamping
        self._stop: StopCondition | None = None
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
        if self._stop is None:
            return "not started"
        return f"GaussNewtonOptimizer: {self._stop.value} after {self._iteration} iterations"

    def StopOptimization(self) -> None:  # noqa: N802
        self._stop_requested = True

    def StartOptimization(self) -> None:  # noqa: N802
        if self._metric is None:
            raise RuntimeError("the optimizer has no metric: call SetMetric first")
        metric = self._metric
        self._iteration = 0
        self._stop = None
        self._stop_requested = False
        self._damping = self.InitialDamping
        self.values = []
        self.InvokeEvent(Event.START)
        current = metric.evaluate()
        self._value = current.value
        bad_steps = 0
        while self._stop is None:
            if self._iteration >= self.NumberOfIterations:
                self._stop = StopCondition.MAXIMUM_NUMBER_OF_ITERATIONS
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
                self._stop = StopCondition.USER_STOP
            elif accepted and change < self.RelativeValueTolerance:
                self._stop = StopCondition.CONVERGENCE
            elif shift < self.MinimumStepLength:
                self._stop = StopCondition.STEP_TOO_SMALL
            elif bad_steps >= self.MaximumBadSteps:
                self._stop = StopCondition.TOO_MANY_BAD_STEPS
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
