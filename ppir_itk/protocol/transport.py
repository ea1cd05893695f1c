"""gRPC with mutual TLS: the fixed party's server and the moving party's client.

One RPC, ``/ppir.v4.FixedParty/Session``, a bidirectional stream of
``Frame`` messages per registration session. gRPC's message limit
(``MAX_GRPC_MESSAGE``) is enforced by gRPC before a frame is parsed; whole
envelopes are limited by the :class:`~ppir_itk.protocol.messages.Reassembler`.
Two servers share :class:`PartyServer`: the fixed party's
(:class:`FixedPartyServer`, ``ppir serve``) and the dealer's
(:class:`DealerServer`, ``ppir dealer``). Each runs every session on its own
thread and survives any one of them failing; it serves ``max_sessions`` at
a time and refuses more with a sentence.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, ClassVar

import grpc

from ppir_itk.errors import InputError
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import DEFAULT_DEADLINE, Channel, Counters, PeerError
from ppir_itk.protocol.endpoint import Endpoint
from ppir_itk.protocol.messages import (
    DEALER_SERVICE,
    DEFAULT_MAX_MESSAGE_BYTES,
    FIXED_PARTY_SERVICE,
    MAX_GRPC_MESSAGE,
)
from ppir_itk.protocol.relay import Relay, WireCounters, abstract_name
from ppir_itk.protocol.tls import TLS
from ppir_itk.roles import DEALER, FIXED_PARTY

DEFAULT_SESSION_LIMIT = 4 * 3600.0  # seconds: far past any registration ppir runs
READY_TIMEOUT = 10.0  # seconds a starting server may take to complete a handshake with itself
DEFAULT_HANDSHAKE_TIMEOUT = 5.0  # seconds a new connection has to send its ClientHello
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
]


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) as a (host, port) pair."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InputError(f"address '{address}' is not HOST:PORT")
    return host.strip("[]"), int(port)


class ClientConnection:
    """The moving party's live connection: relay, gRPC channel and the stream call."""

    def __init__(self, relay: Relay, grpc_channel: grpc.Channel, call: Any) -> None:
        self._relay = relay
        self._grpc_channel = grpc_channel
        self._call = call

    def relay_counters(self) -> WireCounters:
        return self._relay.total()

    def connect_error(self) -> str | None:
        return self._relay.upstream_error

    def close(self) -> None:
        self._call.cancel()
        self._grpc_channel.close()
        self._relay.close()


# The role a server's certificate must name, by the service called: never the host name
# dialled, so that no address, alias or override makes another role's certificate pass.
SERVER_ROLES = {FIXED_PARTY_SERVICE: FIXED_PARTY, DEALER_SERVICE: DEALER}


def open_client(
    target: str, tls: TLS, channel: Channel, service: str = FIXED_PARTY_SERVICE
) -> ClientConnection:
    """Connect to the party serving ``service`` at ``target`` and start the session stream.

    gRPC checks the server's certificate against ``SERVER_ROLES[service]``: a DNS
    name of its subject alternative names (its common name only if it has none).
    """
    # On an abstract Unix socket that serves this process only: no other local process rides
    # on the connection (its bytes would count as ours).
    relay = Relay(
        abstract_name("client"),
        parse_address(target),
        outbound=True,
        own_process_only=True,
        max_waiting=4,
        max_forwarded=4,
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.certificate
    )
    grpc_channel = grpc.secure_channel(
        f"unix-abstract:{relay.address}",
        credentials,
        options=[*_OPTIONS, ("grpc.ssl_target_name_override", SERVER_ROLES[service])],
    )
    stream = grpc_channel.stream_stream(
        f"/{service}/Session",
        request_serializer=None,  # the channel's frames are serialised already
        response_deserializer=pb.Frame.FromString,
    )
    call = stream(channel.outgoing(), wait_for_ready=False)
    channel.read_from(call)
    return ClientConnection(relay, grpc_channel, call)


