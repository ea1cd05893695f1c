"""The options of a registration: every default once, every check once.

:class:`RegistrationOptions` is what ``ppir register`` builds from its
arguments and what :func:`~ppir_itk.registration.register`,
:func:`~ppir_itk.registration.register_with` and ``ppir bench`` take. A bad
value is refused when the options are made, in one sentence naming it
(:class:`~ppir_itk.errors.InputError`), before any party starts. The checks
are also functions, so that :class:`~ppir_itk.registration.ImageRegistrationMethod`,
whose defaults are these fields' (as the command line's are), refuses the same values
with the same sentences.

Examples
--------
>>> options = RegistrationOptions(transform="rigid", backend="clear")
>>> options.shrink_factors, options.deadline
((4, 2, 1), 60.0)
>>> RegistrationOptions(iterations=0)
Traceback (most recent call last):
...
ppir_itk.errors.InputError: --iterations 0 must be at least 1
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from ppir_itk.errors import InputError
from ppir_itk.metric_kinds import (
    DEFAULT_HISTOGRAM_BINS,
    GAUSS_NEWTON,
    MEAN_SQUARES,
    REGULAR_STEP,
    MetricSettings,
    check_metric,
    check_optimizer,
)
from ppir_itk.parzen import check_histogram_bins
from ppir_itk.protocol.channel import DEFAULT_DEADLINE
from ppir_itk.pyramid import LevelSchedule
from ppir_itk.sampling import Sampling, make_sampling
from ppir_itk.transform_kinds import transform_kind

__all__ = [
    "DEFAULT_INITIALIZER",
    "INITIALIZERS",
    "RegistrationOptions",
    "check_bspline_grid",
    "check_grid_spacing",
    "check_initializer",
    "check_iterations",
    "check_threads",
    "initializer_for",
]

INITIALIZERS = ("none", "geometry", "moments")
#: What starts a transform the run builds from a kind name when no initializer is asked for.
DEFAULT_INITIALIZER = "geometry"
# ppir bench: seconds a row may run before it is marked as the paper marked its infeasible rows
DEFAULT_TIME_CAP = 60.0


def check_iterations(iterations: int | Sequence[int], levels: int) -> tuple[int, ...]:
    """Each level's most iterations, coarsest first: one count for every level, or one per
    level (as ANTs' ``--convergence [100x50x20]``)."""
    counts = (iterations,) if isinstance(iterations, (int, np.integer)) else tuple(iterations)
    shown = " ".join(str(count) for count in counts)
    if not all(int(count) == count and count >= 1 for count in counts) or not counts:
        raise InputError(f"--iterations {shown} must be at least 1")
    if len(counts) == 1:
        return (int(counts[0]),) * levels
    if len(counts) != levels:
        raise InputError(
            f"--iterations has {len(counts)} values but the schedule has {levels} levels; "
            "give one, or one per level"
        )
    return tuple(int(count) for count in counts)


def check_initializer(initializer: str) -> str:
    if initializer not in INITIALIZERS:
        raise InputError(
            f"unknown initializer '{initializer}': choose one of {', '.join(INITIALIZERS)}"
        )
    return initializer


def initializer_for(initializer: str | None, transform: Any) -> str:
    """The initializer a run applies: the one asked for; else :data:`DEFAULT_INITIALIZER`
    over a transform the run builds from a kind name, and ``none`` over a transform handed
    in, whose own parameters are the start."""
    if initializer is not None:
        return check_initializer(initializer)
    return DEFAULT_INITIALIZER if isinstance(transform, str) else "none"


def check_threads(threads: int | None) -> int | None:
    """``None`` (every core) or a positive count."""
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads} must be at least 1")
    return threads


def check_grid_spacing(
    grid_spacing: float | Sequence[float] | None,
) -> float | tuple[float, ...] | None:
    """A B-spline's control-point spacing: one value, or one per axis (a single value
    in a sequence is that value)."""
    if grid_spacing is None:
        return None
    values = tuple(float(value) for value in np.asarray(grid_spacing, dtype=np.float64).ravel())
    if not all(0 < value < float("inf") for value in values):
        raise InputError(
            f"--grid-spacing {' '.join(f'{value:g}' for value in values)} "
            "must be positive and finite"
        )
    return values[0] if len(values) == 1 else values


def check_bspline_grid(transform: Any, grid_spacing: float | Sequence[float] | None) -> None:
    """A B-spline kind has a control-point spacing."""
    if isinstance(transform, str) and not transform_kind(transform).linear and grid_spacing is None:
        raise InputError(
            "a B-spline transform needs a control-point spacing (grid_spacing, "
            "in physical units; --grid-spacing MM)"
        )


