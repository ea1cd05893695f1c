"""The dealer (D): correlated randomness for the SPDZ backend, and nothing else.

The dealer holds no image and learns nothing about either. For each
registration session it deals, over the ring Z_2^64:

- **masks** ``b`` (``rows x count`` uniform values), one per level, to the
  fixed party only: it opens ``F = Y - b`` for its own values ``Y`` once, and
  ``b`` hides ``Y`` from the moving party;
- **triples** for every iteration: a fresh uniform ``a`` to the moving party
  only (it opens ``E = X - a`` for its own values ``X``; ``a`` hides ``X`` from
  the fixed party), and ``c = a * b[mask_rows]`` split into additive shares,
  ``c0`` to the moving party and ``c1`` to the fixed party.

So ``X * Y[rows] = (c0 + X * F) + (c1 + E * b)``: each party computes one
term from what it holds, and neither learns the other's values (Beaver's
multiplication, with each operand's mask held by the party that owns the
operand). To keep the dealer's traffic small, every value that is uniformly
random on its own travels as a 32-byte seed expanded with AES-256 in counter
mode (:func:`~ppir_itk.randomness.expand`); only ``c1`` travels in full.

Each party opens its own session with the dealer (gRPC, mutual TLS: the
certificate says which party it is) and names the registration session by a
random token the moving party chose. Both parties number their triple
requests the same way; the dealer draws batch ``sequence`` once, gives each
party its part once, and forgets the batch when both have it.

What the dealer sends, and to whom:

==============================  =============================================
request (party -> dealer)       answer (dealer -> that party)
==============================  =============================================
``DealerHello`` (token)         ``DealerWelcome`` (which party the dealer saw)
``MaskRequest`` (seq, rows, n)  fixed party only. ``Masks``: a seed for b
``TripleRequest`` (seq, n,      ``Triples``: moving party, a seed for a and
mask, mask rows, first column)  c0; fixed party, c1
``BatchRequest`` (seq, mask,    ``Batch``: each party a seed for its own masks
items: masks, products,         and shares; the fixed party also its shares
Z_2^128 triples)                c1 of the products and triples (spdz Mattes)
``Close``                       ``Closed``: the dealer's accounting
==============================  =============================================
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppir_itk import ring128
from ppir_itk.dealer_client import (
    MASK,
    PRODUCT,
    apply_product,
    batch_values,
    item_shapes,
    mask_values,
    moving_triples,
)
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import return_freed_memory
from ppir_itk.protocol.messages import (
    DEALER_MAX_MESSAGE_BYTES,
    DEALER_MAX_PENDING,
    DEALER_MAX_PENDING_BYTES,
    DEALER_MAX_REQUEST_VALUES,
    DEALER_SERVICE,
    PROTOCOL_VERSION,
    ProtocolError,
    array_to_pb,
    body,
)
from ppir_itk.protocol.tls import TLS
from ppir_itk.protocol.transport import PartyServer
from ppir_itk.randomness import secret_seed
from ppir_itk.roles import FIXED, MOVING, PARTIES

PARTIES_IN_ORDER = (MOVING, FIXED)

MAX_ROWS = 16  # a triple request's rows (spdz mean squares: d + 2)
MAX_MASK_ROWS = 256  # a mask's rows (spdz Mattes: one per histogram bin)
MASKS_KEPT = 2  # per token: the current level's mask and the one before
TOKEN_BYTES = (16, 64)


@dataclass
class _Batch:
    request: tuple  # what was asked, so that both parties ask the same
    seed: bytes  # the moving party's a and c0
    mask: np.ndarray  # b[mask_rows], for the fixed party's c1
    taken: set[int] = field(default_factory=set)


@dataclass
class _ItemBatch:
    request: bytes  # the serialised items and level mask, so that both parties ask the same
    seeds: tuple[bytes, bytes]  # each party's own values
    items: Any  # the request's items, and their shapes
    shapes: list[tuple]
    level_mask: np.ndarray | None  # U, for the products that use it
    nbytes: int  # the fixed party's c1 arrays, built when it asks (counted from the start)
    taken: set[int] = field(default_factory=set)


class TriplePool:
    """Masks and triples drawn for each session token, until both parties took their shares.

    What it holds is capped: ``max_request_values`` ring elements per request,
    ``max_pending`` batches one party may be ahead of the other per token, and
    ``max_pending_bytes`` for every token's masks and batches together (:attr:`held_bytes`).
    """

    def __init__(
        self,
        *,
        max_request_values: int = DEALER_MAX_REQUEST_VALUES,
        max_pending: int = DEALER_MAX_PENDING,
        max_pending_bytes: int = DEALER_MAX_PENDING_BYTES,
    ) -> None:
        self.max_request_values = max_request_values
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._lock = threading.Lock()
        self._batches: dict[tuple[bytes, int], _Batch] = {}
        self._masks: dict[bytes, dict[int, np.ndarray]] = {}
        self._item_batches: dict[tuple[bytes, int], _ItemBatch] = {}
        self.held_bytes = 0  # of the arrays in _masks and _batches
        self.values_dealt = 0

    def masks(self, token: bytes, party: int, request: pb.MaskRequest) -> pb.Masks:
        rows, count = int(request.rows), int(request.count)
        # a seed on the wire: only the room the dealer keeps it in bounds its size
        self._check_shape(rows, count, MAX_MASK_ROWS)
        if party != FIXED:
            raise ProtocolError("masks go to the fixed party only")
        with self._lock:
            kept = self._masks.setdefault(token, {})
            if int(request.sequence) in kept:
                raise ProtocolError(f"mask {request.sequence} was already dealt")
            self._check_room(rows * count * 8)
            seed = secret_seed()
            kept[int(request.sequence)] = mask_values(seed, rows, count).view(np.uint64)
            self.held_bytes += rows * count * 8
            for old in sorted(kept)[:-MASKS_KEPT]:
                self.held_bytes -= kept.pop(old).nbytes
            self.values_dealt += rows * count
        return pb.Masks(sequence=request.sequence, seed=seed)

    def triples(self, token: bytes, party: int, request: pb.TripleRequest) -> pb.Triples:
        rows, count, start = len(request.mask_rows), int(request.count), int(request.mask_start)
        self._check_size(rows, count)
        asked = (count, int(request.mask_sequence), tuple(request.mask_rows), start)

        key = (token, int(request.sequence))
        with self._lock:
            batch = self._batches.get(key)
            if batch is None:
                self._check_pending(token, party)
                mask = self._masks.get(token, {}).get(int(request.mask_sequence))
                if (
                    mask is None
                    or mask.shape[1] < start + count
                    or max(request.mask_rows) >= len(mask)
                ):
                    raise ProtocolError(
                        f"triples asked for columns {start} to {start + count} of mask "
                        f"{request.mask_sequence}, which the dealer does not hold in that size"
                    )
                self._check_room(rows * count * 8)
                columns = mask[:, start : start + count]
                batch = _Batch(asked, secret_seed(), columns[list(request.mask_rows)])
                self._batches[key] = batch
                self.held_bytes += batch.mask.nbytes
                self.values_dealt += rows * count
            if batch.request != asked:
                raise ProtocolError(
                    f"triple batch {request.sequence} was asked differently by the other party"
                )
            if party in batch.taken:
                raise ProtocolError(
                    f"triple batch {request.sequence} was already taken by this party"
                )
            batch.taken.add(party)
            if len(batch.taken) == 2:
                self.held_bytes -= self._batches.pop(key).mask.nbytes
        if party == MOVING:
            return pb.Triples(sequence=request.sequence, seed=batch.seed)
        # The fixed party's c1 = a * b - c0, computed outside the lock (the moving party's
        # seed goes out at once, whoever asks first) with one array of the request's size
        # beside a and c0, not two.
        a, c_moving = (part.view(np.uint64) for part in moving_triples(batch.seed, rows, count))
        c_fixed = a * batch.mask
        c_fixed -= c_moving
        return pb.Triples(sequence=request.sequence, c=array_to_pb(c_fixed.view(np.int64)))

    def batch(self, token: bytes, party: int, request: pb.BatchRequest) -> pb.Batch:
        """A batch of masks, products and triples (spdz Mattes): each party's seed, and the
        fixed party's shares of the products and triples, drawn at the first request."""
        key = (token, int(request.sequence))
        asked = pb.BatchRequest(mask_sequence=request.mask_sequence, items=request.items)
        with self._lock:
            batch = self._item_batches.get(key)
            if batch is None:
                self._check_pending(token, party)
                mask = self._masks.get(token, {}).get(int(request.mask_sequence))
                if mask is None and any(
                    item.kind == PRODUCT and item.fixed < 0 for item in request.items
                ):
                    raise ProtocolError(
                        f"a batch asked for mask {request.mask_sequence}, which the dealer "
                        "does not hold"
                    )
                shapes = item_shapes(request.items, () if mask is None else mask.shape)
                values = sum(
                    math.prod(shape) * (6 if item.kind == "triples" else 1)
                    for item, shape in zip(request.items, shapes, strict=True)
                )
                rows = max((shape[0] for shape in shapes if len(shape) == 2), default=1)
                # as rows x count: the widest item's rows, the values spread over them
                self._check_size(rows, -(-values // rows), MAX_MASK_ROWS)
                nbytes = sum(
                    math.prod(shape) * (16 if item.kind == "triples" else 8)
                    for item, shape in zip(request.items, shapes, strict=True)
                    if item.kind != MASK
                )
                self._check_room(nbytes)
                seeds = (secret_seed(), secret_seed())
                batch = _ItemBatch(
                    asked.SerializeToString(), seeds, list(request.items), shapes, mask, nbytes
                )
                self._item_batches[key] = batch
                self.held_bytes += batch.nbytes
                self.values_dealt += values
            if batch.request != asked.SerializeToString():
                raise ProtocolError(
                    f"batch {request.sequence} was asked differently by the other party"
                )
            if party in batch.taken:
                raise ProtocolError(f"batch {request.sequence} was already taken by this party")
            batch.taken.add(party)
            if len(batch.taken) == 2:
                self.held_bytes -= self._item_batches.pop(key).nbytes
        answer = pb.Batch(sequence=request.sequence, seed=batch.seeds[party])
        if party == FIXED:  # built outside the lock: other sessions' requests go on meanwhile
            shares = _fixed_shares(batch.items, batch.shapes, batch.seeds, batch.level_mask)
            answer.c.extend(array_to_pb(share) for share in shares)
        return answer

    def _check_pending(self, token: bytes, party: int) -> None:
        pending = sum(
            1
            for batches in (self._batches, self._item_batches)
            for (other, _), b in batches.items()
            if other == token and party in b.taken
        )
        if pending >= self.max_pending:
            raise ProtocolError(
                f"the party asked for more than {self.max_pending} triple batches "
                "ahead of the other party (the dealer's --max-pending raises it)"
            )

    def forget(self, token: bytes) -> None:
        """Drop a session's batches and masks (it ended)."""
        with self._lock:
            for key in [key for key in self._batches if key[0] == token]:
                self.held_bytes -= self._batches.pop(key).mask.nbytes
            for key in [key for key in self._item_batches if key[0] == token]:
                self.held_bytes -= self._item_batches.pop(key).nbytes
            for mask in self._masks.pop(token, {}).values():
                self.held_bytes -= mask.nbytes

    def _check_shape(self, rows: int, count: int, max_rows: int) -> None:
        if not (0 < rows <= max_rows and 0 < count):
            raise ProtocolError(
                f"{rows} x {count} values asked; one request may ask 1 to {max_rows} rows"
            )

    def _check_size(self, rows: int, count: int, max_rows: int = MAX_ROWS) -> None:
        self._check_shape(rows, count, max_rows)
        if rows * count > self.max_request_values:
            raise ProtocolError(
                f"{rows} x {count} values asked; one request may ask at most "
                f"{self.max_request_values} values (the dealer's --max-request-values raises it)"
            )

    def _check_room(self, size: int) -> None:
        if self.held_bytes + size > self.max_pending_bytes:
            raise ProtocolError(
                f"the dealer holds {self.held_bytes} bytes for its sessions and cannot "
                f"keep {size} more within its limit of {self.max_pending_bytes} bytes "
                "(the dealer's --max-pending-bytes raises it)"
            )


def _fixed_shares(
    items: Any, shapes: list[tuple], seeds: tuple[bytes, bytes], level_mask: np.ndarray | None
) -> list[np.ndarray]:
    """The fixed party's shares c1 = c - c0 of a batch's products and triples, in item order."""
    moving, fixed = (
        batch_values(seed, items, shapes, party)
        for seed, party in zip(seeds, PARTIES_IN_ORDER, strict=True)
    )
    shares = []
    for index, item in enumerate(items):
        if item.kind == MASK:
            continue
        if item.kind == PRODUCT:
            operand = level_mask if item.fixed < 0 else fixed[item.fixed]
            assert operand is not None, "batch() checked that the level mask is held"
            c = apply_product(
                item.product, moving[item.moving].view(np.uint64), operand.view(np.uint64)
            )
            shares.append((c - moving[index].view(np.uint64)).view(np.int64))
            continue
        (a0, b0, c0), (a1, b1) = moving[index], fixed[index]
        a = ring128.add(ring128.from_words(a0), ring128.from_words(a1))
        b = ring128.add(ring128.from_words(b0), ring128.from_words(b1))
        c = ring128.multiply_values(a, b)
        shares.append(ring128.to_words(ring128.subtract(c, ring128.from_words(c0))))
    return shares


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
        self.masks_dealt = 0  # requests answered, for the dealer's log
        self.triple_batches_dealt = 0

    def handle(self, envelope: pb.Envelope) -> pb.Envelope:
        start = time.perf_counter()
        try:
            kind = body(envelope)
            if kind == "dealer_hello" and self.token is None:
                hello = envelope.dealer_hello
                if hello.protocol_version != PROTOCOL_VERSION:
                    raise ProtocolError(
                        f"protocol version {hello.protocol_version} is not {PROTOCOL_VERSION}"
                    )
                if not TOKEN_BYTES[0] <= len(hello.session_token) <= TOKEN_BYTES[1]:
                    raise ProtocolError("the session token must be 16 to 64 bytes")
                self.token = hello.session_token
                return pb.Envelope(dealer_welcome=pb.DealerWelcome(party=self.party))
            if self.token is None or self.closed:
                raise ProtocolError(f"'{kind}' arrived outside an open dealer session")
            if kind == "mask_request":
                masks = self.pool.masks(self.token, self.party, envelope.mask_request)
                self.masks_dealt += 1
                return pb.Envelope(masks=masks)
            if kind == "triple_request":
                triples = self.pool.triples(self.token, self.party, envelope.triple_request)
                self.triple_batches_dealt += 1
                return pb.Envelope(triples=triples)
            if kind == "batch_request":
                batch = self.pool.batch(self.token, self.party, envelope.batch_request)
                self.triple_batches_dealt += 1
                return pb.Envelope(batch=batch)
            if kind == "close":
                self.closed = True
                return pb.Envelope(closed=pb.Closed(stats=pb.PartyStats(seconds=self.seconds)))
            raise ProtocolError(f"'{kind}' is not a request the dealer answers")
        finally:
            self.seconds += time.perf_counter() - start


class DealerServer(PartyServer):
    """``ppir dealer``: Beaver triples for both parties of SPDZ sessions."""

    service = DEALER_SERVICE
    role = "dealer"
    client_names = tuple(PARTIES)

    def __init__(
        self,
        listen: str,
        tls: TLS,
        *,
        max_sessions: int = 8,
        max_envelope: int = DEALER_MAX_MESSAGE_BYTES,
        max_request_values: int = DEALER_MAX_REQUEST_VALUES,
        max_pending: int = DEALER_MAX_PENDING,
        max_pending_bytes: int = DEALER_MAX_PENDING_BYTES,
        **options: Any,
    ) -> None:
        self.pool = TriplePool(
            max_request_values=max_request_values,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
        )
        super().__init__(
            listen, tls, max_sessions=max_sessions, max_envelope=max_envelope, **options
        )

    def _new_session(self, client_name: str, client_fingerprint: str) -> DealerSession:
        return DealerSession(self.pool, client_name)

    def _ended(self, session: DealerSession, clean: bool) -> None:
        # Both parties are done with a token once either ends: a clean end comes after the
        # last iteration, an unclean one ends the registration.
        if session.token is not None:
            self.pool.forget(session.token)
            return_freed_memory()

    def _describe(self, session: DealerSession) -> str:
        return (
            f"backend spdz, {session.masks_dealt} masks and "
            f"{session.triple_batches_dealt} triple batches dealt"
        )
