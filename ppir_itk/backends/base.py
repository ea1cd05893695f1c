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
- ``fixed_squared = sum_x m(x) J(x)^2``.

The only private-by-private products are the d + 2 element-wise vectors
``g_k * J``, ``I_w * J`` and ``m * J^2``; everything after them is a public
linear map. A backend gets the moving party's fields (:class:`MovingFields`)
and returns a :class:`JointTerm` revealed to the moving party only.

A backend has two halves: :class:`JointTermBackend` runs on the moving party
and :class:`FixedSide` on the fixed party; they talk only through the
session's ``BackendMessage`` envelopes. Each half says what its party
received in the clear (``learned()``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ppir_itk.errors import InputError
from ppir_itk.image import GridGeometry
from ppir_itk.linear_map import AffineBasis
from ppir_itk.points import PointSet, draw_points
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import PROTOCOL_VERSION, geometry_from_pb
from ppir_itk.protocol.session import Session
from ppir_itk.pyramid import LevelSchedule
from ppir_itk.sampling import GMS, URS


def fixed_point_disclosures(points: PointSet | None, sums_received: int, bounds: list[int],
                            others: list[str]) -> list[str]:
    """What a moving party learns from a private backend that returns the exact sums:
    the joint term itself, and the power of two bounding J (the fixed-point exponent)."""
    told = list(others)
    if sums_received:
        basis = points.linear_map
        told.insert(0, f"the joint term: {basis.sums_per_evaluation} sums per evaluation "
                       f"({basis.name} moments, I_w.J, sum of J^2 over the overlap), "
                       f"{sums_received} in total")
    if bounds:
        told.append("the power of two bounding the fixed image's values, per level: "
                    + ", ".join(f"2^{bound}" for bound in bounds))
    return told


@dataclass(frozen=True)
class MovingFields:
    """The moving party's per-iteration fields on the level's point set (private to it)."""

    gradient: np.ndarray  # (n, d) physical gradient of I at W(x); 0 where invalid
    warped: np.ndarray  # (n,) I(W(x)); 0 where invalid
    valid: np.ndarray  # (n,) uint8, 1 where W(x) falls inside the moving image
    coefficients: np.ndarray  # (|theta|, d(d+1)): dW/dtheta in the affine basis (theta-dependent)

    def steepest_descent(self, points: PointSet) -> np.ndarray:
        """S = g . dW/dtheta, shape (n, |theta|): the paper's matrix (O(n |theta|) memory);
        linear transforms (the affine basis) only."""
        d = self.gradient.shape[1]
        phi = AffineBasis(points).phi
        basis = np.concatenate([phi, np.ones((len(phi), 1))], axis=1)  # (n, d+1)
        per_point = (self.gradient[:, :, None] * basis[:, None, :]).reshape(-1, d * (d + 1))
        return per_point @ self.coefficients.T


@dataclass(frozen=True)
class JointTerm:
    """The joint quantities, known to the moving party (and, in the paper's protocols, more).

    Either ``moments`` (affine basis, (d, d+1)) or ``parameter_term`` (R = S^T J
    directly in parameter space, as the paper's protocols compute it).
    """

    warped_dot_fixed: float
    fixed_squared: float
    moments: np.ndarray | None = None
    parameter_term: np.ndarray | None = None
    # B-spline moments computed with fixed-point weights (bits per axis; 0: exact): the
    # moving party uses the same weights for its own S^T I_w, so the gradient stays exact.
    basis_weight_bits: int = 0


def sampling_name(sampling: Any) -> str:
    """How ``Hello`` names a sampling strategy."""
    if isinstance(sampling, URS):
        return "urs"
    if isinstance(sampling, GMS):
        return "gms-revealed" if sampling.reveal_indices else "gms-hidden"
    return "none"


class JointTermBackend(abc.ABC):
    """Moving-party side of a joint-term protocol with one fixed party.

    The calls, in order: :meth:`start` (the handshake), :meth:`begin_level`
    (the fixed party prepares its level image and publishes the level grid),
    :meth:`use_points` (both agree the point set), :meth:`joint_term` once per
    metric evaluation, and :meth:`close`.
    """

    name: ClassVar[str]
    private: ClassVar[bool]
    #: Whether the backend computes the joint term on a B-spline basis (a control grid).
    bspline: ClassVar[bool] = False

    def __init__(self, session: Session, parameters: dict[str, str] | None = None) -> None:
        self.session = session
        self.parameters = dict(parameters or {})
        self.fixed_geometry: GridGeometry | None = None
        self.points: PointSet | None = None
        self.evaluations = 0
        self._level_index = -1
        self._sampling: tuple[float, int] = (1.0, 0)
        self._learned: list[str] = []

    def start(self, schedule: LevelSchedule, sampling: Any, *,
              wants_center_of_mass: bool = False) -> GridGeometry:
        """The handshake: agree backend, levels and sampling; learn the fixed geometry."""
        fraction = getattr(sampling, "fraction", 1.0)
        seed = getattr(sampling, "seed", 0)
        self._sampling = (fraction, seed)
        welcome = self.session.start(pb.Hello(
            protocol_version=PROTOCOL_VERSION,
            backend=self.name,
            backend_parameters=self.parameters,
            levels=[pb.Level(shrink_factor=level.shrink_factor,
                             smoothing_sigma=level.smoothing_sigma) for level in schedule.levels],
            sampling=sampling_name(sampling),
            sampling_fraction=fraction,
            sampling_seed=seed,
            wants_center_of_mass=wants_center_of_mass,
        ))
        self.fixed_geometry = geometry_from_pb(welcome.fixed_geometry)
        return self.fixed_geometry

    def fixed_center_of_mass(self) -> np.ndarray:
        """The fixed party's centre of mass (agreed in the handshake; a disclosure)."""
        reply = self.session.request(
            pb.Envelope(center_of_mass_request=pb.CenterOfMassRequest()), "center_of_mass")
        self._learned.append("the fixed image's centre of mass (moments initialiser)")
        return np.asarray(reply.center_of_mass.center, dtype=np.float64)

    def begin_level(self, level_index: int) -> Callable[[], GridGeometry]:
        """Ask the fixed party to open a level; the returned call waits for its grid.

        The fixed party smooths and shrinks its image meanwhile, so the moving
        party can prepare its own level image before waiting.
        """
        self._level_index = level_index
        self.points = None
        answer = self.session.post(pb.Envelope(open_level=pb.OpenLevel(level=level_index)))
        return lambda: geometry_from_pb(answer("level_opened").level_opened.geometry)

    def use_points(self, geometry: GridGeometry, request: pb.SelectPoints) -> PointSet:
        """Agree the level's points; both parties derive the same set from the request."""
        if request.HasField("control_grid") and not self.bspline:
            protocol = self.parameters.get("protocol")
            named = f"'{self.name}'" + (f" (protocol {protocol})" if protocol else "")
            raise InputError(f"backend {named} computes the joint term of linear transforms "
                             "only; register B-spline transforms with backend spdz or clear")
        reply = self.session.request(pb.Envelope(select_points=request), "points_selected")
        points = draw_points(geometry, self._level_index, request, *self._sampling)
        if reply.points_selected.count != points.size:
            raise RuntimeError("the fixed party agreed a different number of points")
        self.points = points
        self._on_points(points)
        return points

    def joint_term(self, fields: MovingFields) -> JointTerm:
        if self.points is None:
            raise RuntimeError("use_points() must come before joint_term()")
        self.session.check()
        self.evaluations += 1
        return self._joint_term(fields)

    def close(self) -> pb.Closed:
        return self.session.close()

    def learned(self) -> list[str]:
        """What the moving party received in the clear."""
        return list(self._learned)

    def other_parties(self, closed: pb.Closed) -> dict[str, tuple[Any, float]]:
        """Figures of parties other than the two (e.g. a dealer): name -> (Counters, seconds)."""
        return {}

    @abc.abstractmethod
    def _on_points(self, points: PointSet) -> None:
        """Per-level set-up once the point set is agreed (e.g. J encrypted once)."""

    @abc.abstractmethod
    def _joint_term(self, fields: MovingFields) -> JointTerm:
        """One evaluation of the joint term."""


class ExactSumsBackend(JointTermBackend):
    """A private backend whose moving party learns the joint term's exact fixed-point sums
    and, per level, the power of two bounding J (the fixed-point exponent)."""

    def __init__(self, session: Session, parameters: dict[str, str] | None = None) -> None:
        super().__init__(session, parameters)
        self._bounds: list[int] = []  # per level: log2 of the bound on J's values
        self._sums_received = 0

    def learned(self) -> list[str]:
        return fixed_point_disclosures(self.points, self._sums_received, self._bounds,
                                       super().learned())


class FixedSide(abc.ABC):
    """Fixed-party side of a backend: answers the backend's messages for one session."""

    #: Whether this side computes on a B-spline basis (a control grid in the points).
    bspline: ClassVar[bool] = False

    def __init__(self, parameters: dict[str, str], policy: Any) -> None:
        self.parameters = parameters
        self.policy = policy  # the operator's FixedPolicy
        self.evaluations = 0

    @abc.abstractmethod
    def on_points(self, values: np.ndarray, points: PointSet) -> None:
        """The level's J on the agreed points (float64), once per level."""

    @abc.abstractmethod
    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        """Answer one backend message (raise ProtocolError for one that does not fit)."""

    def learned(self) -> list[str]:
        """What the fixed party received in the clear."""
        return []

    def close(self) -> pb.PartyStats | None:
        """End the session's side work; this party's traffic with a dealer, if it had one."""
        return None

    def abort(self) -> None:  # noqa: B027 - most sides hold nothing outside the process
        """The session ended with an error: drop what outlives it (a dealer session) now."""
