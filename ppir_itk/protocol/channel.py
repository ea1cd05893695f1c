"""One side of a session's gRPC stream: send and receive envelopes, with a deadline.

Both parties use a :class:`Channel`: frames going out are queued for gRPC's
writer, frames coming in are read by a thread and reassembled into envelopes
(:class:`~ppir_itk.protocol.messages.Reassembler`), so that waiting for the
peer has a deadline whatever the peer does. A peer that closes, stalls past
the deadline, aborts or sends something malformed ends the session with a
:class:`PeerError` that names the peer and what happened. A side that has
sent nothing for a third of its deadline sends a heartbeat frame, so that a
peer busy with long local work (a level of the clear backend, say) is not
taken for a stalled one; a stalled or stopped process sends none.

:func:`tapped` is the seam for traffic audits (``tests/audit.py``): while it
is open, every frame any channel of this process sends or receives is also
handed, serialised, to a tap. Every byte a party exchanges over gRPC passes
through a channel of its process (the moving party's sessions with the fixed
party and with the dealer each have one; an in-process ``LocalSession`` has
none), so the frames a tap sees add up to the channels' payload counters.
With no tap installed the cost is one check of an empty list per frame.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import (
    MessageTooLarge,
    Outgoing,
    ProtocolError,
    Reassembler,
    body,
    to_frames,
)

DEFAULT_DEADLINE = 60.0  # seconds a party waits for its peer's next message

_END = object()
_HEARTBEAT = pb.Frame(heartbeat=pb.Heartbeat()).SerializeToString()
_ALIVE = object()  # the peer sent a heartbeat: it is alive, the wait starts again

Tap = Callable[[str, str, bytes], None]
"""Called as ``tap(direction, peer, frame)``: ``"sent"`` or ``"received"``, the channel's
peer (:attr:`Channel.peer`) and one serialised ``Frame``; from any of the channel's threads."""

_taps: list[Tap] = []


@contextmanager
def tapped(tap: Tap) -> Iterator[Tap]:
    """Hand ``tap`` every frame that any channel of this process sends or receives.

    For tests and audits only: a tap sees the plaintext of the traffic (TLS
    is below the channel), which is exactly what the other party receives.
    """
    _taps.append(tap)
    try:
        yield tap
    finally:
        _taps.remove(tap)


def _tap(direction: str, peer: str, frame: bytes | pb.Frame) -> None:
    data = frame if isinstance(frame, bytes) else frame.SerializeToString()
    for tap in tuple(_taps):
        tap(direction, peer, data)


class PeerError(Exception):
    """The session with the other party ended abnormally (one sentence for the user)."""


@dataclass
class Counters:
    """One party's traffic: application payload and bytes on the wire, each direction."""

    payload_bytes_sent: int = 0
    payload_bytes_received: int = 0
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def with_wire(self, wire: Any) -> Counters:
        """These payload counts with a relay's on-the-wire counts (``wire.sent``/``received``)."""
        return replace(self, wire_bytes_sent=wire.sent, wire_bytes_received=wire.received)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_pb(self, seconds: float) -> pb.PartyStats:
        return pb.PartyStats(seconds=seconds, **self.as_dict())

    @classmethod
    def from_pb(cls, stats: pb.PartyStats) -> Counters:
        return cls(**{f.name: getattr(stats, f.name) for f in fields(cls)})


