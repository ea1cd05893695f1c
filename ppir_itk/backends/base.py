"""The joint-term interface every backend implements (DESIGN.md §2, §3).

The SSD Gauss-Newton step needs three quantities that mix both images. On
the level's point set, with the moving party's warped image ``I_w``, its
physical gradient ``g`` (zero where ``W(x)`` leaves the moving image) and the
valid-point mask ``m``, and the fixed party's ``J``:

- ``moments[k, j] = sum_x g_k(x) J(x) phi_j(x)``, with the public affine basis
  ``phi(x) = (x - reference, 1)``. Any linear transform's ``R = S^T J`` follows
  from it by a small matrix that only the moving party applies
  (:meth:`ppir_itk.transforms.LinearTransform.jacobian_in_affine_basis`);
- ``warped_dot_fixed = sum_x I_w(x) J(x)``;
- ``fixed_squared = sum_x m(x) J(x)^2``;
- correlation only: ``fixed_sum = sum_x m(x) J(x)``, the fixed image's share of the
  means over the overlap (:func:`wants_fixed_sum`).

The only private-by-private products are the d + 2 element-wise vectors
``g_k * J``, ``I_w * J`` and ``m * J^2`` (and correlation's ``m * J``); everything
after them is a public linear map. A backend gets the moving party's fields
(:class:`MovingFields`) and returns a :class:`JointTerm` revealed to the moving party
only.

A backend has two halves: :class:`JointTermBackend` runs on the moving party
and :class:`FixedSide` on the fixed party; they talk only through the
session's ``BackendMessage`` envelopes. Each half says what its party
received in the clear (``learned()``), counted against the backend module's
:class:`~ppir_itk.disclosure.ProtocolTable`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from ppir_itk.dealer_client import DealerClient
from ppir_itk.disclosure import Disclosure, ProtocolTable, Received
from ppir_itk.fixed_point import Modulus, decode, encode, masked_budget, noise_room, voxel_bits
from ppir_itk.linear_map import AffineBasis
from ppir_itk.metric_kinds import (
    CORRELATION,
    MATTES,
    MEAN_SQUARES,
    MEAN_SQUARES_SETTINGS,
    MetricSettings,
)
from ppir_itk.points import PointSet
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import Counters
from ppir_itk.protocol.messages import ProtocolError
from ppir_itk.randomness import gaussian_integers
from ppir_itk.roles import FIXED_PARTY, MOVING_PARTY


@dataclass(frozen=True)
class MovingFields:
    """The moving party's per-iteration fields on the level's point set (private to it)."""

    gradient: np.ndarray  # (n, d) physical gradient of I at W(x); 0 where invalid
    warped: np.ndarray  # (n,) I(W(x)); 0 where invalid
    valid: np.ndarray  # (n,) uint8, 1 where W(x) falls inside the moving image
    coefficients: np.ndarray | None  # (|theta|, d(d+1)): dW/dtheta in the affine basis
    # (theta-dependent); None for a B-spline, whose parameters are the basis itself

    def steepest_descent(self, points: PointSet) -> np.ndarray:
        """S = g . dW/dtheta, shape (n, |theta|): the paper's matrix (O(n |theta|) memory);
        linear transforms (the affine basis) only."""
        assert self.coefficients is not None, "backends with bspline = False get no B-spline"
        d = self.gradient.shape[1]
        phi = AffineBasis(points).phi
        basis = np.concatenate([phi, np.ones((len(phi), 1))], axis=1)  # (n, d+1)
        per_point = (self.gradient[:, :, None] * basis[:, None, :]).reshape(-1, d * (d + 1))
        return per_point @ self.coefficients.T


@dataclass(frozen=True)
class MaskedSums:
    """The sums a fixed mask ``M`` (the fixed party's, private to it: 1 inside, 0 outside,
    :func:`ppir_itk.masks.inside` at each point) adds to a :class:`JointTerm`.

    With a fixed mask, the joint term's own sums are of ``M J`` for ``J`` (and ``M J^2``
    for ``J^2``); these are the moving party's sums that the mask restricts, so that every
    sum of the metric runs over the points inside both (``m M``; ``m`` the valid mask):

    - ``count = sum_x m(x) M(x)``: the points the mean runs over;
    - ``warped_squared = sum_x I_w(x)^2 M(x)``;
    - ``warped_moments[k, o]``: the public linear map's moments of ``g_k I_w M`` (as
      ``JointTerm.moments`` are of ``g_k J``: (d, d + 1) in the affine basis, (d, K) on a
      B-spline's control grid);
    - correlation only (None otherwise): ``warped_sum = sum_x I_w(x) M(x)`` and
      ``gradient_moments``, the map's moments of ``g_k m M``.

    A private backend opens each one only to the moving party, counted and noised as the
    joint term's sums (each is a linear measurement of ``M``).
    """

    count: float
    warped_squared: float
    warped_moments: np.ndarray
    warped_sum: float | None = None
    gradient_moments: np.ndarray | None = None


@dataclass(frozen=True)
class JointTerm:
    """The joint quantities, known to the moving party (and, in the paper's protocols, more).

    Either ``moments`` (affine basis, (d, d+1)) or ``parameter_term`` (R = S^T J
    directly in parameter space, as the paper's protocols compute it).
    """

    warped_dot_fixed: float
    fixed_squared: float
    moments: np.ndarray | None = None
    # sum_valid J: computed for a correlation session only (None otherwise).
    fixed_sum: float | None = None
    parameter_term: np.ndarray | None = None
    # B-spline moments computed with fixed-point weights (bits per axis; 0: exact): the
    # moving party uses the same weights for its own S^T I_w, so the gradient stays exact.
    basis_weight_bits: int = 0
    # The exponent e_g of the q(g) = round(g 2^e_g) the moments were computed from (None:
    # the exact g). The moving party rounds its own g the same way (own_gradient), so that
    # S^T I_w and S^T J share one S: otherwise g's rounding enters S^T J only, and near a
    # minimum, where the two nearly cancel, it is a large part of their difference.
    gradient_exponent: int | None = None
    # With a fixed mask (Welcome.fixed_masked) the restricted sums; None without one.
    masked: MaskedSums | None = None

    def own_gradient(self, gradient: np.ndarray) -> np.ndarray:
        """The gradient the backend's moments used: ``gradient`` rounded to
        ``2^-gradient_exponent``, or as it is."""
        if self.gradient_exponent is None:
            return gradient
        return decode(encode(gradient, self.gradient_exponent), self.gradient_exponent)


#: The metrics whose joint part is the sums linear in J (:class:`JointTermBackend`).
LINEAR_SUMS_METRICS = (MEAN_SQUARES, CORRELATION)


def wants_fixed_sum(metric: MetricSettings) -> bool:
    """Whether a session's joint term holds ``sum_valid J`` too: correlation's means need
    it, mean squares does not (its messages stay as they are)."""
    return metric.name == CORRELATION


def sums_per_evaluation(
    points: PointSet, metric: MetricSettings, fixed_masked: bool = False
) -> int:
    """The sums one joint-term evaluation gives the moving party: the public map's
    (d outputs + 2) and, for correlation, ``sum_valid J``; with a fixed mask, the
    :class:`MaskedSums` too (d outputs + 2, and correlation's d outputs + 1)."""
    sums = points.linear_map.sums_per_evaluation + (1 if wants_fixed_sum(metric) else 0)
    return sums + (masked_sums_per_evaluation(points, metric) if fixed_masked else 0)


def masked_sums_per_evaluation(points: PointSet, metric: MetricSettings) -> int:
    """The sums a fixed mask adds to each evaluation (:class:`MaskedSums`): the map's
    moments of ``g_k I_w M``, the count and ``sum I_w^2 M`` and, for correlation, ``sum I_w M``
    and the map's moments of ``g_k m M``."""
    moments = points.linear_map.sums_per_evaluation - 2
    return moments + 2 + (moments + 1 if wants_fixed_sum(metric) else 0)


class MovingChannel(Protocol):
    """What a backend's moving half needs from the moving party's session
    (:class:`ppir_itk.moving_party.MovingPartySession`)."""

    @property
    def single_process(self) -> bool:
        """Whether the fixed party lives in this process (tests): allows SPDZ's ``tfp``."""

    def exchange(self, message: pb.BackendMessage) -> pb.BackendMessage:
        """Send one backend message to the fixed party and return its answer."""

    def connect_dealer(self, first_party: bool) -> Callable[[bytes], DealerClient]:
        """This party's sessions with the SPDZ dealer (token -> client); ``first_party``:
        the moving party deals for both (single-process tests only)."""


class MovingHalf(abc.ABC):
    """Moving-party half of a backend's protocol with one fixed party, for one metric.

    The moving party's session (:class:`~ppir_itk.moving_party.MovingPartySession`)
    does the handshake, the levels and the point sets; the half gets, per level,
    the agreed points (:meth:`on_points`) and computes the metric's joint part once
    per evaluation (:class:`JointTermBackend`'s joint term, or
    :class:`HistogramBackend`'s Mattes term), talking to its fixed half through
    :meth:`MovingChannel.exchange` only.
    """

    name: ClassVar[str]
    #: The protocol's name within the backend, as Hello's parameters name it.
    protocol: ClassVar[str]
    #: The cryptographic scheme it runs, for reports ("BFV", "CKKS", ...).
    scheme: ClassVar[str]
    private: ClassVar[bool]
    #: The protocol's messages and disclosures (shared with the fixed half).
    table: ClassVar[ProtocolTable]
    #: Whether the backend computes the joint term on a B-spline basis (a control grid).
    bspline: ClassVar[bool] = False
    #: The metrics this half computes (:mod:`ppir_itk.metric_kinds`).
    metrics: ClassVar[tuple[str, ...]] = (MEAN_SQUARES,)
    #: The metrics it computes restricted to a fixed mask (:class:`MaskedSums`,
    #: :class:`MaskedHistogram`).
    fixed_mask_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        channel: MovingChannel,
        parameters: dict[str, str] | None = None,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        self.channel = channel
        self.parameters = dict(parameters or {})
        self.metric = metric
        self.points: PointSet | None = None
        self.received = Received(MOVING_PARTY, [self.table])
        # Set from the fixed party's Welcome: the metric is restricted to its private mask.
        self.fixed_masked = False

    def on_points(self, points: PointSet) -> None:
        """Per-level set-up once the point set is agreed (e.g. J encrypted once)."""
        self.points = points
        self._on_points(points)

    @property
    def level_points(self) -> PointSet:
        """The level's agreed points, for what runs after :meth:`on_points` set them."""
        assert self.points is not None, "an evaluation runs only after on_points()"
        return self.points

    def close(self) -> None:  # noqa: B027 - most backends hold nothing past the session
        """The session closed: release what the backend holds (a dealer session, keys)."""

    def learned(self) -> list[str]:
        """What the moving party learned through this backend (its table's disclosures)."""
        return self.received.lines()

    def other_parties(self, closed: pb.Closed) -> dict[str, tuple[Counters, float]]:
        """Figures of parties other than the two (e.g. a dealer): name -> (Counters, seconds)."""
        return {}

    @abc.abstractmethod
    def _on_points(self, points: PointSet) -> None:
        """Per-level set-up once the point set is agreed."""


class JointTermBackend(MovingHalf):
    """The moving half of the sums that are linear in J: mean squares and correlation."""

    def joint_term(self, fields: MovingFields) -> JointTerm:
        if self.points is None:
            raise RuntimeError("on_points() must come before joint_term()")
        return self._joint_term(fields)

    @abc.abstractmethod
    def _joint_term(self, fields: MovingFields) -> JointTerm:
        """One evaluation of the joint term."""


@dataclass(frozen=True)
class ParzenFields:
    """The moving party's per-iteration Mattes fields on the level's points (private to it):
    its cubic Parzen window (:func:`ppir_itk.parzen.moving_parzen`) where ``W(x)`` is valid
    (rows of zeros elsewhere) and its gradient."""

    first_bin: np.ndarray  # (n,) int64: the first of the 4 moving bins each window touches
    weights: np.ndarray  # (n, 4) the window's weights (they sum to 1 where valid)
    derivatives: np.ndarray  # (n, 4) d weight / d moving intensity
    valid: np.ndarray  # (n,) uint8
    gradient: np.ndarray  # (n, d) the moving gradient as the map takes it (0 where invalid)


@dataclass(frozen=True)
class MaskedHistogram:
    """What a fixed mask ``M`` adds to a :class:`HistogramTerm`: the points outside it drop
    out of the joint histogram as if their moving window were not valid, so the two sums the
    moving party computes alone without a mask need ``M`` too:

    - ``count``: the points with a valid moving window inside the mask (ITK's number of
      valid points; the moving party learns it, as every mean over the points needs it);
    - ``moving_negative_entropy``: the moving marginal's ``sum_c p_c log p_c`` (the
      quantity :func:`ppir_itk.parzen.moving_parzen` returns as ``negative_entropy``),
      over those points only.

    The metric's value uses them only as ``(n / count) entropy_difference -
    moving_negative_entropy``: a backend may fold the marginal's term into
    ``entropy_difference`` and report ``moving_negative_entropy = 0`` (spdz does, so that it
    opens one number fewer).
    """

    count: int
    moving_negative_entropy: float


@dataclass(frozen=True)
class HistogramTerm:
    """What one Mattes evaluation gives the moving party: the parts of MI's value and
    derivative that need both images, and nothing else.

    With ``H`` the joint histogram of the fixed bins (rows) and the moving windows
    (columns), ``x = H / n`` (n: the level's points) and ``r`` its row sums:

    - ``entropy_difference = sum_ij x_ij log x_ij - sum_i r_i log r_i``;
    - ``moments[k, o] = sum_p s_p g_k(p) phi_o(p)``, the public map's moments of
      ``s g_k`` with ``s_p = sum_c L[f_p, c] D[p, c]`` (:func:`ppir_itk.parzen.sample_weights`;
      ``L`` is ITK's log ratio of ``H``, ``f_p`` the point's fixed bin, ``D`` the window's
      derivatives).
    """

    entropy_difference: float
    moments: np.ndarray
    # B-spline moments computed with fixed-point weights (as JointTerm's).
    basis_weight_bits: int = 0
    # With a fixed mask (Welcome.fixed_masked): its count and moving marginal; None without.
    masked: MaskedHistogram | None = None


class HistogramBackend(MovingHalf):
    """The moving half of Mattes mutual information (:class:`HistogramTerm`)."""

    metrics = (MATTES,)

    def histogram_term(self, fields: ParzenFields) -> HistogramTerm:
        if self.points is None:
            raise RuntimeError("on_points() must come before histogram_term()")
        return self._histogram_term(fields)

    @abc.abstractmethod
    def _histogram_term(self, fields: ParzenFields) -> HistogramTerm:
        """One evaluation of the Mattes term."""


# What the moving party of a backend that returns the exact sums holds (he packed, spdz).
EXACT_SUMS_DISCLOSURES = (
    Disclosure(
        "joint_term",
        MOVING_PARTY,
        "the joint term",
        "sums",
        "evaluation",
        note="the public linear map's moments of g_k J, I_w . J and the sum of J^2 "
        "over the overlap (with the fixed party's noise, if its policy "
        "sets one)",
    ),
    Disclosure(
        "fixed_sum",
        MOVING_PARTY,
        "the sum of J over the overlap (correlation only)",
        "sum",
        "evaluation",
        note="one more linear measurement of J, for the means (with the fixed party's "
        "noise, if its policy sets one)",
    ),
    Disclosure(
        "fixed_point_bound",
        MOVING_PARTY,
        "the power of two bounding the fixed image's values (the exponent e_J)",
        "bound",
        "level",
    ),
)


#: What a fixed mask adds to the moving party's sums (a backend's table names it when the
#: backend computes with a fixed mask: its ``fixed_mask_metrics``).
MASKED_SUMS_DISCLOSURE = Disclosure(
    "masked_sums",
    MOVING_PARTY,
    "the sums a fixed mask adds",
    "sums",
    "evaluation",
    note="the count of points inside the mask, sum I_w^2 M and the map's moments of g_k I_w M "
    "(correlation: sum I_w M and the moments of g_k M too): linear measurements of the "
    "fixed party's mask M (with its noise, if its policy sets one)",
)


class ExactSumsBackend(JointTermBackend):
    """A private backend whose moving party learns the joint term's exact fixed-point sums
    and, per level, the power of two bounding J (the fixed-point exponent)."""

    private = True
    bspline = True  # the sums of any public linear map: B-spline bases too
    metrics = LINEAR_SUMS_METRICS

    def _disclose_sums(self) -> None:
        """One evaluation's sums: the public map's, and correlation's sum of J apart."""
        basis = self.level_points.linear_map
        self.received.add("joint_term", basis.sums_per_evaluation, detail=f"{basis.name} moments")
        if wants_fixed_sum(self.metric):
            self.received.add("fixed_sum", 1)
        if self.fixed_masked:
            self.received.add(
                "masked_sums", masked_sums_per_evaluation(self.level_points, self.metric)
            )

    def _disclose_bound(self, bound: int) -> None:
        self.received.add("fixed_point_bound", 1, detail=f"2^{bound}")


class FixedSide(abc.ABC):
    """Fixed-party side of a backend: answers the backend's messages for one session."""

    #: The protocol's messages and disclosures (shared with the moving half).
    table: ClassVar[ProtocolTable]
    #: Whether this side computes on a B-spline basis (a control grid in the points).
    bspline: ClassVar[bool] = False
    #: The metrics this side computes (:mod:`ppir_itk.metric_kinds`).
    metrics: ClassVar[tuple[str, ...]] = (MEAN_SQUARES,)
    #: The metrics it computes restricted to the fixed party's mask (the fixed party refuses
    #: a session whose backend and metric are not among them when it serves with a mask).
    fixed_mask_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        parameters: dict[str, str],
        policy: FixedPolicy,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        self.parameters = parameters
        self.policy = policy  # the operator's
        self.metric = metric
        self.evaluations = 0
        self.received = Received(FIXED_PARTY, [self.table])
        # Set by the fixed party at Hello when it serves with a mask (before any level, so
        # that the policy's checks count the masked sums); on_points then gets the mask.
        self.fixed_masked = False

    @abc.abstractmethod
    def on_points(
        self, values: np.ndarray, points: PointSet, fixed_mask: np.ndarray | None = None
    ) -> None:
        """The level's J on the agreed points (float64), once per level; for Mattes, their
        fixed bins instead (int64, :func:`ppir_itk.parzen.fixed_bins`). ``fixed_mask``: the
        fixed party's mask at the points (uint8, 1 inside), None without a mask; given only
        for a metric in :attr:`fixed_mask_metrics`."""

    @abc.abstractmethod
    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        """Answer one backend message (raise ProtocolError for one that does not fit)."""

    def sums_per_evaluation(self, points: PointSet) -> int:
        """The sums one evaluation asks of J (the fixed party checks them before any
        product): the public map's, for correlation ``sum_valid J``, and the masked sums."""
        return sums_per_evaluation(points, self.metric, self.fixed_masked)

    def measurements_per_evaluation(self, points: PointSet) -> int:
        """The linear measurements of J one evaluation's answer gives the moving party (the
        fixed party's policy counts them): :meth:`sums_per_evaluation`, unless the protocol
        reveals more."""
        return self.sums_per_evaluation(points)

    def learned(self) -> list[str]:
        """What the fixed party learned (its table's disclosures, masked ones apart)."""
        return self.received.lines()

    def close(self) -> pb.PartyStats | None:
        """End the session's side work; this party's traffic with a dealer, if it had one."""
        return None

    def abort(self) -> None:  # noqa: B027 - most sides hold nothing outside the process
        """The session ended with an error: drop what outlives it (a dealer session) now."""


@dataclass(frozen=True)
class SumNoise:
    """One evaluation's noise on the sums, in the modulus's integer units."""

    moments: list[int]  # in the order of the moments, (d, outputs) row-major
    warped_dot: int
    squared: int
    fixed_sum: int | None = None  # correlation's sum of J (None: not computed)
    # With a fixed mask (MaskedSums): the map's moments of g_k I_w M (then, for correlation,
    # of g_k M), row-major as the moments; the count, sum I_w^2 M (and sum I_w M).
    masked_moments: list[int] = field(default_factory=list)
    masked_totals: list[int] = field(default_factory=list)

    @property
    def totals(self) -> list[int]:
        """The noise of the totals, in the order the sums come after the moments."""
        extra = [] if self.fixed_sum is None else [self.fixed_sum]
        return [self.warped_dot, self.squared, *extra]


class ExactSumsFixedSide(FixedSide):
    """The fixed half of a backend that returns exact sums (he packed, spdz): it adds its
    policy's noise to every sum it returns (``FixedPolicy.joint_term_noise``; 0: none).

    The noise is an integer in the sums' modulus, of deviation ``beta`` times the most one
    voxel of J can add to that sum, so a one-hot read sees J's whole range times ``beta``,
    while an honest moment, a sum over thousands of voxels, keeps most of its digits; it
    fits the exactness budget (:func:`~ppir_itk.fixed_point.noise_room`), so the noisy
    sums are exact integers and the moving party decodes them as ever.
    """

    modulus: ClassVar[Modulus]
    metrics = LINEAR_SUMS_METRICS

    def _noise_for_level(self, points: PointSet) -> None:
        """Set the level's noise deviations (call from on_points); refuses a deviation that
        would not keep the sums exact."""
        self._noise_deviations: list[float] | None = None
        beta = self.policy.joint_term_noise
        if beta == 0:
            return
        basis = points.linear_map
        bits = basis.budget(self.modulus)
        room = noise_room(self.modulus, bits, basis.weight_bits, basis.support is not None)
        if beta > room:
            raise ProtocolError(
                f"this fixed party's joint-term noise ({beta:g}) does not fit the exact sums "
                f"of a level of {points.size} points on this map (at most {room:.3g}): "
                "use a coarser control grid"
            )
        # One voxel's most: a moment's, its column's largest weight times |q(g)| and |q(J)|
        # at most (the affine basis's constant column weighs 1, its others up to 2^W).
        factors = 2.0 ** (bits.g_bits + bits.j_bits - 2)
        moments = np.tile(basis.column_weight_bounds * factors, points.geometry.dimension)
        _, warped_bits, squared_bits = voxel_bits(bits, basis.weight_bits)
        totals = [beta * 2.0**warped_bits, beta * 2.0**squared_bits]
        if wants_fixed_sum(self.metric):  # one voxel adds at most |q(J)| <= 2^(b_J - 1)
            totals.append(beta * 2.0 ** (bits.j_bits - 1))
        masked_moments, masked_totals = (
            self._masked_deviations(points) if self.fixed_masked else ([], [])
        )
        groups = [
            (beta * moments).tolist(),
            totals,
            [beta * deviation for deviation in masked_moments],
            [beta * deviation for deviation in masked_totals],
        ]
        self._noise_deviations = [deviation for group in groups for deviation in group]
        self._noise_sizes = [len(group) for group in groups]

    def _masked_deviations(self, points: PointSet) -> tuple[list[float], list[float]]:
        """One voxel of the mask's most in each masked sum (:class:`MaskedSums`, in the
        order of :class:`SumNoise`): a moment of ``M q(g_k I_w)`` (of ``M q(g_k)``), the
        count (1), ``sum M q(I_w^2)`` (``sum M q(I_w)``)."""
        basis = points.linear_map
        bits = basis.budget(self.modulus)
        masked = masked_budget(self.modulus, points.size, basis.weight_bits, basis.support)
        d = points.geometry.dimension
        moments = np.tile(basis.column_weight_bounds * 2.0 ** (masked.product_bits - 1), d)
        totals = [1.0, 2.0 ** (masked.squared_bits - 1)]
        if wants_fixed_sum(self.metric):
            gradient = np.tile(basis.column_weight_bounds * 2.0 ** (bits.g_bits - 1), d)
            moments = np.concatenate([moments, gradient])
            totals.append(2.0 ** (bits.w_bits - 1))
        return moments.tolist(), totals

    def _noise(self) -> SumNoise | None:
        """Fresh noise for one evaluation's moments, (d, outputs) row-major, its totals
        (two; three for correlation) and the masked sums (None: none)."""
        if self._noise_deviations is None:
            return None
        values = gaussian_integers(self._noise_deviations)
        ends = np.cumsum(self._noise_sizes).tolist()
        moments, totals, masked_moments, masked_totals = (
            values[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)
        )
        fixed_sum = totals[2] if len(totals) > 2 else None
        return SumNoise(moments, totals[0], totals[1], fixed_sum, masked_moments, masked_totals)
