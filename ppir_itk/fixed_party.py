"""The fixed party (P2): holds the fixed image J, answers one session's requests.

This module is the fixed party's whole side of the protocol. A
:class:`FixedPartySession` takes the moving party's envelopes one at a time
(:meth:`FixedPartySession.handle`) and answers each; the transport (in
process or gRPC with mutual TLS, :mod:`ppir_itk.protocol`) only carries them.

What the fixed party sends, and why it reveals nothing about J beyond what
is named:

============================  ===================================================
request (moving -> fixed)     answer (fixed -> moving)
============================  ===================================================
``Hello`` (backend, metric,   ``Welcome``: the fixed image's geometry (public by
levels, sampling, seed)       the security model) and the evaluation budget
``CenterOfMassRequest``       ``CenterOfMass``: d numbers; only if agreed in
                              ``Hello``, reported as a disclosure
``OpenLevel`` (index)         ``LevelOpened``: the level grid's geometry (public)
``SelectPoints``              ``PointsSelected``: the number of points. URS points
                              are drawn here from the public seed; revealed GMS
                              indices are the moving party's disclosure; a
                              B-spline's control grid is public
``BackendMessage``            the backend's answer (:mod:`ppir_itk.backends`):
                              ``clear`` sends J in the clear (NOT private);
                              ``he`` and ``spdz`` send only what is uniform
                              to the moving party, and the joint term
``Close``                     ``Closed``: the fixed party's own accounting
============================  ===================================================

Requests out of order, outside the agreed session, past the evaluation
budget, or asking more linear measurements of J than the policy grants
(:mod:`ppir_itk.policy`) end the session with ``Abort``; the fixed party's
server lives on. The measurements are checked at ``SelectPoints``, before any
product (a grid too fine, too many per evaluation, or not one evaluation left of
the client's grant), and each evaluation's are charged to the server's
:class:`~ppir_itk.ledger.Ledger` before the answer that reveals them is sent.
The ``clear`` backend is outside this accounting: it sends J itself, and an
operator who offers it has granted the whole image.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppir_itk.backends import check_protocol, fixed_mask_refusal, make_fixed_side
from ppir_itk.backends.base import FixedSide
from ppir_itk.disclosure import SESSION, Received
from ppir_itk.errors import InputError
from ppir_itk.image import GridGeometry, ImageGrid, center_of_mass
from ppir_itk.ledger import IN_MEMORY, Ledger, image_fingerprint
from ppir_itk.masks import as_mask, inside, pixels_inside
from ppir_itk.metric_kinds import MATTES, METRICS, MetricSettings
from ppir_itk.parzen import IntensityBins, check_histogram_bins, fixed_bins
from ppir_itk.points import SAMPLING_KINDS, PointSet, draw_points
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import (
    FIXED_PARTY_SERVICE,
    PROTOCOL_VERSION,
    ProtocolError,
    body,
    geometry_to_pb,
)
from ppir_itk.protocol.tls import TLS
from ppir_itk.protocol.transport import READY_TIMEOUT, PartyServer
from ppir_itk.pyramid import Level, fixed_level_images, inside_buffer
from ppir_itk.roles import FIXED_PARTY, MOVING_PARTY
from ppir_itk.wrapping.images import as_image_grid

# Why the handlers after _on_hello may use self.hello and self.backend_side.
_AFTER_HELLO = "handle() answers no request but 'hello' before 'hello' set the terms and side"


@dataclass
class FixedPartySession:
    """One registration session, from the fixed party's side.

    Parameters
    ----------
    image : itk/SimpleITK image, path or ImageGrid
        The fixed image J; it never leaves this object except through the
        ``clear`` backend.
    policy : FixedPolicy
        The operator's limits.
    ledger : Ledger, optional
        Where the measurements granted to ``client`` are counted across sessions;
        without one (a session built by hand) only the per-request checks apply.
    client : str
        The client's identity in the ledger: its certificate's SHA-256 fingerprint.
    image_id : str, optional
        The image's fingerprint in the ledger (computed when not given).
    fixed_mask : itk/SimpleITK image, path or ImageGrid, optional
        The fixed party's mask (:mod:`ppir_itk.masks`): the metric runs over the points
        inside it only. It never leaves this object; the moving party learns that there is
        one (``Welcome.fixed_masked``) and, through the joint term, how many points fall
        inside.
    """

    image: Any
    policy: FixedPolicy = field(default_factory=FixedPolicy)
    ledger: Ledger | None = None
    client: str = ""
    image_id: str | None = None
    fixed_mask: Any = None

    def __post_init__(self) -> None:
        self.image = as_image_grid(self.image, name="fixed image")
        if self.fixed_mask is not None:
            self.fixed_mask = as_mask(
                self.fixed_mask, name="fixed mask", dimension=self.image.dimension
            )
        self.hello: pb.Hello | None = None
        self.backend_side: FixedSide | None = None
        self.level_index = -1
        self.level_image: ImageGrid | None = None
        self.fixed_initial: tuple[np.ndarray, np.ndarray] | None = None  # Hello's
        self.level_range = (0.0, 0.0)  # the smoothed level image's least and greatest values
        self.points: PointSet | None = None
        self.seconds = 0.0
        self.level_seconds: list[float] = []
        self.closed = False
        self.received = Received(FIXED_PARTY, [SESSION])  # what it received in the clear
        self.measurements = 0  # linear measurements of J this session revealed
        self.level_measurements = 0  # of them, at the level open now
        if self.ledger is not None and self.image_id is None:
            self.image_id = image_fingerprint(self.image)

    @property
    def measurement_cap(self) -> float:
        """The linear measurements of J the client may hold, all its sessions together (no
        cap without a ledger: nothing counts them across sessions)."""
        if self.ledger is None:
            return math.inf
        return self.policy.measurement_cap(self.geometry.number_of_points)

    @property
    def measurements_held(self) -> int:
        """What the client holds of J: the ledger's count (this session's, without one)."""
        if self.ledger is None:
            return self.measurements
        assert self.image_id is not None, "a session with a ledger knows its image's fingerprint"
        return self.ledger.used(self.client, self.image_id)

    @property
    def level_name(self) -> str:
        """The open level as the ledger names it: its grid's size (``"64x64"``)."""
        assert self.level_image is not None, "a level is open"
        return "x".join(str(size) for size in self.level_image.geometry.size)

    @property
    def level_cap(self) -> float:
        """The measurements of the open level's grid the client may hold, all its sessions
        together (this session's, without a ledger)."""
        assert self.level_image is not None, "a level is open"
        return self.policy.max_measurements_per_level * self.level_image.geometry.number_of_points

    @property
    def level_held(self) -> int:
        """What the client holds of the open level's grid."""
        if self.ledger is None:
            return self.level_measurements
        assert self.image_id is not None, "a session with a ledger knows its image's fingerprint"
        return self.ledger.used(self.client, self.image_id, self.level_name)

    @property
    def geometry(self) -> GridGeometry:
        return self.image.geometry

    def handle(self, envelope: pb.Envelope) -> pb.Envelope:
        """Answer one request; raises :class:`ProtocolError` for one that does not fit."""
        start = time.perf_counter()
        try:
            kind = body(envelope)
            if self.closed:
                raise ProtocolError("the session is closed")
            if self.hello is None and kind != "hello":
                raise ProtocolError(f"'{kind}' arrived before 'hello'")
            handler = getattr(self, f"_on_{kind}", None)
            if handler is None:
                raise ProtocolError(f"'{kind}' is not a request the fixed party answers")
            return handler(getattr(envelope, kind))
        except ProtocolError:
            self.abandon()
            raise
        finally:
            elapsed = time.perf_counter() - start
            self.seconds += elapsed
            if self.level_seconds:
                self.level_seconds[-1] += elapsed

    def abandon(self) -> None:
        """End the session after an error (a request that did not fit, or, called by a
        transport, a moving party that vanished): refuse what follows, and release the
        backend's side work now (SPDZ's dealer session would otherwise keep one of the
        dealer's session slots alive with its heartbeats)."""
        if not self.closed:
            self.closed = True
            if self.backend_side is not None:
                self.backend_side.abort()

    # -- the requests, in the order a session makes them ---------------------------------
    def _on_hello(self, hello: pb.Hello) -> pb.Envelope:
        if self.hello is not None:
            raise ProtocolError("a second 'hello' arrived")
        if hello.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {hello.protocol_version} is not "
                f"{PROTOCOL_VERSION}, the version this fixed party speaks"
            )
        if hello.backend not in self.policy.backends:
            raise ProtocolError(
                f"backend '{hello.backend[:40]}' is not offered here "
                f"(offered: {', '.join(self.policy.backends)})"
            )
        if not 1 <= len(hello.levels) <= self.policy.max_levels:
            raise ProtocolError(
                f"{len(hello.levels)} levels asked; this fixed party allows "
                f"1 to {self.policy.max_levels}"
            )
        for level in hello.levels:
            if level.shrink_factor < 1 or not 0 <= level.smoothing_sigma < 1e3:
                raise ProtocolError("a level's shrink factor or smoothing sigma is out of range")
        if hello.sampling not in SAMPLING_KINDS:
            raise ProtocolError(f"sampling '{hello.sampling[:40]}' is unknown")
        if hello.sampling in ("urs", "regular") and not 0 < hello.sampling_fraction <= 1:
            raise ProtocolError(f"the {hello.sampling} sampling fraction must be in (0, 1]")
        if hello.wants_center_of_mass and not self.policy.allow_center_of_mass:
            raise ProtocolError("this fixed party does not disclose its centre of mass")
        self.backend_side = make_fixed_side(
            hello.backend, dict(hello.backend_parameters), self.policy, self._metric(hello)
        )
        self.fixed_initial = _fixed_initial(hello, self.image.dimension)
        # A fixed initial transform maps some points off the image: the fixed party's own
        # validity, as private as a mask, so it runs as one.
        masked = self.fixed_mask is not None or self.fixed_initial is not None
        if masked and hello.metric not in self.backend_side.fixed_mask_metrics:
            refusal = fixed_mask_refusal(
                hello.backend, hello.backend_parameters.get("protocol"), hello.metric
            )
            reason = "to its mask" if self.fixed_mask is not None else "to its image's points"
            raise ProtocolError(f"this fixed party restricts the metric {reason}, and {refusal}")
        self.backend_side.fixed_masked = masked
        self.hello = hello
        return pb.Envelope(
            welcome=pb.Welcome(
                protocol_version=PROTOCOL_VERSION,
                fixed_geometry=geometry_to_pb(self.geometry),
                evaluation_budget=self.policy.evaluation_budget,
                fixed_masked=masked,
            )
        )

    def _metric(self, hello: pb.Hello) -> MetricSettings:
        """The metric ``hello`` asks for, if this fixed party serves it."""
        if hello.metric not in METRICS:
            raise ProtocolError(f"metric '{hello.metric[:40]}' is unknown")
        if hello.metric not in self.policy.metrics:
            raise ProtocolError(
                f"metric '{hello.metric}' is not served here (served: "
                f"{', '.join(self.policy.metrics)}; its operator sets them: ppir serve --metrics)"
            )
        if hello.metric != MATTES:
            return MetricSettings(hello.metric)
        try:
            return MetricSettings(MATTES, check_histogram_bins(hello.histogram_bins))
        except InputError as error:
            raise ProtocolError(str(error)) from None

    def _on_center_of_mass_request(self, _: pb.CenterOfMassRequest) -> pb.Envelope:
        assert self.hello is not None, _AFTER_HELLO
        if not self.hello.wants_center_of_mass:
            raise ProtocolError("the centre of mass was not agreed in 'hello'")
        return pb.Envelope(
            center_of_mass=pb.CenterOfMass(center=center_of_mass(self.image).tolist())
        )

    def _on_open_level(self, request: pb.OpenLevel) -> pb.Envelope:
        assert self.hello is not None, _AFTER_HELLO
        if request.level != self.level_index + 1 or request.level >= len(self.hello.levels):
            raise ProtocolError(f"level {request.level} asked out of the agreed order")
        level = self.hello.levels[request.level]
        self.level_index = request.level
        smoothed, self.level_image = fixed_level_images(
            self.image, Level(level.shrink_factor, level.smoothing_sigma), self.fixed_initial
        )
        if self.hello.metric == MATTES:
            # Mattes's fixed bins span the smoothed full-resolution image, as ITK's method
            # gives it (its pixels inside the fixed mask, with one).
            inside_mask = pixels_inside(smoothed, self.fixed_mask, name="fixed mask")
            self.level_range = (float(inside_mask.min()), float(inside_mask.max()))
        self.points = None
        self.level_measurements = 0
        self.level_seconds.append(0.0)
        return pb.Envelope(
            level_opened=pb.LevelOpened(geometry=geometry_to_pb(self.level_image.geometry))
        )

    def _on_select_points(self, request: pb.SelectPoints) -> pb.Envelope:
        assert self.hello is not None and self.backend_side is not None, _AFTER_HELLO
        if self.level_image is None or self.points is not None:
            raise ProtocolError("points asked outside a freshly opened level")
        if request.kind != SAMPLING_KINDS[self.hello.sampling]:
            raise ProtocolError(
                f"points of kind '{request.kind[:20]}' do not fit the agreed "
                f"sampling '{self.hello.sampling}'"
            )
        self.points = draw_points(
            self.level_image.geometry,
            self.level_index,
            request,
            self.hello.sampling_fraction,
            self.hello.sampling_seed,
        )
        if self.points.control is not None and not self.backend_side.bspline:
            raise ProtocolError(f"backend '{self.hello.backend}' does not take B-spline transforms")
        if self.hello.backend != "clear":
            self._check_measurements(self.points)
        if request.kind == "revealed":
            self.received.add("gms_indices", self.points.size, detail=f"level {self.level_index}")
        values = self.level_image.array.ravel().astype(np.float64)
        if self.points.indices is not None:
            values = values[self.points.indices]
        metric = self.backend_side.metric
        if metric.name == MATTES:  # the fixed party's own window: its bins, over its level
            bins = IntensityBins.from_values(np.array(self.level_range), metric.histogram_bins)
            values = fixed_bins(values, bins)
        self.backend_side.on_points(values, self.points, self._fixed_mask_at(self.points))
        return pb.Envelope(points_selected=pb.PointsSelected(count=self.points.size))

    def _fixed_mask_at(self, points: PointSet) -> np.ndarray | None:
        """The fixed mask at the level's points (1 inside), None without a mask; with a fixed
        initial transform, at the points it maps them to, and 0 where those leave the image."""
        if self.fixed_mask is None and self.fixed_initial is None:
            return None
        geometry = points.geometry
        flat = np.arange(geometry.number_of_points) if points.indices is None else points.indices
        physical = geometry.physical_points(geometry.flat_to_index(flat))
        if self.fixed_initial is None:
            return inside(self.fixed_mask, physical)
        matrix, offset = self.fixed_initial
        mapped = physical @ matrix.T + offset
        valid = inside_buffer(self.image, mapped)
        return valid if self.fixed_mask is None else valid & inside(self.fixed_mask, mapped)

    def _on_backend(self, message: pb.BackendMessage) -> pb.Envelope:
        assert self.hello is not None and self.backend_side is not None, _AFTER_HELLO
        if self.points is None:
            raise ProtocolError("a backend request arrived before the points were agreed")
        if self.backend_side.evaluations >= self.policy.evaluation_budget:
            raise ProtocolError(
                f"this registration used up the fixed party's budget of "
                f"{self.policy.evaluation_budget} joint-term evaluations per "
                "session (its operator sets it: ppir serve --budget)"
            )
        evaluations = self.backend_side.evaluations
        answer = self.backend_side.handle(message)
        if self.backend_side.evaluations > evaluations and self.hello.backend != "clear":
            self._charge(self.backend_side.measurements_per_evaluation(self.points))
        return pb.Envelope(backend=answer)

    def _check_measurements(self, points: PointSet) -> None:
        """Refuse, before any product, a level whose evaluations the policy cannot answer
        (the sums the metric asks: correlation's sum of J too)."""
        assert self.backend_side is not None, _AFTER_HELLO
        policy, asked = self.policy, self.backend_side.sums_per_evaluation(points)
        if points.control is not None:
            level_spacing = np.asarray(points.geometry.spacing)
            spacing = float(np.min(np.asarray(points.control.spacing) / level_spacing))
            if spacing < policy.min_control_spacing:
                raise ProtocolError(
                    f"a control grid spaced {spacing:.3g} level pixels asks finer detail of the "
                    f"fixed image than this fixed party allows (at least "
                    f"{policy.min_control_spacing:g} level pixels at level {self.level_index}; "
                    "its operator sets it: ppir serve --min-control-spacing)"
                )
        self._check_per_evaluation(points, asked)
        left = self.measurement_cap - self.measurements_held
        if asked > left:
            raise ProtocolError(self._grant_used_up(asked, left))
        left = self.level_cap - self.level_held
        if asked > left:
            raise ProtocolError(self._level_used_up(asked, left))

    def _check_per_evaluation(self, points: PointSet, asked: int) -> None:
        allowed = self.policy.max_measurements_per_evaluation * points.size
        if asked > allowed:
            raise ProtocolError(
                f"one evaluation would reveal {asked} linear measurements of the fixed image, "
                f"and this fixed party allows {int(allowed)} per evaluation at level "
                f"{self.level_index} ({self.policy.max_measurements_per_evaluation:g} of its "
                f"{points.size} points; its operator sets it: ppir serve "
                "--max-measurements-per-evaluation)"
            )

    def _charge(self, count: int) -> None:
        """Count ``count`` measurements the answer about to be sent reveals (committed to the
        ledger first), or refuse the answer if they pass a cap: per evaluation (a backend
        may reveal more than the map's sums: paper-v2), the client's grant, the level's."""
        assert self.points is not None, "an evaluation has its points"
        self._check_per_evaluation(self.points, count)
        if self.ledger is not None:
            assert self.image_id is not None, (
                "a session with a ledger knows its image's fingerprint"
            )
            charge = self.ledger.charge(
                self.client,
                self.image_id,
                count,
                self.measurement_cap,
                (self.level_name, self.level_cap),
            )
            if charge.refused_by == "grant":
                raise ProtocolError(self._grant_used_up(count, self.measurement_cap - charge.used))
            if charge.refused_by == "level":
                raise ProtocolError(self._level_used_up(count, self.level_cap - charge.level_used))
        elif self.level_measurements + count > self.level_cap:
            raise ProtocolError(
                self._level_used_up(count, self.level_cap - self.level_measurements)
            )
        self.measurements += count
        self.level_measurements += count

    def _level_used_up(self, asked: int, left: float) -> str:
        return (
            f"one evaluation would reveal {asked} linear measurements of the fixed image, "
            f"and {max(0, int(left))} of the {int(self.level_cap)} this fixed party grants "
            f"this client of level {self.level_index}'s {self.level_name} grid (all its "
            "sessions together) are left (its operator grants more: ppir serve "
            "--max-measurements-per-level)"
        )

    def _grant_used_up(self, asked: int, left: float) -> str:
        return (
            f"one evaluation would reveal {asked} linear measurements of the fixed image, "
            f"and {max(0, int(left))} of the {int(self.measurement_cap)} this fixed party "
            "grants this client (all its sessions together) are left (its operator grants "
            "more: ppir serve --grant-measurements)"
        )

    def _on_close(self, _: pb.Close) -> pb.Envelope:
        assert self.backend_side is not None, _AFTER_HELLO
        self.closed = True
        learned = self.received.lines() + self.backend_side.learned()
        dealer = self.backend_side.close()
        return pb.Envelope(
            closed=pb.Closed(
                stats=pb.PartyStats(seconds=self.seconds),
                levels=[pb.PartyStats(seconds=s) for s in self.level_seconds],
                learned=learned,
                masked=self.backend_side.received.lines(masked=True),
                dealer=dealer,
                measurements=self.measurements,
                measurements_held=self.measurements_held,
                measurement_cap=self.measurement_cap,
                joint_term_noise=self.policy.joint_term_noise,
            )
        )


