"""The dealer (D): correlated randomness for the SPDZ backend, and nothing else.

The dealer holds no image and learns nothing about either: it draws Beaver
triples ``(a, b, c = a * b)`` uniformly over the ring Z_2^64 and hands each
party its own additive shares. A party's shares are uniformly random on
their own, so neither party learns a, b or c.

Each party opens its own session with the dealer (gRPC, mutual TLS: the
certificate says which party it is) and names the registration session by a
random token the moving party chose. Triples are numbered by the parties;
the dealer draws batch ``sequence`` once, gives each party its shares once,
and forgets the batch when both have them.

What the dealer sends, and to whom:

==========================  ==============================================
request (party -> dealer)   answer (dealer -> that party)
==========================  ==============================================
``DealerHello`` (token)     ``DealerWelcome`` (which party the dealer saw)
``TripleRequest`` (seq, n)  ``Triples``: this party's shares of n triples
``Close``                   ``Closed``: the dealer's accounting
==========================  ==============================================
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import (
    PROTOCOL_VERSION,
    ProtocolError,
    array_from_pb,
    array_to_pb,
    body,
)

PARTIES = {"moving-party": 0, "fixed-party": 1}
MAX_TRIPLES = 1 << 24  # per request
MAX_PENDING = 8  # batches one party may be ahead of the other, per token
TOKEN_BYTES = (16, 64)


def beaver_triples(count: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Shares of ``count`` triples: ``(a0, b0, c0), (a1, b1, c1)`` with c = a * b mod 2^64."""
    draw = lambda: rng.integers(0, 2**64, size=count, dtype=np.uint64)  # noqa: E731
    a, b = draw(), draw()
    c = a * b  # uint64 arithmetic wraps: the ring Z_2^64
    a0, b0, c0 = draw(), draw(), draw()
    shares = (a0, b0, c0), (a - a0, b - b0, c - c0)
    return tuple(tuple(x.view(np.int64) for x in party) for party in shares)


@dataclass
class _Batch:
    count: int
    shares: tuple
    taken: set[int] = field(default_factory=set)


class TriplePool:
    """Triples drawn for each session token, until both parties took their shares."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._batches: dict[tuple[bytes, int], _Batch] = {}
        self.triples_dealt = 0

    def take(self, token: bytes, party: int, sequence: int, count: int) -> tuple[np.ndarray, ...]:
        if not 0 < count <= MAX_TRIPLES:
            raise ProtocolError(f"{count} triples asked; one request may ask 1 to {MAX_TRIPLES}")
        key = (token, sequence)
        with self._lock:
            batch = self._batches.get(key)
            if batch is None:
                pending = sum(1 for (other, _), b in self._batches.items()
                              if other == token and party in b.taken)
                if pending >= MAX_PENDING:
                    raise ProtocolError("too many triple batches ahead of the other party")
                batch = _Batch(count, beaver_triples(count, self._rng))
                self._batches[key] = batch
                self.triples_dealt += count
            if batch.count != count:
                raise ProtocolError(f"batch {sequence} has {batch.count} triples, not {count}")
            if party in batch.taken:
                raise ProtocolError(f"batch {sequence} was already taken by this party")
            batch.taken.add(party)
            if len(batch.taken) == 2:
                del self._batches[key]
            return batch.shares[party]

    def forget(self, token: bytes) -> None:
        """Drop a session's batches (one of its parties ended abnormally)."""
        with self._lock:
            for key in [key for key in self._batches if key[0] == token]:
                del self._batches[key]


class DealerSession:
    """One party's session with the dealer: answers its envelopes."""

    def __init__(self, pool: TriplePool, client_name: str) -> None:
        if client_name not in PARTIES:
            raise ProtocolError(f"certificate name '{client_name}' is not a party's")
        self.pool = pool
        self.party = PARTIES[client_name]
        self.token: bytes | None = None
        self.seconds = 0.0
        self.level_seconds: list[float] = []
        self.closed = False

    def handle(self, envelope: pb.Envelope) -> pb.Envelope:
        start = time.perf_counter()
        try:
            kind = body(envelope)
            if kind == "dealer_hello" and self.token is None:
                hello = envelope.dealer_hello
                if hello.protocol_version != PROTOCOL_VERSION:
                    raise ProtocolError(f"protocol version {hello.protocol_version} is not "
                                        f"{PROTOCOL_VERSION}")
                if not TOKEN_BYTES[0] <= len(hello.session_token) <= TOKEN_BYTES[1]:
                    raise ProtocolError("the session token must be 16 to 64 bytes")
                self.token = hello.session_token
                return pb.Envelope(dealer_welcome=pb.DealerWelcome(party=self.party))
            if self.token is None or self.closed:
                raise ProtocolError(f"'{kind}' arrived outside an open dealer session")
            if kind == "triple_request":
                request = envelope.triple_request
                a, b, c = self.pool.take(self.token, self.party, request.sequence, request.count)
                return pb.Envelope(triples=pb.Triples(
                    sequence=request.sequence, a=array_to_pb(a), b=array_to_pb(b),
                    c=array_to_pb(c)))
            if kind == "close":
                self.closed = True
                return pb.Envelope(closed=pb.Closed(stats=pb.PartyStats(seconds=self.seconds)))
            raise ProtocolError(f"'{kind}' is not a request the dealer answers")
        finally:
            self.seconds += time.perf_counter() - start


class DealerClient:
    """A party's session with the dealer (``ppir dealer`` at ``target``).

    Parameters
    ----------
    target : str
        ``HOST:PORT`` of the dealer.
    tls : TLS
        This party's certificate (its name tells the dealer which party it is).
    token : bytes
        The registration session's token, the same for both parties.
    """

    def __init__(self, target: str, tls, token: bytes, *, deadline: float = 60.0,
                 server_name: str = "dealer") -> None:
        from ppir_itk.protocol.session import RemoteSession

        self.session = RemoteSession(target, tls, deadline=deadline, server_name=server_name,
                                     service="ppir.v1.Dealer", role="dealer")
        welcome = self.session.request(pb.Envelope(dealer_hello=pb.DealerHello(
            protocol_version=PROTOCOL_VERSION, session_token=token)), "dealer_welcome")
        self.party = welcome.dealer_welcome.party

    def triples(self, sequence: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This party's shares (int64, ring Z_2^64) of triple batch ``sequence``."""
        reply = self.session.request(pb.Envelope(triple_request=pb.TripleRequest(
            sequence=sequence, count=count)), "triples").triples
        shares = tuple(array_from_pb(x, max_elements=count) for x in (reply.a, reply.b, reply.c))
        if any(x.shape != (count,) or x.dtype != np.int64 for x in shares):
            raise ProtocolError("the dealer's shares do not fit the request")
        return shares

    def close(self) -> None:
        self.session.close()
