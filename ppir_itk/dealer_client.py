"""A party's session with the SPDZ dealer, and what each party derives from the dealer's seeds.

The dealer (:mod:`ppir_itk.dealer`) sends every value that is uniform on its
own as a 32-byte seed; :func:`mask_values` and :func:`moving_triples` say how
a party expands it. :class:`DealerClient` asks for a party's masks and
triples over any session whose peer is the dealer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ppir_itk import _kernels
from ppir_itk.disclosure import Message, ProtocolTable
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import DEFAULT_DEADLINE
from ppir_itk.protocol.messages import (
    DEALER_SERVICE,
    PROTOCOL_VERSION,
    ProtocolError,
    array_from_pb,
)
from ppir_itk.protocol.session import RemoteSession, Session
from ppir_itk.protocol.tls import TLS
from ppir_itk.randomness import expand
from ppir_itk.roles import DEALER, FIXED, FIXED_PARTY, MOVING, MOVING_PARTY

DEALER_TABLE = ProtocolTable(
    title="the SPDZ dealer (each party's own session with it)",
    messages=(
        *(
            Message(
                "dealer_hello",
                party,
                "once per session",
                "the registration's random session token (both parties send the same)",
                "which registration the party belongs to",
            )
            for party in (MOVING_PARTY, FIXED_PARTY)
        ),
        Message(
            "dealer_welcome",
            DEALER,
            "once per session",
            "which party the dealer saw (from the certificate)",
            "nothing",
        ),
        Message(
            "mask_request",
            FIXED_PARTY,
            "once per level",
            "rows and count of the mask",
            "the level's size (public)",
        ),
        Message(
            "masks",
            DEALER,
            "once per level",
            "a 32-byte seed for the fixed party's b",
            "the fixed party's own mask",
        ),
        *(
            Message(
                "triple_request",
                party,
                "per evaluation (per chunk)",
                "sequence, count, mask rows, first column (both parties ask the same)",
                "the iteration's size and chunks (public)",
            )
            for party in (MOVING_PARTY, FIXED_PARTY)
        ),
        Message(
            "triples",
            DEALER,
            "per evaluation (per chunk)",
            "the moving party: a seed for a and c0; the fixed party: c1 = a b - c0",
            "each party's own shares, uniform on their own",
        ),
        *(
            Message(
                "batch_request",
                party,
                "per evaluation",
                "sequence, the level mask's number and the items' kinds and shapes (both "
                "parties ask the same)",
                "the evaluation's sizes (public)",
            )
            for party in (MOVING_PARTY, FIXED_PARTY)
        ),
        Message(
            "batch",
            DEALER,
            "per evaluation",
            "a 32-byte seed for the party's own masks and shares; the fixed party also "
            "its shares c1 of the products and triples",
            "each party's own shares, uniform on their own",
        ),
        *(
            Message("close", party, "once per session", "nothing", "nothing")
            for party in (MOVING_PARTY, FIXED_PARTY)
        ),
        Message(
            "closed",
            DEALER,
            "once per session",
            "the dealer's time for that party",
            "the dealer's accounting",
        ),
    ),
)


def mask_values(seed: bytes, rows: int, count: int) -> np.ndarray:
    """The fixed party's mask b, shape ``(rows, count)``."""
    return expand(seed, rows * count).reshape(rows, count)


