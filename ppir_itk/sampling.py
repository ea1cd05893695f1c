"""Which fixed-grid points a level's metric uses (ITK's sampling strategies).

- :class:`NoSampling` (``NONE``): every point of the level's fixed grid.
- :class:`URS` (uniform random sampling): a fraction of the points drawn with a
  public seed. Both parties draw the same points, so the secure work shrinks
  with the sample and nothing private is revealed.
- :class:`Regular` (``REGULAR``): every ``ceil(1 / fraction)``-th point in ITK's
  order, from the first, as ITK's ``ImageRegistrationMethodv4`` takes them. ITK
  also moves each point by a Gaussian of a third of a voxel; here the points stay
  on the fixed grid, where the fixed party's values are (a moved point would need
  J interpolated between voxels). Public, like URS.
- :class:`GMS` (gradient magnitude sampling): points drawn with probability
  proportional to the moving image's gradient magnitude. The points depend on
  the moving image, so where they go is private to the moving party. With
  ``reveal_indices=True`` they are sent to the fixed party, which restricts the
  secure work to them (fast; the indices leak where the moving image has
  edges, and the run reports it). With ``reveal_indices=False`` the secure work
  covers the whole grid and the moving party zeroes its terms outside the
  sample, so only its local work shrinks.

Samples are drawn once per level from ``numpy.random.default_rng((seed, level))``,
so the same seed gives the same points in the clear and in the private runs.
The seed is not a secret and the draw hides nothing (a hidden GMS sample stays
private because it never leaves the moving party), so NumPy's PCG64 is fine
here; masks and shares come from :mod:`ppir_itk.randomness`.

Examples
--------
>>> urs = URS(0.1, seed=3)
>>> urs.draw(1000, level=0).size
100
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ppir_itk.errors import InputError


def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"sampling fraction {fraction:g} must be in (0, 1]")
    return fraction


def _sample_size(n: int, fraction: float) -> int:
    return max(1, min(n, int(round(fraction * n))))


@dataclass(frozen=True)
class NoSampling:
    """Use every point of the fixed grid."""

    name = "none"
    reveals_indices = False

    def describe(self) -> str:
        return "NONE (every fixed-grid point)"


@dataclass(frozen=True)
class URS:
    """Uniform random sampling with a public seed."""

    fraction: float
    seed: int = 0
    name = "urs"
    reveals_indices = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", _check_fraction(self.fraction))

    def draw(self, n: int, level: int) -> np.ndarray:
        """Sorted flat indices of the sample among ``n`` grid points."""
        rng = np.random.default_rng((self.seed, level))
        return np.sort(rng.choice(n, size=_sample_size(n, self.fraction), replace=False))

    def describe(self) -> str:
        return f"URS ({self.fraction:.1%} of the points, public seed {self.seed})"


@dataclass(frozen=True)
class Regular:
    """ITK's regular sampling, on the fixed grid's points (module docstring)."""

    fraction: float
    name = "regular"
    reveals_indices = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", _check_fraction(self.fraction))

    def draw(self, n: int, level: int) -> np.ndarray:
        """Flat indices of every ``ceil(1 / fraction)``-th of ``n`` grid points (any level)."""
        return np.arange(0, n, int(np.ceil(1.0 / self.fraction - 1e-9)), dtype=np.int64)

    def describe(self) -> str:
        return f"REGULAR (every {int(np.ceil(1.0 / self.fraction - 1e-9))}th point)"


@dataclass(frozen=True)
class GMS:
    """Gradient magnitude sampling, private to the moving party.

    Parameters
    ----------
    fraction : float
        Fraction of the fixed-grid points kept.
    seed : int
        Seed of the draw.
    reveal_indices : bool
        Send the drawn indices to the fixed party so the secure work covers the
        sample only. This leaks where the moving image has edges.
    """

    fraction: float
    seed: int = 0
    reveal_indices: bool = False
    name = "gms"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", _check_fraction(self.fraction))

    @property
    def reveals_indices(self) -> bool:
        return self.reveal_indices

    def draw(self, gradient_magnitude: np.ndarray, level: int) -> np.ndarray:
        """Sorted flat indices drawn with probability proportional to the magnitude."""
        weights = np.asarray(gradient_magnitude, dtype=np.float64)
        n = weights.size
        k = _sample_size(n, self.fraction)
        total = weights.sum()
        rng = np.random.default_rng((self.seed, level))
        if not np.isfinite(total) or total <= 0:
            return np.sort(rng.choice(n, size=k, replace=False))
        # Points with zero gradient get a tiny weight so that k points always exist.
        positive = np.count_nonzero(weights)
        if positive < k:
            weights = weights + total * 1e-12
        # Efraimidis-Spirakis: the k smallest keys -log(u) / w, u uniform per point, draw as
        # successive weighted draws without replacement do; a nearby magnitude (another
        # backend's result of the level before) changes the sample only at its cutoff, where
        # a sequential draw would change most of it.
        with np.errstate(divide="ignore"):
            keys = -np.log(rng.random(n)) / weights
        return np.sort(np.argpartition(keys, k - 1)[:k])

    def describe(self) -> str:
        mode = "indices revealed to the fixed party" if self.reveal_indices else "indices hidden"
        return f"GMS ({self.fraction:.1%} of the points, seed {self.seed}, {mode})"


#: The names :func:`make_sampling` takes, as ITK calls the strategies.
SAMPLINGS = ("none", "urs", "regular", "gms")
#: The paper's rows of ``ppir bench`` (REGULAR runs when asked for).
PAPER_SAMPLINGS = ("none", "urs", "gms")

#: A sampling strategy (what :func:`make_sampling` returns).
Sampling = NoSampling | URS | Regular | GMS


def make_sampling(name: str, fraction: float, seed: int, *, reveal: bool = False) -> Sampling:
    """Sampling strategy by its ITK-style name (``none``, ``urs``, ``regular``, ``gms``);
    the default fraction and seed are :class:`ppir_itk.options.RegistrationOptions`'."""
    key = name.lower()
    if key in ("none", "full"):
        return NoSampling()
    if key in ("urs", "random"):
        return URS(fraction, seed)
    if key == "regular":
        return Regular(fraction)
    if key == "gms":
        return GMS(fraction, seed, reveal_indices=reveal)
    raise InputError(f"unknown sampling '{name}': choose none, urs, regular or gms")
