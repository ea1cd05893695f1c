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

Each backend also reports what each party received in the clear
(:meth:`JointTermBackend.disclosures`) and what it cost (:class:`PartyStats`).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ppir_itk.fixed_party import FixedParty, PointSet, PointSetRequest
from ppir_itk.image import GridGeometry
from ppir_itk.pyramid import Level


@dataclass(frozen=True)
class MovingFields:
    """The moving party's per-iteration fields on the level's point set (private to it)."""

    gradient: np.ndarray  # (n, d) physical gradient of I at W(x); 0 where invalid
    warped: np.ndarray  # (n,) I(W(x)); 0 where invalid
    valid: np.ndarray  # (n,) uint8, 1 where W(x) falls inside the moving image


@dataclass(frozen=True)
class JointTerm:
    """The joint quantities, known to the moving party only."""

    moments: np.ndarray  # (d, d+1)
    warped_dot_fixed: float
    fixed_squared: float


@dataclass
class PartyStats:
    """One party's cost: wall time in the joint-term protocol, payload bytes, messages."""

    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass
class Traffic:
    """Accounting for both parties of an in-process run."""

    moving: PartyStats = field(default_factory=PartyStats)
    fixed: PartyStats = field(default_factory=PartyStats)

    def send(self, sender: str, payload_bytes: int) -> None:
        """Count one message from ``sender`` ('moving' or 'fixed') to the other party."""
        source, target = (self.moving, self.fixed) if sender == "moving" else (
            self.fixed, self.moving
        )
        source.bytes_sent += payload_bytes
        source.messages_sent += 1
        target.bytes_received += payload_bytes
        target.messages_received += 1

    @contextmanager
    def timing(self, party: str) -> Iterator[None]:
        stats = self.moving if party == "moving" else self.fixed
        start = time.perf_counter()
        try:
            yield
        finally:
            stats.seconds += time.perf_counter() - start

    def as_dict(self) -> dict[str, dict]:
        return {"moving": self.moving.as_dict(), "fixed": self.fixed.as_dict()}


class JointTermBackend(abc.ABC):
    """Moving-party side of a joint-term protocol with one fixed party.

    The calls, in order: :meth:`begin_level` (the fixed party prepares its level
    image and publishes the level grid), :meth:`use_points` (both agree the
    point set), then :meth:`joint_term` once per metric evaluation.
    """

    name: ClassVar[str]
    private: ClassVar[bool]

    def __init__(self, fixed_party: FixedParty) -> None:
        self._fixed_party = fixed_party
        self.traffic = Traffic()
        self._level_index = -1
        self.points: PointSet | None = None
        self.evaluations = 0
        self.revealed_indices = 0
        self.disclosed_center_of_mass = False

    @property
    def fixed_geometry(self) -> GridGeometry:
        """The full-resolution fixed grid, published at the start of the session."""
        return self._fixed_party.geometry

    def fixed_center_of_mass(self) -> np.ndarray:
        """Ask the fixed party to disclose its centre of mass (moments initialiser)."""
        with self.traffic.timing("fixed"):
            center = self._fixed_party.center_of_mass()
        self.traffic.send("fixed", center.nbytes)
        self.disclosed_center_of_mass = True
        return center

    def begin_level(self, level_index: int, level: Level) -> GridGeometry:
        self._level_index = level_index
        self.traffic.send("moving", 16)
        with self.traffic.timing("fixed"):
            geometry = self._fixed_party.open_level(level)
        self.traffic.send("fixed", _geometry_bytes(geometry))
        return geometry

    def use_points(self, request: PointSetRequest) -> PointSet:
        sent = 24 if request.indices is None else 24 + request.indices.nbytes
        if request.kind == "revealed":
            self.revealed_indices += int(request.indices.size)
        self.traffic.send("moving", sent)
        with self.traffic.timing("fixed"):
            self.points = self._fixed_party.select_points(self._level_index, request)
        self._on_points(self.points)
        return self.points

    def joint_term(self, fields: MovingFields) -> JointTerm:
        if self.points is None:
            raise RuntimeError("use_points() must come before joint_term()")
        self.evaluations += 1
        return self._joint_term(fields)

    @abc.abstractmethod
    def _on_points(self, points: PointSet) -> None:
        """Per-level set-up once the point set is agreed (e.g. J encrypted once)."""

    @abc.abstractmethod
    def _joint_term(self, fields: MovingFields) -> JointTerm:
        """One evaluation of the joint term."""

    def disclosures(self) -> dict[str, list[str]]:
        """What each party received in the clear during the run, in words."""
        moving: list[str] = []
        fixed: list[str] = []
        if self.disclosed_center_of_mass:
            moving.append("the fixed image's centre of mass (moments initialiser)")
        if self.revealed_indices:
            fixed.append(f"GMS sample indices revealed: {self.revealed_indices}")
        return {"moving": moving, "fixed": fixed}


def _geometry_bytes(geometry: GridGeometry) -> int:
    d = geometry.dimension
    return 8 * (d + d + d + d * d)
