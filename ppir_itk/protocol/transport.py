"""gRPC with mutual TLS: the fixed party's server and the moving party's client.

One RPC, ``/ppir.v1.FixedParty/Session``, a bidirectional stream of
``Frame`` messages per registration session. gRPC's message limit
(``MAX_GRPC_MESSAGE``) is enforced by gRPC before a frame is parsed; whole
envelopes are limited by the :class:`~ppir_itk.protocol.messages.Reassembler`.
The server runs each session on its own thread and survives any one of them
failing; it serves ``max_sessions`` at a time and refuses more with a
sentence.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from ppir_itk.fixed_party import FixedPartySession, FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import Channel, PeerError
from ppir_itk.protocol.messages import DEFAULT_MAX_ENVELOPE, MAX_GRPC_MESSAGE
from ppir_itk.protocol.relay import Relay, WireCounters
from ppir_itk.protocol.session import Counters, FixedEndpoint
from ppir_itk.protocol.tls import TLS

METHOD = "/ppir.v1.FixedParty/Session"
CLIENT_NAME = "moving-party"
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
]


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) as a (host, port) pair."""
    from ppir_itk.errors import InputError

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
        return next((c.error for c in self._relay.connections if c.error), None)

    def close(self) -> None:
        self._call.cancel()
        self._grpc_channel.close()
        self._relay.close()


def open_client(target: str, tls: TLS, server_name: str, channel: Channel) -> ClientConnection:
    """Connect to the fixed party at ``target`` and start the session stream."""
    relay = Relay(("127.0.0.1", 0), parse_address(target), outbound=True)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                               certificate_chain=tls.certificate)
    grpc_channel = grpc.secure_channel(
        f"127.0.0.1:{relay.address[1]}", credentials,
        options=[*_OPTIONS, ("grpc.ssl_target_name_override", server_name)],
    )
    stream = grpc_channel.stream_stream(METHOD, request_serializer=pb.Frame.SerializeToString,
                                        response_deserializer=pb.Frame.FromString)
    call = stream(channel.outgoing(), wait_for_ready=False)
    channel.read_from(call)
    return ClientConnection(relay, grpc_channel, call)


class FixedPartyServer:
    """``ppir serve``: the fixed party's gRPC server with mutual TLS.

    Parameters
    ----------
    fixed : image-like
        The fixed image, loaded once and used by every session.
    listen : str
        ``HOST:PORT`` to listen on (port 0 picks a free one: see ``address``).
    tls : TLS
        The fixed party's certificate and key, and the CA its clients must come from.
    policy : FixedPolicy
        Backends offered, evaluation budget, level limit.
    max_sessions : int
        Sessions served at the same time; one more is refused with a sentence.
    deadline : float
        Seconds a session may wait for the moving party's next message.
    log : callable
        Where one line per session event goes (stderr by default).
    """

    def __init__(self, fixed: Any, listen: str, tls: TLS, *, policy: FixedPolicy | None = None,
                 max_sessions: int = 1, deadline: float = 60.0,
                 max_envelope: int = DEFAULT_MAX_ENVELOPE,
                 log: Callable[[str], None] | None = None) -> None:
        from ppir_itk.wrapping.images import as_image_grid

        self.image = as_image_grid(fixed, name="fixed image")
        self.policy = policy or FixedPolicy()
        self.deadline = deadline
        self.max_envelope = max_envelope
        self.log = log or (lambda line: print(f"ppir serve: {line}", file=sys.stderr, flush=True))
        self._slots = threading.BoundedSemaphore(max_sessions)
        self.max_sessions = max_sessions
        self.sessions_started = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_sessions + 4),
                                   options=_OPTIONS)
        handler = grpc.stream_stream_rpc_method_handler(
            self._session, request_deserializer=pb.Frame.FromString,
            response_serializer=pb.Frame.SerializeToString)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "ppir.v1.FixedParty", {"Session": handler}),))
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.certificate)], root_certificates=tls.ca, require_client_auth=True)
        internal_port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self._relay = Relay(parse_address(listen), ("127.0.0.1", internal_port), outbound=False)
        self.address = f"{self._relay.address[0]}:{self._relay.address[1]}"

    def start(self) -> FixedPartyServer:
        self._server.start()
        return self

    def wait(self) -> None:
        self._server.wait_for_termination()

    def stop(self, grace: float | None = 1.0) -> None:
        self._relay.close()
        self._server.stop(grace).wait()

    def _session(self, frames: Any, context: grpc.ServicerContext) -> Any:
        peer = _peer_name(context)
        if peer != CLIENT_NAME:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"certificate name '{peer}' is not '{CLIENT_NAME}'")
        if not self._slots.acquire(blocking=False):
            self.log(f"refused a session from {context.peer()}: busy")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"the fixed party is busy: it serves {self.max_sessions} session(s) "
                          "at a time")
        self.sessions_started += 1
        number = self.sessions_started
        channel = Channel(f"moving party (session {number})", self.deadline, self.max_envelope)
        channel.read_from(frames)
        wire = self._wire_counters(context)
        endpoint = FixedEndpoint(
            FixedPartySession(self.image, self.policy),
            lambda: Counters(channel.counters.bytes_sent, channel.counters.bytes_received,
                             wire.sent, wire.received, channel.counters.messages_sent,
                             channel.counters.messages_received),
        )
        threading.Thread(target=self._serve_session, args=(number, channel, endpoint),
                         name=f"ppir-session-{number}", daemon=True).start()
        self.log(f"session {number} opened")
        return channel.outgoing()

    def _serve_session(self, number: int, channel: Channel, endpoint: FixedEndpoint) -> None:
        try:
            while True:
                reply = endpoint.answer(channel.receive())
                channel.send(reply)
                if reply.WhichOneof("body") == "abort":
                    self.log(f"session {number} aborted: {reply.abort.reason}")
                    return
                if reply.WhichOneof("body") == "closed":
                    self.log(f"session {number} closed after "
                             f"{endpoint.session.backend_side.evaluations} evaluations")
                    return
        except PeerError as error:
            self.log(f"session {number} ended: {error}")
            _tell(channel, str(error))
        except Exception as error:  # a bug must not take the server down; say so
            self.log(f"session {number} failed: {type(error).__name__}: {error}")
            _tell(channel, "the fixed party failed")
        finally:
            channel.close()
            self._slots.release()

    def _wire_counters(self, context: grpc.ServicerContext) -> WireCounters:
        # The gRPC peer is our relay's upstream socket: its port finds the connection.
        port = int(context.peer().rsplit(":", 1)[1])
        return self._relay.counters_for(port) or WireCounters()


def _tell(channel: Channel, reason: str) -> None:
    """Best effort: tell the moving party why its session ends."""
    try:
        channel.send(pb.Envelope(abort=pb.Abort(reason=reason)))
    except PeerError:
        pass


def _peer_name(context: grpc.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name") or [b""]
    return names[0].decode(errors="replace")


def serve(fixed: Any, listen: str, tls: TLS, *, backends: tuple[str, ...] | list[str] = ("clear",),
          evaluation_budget: int = 5000, max_sessions: int = 1, deadline: float = 60.0) -> None:
    """Serve the fixed image until interrupted (``ppir serve``)."""
    server = FixedPartyServer(fixed, listen, tls, max_sessions=max_sessions, deadline=deadline,
                              policy=FixedPolicy(backends=tuple(backends),
                                                 evaluation_budget=evaluation_budget)).start()
    server.log(f"listening on {server.address}")
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
