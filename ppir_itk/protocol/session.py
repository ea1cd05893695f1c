"""Sessions: how the moving party talks to the fixed party.

A :class:`Session` carries envelopes to the fixed party and back, strictly
request then answer, and counts what crossed. Two transports, one protocol:

- :class:`LocalSession`: the fixed party's :class:`Endpoint` in this
  process (tests, and ``transport="in-process"``). The same envelopes are
  built and counted; nothing touches a socket.
- :class:`RemoteSession`: gRPC over mutual TLS to ``ppir serve``
  (:func:`connect`). On-the-wire bytes are counted by a relay on the
  connection (:mod:`ppir_itk.protocol.relay`).

Both wrap the serving party's answers in the same
:class:`~ppir_itk.protocol.endpoint.Endpoint`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from typing import Any

from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import DEFAULT_DEADLINE, Channel, Counters, PeerError
from ppir_itk.protocol.endpoint import Endpoint, Serving
from ppir_itk.protocol.messages import DEFAULT_MAX_ENVELOPE, FIXED_PARTY_SERVICE, Outgoing, body
from ppir_itk.protocol.tls import TLS
from ppir_itk.protocol.transport import open_client, wait_until_accepting


class Session(abc.ABC):
    """The moving party's end of a session with one fixed party.

    ``dealer``, when set, opens this party's session with the SPDZ dealer
    (token -> :class:`~ppir_itk.dealer.DealerClient`).
    """

    peer: str = "fixed party"
    single_process = False

    def __init__(self) -> None:
        self.dealer: Callable[[bytes], Any] | None = None
        # SPDZ's trusted-first-party mode (single-process tests only): the moving party draws
        # every mask and triple and hands the in-process fixed party its shares; set by
        # ppir_itk.compose.in_process_session. Returns the moving party's dealer sessions.
        self.deal_as_first_party: Callable[[], Callable[[bytes], Any]] | None = None
        self.welcome: pb.Welcome | None = None
        self.closed: pb.Closed | None = None
        self.seconds_waiting = 0.0
        self._pending = False

    def start(self, hello: pb.Hello) -> pb.Welcome:
        self.welcome = self.request(pb.Envelope(hello=hello), "welcome").welcome
        return self.welcome

    def request(self, envelope: Outgoing, expected: str) -> pb.Envelope:
        """Send one request (an envelope, or a backend message as its envelope) and wait for
        its answer (which must hold ``expected``)."""
        return self.post(envelope)(expected)

    def post(self, envelope: Outgoing) -> Callable[[str], pb.Envelope]:
        """Send one request now; the returned call waits for its answer.

        Lets the moving party do its own work while the fixed party works
        (e.g. both smooth their level images at once). One request at a time.
        """
        if self._pending:
            raise RuntimeError("a request is already waiting for its answer")
        self._pending = True
        if self.single_process and isinstance(envelope, pb.BackendMessage):
            envelope = pb.Envelope(backend=envelope)  # no wire: the endpoint takes envelopes
        self._send(envelope)

        def answer(expected: str) -> pb.Envelope:
            start = time.perf_counter()
            try:
                return self._receive(expected)
            finally:
                self._pending = False
                self.seconds_waiting += time.perf_counter() - start

        return answer

    def close(self) -> pb.Closed:
        if self.closed is None:
            try:
                self.closed = self.request(pb.Envelope(close=pb.Close()), "closed").closed
            finally:  # a peer that already ended the session leaves no channel open here
                self._shutdown()
        return self.closed

    def abort(self, reason: str) -> None:
        """End the session early, telling the fixed party why (best effort)."""
        self._shutdown(reason)

    def check(self) -> None:  # noqa: B027 - an in-process fixed party cannot vanish
        """Raise :class:`PeerError` now if the fixed party is already gone."""

    @abc.abstractmethod
    def counters(self) -> Counters:
        """The moving party's traffic so far."""

    @abc.abstractmethod
    def _send(self, envelope: Outgoing) -> None: ...

    @abc.abstractmethod
    def _receive(self, expected: str) -> pb.Envelope: ...

    def _shutdown(self, reason: str | None = None) -> None:  # noqa: B027 - nothing to free in-process
        """Release the transport."""


class LocalSession(Session):
    """The serving party in this process (a fixed party, or a dealer): same envelopes, no socket."""

    single_process = True

    def __init__(self, serving: Serving, peer: str = "fixed party (in-process)") -> None:
        super().__init__()
        self.peer = peer
        self.serving = serving
        self._counters = Counters()
        self._endpoint = Endpoint(serving, self._fixed_counters)
        self._reply: pb.Envelope | None = None

    def _fixed_counters(self) -> Counters:
        mine = self._counters
        return Counters(
            mine.payload_bytes_received,
            mine.payload_bytes_sent,
            0,
            0,
            mine.messages_received,
            mine.messages_sent,
        )

    def counters(self) -> Counters:
        return Counters(**self._counters.as_dict())

    def _send(self, envelope: pb.Envelope) -> None:
        self._counters.payload_bytes_sent += envelope.ByteSize()
        self._counters.messages_sent += 1
        self._reply = self._endpoint.answer(envelope)
        self._counters.payload_bytes_received += self._reply.ByteSize()
        self._counters.messages_received += 1

    def _receive(self, expected: str) -> pb.Envelope:
        reply, self._reply = self._reply, None
        assert reply is not None, "post() sends one request, whose answer is received once"
        kind = body(reply)
        if kind == "abort":
            raise PeerError(f"the {self.peer} ended the session: {reply.abort.reason}")
        if kind != expected:
            raise PeerError(f"the {self.peer} sent '{kind}' where '{expected}' was due")
        return reply


class RemoteSession(Session):
    """gRPC over mutual TLS to a fixed party's ``ppir serve`` (or, with
    ``service=DEALER_SERVICE``, to a dealer), whose certificate must name that
    role (``transport.SERVER_ROLES``) whatever host ``target`` names."""

    def __init__(
        self,
        target: str,
        tls: TLS,
        *,
        deadline: float = DEFAULT_DEADLINE,
        max_envelope: int = DEFAULT_MAX_ENVELOPE,
        service: str = FIXED_PARTY_SERVICE,
        role: str = "fixed party",
    ) -> None:
        super().__init__()
        self.peer = f"{role} at {target}"
        wait_until_accepting(target, deadline, self.peer)
        self._channel = Channel(self.peer, deadline, max_envelope)
        self._connection = open_client(target, tls, self._channel, service)

    def counters(self) -> Counters:
        return self._channel.counters.with_wire(self._connection.relay_counters())

    def check(self) -> None:
        try:
            self._channel.raise_if_failed()
        except PeerError as error:
            raise self._explained(error) from None

    def _send(self, envelope: Outgoing) -> None:
        try:
            self._channel.send(envelope)
        except PeerError as error:
            raise self._explained(error) from None

    def _receive(self, expected: str) -> pb.Envelope:
        try:
            return self._channel.receive(expected)
        except PeerError as error:
            raise self._explained(error) from None

    def _explained(self, error: PeerError) -> PeerError:
        refused = self._connection.connect_error()
        if refused:
            return PeerError(f"cannot reach the {self.peer}: {refused}")
        return error

    def _shutdown(self, reason: str | None = None) -> None:
        if reason is not None:
            try:
                self._channel.send(pb.Envelope(abort=pb.Abort(reason=reason)))
            except PeerError:
                pass
        self._channel.close()
        self._connection.close()
