"""A byte-counting relay: what each party sent and received on the wire.

gRPC does not expose its sockets, so each party puts a relay on its side of
the connection: the moving party's gRPC client talks to a relay on an
abstract Unix socket that forwards to the fixed party; the fixed party's (and
the dealer's) relay listens on the public address and forwards to its gRPC
server on an abstract Unix socket. TLS runs end to end through the relays
(they only copy bytes), and their counts are the payload bytes the operating
system carried for the session.

A relay is bounded so that no load of strangers takes it down: one selector
thread serves every connection (non-blocking sockets, no thread per
connection); a connection that has not sent its first bytes (the TLS
ClientHello) within ``handshake_timeout`` is closed; at most ``max_waiting``
connections wait for their first bytes (a newcomer evicts the oldest) and at
most ``max_forwarded`` are forwarded (more are refused); the upstream is
connected only once the client has spoken, and a serving relay forwards only a
ClientHello that offers TLS 1.3. Every socket is closed and forgotten when its
connection ends, and running out of descriptors only pauses accepting.
"""

from __future__ import annotations

import errno
import os
import secrets
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

# A TCP (host, port), or the name of an abstract Unix socket (Linux): no file, gone with its
# process.
Address = tuple[str, int] | str

_BUFFER = 1 << 16
_HANDSHAKE_RECORD = 22  # TLS ContentType handshake
_CLIENT_HELLO = 1
_SUPPORTED_VERSIONS = 43  # the extension that offers TLS 1.3
_TLS_1_3 = 0x0304
_MAX_RECORD = 1 << 14  # TLS plaintext record limit: a ClientHello fits in one
_ACCEPTS_PER_WAKE = 64  # so that waiting clients are read between bursts of newcomers
_ACCEPT_PAUSE = 0.1  # seconds without accepting after the process ran out of descriptors
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def abstract_name(kind: str) -> str:
    """A fresh abstract Unix socket name for this process (``kind`` says what it is for)."""
    return f"ppir-{kind}-{os.getpid()}-{secrets.token_hex(8)}"


def offers_tls_1_3(data: bytes) -> bool | None:
    """Whether ``data``, a connection's first bytes, is a TLS ClientHello offering TLS 1.3
    (``supported_versions`` lists 0x0304); None while the first record is incomplete."""
    if len(data) < 5:
        return None if _could_start_a_handshake(data) else False
    if data[0] != _HANDSHAKE_RECORD or data[1] != 3:
        return False
    (length,) = struct.unpack_from("!H", data, 3)
    if not 4 <= length <= _MAX_RECORD:
        return False
    if len(data) < 5 + length:
        return None
    return _hello_offers_tls_1_3(memoryview(data)[5 : 5 + length])


def _could_start_a_handshake(data: bytes) -> bool:
    return (not data or data[0] == _HANDSHAKE_RECORD) and (len(data) < 2 or data[1] == 3)


def _hello_offers_tls_1_3(record: memoryview) -> bool:
    # One handshake message, whole in this record (no TLS stack ppir meets splits a hello).
    if record[0] != _CLIENT_HELLO or int.from_bytes(record[1:4]) != len(record) - 4:
        return False
    hello = record[4:]
    position = 2 + 32  # legacy_version, random
    for length_bytes in (1, 2, 1):  # session id, cipher suites, compression methods
        if position + length_bytes > len(hello):
            return False
        position += length_bytes + int.from_bytes(hello[position : position + length_bytes])
    if position + 2 > len(hello):
        return False
    end = position + 2 + int.from_bytes(hello[position : position + 2])
    position += 2
    if end > len(hello):
        return False
    while position + 4 <= end:
        kind, length = struct.unpack_from("!HH", hello, position)
        body = hello[position + 4 : position + 4 + length]
        position += 4 + length
        if kind == _SUPPORTED_VERSIONS:
            if len(body) < 1 or body[0] + 1 > len(body):
                return False
            offered = body[1 : 1 + body[0]]
            return any(
                int.from_bytes(offered[i : i + 2]) == _TLS_1_3
                for i in range(0, len(offered) - 1, 2)
            )
    return False  # no supported_versions: TLS 1.2 at most