def _fixed_initial(hello: pb.Hello, dimension: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Hello's fixed initial transform ``(A, b)``, checked; None without one."""
    values = np.asarray(hello.fixed_initial_transform, dtype=np.float64)
    if values.size == 0:
        return None
    if values.size != dimension * (dimension + 1) or not np.all(np.isfinite(values)):
        raise ProtocolError("the fixed initial transform is not a finite affine map of this image")
    matrix = values[: dimension * dimension].reshape(dimension, dimension)
    if abs(np.linalg.det(matrix)) < 1e-12:
        raise ProtocolError("the fixed initial transform is singular")
    return matrix, values[dimension * dimension :]


class FixedPartyServer(PartyServer):
    """``ppir serve``: the fixed party's server (see :class:`PartyServer`).

    ``fixed`` (and ``fixed_mask``, :class:`FixedPartySession`'s) is loaded once and used by
    every session; ``policy`` says which
    backends are offered, the evaluation budget, the measurement limits and the
    level limit; ``ledger`` counts each client's measurements across sessions
    (in memory unless given: ``ppir serve`` always gives a file).
    """

    service = FIXED_PARTY_SERVICE
    role = "fixed party"
    client_names = (MOVING_PARTY,)

    def __init__(
        self,
        fixed: Any,
        listen: str,
        tls: TLS,
        *,
        policy: FixedPolicy | None = None,
        ledger: Ledger | None = None,
        fixed_mask: Any = None,
        **options: Any,
    ) -> None:
        self.image = as_image_grid(fixed, name="fixed image")
        self.fixed_mask = (
            None
            if fixed_mask is None
            else as_mask(fixed_mask, name="fixed mask", dimension=self.image.dimension)
        )
        self.image_id = image_fingerprint(self.image)
        self.policy = policy or FixedPolicy()
        self.ledger = ledger or Ledger(IN_MEMORY)
        if "spdz" in self.policy.backends:
            # CrypTen's import (seconds) at start-up, not in the first session's time.
            importlib.import_module("ppir_itk.backends.spdz_shares")
        super().__init__(listen, tls, **options)

    def start(self, ready_timeout: float | None = READY_TIMEOUT) -> FixedPartyServer:
        # Before "listening on", which whoever waits for the server reads up to.
        recoverable = self.policy.recoverable(self.image.geometry.number_of_points)
        if recoverable is not None:
            self.log(recoverable, logging.WARNING)
        super().start(ready_timeout)
        return self

    def _new_session(self, client_name: str, client_fingerprint: str) -> FixedPartySession:
        return FixedPartySession(
            self.image,
            self.policy,
            ledger=self.ledger,
            client=client_fingerprint,
            image_id=self.image_id,
            fixed_mask=self.fixed_mask,
        )

    def _ended(self, session: FixedPartySession, clean: bool) -> None:
        if not clean:  # the moving party vanished or failed: release its dealer session too
            session.abandon()

    def _describe(self, session: FixedPartySession) -> str:
        if session.hello is None or session.backend_side is None:
            return f"no backend agreed, {measurement_use(session)}"
        name = session.hello.backend
        protocol = check_protocol(name, session.hello.backend_parameters.get("protocol"))
        backend = name if protocol == name else f"{name} ({protocol})"
        return (
            f"backend {backend}, {session.backend_side.evaluations} evaluations, "
            f"{measurement_use(session)}"
        )


def measurement_use(session: FixedPartySession) -> str:
    """How much of its grant the session's client holds, for the server's log."""
    held, cap = session.measurements_held, session.measurement_cap
    if math.isinf(cap):
        return (
            f"{session.measurements} linear measurements of the fixed image this session, "
            f"{held} in all (no cap)"
        )
    return (
        f"{session.measurements} linear measurements of the fixed image this session, "
        f"{held} of its {int(cap)} in all ({held / cap if cap else 0.0:.1%} of its cap)"
    )
