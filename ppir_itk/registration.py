"""``ImageRegistrationMethod`` and the one-call :func:`register`.

The method drives a registration on the moving party's side, as ITK's
``ImageRegistrationMethodv4``: for each level of the multi-resolution
schedule it opens the level with the fixed party (through the metric's
backend), agrees the sample, runs the optimizer and carries the parameters
on in physical space (no rescaling between levels).

Examples
--------
In a few lines, the fixed party in its own local process (private ckks backend)::

    import ppir_itk
    result = ppir_itk.register("fixed.nii.gz", "moving.nii.gz", transform="affine",
                               shrink_factors=[4, 2, 1], smoothing_sigmas=[2, 1, 0])
    print(result.final_metric, result.iterations)
    itk_transform = result.itk_transform()

or piece by piece, ITK style::

    session = ppir_itk.connect("fixed-site:7443", tls=ppir_itk.TLS.for_role("pki", "moving-party"))
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric("ckks", session=session)
    metric.SetMovingImage(moving)
    reg = ppir_itk.ImageRegistrationMethod(metric=metric, initial_transform="rigid",
                                           shrink_factors=[2, 1], smoothing_sigmas=[1, 0])
    reg.AddObserver(itk.IterationEvent(), lambda: print(reg.GetMetricValue()))
    transform = reg.Execute()   # an itk transform
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppir_itk import parallel
from ppir_itk.backends import make_backend
from ppir_itk.bspline import BSplineTransform
from ppir_itk.errors import InputError
from ppir_itk.events import Event, Observable
from ppir_itk.fixed_party import FixedPolicy
from ppir_itk.image import GridGeometry, ImageGrid, center_of_mass
from ppir_itk.metric import PrivateMeanSquaresImageToImageMetric
from ppir_itk.optimizer import GaussNewtonOptimizer
from ppir_itk.protocol.channel import Counters
from ppir_itk.protocol.session import LocalSession, in_process_session
from ppir_itk.pyramid import LevelSchedule
from ppir_itk.sampling import NoSampling, make_sampling
from ppir_itk.transforms import LinearTransform, make_transform
from ppir_itk.wrapping import transforms as transform_io
from ppir_itk.wrapping.images import as_image_grid, to_sitk

INITIALIZERS = ("none", "geometry", "moments")


@dataclass(frozen=True)
class LevelReport:
    """What happened at one resolution level."""

    level: int
    shrink_factor: int
    smoothing_sigma: float
    grid_size: tuple[int, ...]
    points: int
    iterations: int
    final_metric: float
    seconds: float
    setup_seconds: float
    stop_condition: str
    parties: dict[str, dict] = field(default_factory=dict)


@dataclass
class RegistrationResult:
    """The outcome of a registration, with everything a run reports (DESIGN.md §9)."""

    transform: LinearTransform
    fixed_geometry: GridGeometry
    backend: str
    private: bool
    sampling: str
    levels: list[LevelReport] = field(default_factory=list)
    metric_values: list[float] = field(default_factory=list)
    parties: dict[str, dict] = field(default_factory=dict)
    learned: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    transport: str = "in-process"
    fixed_startup_seconds: float | None = None
    seed: int | None = None
    threads: int = 1

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
        return resample(as_image_grid(moving, name="moving image"), self.transform,
                        self.fixed_geometry)

    def report(self) -> dict[str, Any]:
        """The machine-readable report (``--report`` JSON)."""
        return {
            "backend": self.backend,
            "private": self.private,
            "transform_type": self.transform.kind,
            "itk_transform": self.transform.itk_name,
            "parameters": self.transform.parameters.tolist(),
            "fixed_parameters": self.transform.fixed_parameters.tolist(),
            "sampling": self.sampling,
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
        }


def resample(moving: ImageGrid, transform: LinearTransform, geometry: GridGeometry,
             outside: float = 0.0) -> ImageGrid:
    """Resample ``moving`` through ``transform`` onto the grid ``geometry`` with ITK
    (linear; ``outside`` where a point maps outside the moving image)."""
    import SimpleITK as sitk

    reference = sitk.Image([int(s) for s in geometry.size], sitk.sitkFloat64)
    reference.SetSpacing(geometry.spacing)
    reference.SetOrigin(geometry.origin)
    reference.SetDirection(geometry.direction)
    warped = sitk.Resample(to_sitk(moving), reference, transform_io.to_sitk(transform),
                           sitk.sitkLinear, outside, sitk.sitkFloat64)
    return as_image_grid(warped, check=False)


class ImageRegistrationMethod(Observable):
    """Multi-resolution registration driven by the moving party.

    Parameters
    ----------
    metric : PrivateMeanSquaresImageToImageMetric
        The metric, with its moving image and backend set.
    optimizer : GaussNewtonOptimizer, optional
        Defaults to ``GaussNewtonOptimizer()``.
    initial_transform : str, LinearTransform, itk or SimpleITK transform
        The transform to optimise (its type is the output type), or a kind:
        ``translation``, ``rigid``, ``similarity``, ``affine``.
    shrink_factors, smoothing_sigmas : sequence
        One value per level, coarsest first; sigmas in physical units.
    sampling : NoSampling, URS or GMS
        Which fixed-grid points each level uses.
    initializer : {"none", "geometry", "moments"}
        Centre the transform on the fixed image and align the image centres
        (``geometry``) or centres of mass (``moments``: the fixed party
        discloses its centre of mass, and the report says so).
    threads : int, optional
        Kernel threads; results are bit-identical for any value.
    """

    def __init__(
        self,
        metric: PrivateMeanSquaresImageToImageMetric,
        optimizer: GaussNewtonOptimizer | None = None,
        initial_transform: Any = "affine",
        *,
        shrink_factors: Sequence[int] = (1,),
        smoothing_sigmas: Sequence[float] = (0.0,),
        sampling: Any = None,
        initializer: str = "none",
        threads: int | None = None,
        grid_spacing: float | Sequence[float] | None = None,
        refine_grid: bool = False,
        bulk_transform: Any = None,
    ) -> None:
        super().__init__()
        self.metric = metric
        self.optimizer = optimizer if optimizer is not None else GaussNewtonOptimizer()
        self.schedule = LevelSchedule.from_lists(shrink_factors, smoothing_sigmas)
        self.sampling = sampling if sampling is not None else NoSampling()
        if initializer not in INITIALIZERS:
            raise InputError(
                f"unknown initializer '{initializer}': choose one of {', '.join(INITIALIZERS)}"
            )
        self.initializer = initializer
        self.threads = threads
        self.grid_spacing = grid_spacing
        self.refine_grid = refine_grid
        self.bulk = bulk_transform
        self._initial_transform = initial_transform
        self._level = -1
        self._stop_requested = False
        self._result: RegistrationResult | None = None
        self.optimizer.AddObserver(Event.ITERATION, lambda: self.InvokeEvent(Event.ITERATION))

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
            raise RuntimeError("Execute() has not run")
        return self._result

    # -- the run ----------------------------------------------------------------
    def Execute(self) -> Any:  # noqa: N802
        """Run every level; returns the result as an ITK transform."""
        return self.run().itk_transform()

    def run(self) -> RegistrationResult:
        """Run every level; returns the full :class:`RegistrationResult`."""
        start = time.perf_counter()
        previous_threads = parallel.get_number_of_threads()
        parallel.set_number_of_threads(self.threads)
        try:
            result = self._run()
        finally:
            parallel.set_number_of_threads(previous_threads)
        result.seconds = time.perf_counter() - start
        self._result = result
        return result

    def _run(self) -> RegistrationResult:
        metric, backend = self.metric, self.metric.backend
        moving = metric.GetMovingImage()
        if moving is None:
            raise RuntimeError("the metric has no moving image: call SetMovingImage first")
        bspline = self._initial_transform == "bspline"
        if bspline and self.grid_spacing is None:
            raise InputError("a B-spline transform needs a control-point spacing "
                             "(grid_spacing, in physical units; --grid-spacing MM)")
        # A B-spline's grid covers the fixed image, known once the session started.
        transform = _as_transform("translation" if bspline else self._initial_transform,
                                  moving.dimension)
        if transform.dimension != moving.dimension:
            raise InputError(
                f"the initial transform is {transform.dimension}-D but the images are "
                f"{moving.dimension}-D"
            )
        session = backend.session
        try:
            fixed_geometry = backend.start(self.schedule, self.sampling,
                                           wants_center_of_mass=self.initializer == "moments")
            if bspline:
                spacing = np.asarray(self.grid_spacing, dtype=np.float64)
                if self.refine_grid:  # doubled back to grid_spacing by the last level
                    spacing = spacing * 2.0 ** (len(self.schedule.levels) - 1)
                bulk = None
                if self.bulk is not None:
                    bulk = _as_transform(self.bulk, moving.dimension)
                transform = BSplineTransform.over(fixed_geometry, spacing, bulk=bulk)
            result = RegistrationResult(
                transform=transform,
                fixed_geometry=fixed_geometry,
                backend=backend.name,
                private=backend.private,
                sampling=self.sampling.describe(),
                seed=getattr(self.sampling, "seed", None),
                threads=parallel.get_number_of_threads(),
                transport="in-process" if isinstance(session, LocalSession) else "grpc+mtls",
            )
            if not bspline:  # a B-spline starts at zero, after its bulk transform
                self._initialize(transform, moving)
            metric.SetTransform(transform)
            self.optimizer.SetMetric(metric)
            self._run_levels(result)
            closed = backend.close()
        except BaseException as error:
            session.abort(f"the moving party stopped: {type(error).__name__}")
            raise
        result.parties = {
            "moving": party_figures(session.counters(),
                                    sum(level.seconds for level in result.levels)),
            "fixed": party_figures(Counters.from_pb(closed.stats), closed.stats.seconds),
        }
        for name, (counters, seconds) in backend.other_parties(closed).items():
            result.parties[name] = party_figures(counters, seconds)
        for level, fixed_level in zip(result.levels, closed.levels, strict=False):
            level.parties["fixed"] = party_figures(Counters.from_pb(fixed_level),
                                                   fixed_level.seconds)
        for level in result.levels:
            for figures in level.parties.values():
                figures["per_iteration"] = {
                    key: figures[key] / max(level.iterations, 1)
                    for key in ("seconds", "bytes_sent", "bytes_received", "messages_sent")}
        result.learned = {"moving": backend.learned(), "fixed": list(closed.learned)}
        self.InvokeEvent(Event.END)
        return result

    def _run_levels(self, result: RegistrationResult) -> None:
        metric = self.metric
        session = metric.backend.session
        self._stop_requested = False
        self.InvokeEvent(Event.START)
        for level_index, level in enumerate(self.schedule.levels):
            self._level = level_index
            level_start = time.perf_counter()
            transform = metric.GetTransform()
            if level_index > 0 and self.refine_grid and isinstance(transform, BSplineTransform):
                result.transform = transform.refined()  # the same deformation, finer grid
                metric.SetTransform(result.transform)
            mark = session.counters()
            points = metric.initialize_level(level_index, level, self.sampling)
            setup_seconds = time.perf_counter() - level_start
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
                    final_metric=self.optimizer.GetValue(),
                    seconds=seconds,
                    setup_seconds=setup_seconds,
                    stop_condition=self.optimizer.GetStopConditionDescription(),
                    parties={"moving": party_figures(session.counters() - mark, seconds)},
                )
            )
            if self._stop_requested:
                break

    def _initialize(self, transform: LinearTransform, moving: ImageGrid) -> None:
        if self.initializer == "none":
            return
        backend = self.metric.backend
        if self.initializer == "geometry":
            fixed_center = backend.fixed_geometry.center()
            moving_center = moving.geometry.center()
        else:
            fixed_center = backend.fixed_center_of_mass()
            moving_center = center_of_mass(moving)
        if transform.center is not None:
            transform.center = fixed_center
        transform.translation = moving_center - fixed_center


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
    figures["bytes_received"] = (counters.wire_bytes_received if on_wire
                                 else counters.payload_bytes_received)
    return figures


def _as_transform(initial: Any, dimension: int) -> LinearTransform:
    if isinstance(initial, LinearTransform):
        return initial.copy()
    if isinstance(initial, str):
        return make_transform(initial, dimension)
    module = type(initial).__module__
    if module.startswith("SimpleITK"):
        return transform_io.from_sitk(initial)
    if module.startswith("itk"):
        return transform_io.from_itk(initial)
    raise InputError(f"initial transform of type {type(initial).__name__} is not supported")


def register_with(
    session: Any,
    moving: Any,
    *,
    transform: Any = "affine",
    backend: str = "ckks",
    backend_parameters: dict[str, str] | None = None,
    sampling: Any = "none",
    sampling_fraction: float = 0.05,
    seed: int = 0,
    reveal_gms_indices: bool = False,
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas: Sequence[float] = (2.0, 1.0, 0.0),
    initializer: str = "geometry",
    iterations: int = 100,
    minimum_step_length: float = 1e-4,
    relative_value_tolerance: float = 1e-6,
    threads: int | None = None,
    observers: dict[Any, Any] | None = None,
    grid_spacing: float | Sequence[float] | None = None,
    refine_grid: bool = False,
    bending_energy_weight: float = 0.0,
    bulk_transform: Any = None,
) -> RegistrationResult:
    """Register ``moving`` with the fixed party at the other end of ``session``.

    The moving party's whole job in one call: ``session`` comes from
    :func:`ppir_itk.connect` (another machine) or
    :func:`ppir_itk.in_process_session`. The options are those of
    :func:`register`; ``observers`` maps events to callables taking the
    :class:`ImageRegistrationMethod`.
    """
    from ppir_itk.backends import check_backend_name

    moving_grid = as_image_grid(moving, name="moving image")
    if isinstance(sampling, str):
        sampling = make_sampling(sampling, sampling_fraction, seed, reveal=reveal_gms_indices)
    metric = PrivateMeanSquaresImageToImageMetric(
        make_backend(check_backend_name(backend), session, backend_parameters),
        bending_energy_weight=bending_energy_weight)
    metric.SetMovingImage(moving_grid)
    optimizer = GaussNewtonOptimizer(NumberOfIterations=iterations,
                                     MinimumStepLength=minimum_step_length,
                                     RelativeValueTolerance=relative_value_tolerance)
    method = ImageRegistrationMethod(metric, optimizer, transform,
                                     shrink_factors=shrink_factors,
                                     smoothing_sigmas=smoothing_sigmas, sampling=sampling,
                                     initializer=initializer, threads=threads,
                                     grid_spacing=grid_spacing, refine_grid=refine_grid,
                                     bulk_transform=bulk_transform)
    for event, callback in (observers or {}).items():
        method.AddObserver(event, lambda callback=callback: callback(method))
    return method.run()


def register(
    fixed: Any,
    moving: Any,
    *,
    transport: str = "process",
    deadline: float = 60.0,
    **options: Any,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` in one call, both images on this machine.

    Parameters
    ----------
    fixed, moving : itk.Image, SimpleITK.Image or path
        The two images (2-D or 3-D, same dimension).
    transport : {"process", "in-process"}
        ``process`` (default) runs the fixed party as a separate OS process
        over gRPC with mutual TLS on loopback, exactly as two machines would;
        ``in-process`` keeps it in this process (same messages, no socket).
    deadline : float
        Seconds to wait for the fixed party's next answer.
    **options
        As :func:`register_with`: ``transform`` (``translation``, ``rigid``,
        ``similarity``, ``affine``, an ITK/SimpleITK transform, or ``bspline`` with
        ``grid_spacing`` (control-point spacing, physical units), ``refine_grid``
        (start 2^(levels - 1) times as coarse, halve the spacing at each level:
        the last grid is at most ``grid_spacing``),
        ``bending_energy_weight`` and ``bulk_transform`` (a linear transform the
        B-spline is composed with: ``W = bulk(x + D(x))``)), ``backend``
        (``ckks`` private; ``clear`` NOT private), ``backend_parameters`` (e.g.
        ``{"poly_modulus_degree": "16384"}``), ``sampling`` (``none``, ``urs``, ``gms``),
        ``sampling_fraction``, ``seed``, ``reveal_gms_indices``,
        ``shrink_factors``, ``smoothing_sigmas``, ``initializer``,
        ``iterations``, ``threads``, ``observers``.

    Returns
    -------
    RegistrationResult
        ``result.itk_transform()`` maps fixed points to moving points.
    """
    from ppir_itk.backends import check_backend_name
    from ppir_itk.protocol.local import spawn_fixed_party
    from ppir_itk.protocol.session import connect

    fixed_grid = as_image_grid(fixed, name="fixed image")
    moving_grid = as_image_grid(moving, name="moving image")
    if fixed_grid.dimension != moving_grid.dimension:
        raise InputError(
            f"the fixed image is {fixed_grid.dimension}-D and the moving image is "
            f"{moving_grid.dimension}-D; both must have the same dimension"
        )
    # Options that are wrong fail here, before a fixed party is started.
    backend = check_backend_name(options.get("backend", "ckks"))
    if options.get("transform") == "bspline" and options.get("grid_spacing") is None:
        raise InputError("a B-spline transform needs a control-point spacing (grid_spacing, "
                         "in physical units; --grid-spacing MM)")
    LevelSchedule.from_lists(options.get("shrink_factors", (4, 2, 1)),
                             options.get("smoothing_sigmas", (2.0, 1.0, 0.0)))
    if options.get("initializer", "geometry") not in INITIALIZERS:
        raise InputError(f"unknown initializer '{options['initializer']}': choose one of "
                         f"{', '.join(INITIALIZERS)}")
    if isinstance(options.get("sampling"), str):
        make_sampling(options["sampling"], options.get("sampling_fraction", 0.05))
    if transport == "in-process":
        session = in_process_session(fixed_grid, FixedPolicy(backends=(backend,)))
        return register_with(session, moving_grid, **options)
    if transport != "process":
        raise InputError(f"unknown transport '{transport}': choose process or in-process")
    source = fixed if isinstance(fixed, (str, os.PathLike)) else fixed_grid
    with spawn_fixed_party(source, backends=(backend,), deadline=deadline) as fixed_party:
        session = connect(fixed_party.address, fixed_party.client_tls, deadline=deadline,
                          dealer=fixed_party.dealer_address)
        result = register_with(session, moving_grid, **options)
    result.fixed_startup_seconds = fixed_party.startup_seconds
    return result