def _check_backend(name: str, parameters: Mapping[str, str], metric: str) -> str:
    """The backend's own checks of its name and parameters, and that it computes ``metric``,
    before any party starts."""
    # Imported here: the command line builds its parser from these options, and the
    # backends (and what they import) are for the subcommands that register.
    from ppir_itk.backends import check_backend_metric, check_backend_name, check_protocol
    from ppir_itk.backends.he import he_settings

    backend = check_backend_name(name)
    if check_protocol(backend, parameters.get("protocol")) == "packed":
        he_settings(dict(parameters))
    check_backend_metric(backend, dict(parameters), metric)
    return backend


# Per optimizer: Gauss-Newton's, a fixed-grid corner's move (mm); the regular step's, its
# step in scaled parameters, which must end finer: its path zigzags down to it, and the
# private runs of correlation end within 1e-3 voxel of Clear's at 1e-5 (1.3e-3 at 1e-4).
MINIMUM_STEP_LENGTHS = {GAUSS_NEWTON: 1e-4, REGULAR_STEP: 1e-5}


@dataclass(frozen=True)
class RegistrationOptions:
    """How to register: transform, backend, sampling, schedule, optimizer, deadline.

    Parameters
    ----------
    transform : str, LinearTransform, itk or SimpleITK transform
        A kind of :data:`ppir_itk.transform_kinds.TRANSFORMS` (``bspline`` needs
        ``grid_spacing``), or a transform to start from.
    backend, backend_parameters : str, mapping
        The joint-term backend (``he``, ``spdz``; ``clear`` is NOT private) and
        its options, e.g. ``{"poly_modulus_degree": "16384"}`` (None: none).
    metric, histogram_bins : str, int
        ``meansquares`` (default), ``correlation`` or ``mattes``
        (:mod:`ppir_itk.metric_kinds`), and Mattes's number of bins (4 to 256).
    optimizer : str, optional
        ``gauss-newton`` (mean squares only) or ``regular-step``; None: the metric's
        default (Gauss-Newton for mean squares, regular step otherwise).
    learning_rate, gradient_magnitude_tolerance : float
        Regular step only: the first step's length, in parameters scaled by their
        physical shift (about mm; each reversal of the gradient halves it), and the
        scaled gradient's norm it stops below (SimpleITK's 1e-4 stops correlation and
        MI, whose values lie within [-1, 0] and [-log B, 0], too early).
    sampling, sampling_fraction, seed, reveal_gms_indices
        ``none``, ``urs`` or ``gms`` (or a strategy object), the fraction sampled,
        the public seed, and whether GMS sends its indices to the fixed party.
    shrink_factors, smoothing_sigmas : sequence
        One value per level, coarsest first; sigmas in physical units.
    initializer : {"none", "geometry", "moments"}, optional
        Run this initializer. None (the default): :data:`DEFAULT_INITIALIZER` over a
        transform built from a kind name, nothing over a transform handed in, which is
        the start as it is (:meth:`initializer_to_run`).
    iterations : int or sequence of int
        The most iterations of each level: one count for every level, or one per level,
        coarsest first (``[100, 50, 20]``); kept as one count when all levels have the same.
    minimum_step_length, relative_value_tolerance
        The optimizer's other stop conditions, at every level (the minimum step: None,
        the optimizer's own, :data:`MINIMUM_STEP_LENGTHS`).
    threads : int, optional
        Kernel threads (results are identical for any value); every core if None.
    grid_spacing, refine_grid, bending_energy_weight, bulk_transform
        B-spline only: control-point spacing (physical units; one value or one per
        axis), whether to start coarser and halve it per level, the bending-energy
        weight, and a linear transform the B-spline is composed with.
    fixed_mask, moving_mask : image or path, optional
        ITK's metric masks (:mod:`ppir_itk.masks`: nonzero is inside): a point counts only
        where the fixed mask holds at x and the moving mask at T(x). The fixed mask is the
        fixed party's (:func:`ppir_itk.register` hands it to the fixed party's process
        only; a remote fixed party serves with its own, ``ppir serve --fixed-mask``).
    deadline : float
        Seconds to wait for a peer's next answer.
    """

    transform: Any = "affine"
    backend: str = "he"
    backend_parameters: Mapping[str, str] = field(default_factory=dict)  # None is taken as {}
    metric: str = MEAN_SQUARES
    histogram_bins: int = DEFAULT_HISTOGRAM_BINS
    optimizer: str | None = None
    learning_rate: float = 1.0
    gradient_magnitude_tolerance: float = 1e-8
    sampling: str | Sampling = "none"
    sampling_fraction: float = 0.05
    seed: int = 0
    reveal_gms_indices: bool = False
    shrink_factors: Sequence[int] = (4, 2, 1)
    smoothing_sigmas: Sequence[float] = (2.0, 1.0, 0.0)
    initializer: str | None = None
    iterations: int | Sequence[int] = 100
    minimum_step_length: float | None = None
    relative_value_tolerance: float = 1e-6
    threads: int | None = None
    grid_spacing: float | Sequence[float] | None = None
    refine_grid: bool = False
    bending_energy_weight: float = 0.0
    bulk_transform: Any = None
    fixed_mask: Any = None
    moving_mask: Any = None
    deadline: float = DEFAULT_DEADLINE

    def __post_init__(self) -> None:
        if isinstance(self.transform, str):
            transform_kind(self.transform)
        check_threads(self.threads)
        if not 0 <= self.seed < 2**64:
            raise InputError(f"--seed {self.seed} must be between 0 and 2^64 - 1")
        if not self.deadline > 0:
            raise InputError(f"--deadline {self.deadline:g} must be positive")
        if not self.bending_energy_weight >= 0:
            raise InputError(f"--bending-weight {self.bending_energy_weight:g} must be at least 0")
        self._set("grid_spacing", check_grid_spacing(self.grid_spacing))
        check_bspline_grid(self.transform, self.grid_spacing)
        self._set("metric", check_metric(self.metric))
        self._set("histogram_bins", check_histogram_bins(self.histogram_bins))
        self._set("optimizer", check_optimizer(self.optimizer, self.metric))
        if self.minimum_step_length is None:
            self._set("minimum_step_length", MINIMUM_STEP_LENGTHS[str(self.optimizer)])
        if not (0 < self.learning_rate < math.inf):
            raise InputError(f"--learning-rate {self.learning_rate:g} must be positive and finite")
        if not (0 <= self.gradient_magnitude_tolerance < math.inf):
            raise InputError(
                f"the gradient magnitude tolerance {self.gradient_magnitude_tolerance:g} "
                "must be 0 or more, finite"
            )
        parameters = MappingProxyType(dict(self.backend_parameters or {}))
        self._set("backend_parameters", parameters)
        self._set("backend", _check_backend(self.backend, parameters, self.metric))
        if self.fixed_mask is not None:
            from ppir_itk.backends import check_backend_fixed_mask

            check_backend_fixed_mask(self.backend, dict(parameters), self.metric)
        schedule = LevelSchedule.from_lists(self.shrink_factors, self.smoothing_sigmas)
        self._set("shrink_factors", tuple(level.shrink_factor for level in schedule.levels))
        self._set("smoothing_sigmas", tuple(level.smoothing_sigma for level in schedule.levels))
        per_level = check_iterations(self.iterations, len(schedule.levels))
        self._set("iterations", per_level[0] if len(set(per_level)) == 1 else per_level)
        initializer_for(self.initializer, self.transform)
        self.sampling_strategy()

    def _set(self, name: str, value: Any) -> None:
        """Store a checked value in its normal form (the options are frozen)."""
        object.__setattr__(self, name, value)

    @property
    def metric_settings(self) -> MetricSettings:
        """The metric as the session's Hello names it."""
        return MetricSettings(self.metric, self.histogram_bins)

    def initializer_to_run(self) -> str:
        """The initializer the registration applies (:func:`initializer_for`)."""
        return initializer_for(self.initializer, self.transform)

    def iterations_per_level(self) -> tuple[int, ...]:
        """The most iterations of each level, coarsest first."""
        return check_iterations(self.iterations, len(self.shrink_factors))

    def sampling_strategy(self) -> Sampling:
        """The strategy ``sampling`` names (with the fraction, seed and GMS mode), or the
        strategy object given."""
        if not isinstance(self.sampling, str):
            return self.sampling
        return make_sampling(
            self.sampling, self.sampling_fraction, self.seed, reveal=self.reveal_gms_indices
        )

    def check_dimension(self, dimension: int) -> None:
        """Refuse a grid spacing that does not fit ``dimension``-D images."""
        spacing = self.grid_spacing
        if isinstance(spacing, tuple) and len(spacing) != dimension:
            raise InputError(
                f"--grid-spacing has {len(spacing)} values; give one, or one per "
                f"axis of the {dimension}-D images"
            )