def moving_triples(seed: bytes, rows: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The moving party's ``(a, c0)``, each ``(rows, count)``."""
    stream = expand(seed, 2 * rows * count).reshape(2, rows, count)
    return stream[0], stream[1]


# A batch's items (spdz Mattes, pb.DealerItem): kinds, and how a product combines its
# moving operand m with its fixed operand f (the level mask when ``fixed`` is -1).
MASK, PRODUCT, TRIPLES = "mask", "product", "triples"
PRODUCTS = ("elementwise", "gram", "left", "column_sums")
LEVEL_MASK = -1


def mask_item(owner: int, *shape: int) -> pb.DealerItem:
    """A fresh uniform Z_2^64 mask known to ``owner`` only."""
    return pb.DealerItem(kind=MASK, owner=owner, ring_bits=64, shape=shape)


def product_item(product: str, moving: int, fixed: int) -> pb.DealerItem:
    """Shares of ``product(m, f)`` over Z_2^64 for the masks of items ``moving`` and
    ``fixed`` (:data:`LEVEL_MASK`: the level's mask)."""
    return pb.DealerItem(kind=PRODUCT, ring_bits=64, product=product, moving=moving, fixed=fixed)


def triples_item(count: int) -> pb.DealerItem:
    """``count`` Beaver triples over Z_2^128."""
    return pb.DealerItem(kind=TRIPLES, ring_bits=128, shape=[count])


def product_shape(product: str, moving: tuple[int, ...], fixed: tuple[int, ...]) -> tuple:
    """The shape of ``product(m, f)``, or () when the operands do not fit it."""
    if len(moving) != 2 or len(fixed) != 2:
        return ()
    (rm, nm), (rf, nf) = moving, fixed
    if product == "elementwise" and nm == nf and rf in (rm, 1):
        return moving
    if product == "gram" and nm == nf:
        return (rf, rm)
    if product == "left" and nf == rm:
        return (rf, nm)
    if product == "column_sums" and moving == fixed:
        return (1, nm)
    return ()


def apply_product(product: str, moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """``product(m, f)`` over Z_2^64 (uint64 operands: unsigned products wrap); the matrix
    products and column sums in C (:func:`~ppir_itk._kernels.ring_gram`, ``ring_left``,
    ``ring_column_dots``: NumPy's integer matmul is several times slower, and its
    ``(m * f).sum(axis=0)`` makes a temporary of the operands' size)."""
    if product == "elementwise":
        return moving * fixed
    if product == "gram":
        out = np.empty((fixed.shape[0], moving.shape[0]), dtype=np.uint64)
        _kernels.ring_gram(np.ascontiguousarray(fixed), np.ascontiguousarray(moving), out)
        return out
    if product == "left":
        out = np.empty((fixed.shape[0], moving.shape[1]), dtype=np.uint64)
        _kernels.ring_left(np.ascontiguousarray(fixed), np.ascontiguousarray(moving), out)
        return out
    out = np.empty((1, moving.shape[1]), dtype=np.uint64)
    _kernels.ring_column_dots(np.ascontiguousarray(moving), np.ascontiguousarray(fixed), out[0])
    return out


def item_shapes(items: Sequence[pb.DealerItem], level_shape: tuple[int, ...]) -> list[tuple]:
    """Each item's shape (masks and products) or (count,) (triples); raises ProtocolError
    for a batch that does not describe one (bad kinds, owners, rings or operands)."""
    shapes: list[tuple] = []
    for index, item in enumerate(items):
        shape = tuple(int(s) for s in item.shape)
        if item.kind == MASK and item.ring_bits == 64 and item.owner in (MOVING, FIXED):
            ok = len(shape) == 2 and min(shape) > 0
        elif item.kind == TRIPLES and item.ring_bits == 128:
            ok = len(shape) == 1 and shape[0] > 0
        elif item.kind == PRODUCT and item.ring_bits == 64 and item.product in PRODUCTS:
            operands = (int(item.moving), int(item.fixed))
            ok = 0 <= operands[0] < index and LEVEL_MASK <= operands[1] < index
            ok = ok and items[operands[0]].kind == MASK and items[operands[0]].owner == MOVING
            if ok and operands[1] != LEVEL_MASK:
                ok = items[operands[1]].kind == MASK and items[operands[1]].owner == FIXED
            fixed = level_shape if operands[1] == LEVEL_MASK else shapes[operands[1]]
            shape = product_shape(item.product, shapes[operands[0]], fixed) if ok else ()
            ok = shape != ()
        else:
            ok = False
        if not ok:
            raise ProtocolError(f"item {index} of the batch does not describe masks or products")
        shapes.append(shape)
    return shapes


def batch_values(
    seed: bytes, items: Sequence[pb.DealerItem], shapes: list[tuple], party: int
) -> list[Any]:
    """What ``party`` expands from its batch seed, per item in order: its own masks (int64),
    the moving party's shares c0 of the products (int64), and each party's shares of the
    triples (Z_2^128 words, (count, 2) int64 each: a, b and, for the moving party, c);
    None for what the seed does not give it."""
    sizes = []
    for item, shape in zip(items, shapes, strict=True):
        count = math.prod(shape)
        if item.kind == MASK:
            sizes.append(count if item.owner == party else 0)
        elif item.kind == PRODUCT:
            sizes.append(count if party == MOVING else 0)
        else:
            sizes.append(2 * count * (3 if party == MOVING else 2))
    words = expand(seed, sum(sizes))
    out: list[Any] = []
    start = 0
    for item, shape, size in zip(items, shapes, sizes, strict=True):
        part, start = words[start : start + size], start + size
        if size == 0:
            out.append(None)
        elif item.kind == TRIPLES:
            out.append(tuple(part.reshape(-1, shape[0], 2)))
        else:
            out.append(part.reshape(shape))
    return out


class DealerClient:
    """A party's session with the dealer.

    Parameters
    ----------
    session : Session
        A session whose peer is the dealer: ``RemoteSession`` to ``ppir dealer``
        (:func:`open_dealer`) or, in one process, a ``LocalSession`` on a
        :class:`DealerSession`.
    token : bytes
        The registration session's token, the same for both parties.
    """

    def __init__(self, session: Session, token: bytes) -> None:
        self.session = session
        welcome = session.request(
            pb.Envelope(
                dealer_hello=pb.DealerHello(protocol_version=PROTOCOL_VERSION, session_token=token)
            ),
            "dealer_welcome",
        )
        self.party = welcome.dealer_welcome.party
        self.closed: pb.Closed | None = None

    def masks(self, sequence: int, rows: int, count: int) -> np.ndarray:
        """The fixed party's mask ``sequence`` (int64, ``(rows, count)``)."""
        reply = self.session.request(
            pb.Envelope(mask_request=pb.MaskRequest(sequence=sequence, rows=rows, count=count)),
            "masks",
        ).masks
        return mask_values(reply.seed, rows, count)

    def post_triples(
        self,
        sequence: int,
        count: int,
        mask_sequence: int,
        mask_rows: list[int],
        mask_start: int = 0,
    ) -> Callable[[], tuple[np.ndarray | None, np.ndarray]]:
        """Ask for triple batch ``sequence`` now, on ``count`` columns of the mask from
        ``mask_start``; the returned call waits for this party's part, each
        ``(len(mask_rows), count)``: ``(a, c0)`` for the moving party, ``(None, c1)`` for
        the fixed party."""
        answer = self.session.post(
            pb.Envelope(
                triple_request=pb.TripleRequest(
                    sequence=sequence,
                    count=count,
                    mask_sequence=mask_sequence,
                    mask_rows=mask_rows,
                    mask_start=mask_start,
                )
            )
        )
        rows = len(mask_rows)

        def shares() -> tuple[np.ndarray | None, np.ndarray]:
            reply = answer("triples").triples
            if self.party == MOVING:
                return moving_triples(reply.seed, rows, count)
            c = array_from_pb(reply.c, max_elements=rows * count)
            if c.shape != (rows, count) or c.dtype != np.int64:
                raise ProtocolError("the dealer's shares do not fit the request")
            return None, c

        return shares

    def post_batch(
        self,
        sequence: int,
        mask_sequence: int,
        items: Sequence[pb.DealerItem],
        level_shape: tuple[int, ...],
    ) -> Callable[[], list[Any]]:
        """Ask for batch ``sequence`` now (``items`` on the level mask ``mask_sequence`` of
        ``level_shape``); the returned call waits for this party's part: per item,
        :func:`batch_values`, with the fixed party's shares c1 of the products and triples
        (int64; triples (3, count, 2): a, b, c) in their place."""
        shapes = item_shapes(items, level_shape)
        answer = self.session.post(
            pb.Envelope(
                batch_request=pb.BatchRequest(
                    sequence=sequence, mask_sequence=mask_sequence, items=items
                )
            )
        )

        def values() -> list[Any]:
            reply = answer("batch").batch
            own = batch_values(reply.seed, items, shapes, self.party)
            if self.party == MOVING:
                if reply.c:
                    raise ProtocolError("the dealer sent the moving party shares no seed gives")
                return own
            shared = [i for i, item in enumerate(items) if item.kind != MASK]
            if len(reply.c) != len(shared):
                raise ProtocolError("the dealer's shares do not fit the request")
            for index, array in zip(shared, reply.c, strict=True):
                shape = shapes[index]
                size = math.prod(shape)
                c = array_from_pb(array, max_elements=2 * size)
                if items[index].kind == TRIPLES:
                    expected: tuple = (shape[0], 2)
                    a, b = own[index]
                    own[index] = (a, b, c)
                else:
                    expected = shape
                    own[index] = c
                if c.shape != expected or c.dtype != np.int64:
                    raise ProtocolError("the dealer's shares do not fit the request")
            return own

        return values

    def close(self) -> pb.Closed:
        """End the session; the dealer's own accounting of it."""
        if self.closed is None:
            self.closed = self.session.close()
        return self.closed


def open_dealer(
    target: str,
    tls: TLS,
    token: bytes,
    *,
    deadline: float = DEFAULT_DEADLINE,
) -> DealerClient:
    """This party's session with ``ppir dealer`` at ``target`` (``HOST:PORT``)."""
    return DealerClient(
        RemoteSession(
            target,
            tls,
            deadline=deadline,
            service=DEALER_SERVICE,
            role="dealer",
        ),
        token,
    )