@dataclass
class WireCounters:
    sent: int = 0  # bytes from this party to its peer
    received: int = 0
    error: str | None = None


@dataclass(eq=False)
class _Waiting:
    """An accepted connection that has not sent its first bytes (all of its ClientHello)."""

    sock: socket.socket
    deadline: float
    data: bytearray = field(default_factory=bytearray)


@dataclass(eq=False)
class _Link:
    """A forwarded connection: the client's socket and ours to the target."""

    downstream: socket.socket
    upstream: socket.socket
    counters: WireCounters
    name: str | None  # the upstream socket's abstract name: how the server finds the counters
    deadline: float  # for the upstream connect, then (once ending) for the flush; else inf
    connected: bool = False
    to_upstream: bytes = b""
    to_downstream: bytes = b""
    ending: bool = False  # one side closed: flush what is left to the other, then close
    events: dict[socket.socket, int] = field(default_factory=dict)  # what each is watched for


class Relay:
    """Forward every connection accepted on ``listen`` to ``target``, counting bytes.

    ``outbound`` says which way "sent" points: True on the moving party (bytes
    from the local client to the remote target are *sent*), False on the fixed
    party (bytes from the remote client to the local server are *received*).
    ``tls_1_3_only`` forwards only connections whose ClientHello offers TLS 1.3;
    ``own_process_only`` (``listen`` an abstract Unix socket) serves only
    connections from this process. When ``target`` is an abstract Unix socket,
    each upstream socket is bound to a name of its own, which the server sees as
    its peer: :meth:`counters_for` takes it.
    """

    def __init__(
        self,
        listen: Address,
        target: Address,
        *,
        outbound: bool,
        connect_timeout: float = 10.0,
        handshake_timeout: float = 5.0,
        max_waiting: int = 256,
        max_forwarded: int = 64,
        tls_1_3_only: bool = False,
        own_process_only: bool = False,
    ) -> None:
        self.target = target
        self.outbound = outbound
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.max_waiting = max_waiting
        self.max_forwarded = max_forwarded
        self.tls_1_3_only = tls_1_3_only
        self.own_process_only = own_process_only
        self.upstream_error: str | None = None  # why the last upstream connect failed
        self._server = _listening_socket(listen)
        self.address: Address = (
            listen if isinstance(listen, str) else self._server.getsockname()[:2]
        )
        self._upstream_names = abstract_name("upstream") if isinstance(target, str) else None
        self._upstreams_opened = 0
        self._lock = threading.Lock()  # the tables below, read by other threads
        self._waiting: OrderedDict[socket.socket, _Waiting] = OrderedDict()
        self._links: set[_Link] = set()
        self._by_name: dict[str, WireCounters] = {}
        self._ended = WireCounters()  # the sums of the connections already closed
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._selector.register(self._server, selectors.EVENT_READ, self._server)
        self._accept_paused_until: float | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="ppir-relay", daemon=True)
        self._thread.start()

    # -- what other threads ask ------------------------------------------------------------------

    def counters_for(self, upstream_name: str) -> WireCounters | None:
        """The counters of the live connection whose upstream socket has this abstract name."""
        with self._lock:
            return self._by_name.get(upstream_name)

    def total(self) -> WireCounters:
        with self._lock:
            links = [link.counters for link in self._links]
            return WireCounters(
                self._ended.sent + sum(c.sent for c in links),
                self._ended.received + sum(c.received for c in links),
            )

    def connection_counts(self) -> tuple[int, int]:
        """(waiting for their first bytes, forwarded): what the bounds hold now."""
        with self._lock:
            return len(self._waiting), len(self._links)

    def close(self) -> None:
        """Stop accepting and close every connection (their sockets are closed on return)."""
        self._closing = True
        try:
            self._wake_writer.send(b"x")
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    # -- the selector thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing:
                for key, mask in self._selector.select(self._next_timeout()):
                    self._dispatch(key.data, mask)
                self._expire(time.monotonic())
        finally:
            self._close_everything()

    def _dispatch(self, target: object, mask: int) -> None:
        if target is None:
            try:
                self._wake_reader.recv(64)
            except BlockingIOError:
                pass
        elif target is self._server:
            self._accept()
        elif isinstance(target, _Waiting):
            if self._waiting.get(target.sock) is target:  # not evicted earlier this round
                self._read_first_bytes(target)
        elif isinstance(target, tuple):
            link, sock = target
            if link in self._links:  # an earlier event of this round may have closed it
                self._serve(link, sock, mask)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [now + 1.0]
        if self._waiting:
            deadlines.append(next(iter(self._waiting.values())).deadline)
        deadlines += [link.deadline for link in self._links]
        if self._accept_paused_until is not None:
            deadlines.append(self._accept_paused_until)
        return max(0.0, min(deadlines) - now)

    def _expire(self, now: float) -> None:
        while self._waiting:
            oldest = next(iter(self._waiting.values()))
            if oldest.deadline > now:
                break
            self._drop_waiting(oldest)
        for link in [link for link in self._links if link.deadline <= now]:
            if link.connected:  # it ended, and its peer has not taken the rest for so long
                self._close_link(link)
            else:
                self._fail_upstream(link, os.strerror(errno.ETIMEDOUT))
        if self._accept_paused_until is not None and self._accept_paused_until <= now:
            self._accept_paused_until = None
            self._selector.register(self._server, selectors.EVENT_READ, self._server)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:  # waiting ones time out and free some
                    self._pause_accepting()
                    return
                continue  # ECONNABORTED, EPROTO, ...: that client is gone, the next is not
            self._admit(sock)

    def _pause_accepting(self) -> None:
        self._selector.unregister(self._server)
        self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE

    def _admit(self, sock: socket.socket) -> None:
        try:
            if self.own_process_only and _peer_pid(sock) != os.getpid():
                raise ConnectionRefusedError
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:  # small messages must not wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # a stranger, or a client already gone
            sock.close()
            return
        if len(self._waiting) >= self.max_waiting:
            self._drop_waiting(next(iter(self._waiting.values())))
        waiting = _Waiting(sock, time.monotonic() + self.handshake_timeout)
        with self._lock:
            self._waiting[sock] = waiting
        self._selector.register(sock, selectors.EVENT_READ, waiting)

    def _drop_waiting(self, waiting: _Waiting) -> None:
        with self._lock:
            del self._waiting[waiting.sock]
        self._selector.unregister(waiting.sock)
        waiting.sock.close()

    def _read_first_bytes(self, waiting: _Waiting) -> None:
        try:
            data = waiting.sock.recv(5 + _MAX_RECORD - len(waiting.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_waiting(waiting)
            return
        waiting.data += data
        verdict = offers_tls_1_3(bytes(waiting.data)) if self.tls_1_3_only else True
        if verdict is None:
            return
        if not verdict or len(self._links) >= self.max_forwarded:
            self._drop_waiting(waiting)
            return
        with self._lock:
            del self._waiting[waiting.sock]
        self._selector.unregister(waiting.sock)
        self._connect_upstream(waiting.sock, bytes(waiting.data))

    def _connect_upstream(self, downstream: socket.socket, first_bytes: bytes) -> None:
        counters = WireCounters()
        name = None
        try:
            if isinstance(self.target, str):
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._upstreams_opened += 1
                name = f"{self._upstream_names}-{self._upstreams_opened}"
                upstream.bind(f"\0{name}")
                address: str | tuple[str, int] = f"\0{self.target}"
            else:
                upstream = socket.socket(_family(self.target[0]), socket.SOCK_STREAM)
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                address = self.target
            upstream.setblocking(False)
        except OSError as error:
            if "upstream" in locals():
                upstream.close()
            self._record_upstream_error(counters, error.strerror or str(error))
            downstream.close()
            return
        link = _Link(downstream, upstream, counters, name, time.monotonic() + self.connect_timeout)
        link.to_upstream = first_bytes
        self._count(counters, len(first_bytes), towards_target=True)
        with self._lock:
            self._links.add(link)
            if name is not None:
                self._by_name[name] = counters
        result = upstream.connect_ex(address)
        if result not in (0, errno.EINPROGRESS):
            self._fail_upstream(link, os.strerror(result))
            return
        self._watch(link, upstream, selectors.EVENT_WRITE)

    def _record_upstream_error(self, counters: WireCounters, reason: str) -> None:
        counters.error = reason
        self.upstream_error = reason

    def _fail_upstream(self, link: _Link, reason: str) -> None:
        self._record_upstream_error(link.counters, reason)
        self._close_link(link)

    def _serve(self, link: _Link, sock: socket.socket, mask: int) -> None:
        try:
            if not link.connected:
                result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if result:
                    self._fail_upstream(link, os.strerror(result))
                    return
                link.connected = True
                link.deadline = float("inf")
            if mask & selectors.EVENT_READ:
                self._read(link, sock)
            self._flush(link)
        except OSError:  # reset, broken pipe: the connection is over
            self._close_link(link)
            return
        if link.ending and not link.to_upstream and not link.to_downstream:
            self._close_link(link)
            return
        self._rewatch(link)

    def _read(self, link: _Link, sock: socket.socket) -> None:
        if link.to_upstream if sock is link.downstream else link.to_downstream:
            return  # an event of this round from before the buffer filled: read it later
        try:
            data = sock.recv(_BUFFER)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            link.ending = True
            link.deadline = time.monotonic() + self.connect_timeout
            return
        # Counted as read, before it goes on: whoever acts on the data (a party reading its
        # counters on the last answer) finds it counted.
        self._count(link.counters, len(data), towards_target=sock is link.downstream)
        if sock is link.downstream:
            link.to_upstream = data
        else:
            link.to_downstream = data

    def _flush(self, link: _Link) -> None:
        """Send what waits for each side, as far as its socket takes it."""
        if link.to_upstream:
            link.to_upstream = link.to_upstream[_send(link.upstream, link.to_upstream) :]
        if link.to_downstream:
            link.to_downstream = link.to_downstream[_send(link.downstream, link.to_downstream) :]

    def _count(self, counters: WireCounters, size: int, *, towards_target: bool) -> None:
        if towards_target == self.outbound:
            counters.sent += size
        else:
            counters.received += size

    def _rewatch(self, link: _Link) -> None:
        # Read a side only when what it sent before has gone on: the buffers stay one read each.
        for sock, outgoing, incoming in (
            (link.downstream, link.to_downstream, link.to_upstream),
            (link.upstream, link.to_upstream, link.to_downstream),
        ):
            events = selectors.EVENT_WRITE if outgoing else 0
            if not incoming and not link.ending:
                events |= selectors.EVENT_READ
            self._watch(link, sock, events)

    def _watch(self, link: _Link, sock: socket.socket, events: int) -> None:
        current = link.events.get(sock, 0)
        if events == current:
            return
        if not events:
            self._selector.unregister(sock)
        elif not current:
            self._selector.register(sock, events, (link, sock))
        else:
            self._selector.modify(sock, events, (link, sock))
        link.events[sock] = events

    def _close_link(self, link: _Link) -> None:
        for sock in link.events:
            if link.events[sock]:
                self._selector.unregister(sock)
        link.events.clear()
        link.downstream.close()
        link.upstream.close()
        with self._lock:
            self._links.discard(link)
            if link.name is not None:
                self._by_name.pop(link.name, None)
            self._ended.sent += link.counters.sent
            self._ended.received += link.counters.received

    def _close_everything(self) -> None:
        for waiting in list(self._waiting.values()):
            self._drop_waiting(waiting)
        for link in list(self._links):
            self._close_link(link)
        self._selector.close()
        for sock in (self._server, self._wake_reader, self._wake_writer):
            sock.close()


def _listening_socket(listen: Address) -> socket.socket:
    if isinstance(listen, str):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(f"\0{listen}")
            server.listen(128)
        except OSError:
            server.close()
            raise
    else:
        server = socket.create_server(listen, family=_family(listen[0]), backlog=1024)
    server.setblocking(False)
    return server


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _peer_pid(sock: socket.socket) -> int:
    pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid


def _send(sock: socket.socket, data: bytes) -> int:
    try:
        return sock.send(data)
    except (BlockingIOError, InterruptedError):
        return 0