class PartyServer(abc.ABC):
    """A serving party (fixed party or dealer): gRPC with mutual TLS, one thread per session.

    Parameters
    ----------
    listen : str
        ``HOST:PORT`` to listen on (port 0 picks a free one: see ``address``).
    tls : TLS
        This party's certificate and key, and the CA its clients must come from.
    max_sessions : int
        Sessions served at the same time; one more is refused with a sentence.
    deadline : float
        Seconds a session may wait for its client's next message.
    session_limit : float
        Seconds a session may last in all: a client that stays alive (heartbeats) but
        never finishes cannot hold a session slot for ever.
    max_envelope : int
        Largest message accepted from a client, in bytes (``--max-message-bytes``): a
        larger one is refused when its first frame declares it, before anything is kept.
    handshake_timeout : float
        Seconds a new connection has to send its TLS ClientHello (and, twice that, to
        finish gRPC's handshake) before it is closed.
    log : callable, optional
        Where the server's lines go instead of its logger (``logging.getLogger`` of the
        server's module: ``ppir_itk.fixed_party``, ``ppir_itk.dealer``), e.g. a list's
        ``append`` in a test. The lines: ``listening on HOST:PORT``; per session one
        when it opens (the client's certificate name and fingerprint) and one when it
        ends (``closed``, ``aborted`` or ``failed``, the client, :meth:`_describe`'s
        figures, the bytes sent and received, the duration, and why it was aborted or
        failed).

    The public port is a :class:`Relay` (TLS 1.3 ClientHellos only, bounded waiting and
    forwarded connections); gRPC listens behind it on an abstract Unix socket, which leaves
    no file behind however the process ends. Any local process can reach that socket, but
    it demands the same mutual TLS and bounds its handshakes.
    """

    service: ClassVar[str]
    role: ClassVar[str]
    client_names: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        listen: str,
        tls: TLS,
        *,
        max_sessions: int = 1,
        deadline: float = DEFAULT_DEADLINE,
        session_limit: float = DEFAULT_SESSION_LIMIT,
        max_envelope: int = DEFAULT_MAX_MESSAGE_BYTES,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.deadline = deadline
        self.session_limit = session_limit
        self.max_envelope = max_envelope
        self._lines = log
        self._logger = logging.getLogger(type(self).__module__)
        self._slots = threading.BoundedSemaphore(max_sessions)
        self.max_sessions = max_sessions
        self.sessions_started = 0
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_sessions + 4),
            options=[
                *_OPTIONS,
                ("grpc.server_handshake_timeout_ms", int(2000 * handshake_timeout)),
            ],
        )
        handler = grpc.stream_stream_rpc_method_handler(
            self._session,
            request_deserializer=pb.Frame.FromString,
            response_serializer=None,  # the channel's frames are serialised already
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(self.service, {"Session": handler}),)
        )
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.certificate)], root_certificates=tls.ca, require_client_auth=True
        )
        self._internal = abstract_name(f"{self.role.replace(' ', '-')}-grpc")
        self._server.add_secure_port(f"unix-abstract:{self._internal}", credentials)
        self._listen = parse_address(listen)
        self.handshake_timeout = handshake_timeout
        self._tls = tls
        self._relay: Relay | None = None
        self.address = ""  # HOST:PORT once started

    @abc.abstractmethod
    def _new_session(self, client_name: str, client_fingerprint: str) -> Any:
        """The object that answers one client's envelopes (``handle``); the fingerprint
        (SHA-256 of the client's certificate) tells apart clients that share a name."""

    def _ended(self, session: Any, clean: bool) -> None:  # noqa: B027 - nothing to release
        """A session ended (``clean``: with Close)."""

    def _describe(self, session: Any) -> str:
        """What the session did, for its last line (e.g. backend and evaluations)."""
        return ""

    def log(self, line: str, level: int = logging.INFO) -> None:
        """One line of the server's log (to ``log`` if given, else to the logger)."""
        if self._lines is not None:
            self._lines(line)
        else:
            self._logger.log(level, line)

    def start(self, ready_timeout: float | None = READY_TIMEOUT) -> PartyServer:
        """Serve; return once a TLS handshake through the public port has completed.

        The public port is bound last, after the gRPC server runs, so that a client never
        meets a port that accepts but cannot answer yet (it retries a refused connection:
        :func:`wait_until_accepting`); "listening on" is logged only after this server has
        completed a handshake with itself through that port, as a client would, within
        ``ready_timeout`` seconds (None: no handshake, for tests that serve a certificate
        its clients must refuse).
        """
        self._server.start()
        self._relay = Relay(
            self._listen,
            self._internal,
            outbound=False,
            handshake_timeout=self.handshake_timeout,
            # Room for every session and as many connections again being refused or retried.
            max_forwarded=4 * self.max_sessions + 28,
            tls_1_3_only=True,
        )
        self.address = f"{self._relay.address[0]}:{self._relay.address[1]}"
        try:
            if ready_timeout is not None:
                _complete_handshake(self.address, self._tls, ready_timeout)
        except grpc.FutureTimeoutError:
            self.stop(grace=None)
            raise InputError(
                f"the {self.role} could not complete a TLS handshake with itself on "
                f"{self.address} within {ready_timeout:g} s: is its certificate valid now "
                "and signed by the CA it trusts (--ca)?"
            ) from None
        self.log(f"listening on {self.address}")
        return self

    def wait(self) -> None:
        self._server.wait_for_termination()

    def stop(self, grace: float | None = 1.0) -> None:
        if self._relay is not None:
            self._relay.close()
        self._server.stop(grace).wait()

    def _session(self, frames: Any, context: grpc.ServicerContext) -> Any:
        client = _peer_name(context)
        if client not in self.client_names:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate name '{client}' is not one of {self.client_names}",
            )
        if not self._slots.acquire(blocking=False):
            self.log(f"refused a session from {client}: busy", logging.WARNING)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the {self.role} is busy: it serves {self.max_sessions} session(s) at a time",
            )
        try:  # the slot is given back by the session's thread, or here if it never starts
            self.sessions_started += 1
            number = self.sessions_started
            channel = Channel(
                f"{client} (session {number})",
                self.deadline,
                self.max_envelope,
                limit_option=f"the {self.role}'s --max-message-bytes",
            )
            wire = self._wire_counters(context)
            channel.read_from(frames)
            fingerprint = _peer_fingerprint(context)
            identity = f"{client} (sha256:{fingerprint[:16]})"
            endpoint = Endpoint(
                self._new_session(client, fingerprint),
                lambda: channel.counters.with_wire(wire),
            )
            session = threading.Thread(
                target=self._serve_session,
                args=(number, identity, channel, endpoint),
                name=f"ppir-session-{number}",
                daemon=True,
            )
            # Before the thread starts: its own last line must come after this one.
            self.log(f"session {number} opened by {identity}")
            session.start()
        except BaseException:
            if "channel" in locals():  # its heartbeat thread would otherwise linger
                channel.close()
            self._slots.release()
            raise
        return channel.outgoing()

    def _serve_session(
        self, number: int, identity: str, channel: Channel, endpoint: Endpoint
    ) -> None:
        start = time.monotonic()
        clean = False
        outcome, reason, level = "failed", "", logging.ERROR
        limit = threading.Timer(
            self.session_limit,
            channel.fail,
            args=(f"the session passed the {self.role}'s limit of {self.session_limit:g} s",),
        )
        limit.daemon = True
        limit.start()
        try:
            while True:
                reply = endpoint.answer(channel.receive())
                channel.send(reply)
                if reply.WhichOneof("body") == "abort":
                    outcome, reason, level = "aborted", reply.abort.reason, logging.WARNING
                    return
                if reply.WhichOneof("body") == "closed":
                    clean = True
                    outcome, level = "closed", logging.INFO
                    return
        except PeerError as error:
            outcome, reason, level = "aborted", str(error), logging.WARNING
            _tell(channel, str(error))
        except Exception as error:  # a bug must not take the server down; say so
            reason = f"{type(error).__name__}: {error}"
            _tell(channel, f"the {self.role} failed")
        finally:
            limit.cancel()
            counters = endpoint.counters()
            channel.close()
            try:
                self._ended(endpoint.session, clean)
                figures = ", ".join(
                    part
                    for part in (
                        identity,
                        self._describe(endpoint.session),
                        _traffic(counters),
                        f"{time.monotonic() - start:.1f} s",
                    )
                    if part
                )
                self.log(
                    f"session {number} {outcome}: {figures}" + (f"; {reason}" if reason else ""),
                    level,
                )
            finally:
                self._slots.release()

    def _wire_counters(self, context: grpc.ServicerContext) -> WireCounters:
        # The gRPC peer is our relay's upstream socket: its abstract name finds the connection.
        # A call that gRPC already ended (a refused first frame) names no peer.
        scheme, _, name = context.peer().partition(":")
        if scheme != "unix-abstract" or self._relay is None:
            return WireCounters()
        return self._relay.counters_for(name) or WireCounters()


