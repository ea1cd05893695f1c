"""A byte-counting TCP relay: what each party sent and received on the wire.

gRPC does not expose its sockets, so each party puts a relay on its side of
the connection: the moving party's gRPC client talks to a relay on loopback
that forwards to the fixed party; the fixed party's relay listens on the
public address and forwards to its gRPC server on loopback. TLS runs end to
end through the relays (they only copy bytes), and their counts are the TCP
payload bytes the operating system carried for the session.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

_BUFFER = 1 << 16


@dataclass
class WireCounters:
    sent: int = 0  # bytes from this party to its peer
    received: int = 0
    error: str | None = None


class Relay:
    """Forward every connection accepted on ``listen`` to ``target``, counting bytes.

    ``outbound`` says which way "sent" points: True on the moving party (bytes
    from the local client to the remote target are *sent*), False on the fixed
    party (bytes from the remote client to the local server are *received*).
    """

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        *,
        outbound: bool,
        connect_timeout: float = 10.0,
    ) -> None:
        self.target = target
        self.outbound = outbound
        self.connect_timeout = connect_timeout
        self._server = socket.create_server(listen)
        self.address = self._server.getsockname()[:2]
        self._lock = threading.Lock()
        self._by_local_port: dict[int, WireCounters] = {}
        self.connections: list[WireCounters] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="ppir-relay", daemon=True).start()

    def counters_for(self, upstream_port: int) -> WireCounters | None:
        """The counters of the connection whose upstream socket has this local port."""
        with self._lock:
            return self._by_local_port.get(upstream_port)

    def total(self) -> WireCounters:
        with self._lock:
            return WireCounters(
                sum(c.sent for c in self.connections), sum(c.received for c in self.connections)
            )

    def close(self) -> None:
        self._closed = True
        with self._lock:
            sockets = [self._server, *self._sockets]
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._server.accept()
            except OSError:
                return
            counters = WireCounters()
            try:
                upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
                upstream.settimeout(None)
                for sock in (downstream, upstream):  # small messages must not wait for Nagle
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as error:
                counters.error = error.strerror or str(error)
                with self._lock:
                    self.connections.append(counters)
                downstream.close()
                continue
            with self._lock:
                self.connections.append(counters)
                self._by_local_port[upstream.getsockname()[1]] = counters
                self._sockets += [downstream, upstream]
            for source, sink, forward in (
                (downstream, upstream, True),
                (upstream, downstream, False),
            ):
                threading.Thread(
                    target=self._pump,
                    args=(source, sink, counters, forward),
                    name="ppir-relay-pump",
                    daemon=True,
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, counters: WireCounters, forward: bool
    ) -> None:
        sending = forward == self.outbound
        try:
            while True:
                data = source.recv(_BUFFER)
                if not data:
                    break
                sink.sendall(data)
                if sending:
                    counters.sent += len(data)
                else:
                    counters.received += len(data)
        except OSError:
            pass
        finally:
            for sock in (sink, source):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
