"""A party's session with the SPDZ dealer, and what each party derives from the dealer's seeds.

The dealer (:mod:`ppir_itk.dealer`) sends every value that is uniform on its
own as a 32-byte seed; :func:`mask_values` and :func:`moving_triples` say how
a party expands it. :class:`DealerClient` asks for a party's masks and
triples over any session whose peer is the dealer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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
from ppir_itk.roles import DEALER, FIXED_PARTY, MOVING, MOVING_PARTY

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
                "per evaluation",
                "sequence, count, mask rows (both parties ask the same)",
                "the iteration's size (public)",
            )
            for party in (MOVING_PARTY, FIXED_PARTY)
        ),
        Message(
            "triples",
            DEALER,
            "per evaluation",
            "the moving party: a seed for a and c0; the fixed party: c1 = a b - c0",
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
        self, sequence: int, count: int, mask_sequence: int, mask_rows: list[int]
    ) -> Callable[[], tuple[np.ndarray | None, np.ndarray]]:
        """Ask for triple batch ``sequence`` now; the returned call waits for this party's
        part, each ``(len(mask_rows), count)``: ``(a, c0)`` for the moving party,
        ``(None, c1)`` for the fixed party."""
        answer = self.session.post(
            pb.Envelope(
                triple_request=pb.TripleRequest(
                    sequence=sequence, count=count, mask_sequence=mask_sequence, mask_rows=mask_rows
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
