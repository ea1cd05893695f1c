"""The moving party (P1): drives one registration session with a fixed party.

This module is the moving party's whole side of the protocol; it mirrors
:class:`~ppir_itk.fixed_party.FixedPartySession`. A :class:`MovingPartySession`
makes the requests, in order, over any transport session
(:mod:`ppir_itk.protocol.session`: in process or gRPC with mutual TLS), and
hands its backend's half (:class:`~ppir_itk.backends.base.JointTermBackend`)
the agreed point set and a channel for the backend's own messages.

============================  ===================================================
request (moving -> fixed)     what the moving party sends, and why it is public
============================  ===================================================
``Hello``                     backend and its parameters, the metric (and its
                              bins), the level schedule, the sampling kind,
                              fraction and seed: all public by the security model
``CenterOfMassRequest``       nothing (the moments initialiser asks for the fixed
                              party's centre of mass, a disclosure it reports)
``OpenLevel``                 the level's index
``SelectPoints``              the sampling kind; revealed GMS indices (depend on
                              the moving image: opt-in, reported by the fixed party);
                              a B-spline's control grid (public)
``BackendMessage``            the backend's own messages (:mod:`ppir_itk.backends`)
``Close``                     nothing
============================  ===================================================

What the moving party receives in the clear is listed by :meth:`learned`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ppir_itk.backends import check_backend_name, fixed_mask_refusal, make_backend
from ppir_itk.backends.base import (
    HistogramBackend,
    HistogramTerm,
    JointTerm,
    JointTermBackend,
    MaskedHistogram,
    MaskedSums,
    MovingFields,
    ParzenFields,
)
from ppir_itk.dealer_client import DealerClient
from ppir_itk.disclosure import SESSION, Received
from ppir_itk.errors import InputError
from ppir_itk.image import GridGeometry
from ppir_itk.metric_kinds import MATTES, MEAN_SQUARES_SETTINGS, MetricSettings
from ppir_itk.points import SAMPLING_KINDS, PointSet, draw_points
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import Counters
from ppir_itk.protocol.messages import (
    PROTOCOL_VERSION,
    ProtocolError,
    array_to_pb,
    geometry_from_pb,
    geometry_to_pb,
)
from ppir_itk.protocol.session import LocalSession, Session
from ppir_itk.pyramid import LevelSchedule
from ppir_itk.roles import MOVING_PARTY
from ppir_itk.sampling import GMS, URS, Regular, Sampling
from ppir_itk.transforms import LinearTransform


def sampling_name(sampling: Sampling | None) -> str:
    """How ``Hello`` names a sampling strategy."""
    if isinstance(sampling, URS | Regular):
        return sampling.name
    if isinstance(sampling, GMS):
        return "gms-revealed" if sampling.reveal_indices else "gms-hidden"
    return "none"


class MovingPartySession:
    """One registration session, from the moving party's side.

    Parameters
    ----------
    session : Session
        The transport to the fixed party (:func:`ppir_itk.connect` or
        :func:`ppir_itk.in_process_session`).
    backend : str
        The joint-term backend (``"he"``; ``"clear"`` is NOT private).
    parameters : dict, optional
        The backend's parameters (e.g. ``{"protocol": "paper-v1"}``).
    metric : MetricSettings, optional
        The metric whose joint part the backend computes (mean squares if None).
    """

    def __init__(
        self,
        session: Session,
        backend: str = "he",
        parameters: dict[str, str] | None = None,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        self.session = session
        self.metric = metric
        self.backend = make_backend(check_backend_name(backend), self, parameters, metric)
        self.fixed_geometry: GridGeometry | None = None
        self.points: PointSet | None = None
        self.evaluations = 0
        self._sampling = "none"
        self._fraction_seed: tuple[float, int] = (1.0, 0)
        self._level_index = -1
        self.received = Received(MOVING_PARTY, [SESSION])
        # With a fixed mask: level -> the points inside it (and valid) at its last evaluation.
        self.fixed_mask_counts: dict[int, int] = {}

    # -- what the backend and the reports read ----------------------------------
    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def private(self) -> bool:
        return self.backend.private

    @property
    def transport(self) -> str:
        return "in-process" if isinstance(self.session, LocalSession) else "grpc+mtls"

    # -- the requests, in the order a session makes them ----------------------------
    def start(
        self,
        schedule: LevelSchedule,
        sampling: Sampling | None,
        *,
        wants_center_of_mass: bool = False,
        fixed_initial: LinearTransform | None = None,
    ) -> GridGeometry:
        """The handshake: agree backend, levels and sampling; learn the fixed geometry.
        ``fixed_initial``: ITK's fixed initial transform (the fixed image read at its map of
        each point; public), None: none."""
        fraction = getattr(sampling, "fraction", 1.0)
        seed = getattr(sampling, "seed", 0)
        self._sampling = sampling_name(sampling)
        self._fraction_seed = (fraction, seed)
        welcome = self.session.start(
            pb.Hello(
                protocol_version=PROTOCOL_VERSION,
                backend=self.backend.name,
                backend_parameters=self.backend.parameters,
                levels=[
                    pb.Level(
                        shrink_factor=level.shrink_factor, smoothing_sigma=level.smoothing_sigma
                    )
                    for level in schedule.levels
                ],
                sampling=self._sampling,
                sampling_fraction=fraction,
                sampling_seed=seed,
                wants_center_of_mass=wants_center_of_mass,
                metric=self.metric.name,
                fixed_initial_transform=_matrix_offset(fixed_initial),
                histogram_bins=self.metric.histogram_bins if self.metric.name == MATTES else 0,
            )
        )
        self.fixed_geometry = geometry_from_pb(welcome.fixed_geometry)
        if welcome.fixed_masked and self.metric.name not in self.backend.fixed_mask_metrics:
            refusal = fixed_mask_refusal(self.backend.name, self.backend.protocol, self.metric.name)
            raise InputError(f"the fixed party restricts the metric to its mask, and {refusal}")
        self.backend.fixed_masked = welcome.fixed_masked
        return self.fixed_geometry

    def fixed_center_of_mass(self) -> np.ndarray:
        """The fixed party's centre of mass (agreed in the handshake; a disclosure)."""
        reply = self.session.request(
            pb.Envelope(center_of_mass_request=pb.CenterOfMassRequest()), "center_of_mass"
        )
        center = np.asarray(reply.center_of_mass.center, dtype=np.float64)
        self.received.add("center_of_mass", center.size)
        return center

    def begin_level(self, level_index: int) -> Callable[[], GridGeometry]:
        """Ask the fixed party to open a level; the returned call waits for its grid.

        The fixed party smooths and shrinks its image meanwhile, so the moving
        party can prepare its own level image before waiting.
        """
        self._level_index = level_index
        self.points = None
        answer = self.session.post(pb.Envelope(open_level=pb.OpenLevel(level=level_index)))
        return lambda: geometry_from_pb(answer("level_opened").level_opened.geometry)

    def select_points(
        self,
        geometry: GridGeometry,
        *,
        revealed: np.ndarray | None = None,
        control_grid: GridGeometry | None = None,
    ) -> PointSet:
        """Agree the level's points; both parties derive the same set from the request.

        ``revealed``: GMS indices the moving party drew (only with revealed GMS);
        ``control_grid``: a B-spline transform's control grid (public).
        """
        kind = SAMPLING_KINDS[self._sampling]
        if (revealed is not None) != (kind == "revealed"):
            raise RuntimeError(f"sampling '{self._sampling}' and the request's indices disagree")
        if control_grid is not None and not self.backend.bspline:
            protocol = self.backend.parameters.get("protocol")
            named = f"'{self.backend.name}'" + (f" (protocol {protocol})" if protocol else "")
            raise InputError(
                f"backend {named} computes the joint term of linear transforms "
                "only; register B-spline transforms with backend spdz or clear"
            )
        request = pb.SelectPoints(kind=kind)
        if revealed is not None:
            request.indices.CopyFrom(array_to_pb(revealed))
        if control_grid is not None:
            request.control_grid.CopyFrom(geometry_to_pb(control_grid))
        reply = self.session.request(pb.Envelope(select_points=request), "points_selected")
        points = draw_points(geometry, self._level_index, request, *self._fraction_seed)
        if reply.points_selected.count != points.size:
            raise RuntimeError("the fixed party agreed a different number of points")
        self.points = points
        self.backend.on_points(points)
        return points

    def joint_term(self, fields: MovingFields) -> JointTerm:
        """One evaluation of the joint term on the level's points (mean squares, correlation)."""
        assert isinstance(self.backend, JointTermBackend), "a linear-sums metric's backend"
        self._evaluation()
        joint = self.backend.joint_term(fields)
        self._inside_fixed_mask(joint.masked)
        return joint

    def histogram_term(self, fields: ParzenFields) -> HistogramTerm:
        """One evaluation of the Mattes term on the level's points."""
        assert isinstance(self.backend, HistogramBackend), "a Mattes session's backend"
        self._evaluation()
        term = self.backend.histogram_term(fields)
        self._inside_fixed_mask(term.masked)
        return term

    def _inside_fixed_mask(self, masked: MaskedSums | MaskedHistogram | None) -> None:
        """Keep the count of points inside the fixed mask the term gave (the moving party
        learns it), the level's last one in :attr:`fixed_mask_counts`."""
        if self.backend.fixed_masked:
            if masked is None:
                raise ProtocolError(
                    f"backend '{self.backend.name}' returned no masked sums from a fixed "
                    "party with a mask"
                )
            self.fixed_mask_counts[self._level_index] = round(masked.count)

    def _evaluation(self) -> None:
        if self.points is None:
            raise RuntimeError("select_points() must come before an evaluation")
        self.session.check()
        self.evaluations += 1

    def close(self) -> pb.Closed:
        """End the session; the fixed party's own accounting of it."""
        try:
            return self.session.close()
        finally:
            self.backend.close()

    def abort(self, reason: str) -> None:
        """End the session early, telling the fixed party why (best effort)."""
        self.session.abort(reason)

    # -- reports -------------------------------------------------------------------------
    def counters(self) -> Counters:
        """This party's traffic with the fixed party so far."""
        return self.session.counters()

    def learned(self) -> list[str]:
        """What the moving party learned: its protocol tables' disclosures, masked ones apart."""
        return self.backend.learned() + self.received.lines()

    def masked(self) -> list[str]:
        """The uniformly masked values it opened or decrypted (it learns nothing from them)."""
        return self.backend.received.lines(masked=True)

    def other_parties(self, closed: pb.Closed) -> dict[str, tuple[Counters, float]]:
        """Figures of parties other than the two (a dealer): name -> (Counters, seconds)."""
        return self.backend.other_parties(closed)

    # -- the backend's channel (MovingChannel) ----------------------------------------
    @property
    def single_process(self) -> bool:
        return self.session.single_process

    def exchange(self, message: pb.BackendMessage) -> pb.BackendMessage:
        return self.session.request(message, "backend").backend  # sent as its envelope

    def connect_dealer(self, first_party: bool) -> Callable[[bytes], DealerClient]:
        connect = self.session.dealer
        if first_party:
            if self.session.deal_as_first_party is None:
                raise InputError(
                    "the trusted-first-party provider needs the fixed party in this process"
                )
            connect = self.session.deal_as_first_party()
        if connect is None:
            raise InputError(
                "backend 'spdz' needs a dealer: give its address (--dealer "
                "HOST:PORT, or connect(..., dealer=...))"
            )
        return connect


def _matrix_offset(transform: LinearTransform | None) -> list[float]:
    """A linear transform as Hello carries it: its matrix row-major, then its offset."""
    if transform is None:
        return []
    matrix, offset = transform.matrix_offset()
    return [*matrix.ravel().tolist(), *offset.tolist()]