class Channel:
    """Envelopes to and from one peer over a stream of frames.

    Parameters
    ----------
    peer : str
        How messages name the other party (``"fixed party at 10.0.0.2:7443"``).
    deadline : float
        Seconds to wait for the peer's next message.
    max_envelope : int
        Largest message accepted from the peer, in bytes.
    limit_option : str, optional
        The option that raises ``max_envelope``, named when a message is refused.

    Nothing the peer sent outlives the session: when the reading ends (however it
    ends) the parts of a message cut off half way are dropped, and :meth:`close` drops
    envelopes nobody read; then the freed memory goes back to the system
    (:func:`return_freed_memory`).
    """

    def __init__(
        self, peer: str, deadline: float, max_envelope: int, limit_option: str | None = None
    ) -> None:
        self.peer = peer
        self.deadline = deadline
        self.counters = Counters()  # payload only: the transport adds the wire
        self._outgoing: queue.Queue = queue.Queue()
        self._incoming: queue.Queue = queue.Queue()
        self._reassembler = Reassembler(max_envelope, limit_option)
        self._closed = threading.Event()  # also wakes the heartbeat thread at once
        self._reading = threading.Event()  # set while the peer's frames are being read
        self._unsent = 0  # frames of envelopes queued that gRPC has not yet sent
        self._sent = threading.Condition()
        self._last_sent = time.monotonic()
        threading.Thread(target=self._heartbeats, name="ppir-heartbeat", daemon=True).start()

    def _heartbeats(self) -> None:
        interval = self.deadline / 3
        while not self._closed.is_set():
            idle = time.monotonic() - self._last_sent
            if idle < interval:
                self._closed.wait(interval - idle)
                continue
            self.counters.payload_bytes_sent += len(_HEARTBEAT)
            if _taps:
                _tap("sent", self.peer, _HEARTBEAT)
            self._outgoing.put(_HEARTBEAT)
            self._last_sent = time.monotonic()

    # -- outgoing -----------------------------------------------------------
    def outgoing(self) -> Iterator[bytes]:
        """The serialised frames to hand to gRPC (which sends bytes as they are), until
        :meth:`close`."""
        while True:
            frame = self._outgoing.get()
            if frame is _END:
                return
            yield frame
            # gRPC asks for the next frame once it sent this one
            if frame is not _HEARTBEAT:
                with self._sent:
                    self._unsent -= 1
                    self._sent.notify_all()

    def send(self, envelope: Outgoing) -> None:
        """Queue ``envelope`` (or a backend message, as its envelope) for the peer, once the
        one before has gone: a peer that asks and never reads the answers cannot make them
        pile up here."""
        with self._sent:
            gone = self._sent.wait_for(
                lambda: not self._unsent or self._closed.is_set() or not self._reading.is_set(),
                timeout=self.deadline,
            )
        if not gone:
            raise PeerError(
                f"the {self.peer} read nothing for {self.deadline:g} s (deadline passed)"
            )
        if self._closed.is_set():
            raise PeerError(f"the session with the {self.peer} is already closed")
        for frame in to_frames(envelope):
            self.counters.payload_bytes_sent += len(frame)
            if _taps:
                _tap("sent", self.peer, frame)
            with self._sent:
                self._unsent += 1
            self._outgoing.put(frame)
        self.counters.messages_sent += 1
        self._last_sent = time.monotonic()

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._outgoing.put(_END)
            _drain(self._incoming)
            with self._sent:
                self._sent.notify_all()

    # -- incoming -----------------------------------------------------------
    def read_from(self, frames: Iterator[pb.Frame]) -> None:
        """Start a thread that reads ``frames`` (gRPC's iterator) into the inbox."""

        def read() -> None:
            try:
                for frame in frames:
                    if self._closed.is_set():
                        return  # the session is over: nothing more is kept
                    self.counters.payload_bytes_received += frame.ByteSize()
                    if _taps:
                        _tap("received", self.peer, frame)
                    if frame.WhichOneof("kind") == "heartbeat":
                        self._incoming.put(_ALIVE)
                        continue
                    envelope = self._reassembler.push(frame)
                    if envelope is not None:
                        self.counters.messages_received += 1
                        self._incoming.put(envelope)
                self._incoming.put(PeerError(f"the {self.peer} closed the session"))
            except MessageTooLarge as error:
                self._incoming.put(PeerError(f"the {self.peer} sent too large a message: {error}"))
            except ProtocolError as error:
                self._incoming.put(PeerError(f"the {self.peer} sent a malformed message: {error}"))
            except Exception as error:  # gRPC's RpcError and connection failures
                self._incoming.put(
                    PeerError(f"the connection to the {self.peer} failed: {_rpc_reason(error)}")
                )
                # gRPC's error is in a reference cycle with its own frame; through its
                # traceback it would keep this frame (the last frame read) until a collection.
                error.__traceback__ = None
            finally:
                self._reassembler.release()
                with self._sent:  # a peer that is gone reads nothing: no sender waits for it
                    self._reading.clear()
                    self._sent.notify_all()
                return_freed_memory()

        self._reading.set()
        threading.Thread(target=read, name="ppir-reader", daemon=True).start()

    def fail(self, reason: str) -> None:
        """End the wait for the peer: the next :meth:`receive` raises ``PeerError(reason)``
        (a session time limit, say, which the peer's heartbeats would otherwise defer)."""
        self._incoming.put(PeerError(reason))

    def raise_if_failed(self) -> None:
        """Raise now if the peer already failed (between requests nothing else may arrive)."""
        try:
            item = self._incoming.get_nowait()
            while item is _ALIVE:
                item = self._incoming.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, PeerError):
            try:
                raise item
            finally:
                del item  # see receive
        raise PeerError(f"the {self.peer} sent '{body(item)}' without being asked")

    def receive(self, expected: str | None = None) -> pb.Envelope:
        """The peer's next message; ``expected`` names the body it must hold."""
        try:
            item = self._incoming.get(timeout=self.deadline)
            while item is _ALIVE:
                item = self._incoming.get(timeout=self.deadline)
        except queue.Empty:
            raise PeerError(
                f"the {self.peer} sent nothing for {self.deadline:g} s (deadline passed)"
            ) from None
        if isinstance(item, PeerError):
            try:
                raise item
            finally:
                # A local holding the exception raised from its own frame is a reference
                # cycle (exception, traceback, frame) that keeps every frame of the
                # traceback, and the session's last message with them, until a collection.
                del item
        kind = body(item)
        if kind == "abort":
            raise PeerError(f"the {self.peer} ended the session: {item.abort.reason}")
        if expected is not None and kind != expected:
            raise PeerError(f"the {self.peer} sent '{kind}' where '{expected}' was due")
        return item


def _drain(items: queue.Queue) -> None:
    try:
        while True:
            items.get_nowait()
    except queue.Empty:
        return


def _malloc_trim() -> Callable[[int], int] | None:
    try:  # glibc only: other C libraries have no malloc_trim (or no such heaps)
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (ValueError, OSError, AttributeError):  # ValueError: the name is unknown here
        return None


_trim = _malloc_trim()


def return_freed_memory() -> None:
    """Give memory freed by an ended session back to the system (glibc's ``malloc_trim``).

    A message's 1 MiB frames and parts are below glibc's (dynamic) mmap threshold, so they
    live in malloc's heaps and arenas; freed, they stay mapped in the process (its RSS
    does not fall) until a trim, as the pages left between live blocks are not returned
    by ``free``. ``malloc_trim(0)`` returns every free page. Elsewhere this does nothing.
    """
    if _trim is not None:
        _trim(0)


def _rpc_reason(error: Exception) -> str:
    details = getattr(error, "details", None)
    if callable(details):
        text = details()
        if text:
            return str(text).splitlines()[0]
    return str(error).splitlines()[0] if str(error) else type(error).__name__