def _complete_handshake(address: str, tls: TLS, timeout: float) -> None:
    """A gRPC channel to ``address`` with ``tls``'s own certificate reaches READY (TCP,
    TLS and HTTP/2 set up), or ``grpc.FutureTimeoutError`` after ``timeout`` seconds."""
    host, port = parse_address(address)
    if host in ("0.0.0.0", "::", ""):  # a wildcard address: reach it on loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.certificate
    )
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name_override = ("grpc.ssl_target_name_override", tls.names()[0])
    with grpc.secure_channel(target, credentials, options=[name_override]) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)


def wait_until_accepting(address: str, deadline: float, peer: str) -> None:
    """Return once ``address`` accepts TCP connections, retrying a refused or reset one
    for up to ``deadline`` seconds: a party started at the same moment as its client may
    not listen yet. Any other failure (no such host, unreachable) is a ``PeerError`` now."""
    end = time.monotonic() + deadline
    while True:
        try:
            socket.create_connection(parse_address(address), timeout=deadline).close()
            return
        except (ConnectionRefusedError, ConnectionResetError) as error:
            if time.monotonic() >= end:
                raise PeerError(f"cannot reach the {peer}: {error.strerror}") from None
            time.sleep(0.1)
        except OSError as error:
            raise PeerError(f"cannot reach the {peer}: {error.strerror or error}") from None


