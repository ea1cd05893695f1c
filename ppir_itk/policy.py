"""What the fixed party's operator allows: the policy every session is held to.

The policy is the fixed party's alone; the moving party learns only the budget
(in ``Welcome``), a refusal's sentence and, in ``Closed``, how much of its
measurement cap it has used.

Each joint-term evaluation gives the moving party ``sums_per_evaluation`` linear
measurements of J (d(d+1) + 2 for a linear transform, d K + 2 for a B-spline of
K control points, one more for correlation: the sum of J; docs/privacy.md). A
malicious moving party chooses their weights (one-hot "gradients", a fine control
grid), so each can be one exact pixel: the policy bounds the *measurements*, not
only the evaluations.

- ``measurement_grant``: the measurements one client identity may hold of this
  image over all its sessions and levels, as a fraction of the image's voxels
  (counted in :class:`ppir_itk.ledger.Ledger`).
- ``max_measurements_per_evaluation``: one evaluation's measurements, as a fraction
  of the level's points.
- ``max_measurements_per_level``: the measurements one client identity may hold of
  one level's grid over all its sessions, as a fraction of the grid's points (the
  grant alone would let it read a coarse level whole: 1/64 of a 256 x 256 image's
  voxels is every point of its 32 x 32 level).
- ``min_control_spacing``: a B-spline's control spacing, in level pixels.
- ``joint_term_noise``: the deviation of the noise the fixed party adds to every sum
  it returns, as a multiple of the most one voxel of J can add to that sum
  (:class:`ppir_itk.backends.base.ExactSumsFixedSide`); 0: exact sums.

The spacing, the per-evaluation cap and whether one evaluation still fits the grant
and the level's cap are checked at
``SelectPoints``, before any product; ``math.inf`` (and 0 for the spacing) lifts
a limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ppir_itk.dealer_client import DealerClient
from ppir_itk.metric_kinds import METRICS

# 1,000 covers the registrations ppir offers (an evaluation per iteration and one per
# level: 4 levels of 100 iterations need 404); the measurement grant is the real bound.
DEFAULT_EVALUATION_BUDGET = 1000
# Issue 14: no client identity may hold linear measurements worth more than 1/64 of the
# fixed image's degrees of freedom, all sessions and levels together. A 256 x 256 image
# grants 1,024 measurements: 128 affine evaluations in 2-D, more than the default affine
# registration needs (tests/test_ledger.py).
DEFAULT_MEASUREMENT_GRANT = 1 / 64
# One evaluation may measure 1/8 of the level's points: a 1-px control grid (more sums
# than points: J in one solve) is refused before it is answered, and an affine evaluation
# (8 sums in 2-D, 14 in 3-D) fits every level of 64 (112) points or more, the coarsest
# levels of small images included. The grant, not this, bounds what adds up.
DEFAULT_MEASUREMENTS_PER_EVALUATION = 1 / 8
# A quarter of a level's grid, all sessions together: a 32 x 32 level of a 256 x 256
# image (shrink 8) gives 256 measurements (32 affine evaluations in 2-D), and the default
# levels (4, 2, 1) of a 256 x 256 image allow 1,024 each, the whole grant.
DEFAULT_MEASUREMENTS_PER_LEVEL = 1 / 4
# Control points at least 8 level pixels apart: a 4-px grid gives J exactly in 9
# evaluations (issue 14); the per-evaluation cap is the finer bound on large levels.
DEFAULT_MIN_CONTROL_SPACING = 8.0
# Noise on the sums, in units of one voxel's most (benchmarks/honest_noise.py,
# docs/privacy.md): none by default, so private results stay exact. No noise that keeps
# a B-spline within 0.1 px of Clear blurs an honest run's view of J, and the grant
# already bounds a malicious one's exact reads. An operator who grants more can add it:
# 0.01 leaves one-hot reads no exact pixel (about 17-19 dB) and moves the brain pair's
# affine 0.005 px, its 16 mm B-spline 0.03 px in the foreground (up to 3 px where the
# background has no gradient).
DEFAULT_JOINT_TERM_NOISE = 0.0


@dataclass
class FixedPolicy:
    """What the fixed party's operator allows."""

    backends: tuple[str, ...] = ("he",)  # private only, unless the operator adds "clear"
    metrics: tuple[str, ...] = METRICS  # the metrics it serves (ppir serve --metrics)
    evaluation_budget: int = DEFAULT_EVALUATION_BUDGET
    # Fraction of the fixed image's voxels one client may learn as linear measurements,
    # all sessions and levels together (math.inf: unlimited; ppir serve --grant-measurements).
    measurement_grant: float = DEFAULT_MEASUREMENT_GRANT
    # Fraction of a level's points one evaluation may measure (math.inf: unlimited).
    max_measurements_per_evaluation: float = DEFAULT_MEASUREMENTS_PER_EVALUATION
    # Fraction of a level's grid points one client may hold, all its sessions together.
    max_measurements_per_level: float = DEFAULT_MEASUREMENTS_PER_LEVEL
    # A B-spline's least control spacing, in level pixels along every axis (0: any).
    min_control_spacing: float = DEFAULT_MIN_CONTROL_SPACING
    # Noise on every sum, in units of one voxel's most (0: exact).
    joint_term_noise: float = DEFAULT_JOINT_TERM_NOISE
    max_levels: int = 10
    allow_center_of_mass: bool = True
    # SPDZ: token -> this party's session with the dealer its operator trusts
    dealer: Callable[[bytes], DealerClient] | None = None
    single_process: bool = False  # both parties in one process (tests): allows provider=tfp

    @classmethod
    def holding_both_images(cls, backends: tuple[str, ...], **fields: Any) -> FixedPolicy:
        """The policy of a fixed party whose caller holds the moving image too (local mode,
        in-process sessions): it can learn nothing it does not have, so no measurement is
        capped and no noise is added. ``fields``: other fields, or these set otherwise
        (an attack's or a study's ``joint_term_noise``)."""
        unlimited: dict[str, Any] = {
            "measurement_grant": math.inf,
            "max_measurements_per_evaluation": math.inf,
            "max_measurements_per_level": math.inf,
            "min_control_spacing": 0.0,
            "joint_term_noise": 0.0,
        }
        return cls(backends=backends, **(unlimited | fields))

    def measurement_cap(self, voxels: int) -> float:
        """The measurements one client may hold of an image of ``voxels`` voxels."""
        return self.measurement_grant * voxels

    def recoverable(self, voxels: int) -> str | None:
        """What a grant above the default lets an adversary recover, for the server's log
        (None at or below the default): each measurement can be one exact value of J."""
        if self.measurement_grant <= DEFAULT_MEASUREMENT_GRANT:
            return None
        cap = self.measurement_cap(voxels)
        values = voxels if cap >= voxels else math.floor(cap)
        return (
            f"measurement grant {self.measurement_grant:g}: a malicious moving party could "
            f"recover up to {values} exact values of J ({values / voxels:.2%} of its voxels; "
            "one-hot weights make each linear measurement one exact value)"
        )
