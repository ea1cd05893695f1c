"""``ImageRegistrationMethod`` and the one-call :func:`register`.

The method drives a registration on the moving party's side, as ITK's
``ImageRegistrationMethodv4``: for each level of the multi-resolution
schedule it opens the level with the fixed party (through the metric's
backend), agrees the sample, runs the optimizer and carries the parameters
on in physical space (no rescaling between levels).

Examples
--------
In a few lines, the fixed party in its own local process (private he backend)::

    import ppir_itk
    from ppir_itk.options import RegistrationOptions
    options = RegistrationOptions(transform="affine", shrink_factors=[4, 2, 1],
                                  smoothing_sigmas=[2, 1, 0])
    result = ppir_itk.register("fixed.nii.gz", "moving.nii.gz", options)
    print(result.final_metric, result.iterations)
    itk_transform = result.itk_transform()

or piece by piece, ITK style::

    session = ppir_itk.connect("fixed-site:7443", tls=ppir_itk.TLS.for_role("pki", "moving-party"))
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric("he", session=session)
    metric.SetMovingImage(moving)
    reg = ppir_itk.ImageRegistrationMethod(metric=metric, initial_transform="rigid",
                                           shrink_factors=[2, 1], smoothing_sigmas=[1, 0])
    reg.AddObserver(itk.IterationEvent(), lambda: print(reg.GetMetricValue()))
    transform = reg.Execute()   # an itk transform

or with ITK's own calls, as ITK's ``ImageRegistrationMethodv4`` takes them (an ITK
example script with its metric, method and optimizer swapped)::

    registration = ppir_itk.ImageRegistrationMethod()
    optimizer = ppir_itk.RegularStepGradientDescentOptimizer()
    registration.SetOptimizer(optimizer)
    registration.SetMetric(ppir_itk.PrivateMeanSquaresImageToImageMetric("he", session))
    registration.SetMovingImage(moving)
    registration.SetInitialTransform(transform)   # an itk transform, updated in place
    optimizer.SetLearningRate(4)
    command = itk.PyCommand.New()
    command.SetCommandCallable(lambda: print(optimizer.GetValue()))
    optimizer.AddObserver(itk.IterationEvent(), command)
    registration.Update()
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppir_itk import parallel
from ppir_itk.bspline import BSplineTransform
from ppir_itk.compose import in_process_session, spawn_fixed_party
from ppir_itk.correlation import PrivateCorrelationImageToImageMetric
from ppir_itk.errors import InputError
from ppir_itk.events import Event, Observable
from ppir_itk.image import GridGeometry, ImageGrid, center_of_mass, check_large_enough
from ppir_itk.masks import as_mask
from ppir_itk.mattes import PrivateMattesMutualInformationImageToImageMetric
from ppir_itk.metric import PrivateImageToImageMetric, PrivateMeanSquaresImageToImageMetric
from ppir_itk.metric_kinds import (
    CORRELATION,
    GAUSS_NEWTON,
    MATTES,
    MEAN_SQUARES,
    REGULAR_STEP,
    check_optimizer,
    default_optimizer,
)
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.optimizer import (
    GaussNewtonOptimizer,
    GradientDescentOptimizer,
    LBFGSBOptimizer,
    RegularStepGradientDescentOptimizer,
)
from ppir_itk.options import (
    MINIMUM_STEP_LENGTHS,
    RegistrationOptions,
    check_bspline_grid,
    check_grid_spacing,
    check_initializer,
    check_iterations,
    check_threads,
    initializer_for,
)
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import Counters
from ppir_itk.pyramid import LevelSchedule
from ppir_itk.sampling import URS, NoSampling, Regular
from ppir_itk.transform_kinds import transform_kind
from ppir_itk.transforms import LinearTransform, make_transform
from ppir_itk.wrapping import transforms as transform_io
from ppir_itk.wrapping.images import as_image_grid
from ppir_itk.wrapping.resample import resample

Optimizer = (
    GaussNewtonOptimizer
    | RegularStepGradientDescentOptimizer
    | GradientDescentOptimizer
    | LBFGSBOptimizer
)

#: The parties a run reports figures for, in the order reports and tables show them
#: (the dealer only with spdz).
PARTIES = ("moving", "fixed", "dealer")


@dataclass(frozen=True)
class LevelReport:
    """What happened at one resolution level."""

    level: int
    shrink_factor: int
    smoothing_sigma: float
    grid_size: tuple[int, ...]
    points: int
    iterations: int
    maximum_iterations: int  # this level's limit
    final_metric: float
    seconds: float
    setup_seconds: float
    stop_condition: str
    parties: dict[str, dict] = field(default_factory=dict)
    # With a fixed mask: the points inside it (and valid) at the level's last evaluation,
    # which the moving party learns; None without one.
    points_inside_fixed_mask: int | None = None


@dataclass
class RegistrationResult:
    """The outcome of a registration, with everything a run reports (DESIGN.md §9)."""

    transform: LinearTransform | BSplineTransform
    fixed_geometry: GridGeometry
    backend: str
    private: bool
    sampling: str
    protocol: str = ""
    scheme: str = ""
    metric: str = MEAN_SQUARES
    histogram_bins: int | None = None  # Mattes only
    optimizer: str = ""  # the optimizer's class
    levels: list[LevelReport] = field(default_factory=list)
    metric_values: list[float] = field(default_factory=list)
    parties: dict[str, dict] = field(default_factory=dict)
    learned: dict[str, list[str]] = field(default_factory=dict)
    # values each party opened or decrypted that a uniform mask hides from it
    masked: dict[str, list[str]] = field(default_factory=dict)
    # Linear measurements of the fixed image the fixed party counted against this moving
    # party's identity (:func:`measurement_report`), as it says in Closed.
    measurements: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    transport: str = "in-process"
    fixed_startup_seconds: float | None = None
    seed: int | None = None
    threads: int = 1
    # Which masks restricted the metric (the fixed one: the fixed party's, said in Welcome).
    fixed_mask: bool = False
    moving_mask: bool = False

    @property
    def iterations(self) -> int:
        return sum(level.iterations for level in self.levels)

    @property
    def final_metric(self) -> float:
        return self.levels[-1].final_metric if self.levels else float("nan")

    def itk_transform(self) -> Any:
        """The result as an ITK transform object (fixed points to moving points)."""
        return transform_io.to_itk(self.transform)

    def sitk_transform(self) -> Any:
        """The result as a SimpleITK transform."""
        return transform_io.to_sitk(self.transform)

    def resample(self, moving: Any) -> ImageGrid:
        """The moving image resampled onto the fixed grid (linear, 0 outside)."""
        return resample(
            as_image_grid(moving, name="moving image"), self.transform, self.fixed_geometry
        )

    def report(self) -> dict[str, Any]:
        """The machine-readable report (``--report`` JSON)."""
        return {
            "backend": self.backend,
            "protocol": self.protocol,
            "scheme": self.scheme,
            "private": self.private,
            "metric": self.metric,
            "histogram_bins": self.histogram_bins,
            "optimizer": self.optimizer,
            "transform_type": self.transform.kind,
            "itk_transform": self.transform.itk_name,
            "parameters": self.transform.parameters.tolist(),
            "fixed_parameters": self.transform.fixed_parameters.tolist(),
            "sampling": self.sampling,
            "masks": {"fixed": self.fixed_mask, "moving": self.moving_mask},
            "seed": self.seed,
            "threads": self.threads,
            "iterations": self.iterations,
            "final_metric": self.final_metric,
            "seconds": self.seconds,
            "levels": [dict(level.__dict__) for level in self.levels],
            "metric_values": self.metric_values,
            "transport": self.transport,
            "fixed_startup_seconds": self.fixed_startup_seconds,
            "parties": self.parties,
            "learned_in_the_clear": self.learned,
            "received_uniformly_masked": self.masked,
            "fixed_image_measurements": self.measurements,
        }


def measurement_report(closed: pb.Closed) -> dict[str, Any]:
    """The linear measurements of J the fixed party counted: in this session, held by this
    moving party's identity over all its sessions, the cap on those (None: no cap), the
    fraction of the cap used, and the noise on the sums (0: exact)."""
    cap = closed.measurement_cap
    limited = math.isfinite(cap)
    return {
        "this_session": closed.measurements,
        "held": closed.measurements_held,
        "cap": int(cap) if limited else None,
        "fraction_of_cap": (closed.measurements_held / cap if cap else 1.0) if limited else 0.0,
        "joint_term_noise": closed.joint_term_noise,
    }


class ImageRegistrationMethod(Observable):
    """Multi-resolution registration driven by the moving party.

    It takes ITK's ``ImageRegistrationMethodv4`` calls as well (``SetMetric``,
    ``SetOptimizer``, ``SetFixedImage``, ``SetMovingImage``, ``SetInitialTransform``,
    ``SetNumberOfLevels``, ``SetShrinkFactorsPerLevel``, ``SetSmoothingSigmasPerLevel``,
    ``SetMetricSampling...``, ``Update``, ``GetOutput().Get()``, ``GetTransform``); they
    replace the constructor's settings as the run starts. ITK's calls it cannot honour
    raise ``NotImplementedError`` naming the call and why.

    Parameters
    ----------
    metric : PrivateImageToImageMetric (any of the private metrics), optional
        The metric, with its backend set (or ``SetMetric`` before the run).
    optimizer : an optimizer of :mod:`ppir_itk.optimizer`, optional
        Defaults to the metric's (:func:`ppir_itk.metric_kinds.default_optimizer`) with
        :class:`~ppir_itk.options.RegistrationOptions`' settings, as :func:`register`
        builds it: a ``GaussNewtonOptimizer``, which fits mean squares only, or a
        ``RegularStepGradientDescentOptimizer``.
    initial_transform : str, LinearTransform, itk or SimpleITK transform
        The transform to optimise (its type is the output type), or a kind of
        :data:`ppir_itk.transform_kinds.TRANSFORMS` (``bspline`` needs ``grid_spacing``).
    shrink_factors, smoothing_sigmas : sequence
        One value per level, coarsest first; sigmas in physical units. Every default here
        is :class:`~ppir_itk.options.RegistrationOptions`' (three levels).
    sampling : NoSampling, URS or GMS
        Which fixed-grid points each level uses.
    initializer : {"none", "geometry", "moments"}, optional
        Centre the transform on the fixed image and align the image centres
        (``geometry``) or centres of mass (``moments``: the fixed party
        discloses its centre of mass, and the report says so). None (the default):
        ``geometry`` over a transform built from a kind name, none over a transform
        handed in, which is the start as it is (:func:`~ppir_itk.options.initializer_for`).
    threads : int, optional
        Kernel threads; results are bit-identical for any value.
    iterations : int or sequence of int, optional
        The most iterations of each level (one count, or one per level, coarsest
        first), set on the optimizer as each level starts; None: the optimizer's
        ``NumberOfIterations`` at every level.
    """

    def __init__(
        self,
        metric: PrivateImageToImageMetric | None = None,
        optimizer: Optimizer | None = None,
        initial_transform: Any = RegistrationOptions.transform,
        *,
        shrink_factors: Sequence[int] = RegistrationOptions.shrink_factors,
        smoothing_sigmas: Sequence[float] = RegistrationOptions.smoothing_sigmas,
        sampling: Any = None,
        initializer: str | None = RegistrationOptions.initializer,
        threads: int | None = None,
        grid_spacing: float | Sequence[float] | None = None,
        refine_grid: bool = False,
        bulk_transform: Any = None,
        iterations: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self._metric = metric
        self.schedule = LevelSchedule.from_lists(shrink_factors, smoothing_sigmas)
        self.iterations = (
            None if iterations is None else check_iterations(iterations, len(self.schedule.levels))
        )
        self.sampling = sampling if sampling is not None else NoSampling()
        self.initializer = None if initializer is None else check_initializer(initializer)
        self.threads = check_threads(threads)
        self._set_initial_transform(initial_transform)
        check_bspline_grid(initial_transform, grid_spacing)
        self.grid_spacing = check_grid_spacing(grid_spacing)
        self.refine_grid = refine_grid
        self.bulk = bulk_transform
        self._moving_initial: Any = None
        self._fixed_initial: Any = None
        self._level = -1
        self._stop_requested = False
        self._result: RegistrationResult | None = None
        self._itk = _ItkCalls()
        self._optimizer: Optimizer | None = None
        self._forward_tag = -1
        if optimizer is not None:
            self.SetOptimizer(optimizer)
        elif metric is not None:
            self.SetOptimizer(_default_optimizer(metric))

    @property
    def metric(self) -> PrivateImageToImageMetric:
        if self._metric is None:
            raise RuntimeError("the registration method has no metric: call SetMetric first")
        return self._metric

    @property
    def optimizer(self) -> Optimizer:
        if self._optimizer is None:  # ITK's default is the metric's, as the constructor's
            self.SetOptimizer(_default_optimizer(self.metric))
        assert self._optimizer is not None, "set just above"
        return self._optimizer

    def _set_initial_transform(self, initial_transform: Any) -> None:
        # None for a transform given as an object: it is its own kind.
        self._kind = (
            transform_kind(initial_transform) if isinstance(initial_transform, str) else None
        )
        self._initial_transform = initial_transform

    # -- ITK's ImageRegistrationMethodv4 calls ----------------------------------
    NONE, REGULAR, RANDOM = 0, 1, 2  # ITK's MetricSamplingStrategy values

    def SetMetric(self, metric: PrivateImageToImageMetric) -> None:  # noqa: N802
        """The private metric (ITK's own metric objects cannot see the fixed party)."""
        if not isinstance(metric, PrivateImageToImageMetric):
            raise InputError(
                f"SetMetric: {type(metric).__name__} is not a private metric; use "
                "ppir_itk.PrivateMeanSquaresImageToImageMetric, "
                "PrivateCorrelationImageToImageMetric or "
                "PrivateMattesMutualInformationImageToImageMetric"
            )
        self._metric = metric
        if self._optimizer is not None:
            self.SetOptimizer(self._optimizer)  # its check against the new metric

    def GetMetric(self) -> PrivateImageToImageMetric:  # noqa: N802
        return self.metric

    def SetOptimizer(self, optimizer: Optimizer) -> None:  # noqa: N802
        if self._metric is not None and isinstance(optimizer, GaussNewtonOptimizer):
            check_optimizer(GAUSS_NEWTON, self._metric.settings.name)
        if self._optimizer is not None:
            self._optimizer.RemoveObserver(self._forward_tag)
        self._optimizer = optimizer
        # Added first, so the optimizer's own observers see the in-place transform updated.
        self._forward_tag = optimizer.AddObserver(Event.ITERATION, self._on_iteration)

    def GetOptimizer(self) -> Optimizer:  # noqa: N802
        return self.optimizer

    def SetFixedImage(self, fixed: Any) -> None:  # noqa: N802
        """The fixed image, where a script holds it: its pixels stay here (the fixed party
        holds its own copy); its geometry is checked against the fixed party's."""
        self._itk.fixed_geometry = as_image_grid(fixed, name="fixed image").geometry

    def SetMovingImage(self, moving: Any) -> None:  # noqa: N802
        """The moving image, given to the metric as the run starts."""
        self._itk.moving = as_image_grid(moving, name="moving image")

    def SetInitialTransform(self, transform: Any) -> None:  # noqa: N802
        """The transform to optimise; an ITK transform is updated in place (ITK's
        ``InPlaceOn``, the default) at each iteration."""
        self._set_initial_transform(transform)
        self._itk.in_place_transform = transform if _is_itk(transform) else None

    def SetInPlace(self, in_place: bool) -> None:  # noqa: N802
        self._itk.in_place = bool(in_place)

    def InPlaceOn(self) -> None:  # noqa: N802
        self._itk.in_place = True

    def InPlaceOff(self) -> None:  # noqa: N802
        self._itk.in_place = False

    def SetNumberOfLevels(self, levels: int) -> None:  # noqa: N802
        if int(levels) < 1:
            raise InputError(f"SetNumberOfLevels: {levels} levels; give at least 1")
        self._itk.number_of_levels = int(levels)

    def SetShrinkFactorsPerLevel(self, factors: Sequence[int]) -> None:  # noqa: N802
        self._itk.shrink_factors = [int(factor) for factor in factors]

    def SetSmoothingSigmasPerLevel(self, sigmas: Sequence[float]) -> None:  # noqa: N802
        self._itk.smoothing_sigmas = [float(sigma) for sigma in sigmas]

    def SetSmoothingSigmasAreSpecifiedInPhysicalUnits(self, physical: bool) -> None:  # noqa: N802
        if not physical:
            raise NotImplementedError(
                "SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False): the sigmas are "
                "physical (ITK's default); sigmas in voxels are not converted here"
            )

    def SetMetricSamplingStrategy(self, strategy: Any) -> None:  # noqa: N802
        """``NONE``, ``REGULAR`` or ``RANDOM``: this class's or ITK's own values."""
        if int(strategy) not in (self.NONE, self.REGULAR, self.RANDOM):
            raise InputError(
                f"SetMetricSamplingStrategy: {strategy!r} is not NONE, REGULAR or RANDOM"
            )
        self._itk.sampling_strategy = int(strategy)

    def SetMetricSamplingPercentage(self, fraction: float) -> None:  # noqa: N802
        """The fraction of the fixed grid sampled, in (0, 1], at every level."""
        self._itk.sampling_fraction = float(fraction)

    def SetMetricSamplingPercentagePerLevel(self, fractions: Sequence[float]) -> None:  # noqa: N802
        if len(set(fractions)) != 1:
            raise NotImplementedError(
                "SetMetricSamplingPercentagePerLevel: one sampling fraction serves every "
                "level here; give the same value for each"
            )
        self.SetMetricSamplingPercentage(fractions[0])

    def MetricSamplingReinitializeSeed(self, seed: int = 0) -> None:  # noqa: N802
        """The random sampling's seed (public; 0 unless set, where ITK draws one)."""
        self._itk.sampling_seed = int(seed)

    def SetFixedInitialTransform(self, transform: Any) -> None:  # noqa: N802
        """A fixed linear transform of the fixed points (ITK's fixed initial transform): the
        fixed party reads its image at ``initial(x)`` for each point x of its grid (the
        virtual domain); the points it maps off the image count as outside a fixed mask,
        so it needs a backend that computes the masked metric. Public: sent in Hello."""
        self._fixed_initial = transform

    def GetFixedInitialTransform(self) -> Any:  # noqa: N802
        return self._fixed_initial

    def SetMovingInitialTransform(self, transform: Any) -> None:  # noqa: N802
        """A fixed linear transform after the optimised one: the moving image is read at
        ``initial(T(x))`` (ITK's composite order); not optimised, not in the result (ITK's
        output leaves it out too)."""
        self._moving_initial = transform

    def GetMovingInitialTransform(self) -> Any:  # noqa: N802
        return self._moving_initial

    def SetVirtualDomainFromImage(self, image: Any) -> None:  # noqa: N802
        raise NotImplementedError(
            "SetVirtualDomainFromImage: the virtual domain is the fixed party's grid"
        )

    def SetOptimizerWeights(self, weights: Any) -> None:  # noqa: N802
        raise NotImplementedError(
            "SetOptimizerWeights: every parameter is optimised; use the optimizer's scales"
        )

    def Update(self) -> None:  # noqa: N802
        """Run the registration (ITK's ``Update``); the result is :meth:`GetTransform`."""
        self.run()

    def GetTransform(self) -> Any:  # noqa: N802
        """The transform as an ITK transform: the initial ITK transform itself when set
        in place, live during the run, the result after it."""
        if self._itk.writes_in_place():
            return self._itk.in_place_transform
        if self._result is not None:
            return self._result.itk_transform()
        return transform_io.to_itk(self.metric.GetTransform())

    def GetModifiableTransform(self) -> Any:  # noqa: N802
        return self.GetTransform()

    def GetOutput(self) -> _TransformOutput:  # noqa: N802
        """ITK's decorated output: ``GetOutput().Get()`` is :meth:`GetTransform`."""
        return _TransformOutput(self)

    def GetCurrentIteration(self) -> int:  # noqa: N802
        return self.GetOptimizerIteration()

    def _on_iteration(self) -> None:
        if self._itk.writes_in_place():
            self._write_in_place(self.metric.GetTransform())
        self.InvokeEvent(Event.ITERATION)

    def _write_in_place(self, transform: LinearTransform | BSplineTransform) -> None:
        updated = transform_io.to_itk(transform)
        target = self._itk.in_place_transform
        target.SetFixedParameters(updated.GetFixedParameters())
        target.SetParameters(updated.GetParameters())

    def _apply_itk_calls(self) -> None:
        """The ITK setters' schedule, sampling and moving image, as the run starts."""
        calls = self._itk
        if calls.moving is not None:
            self.metric.SetMovingImage(calls.moving)
        if calls.levels_set():
            self.schedule = LevelSchedule.from_lists(*calls.level_lists())
            if self.iterations is not None:
                check_iterations(self.iterations, len(self.schedule.levels))
        if calls.sampling_strategy is not None:
            self.sampling = calls.sampling()

    # -- live measurements (valid inside observers) -----------------------------
    def GetCurrentLevel(self) -> int:  # noqa: N802
        return self._level

    def GetOptimizerIteration(self) -> int:  # noqa: N802
        return self.optimizer.GetCurrentIteration()

    def GetMetricValue(self) -> float:  # noqa: N802
        return self.optimizer.GetValue()

    def GetOptimizerPosition(self) -> np.ndarray:  # noqa: N802
        return self.optimizer.GetCurrentPosition()

    def GetOptimizerStopConditionDescription(self) -> str:  # noqa: N802
        return self.optimizer.GetStopConditionDescription()

    def StopRegistration(self) -> None:  # noqa: N802
        self._stop_requested = True
        self.optimizer.StopOptimization()

    def GetResult(self) -> RegistrationResult:  # noqa: N802
        if self._result is None:
            raise RuntimeError("no result yet: Execute() has not run")
        return self._result

    # -- the run ----------------------------------------------------------------
    def Execute(self) -> Any:  # noqa: N802
        """Run every level; returns the result as an ITK transform."""
        return self.run().itk_transform()

    def run(self) -> RegistrationResult:
        """Run every level; returns the full :class:`RegistrationResult`."""
        start = time.perf_counter()
        self._apply_itk_calls()
        previous_threads = parallel.get_number_of_threads()
        previous_iterations = self.optimizer.NumberOfIterations  # each level sets its own
        parallel.set_number_of_threads(self.threads)
        try:
            result = self._run()
        finally:
            parallel.set_number_of_threads(previous_threads)
            self.optimizer.NumberOfIterations = previous_iterations
        result.seconds = time.perf_counter() - start
        self._result = result
        if self._itk.writes_in_place():
            self._write_in_place(result.transform)
        return result

    def _run(self) -> RegistrationResult:
        metric, moving_party = self.metric, self.metric.moving_party
        moving = metric.GetMovingImage()
        if moving is None:
            raise RuntimeError("the metric has no moving image: call SetMovingImage first")
        bspline_kind = self._kind if self._kind is not None and not self._kind.linear else None
        # A B-spline's grid covers the fixed image, known once the session started.
        transform = _as_transform(
            "translation" if bspline_kind is not None else self._initial_transform, moving.dimension
        )
        if transform.dimension != moving.dimension:
            raise InputError(
                f"the initial transform is {transform.dimension}-D but the images are "
                f"{moving.dimension}-D"
            )
        try:
            fixed_geometry = moving_party.start(
                self.schedule,
                self.sampling,
                wants_center_of_mass=self.initializer_to_run() == "moments",
                fixed_initial=self._linear(
                    "SetFixedInitialTransform", self._fixed_initial, moving.dimension
                ),
            )
            if self._itk.fixed_geometry is not None and not _same_geometry(
                self._itk.fixed_geometry, fixed_geometry
            ):
                raise InputError(
                    "SetFixedImage: the image's geometry is not the fixed party's "
                    f"({self._itk.fixed_geometry} against {fixed_geometry})"
                )
            check_large_enough(moving.geometry, name="moving image")
            check_large_enough(
                fixed_geometry,
                name="fixed image",
                shrink_factor=max(level.shrink_factor for level in self.schedule.levels),
            )
            if bspline_kind is not None:
                spacing = np.asarray(self.grid_spacing, dtype=np.float64)
                if self.refine_grid:  # doubled back to grid_spacing by the last level
                    spacing = spacing * 2.0 ** (len(self.schedule.levels) - 1)
                bulk = None if self.bulk is None else _as_transform(self.bulk, moving.dimension)
                if isinstance(bulk, BSplineTransform):
                    raise InputError(
                        "the bulk transform is a B-spline; the B-spline is "
                        "composed with a linear transform only"
                    )
                transform = bspline_kind.build(
                    moving.dimension, fixed_geometry=fixed_geometry, grid_spacing=spacing, bulk=bulk
                )
            result = RegistrationResult(
                transform=transform,
                fixed_geometry=fixed_geometry,
                backend=moving_party.name,
                protocol=moving_party.backend.protocol,
                scheme=moving_party.backend.scheme,
                private=moving_party.private,
                metric=metric.settings.name,
                histogram_bins=(
                    metric.settings.histogram_bins if metric.settings.name == MATTES else None
                ),
                optimizer=type(self.optimizer).__name__,
                sampling=self.sampling.describe(),
                seed=getattr(self.sampling, "seed", None),
                threads=parallel.get_number_of_threads(),
                transport=moving_party.transport,
                fixed_mask=metric.fixed_masked,
                moving_mask=metric.GetMovingImageMask() is not None,
            )
            if isinstance(transform, LinearTransform):  # a B-spline starts at zero, after its bulk
                self._initialize(transform, moving, fixed_geometry)
            metric.SetMovingInitialTransform(
                self._linear("SetMovingInitialTransform", self._moving_initial, moving.dimension)
            )
            metric.SetTransform(transform)
            self.optimizer.SetMetric(metric)
            self._run_levels(result)
            closed = moving_party.close()
        except BaseException as error:
            moving_party.abort(f"the moving party stopped: {type(error).__name__}")
            raise
        result.parties = {
            "moving": party_figures(
                moving_party.counters(), sum(level.seconds for level in result.levels)
            ),
            "fixed": party_figures(Counters.from_pb(closed.stats), closed.stats.seconds),
        }
        for name, (counters, seconds) in moving_party.other_parties(closed).items():
            result.parties[name] = party_figures(counters, seconds)
        for level, fixed_level in zip(result.levels, closed.levels, strict=False):
            level.parties["fixed"] = party_figures(
                Counters.from_pb(fixed_level), fixed_level.seconds
            )
        for level in result.levels:
            for figures in level.parties.values():
                figures["per_iteration"] = {
                    key: figures[key] / max(level.iterations, 1)
                    for key in ("seconds", "bytes_sent", "bytes_received", "messages_sent")
                }
        result.learned = {"moving": moving_party.learned(), "fixed": list(closed.learned)}
        result.masked = {"moving": moving_party.masked(), "fixed": list(closed.masked)}
        result.measurements = measurement_report(closed)
        self.InvokeEvent(Event.END)
        return result

    @staticmethod
    def _linear(call: str, transform: Any, dimension: int) -> LinearTransform | None:
        """An initial transform given to ``call``, which must be a linear one of the images'
        dimension (None: none)."""
        if transform is None:
            return None
        initial = _as_transform(transform, dimension)
        if not isinstance(initial, LinearTransform) or initial.dimension != dimension:
            raise InputError(
                f"{call}: a {dimension}-D linear transform is needed; {initial!r} is not"
            )
        return initial

    def _run_levels(self, result: RegistrationResult) -> None:
        metric = self.metric
        moving_party = metric.moving_party
        limits = self.iterations or (self.optimizer.NumberOfIterations,) * len(self.schedule.levels)
        self._stop_requested = False
        self.InvokeEvent(Event.START)
        for level_index, level in enumerate(self.schedule.levels):
            self._level = level_index
            level_start = time.perf_counter()
            transform = metric.GetTransform()
            if level_index > 0 and self.refine_grid and isinstance(transform, BSplineTransform):
                result.transform = transform.refined()  # the same deformation, finer grid
                metric.SetTransform(result.transform)
            mark = moving_party.counters()
            points = metric.initialize_level(level_index, level, self.sampling)
            setup_seconds = time.perf_counter() - level_start
            self.optimizer.NumberOfIterations = limits[level_index]
            self.InvokeEvent(Event.MULTI_RESOLUTION_ITERATION)
            self.optimizer.StartOptimization()
            seconds = time.perf_counter() - level_start
            result.metric_values.extend(self.optimizer.values)
            result.levels.append(
                LevelReport(
                    level=level_index,
                    shrink_factor=level.shrink_factor,
                    smoothing_sigma=level.smoothing_sigma,
                    grid_size=points.geometry.size,
                    points=points.size,
                    iterations=self.optimizer.GetCurrentIteration(),
                    maximum_iterations=limits[level_index],
                    final_metric=self.optimizer.GetValue(),
                    seconds=seconds,
                    setup_seconds=setup_seconds,
                    stop_condition=self.optimizer.GetStopConditionDescription(),
                    parties={"moving": party_figures(moving_party.counters() - mark, seconds)},
                    points_inside_fixed_mask=moving_party.fixed_mask_counts.get(level_index),
                )
            )
            if self._stop_requested:
                break

    def initializer_to_run(self) -> str:
        """The initializer the run applies (:func:`~ppir_itk.options.initializer_for`)."""
        return initializer_for(self.initializer, self._initial_transform)

    def _initialize(
        self, transform: LinearTransform, moving: ImageGrid, fixed_geometry: GridGeometry
    ) -> None:
        initializer = self.initializer_to_run()
        if initializer == "none":
            return
        moving_party = self.metric.moving_party
        if initializer == "geometry":
            fixed_center = fixed_geometry.center()
            moving_center = moving.geometry.center()
        else:
            fixed_center = moving_party.fixed_center_of_mass()
            moving_center = center_of_mass(moving)
        if transform.center is not None:
            transform.center = fixed_center
        transform.translation = moving_center - fixed_center


@dataclass
class _ItkCalls:
    """What an ITK script's setters asked for, applied as the run starts."""

    moving: ImageGrid | None = None
    fixed_geometry: GridGeometry | None = None
    in_place_transform: Any = None  # an ITK transform from SetInitialTransform
    in_place: bool = True  # ITK's default
    number_of_levels: int | None = None
    shrink_factors: list[int] | None = None
    smoothing_sigmas: list[float] | None = None
    sampling_strategy: int | None = None
    sampling_fraction: float = 1.0  # ITK's default
    sampling_seed: int = 0

    def writes_in_place(self) -> bool:
        return self.in_place and self.in_place_transform is not None

    def levels_set(self) -> bool:
        return any(
            value is not None
            for value in (self.number_of_levels, self.shrink_factors, self.smoothing_sigmas)
        )

    def level_lists(self) -> tuple[list[int], list[float]]:
        """Shrink factors and sigmas, one per level (ITK's 1 and 0 where not set)."""
        given = self.shrink_factors or self.smoothing_sigmas or [1]
        count = self.number_of_levels or len(given)
        shrink_factors = self.shrink_factors or [1] * count
        smoothing_sigmas = self.smoothing_sigmas or [0.0] * count
        for call, values in (
            ("SetShrinkFactorsPerLevel", shrink_factors),
            ("SetSmoothingSigmasPerLevel", smoothing_sigmas),
        ):
            if len(values) != count:
                raise InputError(f"{call}: {len(values)} values for {count} levels; give one each")
        return shrink_factors, smoothing_sigmas

    def sampling(self) -> NoSampling | Regular | URS:
        if self.sampling_strategy == ImageRegistrationMethod.NONE:
            return NoSampling()
        if not 0 < self.sampling_fraction <= 1:
            raise InputError(
                f"SetMetricSamplingPercentage: {self.sampling_fraction} is not in (0, 1]"
            )
        if self.sampling_strategy == ImageRegistrationMethod.REGULAR:
            return Regular(self.sampling_fraction)
        return URS(self.sampling_fraction, self.sampling_seed)


class _TransformOutput:
    """ITK's ``DataObjectDecorator`` of the method's transform."""

    def __init__(self, method: ImageRegistrationMethod) -> None:
        self._method = method

    def Get(self) -> Any:  # noqa: N802
        return self._method.GetTransform()


def _default_optimizer(metric: PrivateImageToImageMetric) -> Optimizer:
    """The metric's optimizer with RegistrationOptions' settings, as :func:`register`'s."""
    name = default_optimizer(metric.settings.name)
    return _make_optimizer(
        name,
        iterations=RegistrationOptions.iterations,
        learning_rate=RegistrationOptions.learning_rate,
        minimum_step_length=MINIMUM_STEP_LENGTHS[name],
        gradient_magnitude_tolerance=RegistrationOptions.gradient_magnitude_tolerance,
        relative_value_tolerance=RegistrationOptions.relative_value_tolerance,
    )


def _make_optimizer(
    name: str,
    *,
    iterations: int | Sequence[int],
    learning_rate: float,
    minimum_step_length: float,
    gradient_magnitude_tolerance: float,
    relative_value_tolerance: float,
) -> GaussNewtonOptimizer | RegularStepGradientDescentOptimizer:
    """The optimizer ``name`` (:mod:`ppir_itk.metric_kinds`) with the options' settings; its
    ``NumberOfIterations`` the first level's (the method sets each level's)."""
    first_level = iterations if isinstance(iterations, int) else iterations[0]
    if name == REGULAR_STEP:
        return RegularStepGradientDescentOptimizer(
            LearningRate=learning_rate,
            MinimumStepLength=minimum_step_length,
            NumberOfIterations=first_level,
            GradientMagnitudeTolerance=gradient_magnitude_tolerance,
        )
    return GaussNewtonOptimizer(
        NumberOfIterations=first_level,
        MinimumStepLength=minimum_step_length,
        RelativeValueTolerance=relative_value_tolerance,
    )


def _is_itk(transform: Any) -> bool:
    return type(transform).__module__.startswith("itk")


def _same_geometry(first: GridGeometry, second: GridGeometry) -> bool:
    return first.size == second.size and all(
        np.allclose(getattr(first, name), getattr(second, name))
        for name in ("spacing", "origin", "direction")
    )


def party_figures(counters: Counters, seconds: float) -> dict[str, float | int]:
    """One party's figures for a report (``RegistrationResult.parties``) from its counters.

    Parameters
    ----------
    counters : Counters
        The party's message and byte counts (e.g. a session's ``counters()``, or
        the difference of two of them for a stretch of a session).
    seconds : float
        The party's busy time over the same stretch.

    Returns
    -------
    dict
        ``seconds``, every counter, and ``bytes_sent`` / ``bytes_received``: the
        bytes on the wire when there is one, the payload bytes otherwise.
    """
    figures: dict[str, float | int] = {"seconds": seconds, **counters.as_dict()}
    on_wire = counters.wire_bytes_sent or counters.wire_bytes_received
    figures["bytes_sent"] = counters.wire_bytes_sent if on_wire else counters.payload_bytes_sent
    figures["bytes_received"] = (
        counters.wire_bytes_received if on_wire else counters.payload_bytes_received
    )
    return figures


def _as_transform(initial: Any, dimension: int) -> LinearTransform | BSplineTransform:
    if isinstance(initial, LinearTransform):
        return initial.copy()
    if isinstance(initial, str):
        return make_transform(initial, dimension)
    if type(initial).__module__.startswith("SimpleITK"):
        return transform_io.from_sitk(initial)
    if _is_itk(initial):
        return transform_io.from_itk(initial)
    raise InputError(f"initial transform of type {type(initial).__name__} is not supported")


def _options(options: RegistrationOptions | None, overrides: dict[str, Any]) -> RegistrationOptions:
    """``options`` (the defaults if None) with the keyword ``overrides``, checked."""
    if options is None:
        return RegistrationOptions(**overrides)
    return dataclasses.replace(options, **overrides) if overrides else options


def register_with(
    session: Any,
    moving: Any,
    options: RegistrationOptions | None = None,
    *,
    observers: dict[Any, Any] | None = None,
    **overrides: Any,
) -> RegistrationResult:
    """Register ``moving`` with the fixed party at the other end of ``session``.

    The moving party's whole job in one call: ``session`` comes from
    :func:`ppir_itk.connect` (another machine) or
    :func:`ppir_itk.in_process_session`. ``options`` and the keyword
    ``overrides`` are those of :func:`register` (the deadline is the session's);
    ``observers`` maps events to callables taking the
    :class:`ImageRegistrationMethod`.
    """
    options = _options(options, overrides)
    if options.fixed_mask is not None:
        raise InputError(
            "the fixed mask belongs to the fixed party: give it to 'ppir serve --fixed-mask' "
            "on the fixed party's machine"
        )
    moving_grid = as_image_grid(moving, name="moving image")
    options.check_dimension(moving_grid.dimension)
    return _register_with(session, moving_grid, options, observers)


def _register_with(
    session: Any, moving: ImageGrid, options: RegistrationOptions, observers: dict[Any, Any] | None
) -> RegistrationResult:
    moving_party = MovingPartySession(
        session, options.backend, dict(options.backend_parameters), options.metric_settings
    )
    metric: PrivateImageToImageMetric
    if options.metric == MATTES:
        metric = PrivateMattesMutualInformationImageToImageMetric(
            moving_party,
            number_of_histogram_bins=options.histogram_bins,
            bending_energy_weight=options.bending_energy_weight,
        )
    elif options.metric == CORRELATION:
        metric = PrivateCorrelationImageToImageMetric(
            moving_party, bending_energy_weight=options.bending_energy_weight
        )
    else:
        metric = PrivateMeanSquaresImageToImageMetric(
            moving_party, bending_energy_weight=options.bending_energy_weight
        )
    metric.SetMovingImage(moving)
    metric.SetMovingImageMask(options.moving_mask)
    minimum_step = options.minimum_step_length
    assert minimum_step is not None, "RegistrationOptions sets the optimizer's own"
    optimizer = _make_optimizer(
        str(options.optimizer),
        iterations=options.iterations,
        learning_rate=options.learning_rate,
        minimum_step_length=minimum_step,
        gradient_magnitude_tolerance=options.gradient_magnitude_tolerance,
        relative_value_tolerance=options.relative_value_tolerance,
    )
    method = ImageRegistrationMethod(
        metric,
        optimizer,
        options.transform,
        shrink_factors=options.shrink_factors,
        smoothing_sigmas=options.smoothing_sigmas,
        sampling=options.sampling_strategy(),
        initializer=options.initializer_to_run(),
        threads=options.threads,
        grid_spacing=options.grid_spacing,
        refine_grid=options.refine_grid,
        bulk_transform=options.bulk_transform,
        iterations=options.iterations_per_level(),
    )
    for event, callback in (observers or {}).items():
        method.AddObserver(event, functools.partial(callback, method))
    return method.run()


def register(
    fixed: Any,
    moving: Any,
    options: RegistrationOptions | None = None,
    *,
    transport: str = "process",
    observers: dict[Any, Any] | None = None,
    **overrides: Any,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` in one call, both images on this machine.

    Parameters
    ----------
    fixed, moving : itk.Image, SimpleITK.Image or path
        The two images (2-D or 3-D, same dimension).
    options : RegistrationOptions, optional
        How to register (:class:`ppir_itk.options.RegistrationOptions`: transform,
        backend, sampling, schedule, optimizer, B-spline grid, deadline); its
        defaults if None.
    transport : {"process", "in-process"}
        ``process`` (default) runs the fixed party as a separate OS process
        over gRPC with mutual TLS on loopback, exactly as two machines would;
        ``in-process`` keeps it in this process (same messages, no socket).
    observers : dict, optional
        Events mapped to callables taking the :class:`ImageRegistrationMethod`.
    **overrides
        Any field of :class:`~ppir_itk.options.RegistrationOptions`, replacing
        the one in ``options``: ``transform`` (``translation``, ``rigid``,
        ``similarity``, ``affine``, an ITK/SimpleITK transform, or ``bspline`` with
        ``grid_spacing``, ``refine_grid``, ``bending_energy_weight`` and
        ``bulk_transform``), ``backend`` (``he`` private; ``clear`` NOT private),
        ``backend_parameters``, ``sampling``, ``sampling_fraction``, ``seed``,
        ``reveal_gms_indices``, ``shrink_factors``, ``smoothing_sigmas``,
        ``initializer`` (by default ``geometry`` over a transform built from a kind
        name, none over a transform handed in, which is the start as it is),
        ``iterations`` (one count, or one per level), ``threads``, ``fixed_mask`` and
        ``moving_mask`` (images or paths: the fixed one goes to the fixed party only),
        ``deadline`` (seconds to wait
        for the fixed party's next answer) ...

    Returns
    -------
    RegistrationResult
        ``result.itk_transform()`` maps fixed points to moving points.
    """

    # Options that are wrong fail here, before a fixed party is started.
    options = _options(options, overrides)
    fixed_grid = as_image_grid(fixed, name="fixed image")
    moving_grid = as_image_grid(moving, name="moving image")
    if fixed_grid.dimension != moving_grid.dimension:
        raise InputError(
            f"the fixed image is {fixed_grid.dimension}-D and the moving image is "
            f"{moving_grid.dimension}-D; both must have the same dimension"
        )
    options.check_dimension(moving_grid.dimension)
    dimension = fixed_grid.dimension
    fixed_mask = (
        None
        if options.fixed_mask is None
        else as_mask(options.fixed_mask, name="fixed mask", dimension=dimension)
    )
    if options.moving_mask is not None:  # read here too: a bad mask fails before any party
        options = dataclasses.replace(
            options,
            moving_mask=as_mask(options.moving_mask, name="moving mask", dimension=dimension),
        )
    if transport == "in-process":
        session = in_process_session(
            fixed_grid,
            FixedPolicy.holding_both_images((options.backend,)),
            fixed_mask=fixed_mask,
        )
        return _register_with(session, moving_grid, options, observers)
    if transport != "process":
        raise InputError(f"unknown transport '{transport}': choose process or in-process")
    source = fixed if isinstance(fixed, (str, os.PathLike)) else fixed_grid
    mask_source = (
        options.fixed_mask if isinstance(options.fixed_mask, (str, os.PathLike)) else fixed_mask
    )
    with spawn_fixed_party(
        source, backends=(options.backend,), deadline=options.deadline, fixed_mask=mask_source
    ) as fixed_party:
        result = _register_with(
            fixed_party.connect(options.deadline), moving_grid, options, observers
        )
    result.fixed_startup_seconds = fixed_party.startup_seconds
    return result