def _traffic(counters: Counters) -> str:
    """The bytes a session sent and received: on the wire (through the relay) when counted
    there, the payload otherwise."""
    on_wire = counters.wire_bytes_sent or counters.wire_bytes_received
    sent = counters.wire_bytes_sent if on_wire else counters.payload_bytes_sent
    received = counters.wire_bytes_received if on_wire else counters.payload_bytes_received
    return f"sent {sent / 1e6:.2f} MB, received {received / 1e6:.2f} MB"


def _tell(channel: Channel, reason: str) -> None:
    """Best effort: tell the moving party why its session ends."""
    try:
        channel.send(pb.Envelope(abort=pb.Abort(reason=reason)))
    except PeerError:
        pass


def certificate_fingerprint(pem: bytes) -> str:
    """SHA-256 (hex) of a PEM certificate's DER bytes, as ``openssl x509 -fingerprint -sha256``
    gives it without colons: a client's identity, unlike its name."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.decode())).hexdigest()


def _peer_fingerprint(context: grpc.ServicerContext) -> str:
    # gRPC has checked the certificate against the CA before the call reaches us.
    return certificate_fingerprint(context.auth_context()["x509_pem_cert"][0])


def _peer_name(context: grpc.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name") or [b""]
    return names[0].decode(errors="replace")
