"""What the fixed party's operator allows: the policy every session is held to.

The policy is the fixed party's alone; the moving party learns only the budget
(in ``Welcome``) and a refusal's sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ppir_itk.dealer_client import DealerClient

# Each evaluation gives the moving party a few linear measurements of J (d(d+1) + 2 for
# an affine, d K + 2 for a B-spline of K control points; docs/privacy.md). 1,000 covers
# the registrations ppir offers (an evaluation per iteration and one per level: 4 levels
# of 100 iterations need 404) and keeps an affine session's measurements to 8,000.
DEFAULT_EVALUATION_BUDGET = 1000


@dataclass
class FixedPolicy:
    """What the fixed party's operator allows."""

    backends: tuple[str, ...] = ("he",)  # private only, unless the operator adds "clear"
    evaluation_budget: int = DEFAULT_EVALUATION_BUDGET
    max_levels: int = 10
    allow_center_of_mass: bool = True
    # SPDZ: token -> this party's session with the dealer its operator trusts
    dealer: Callable[[bytes], DealerClient] | None = None
    single_process: bool = False  # both parties in one process (tests): allows provider=tfp
