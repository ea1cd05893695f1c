"""The share arithmetic of the ``spdz`` backend, on CrypTen (protocol: :mod:`.spdz`).

:class:`MailboxCommunicator` is CrypTen's ``Communicator`` for two parties
whose messages ride a ppir session; :class:`SharedProducts` is one party's
side of the protocol's steps. Importing this module imports CrypTen
(:func:`~ppir_itk.backends.crypten_compat.load_crypten`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ppir_itk.backends.base import SumNoise
from ppir_itk.backends.crypten_compat import acting_as, load_crypten
from ppir_itk.dealer_client import DealerClient
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError, add_array, array_from_pb
from ppir_itk.roles import FIXED, MOVING

crypten = load_crypten()
Communicator: Any = crypten.communicator.Communicator  # untyped: load_crypten() imports it


class MailboxCommunicator(Communicator):
    """CrypTen's ``Communicator`` interface for two parties, over a ppir session.

    CrypTen's sharing code calls ``all_reduce``, ``reduce``, ``send`` and
    ``recv``; tensors to the peer go to ``outbox`` and the peer's come from
    ``inbox``. The moving party's ``flush`` sends the outbox as one request
    and fills the inbox from the answer; the fixed party's inbox is filled
    from the request and its outbox becomes the answer. Tensors travel as
    typed int64 arrays; CrypTen's object transfer (pickle) is refused.
    """

    def __init__(self, rank: int, flush: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.rank = rank
        self.outbox: list[np.ndarray] = []
        self.inbox: deque[np.ndarray] = deque()
        self._flush = flush
        self.reset_communication_stats()

    # -- the part of CrypTen's interface its arithmetic sharing uses -------------
    def get_world_size(self) -> int:
        return 2

    def get_rank(self) -> int:
        return self.rank

    def get_name(self) -> str:
        return "moving party" if self.rank == MOVING else "fixed party"

    def send(self, tensor: Any, dst: int) -> None:
        if dst == self.rank:
            raise ValueError("a party does not send to itself")
        self.outbox.append(tensor.numpy().astype(np.int64, copy=True))
        self.comm_bytes += tensor.numel() * 8

    def recv(self, tensor: Any, src: int | None = None) -> Any:
        if not self.inbox:
            if self._flush is None:
                raise ProtocolError("the moving party's message lacks a share this step needs")
            self._flush()
            self.comm_rounds += 1
        received = self.inbox.popleft()
        if received.shape != tuple(tensor.shape):
            raise ProtocolError(
                f"a share of shape {received.shape} arrived where {tuple(tensor.shape)} was due"
            )
        tensor.numpy()[...] = received
        return tensor

    def send_pending(self) -> None:
        """The moving party sends what its outbox holds now, in an exchange whose answer
        carries no share (a chunk of a streamed opening); nothing when it holds nothing."""
        if self.outbox:
            assert self._flush is not None, "the moving party's communicator flushes"
            self._flush()
            self.comm_rounds += 1
            if self.inbox:
                raise ProtocolError("the fixed party answered a chunk with shares")

    def all_reduce(self, tensor: Any, op: Any = None, batched: bool = False) -> Any:
        tensors = tensor if batched else [tensor]
        for own in tensors:
            self.send(own, 1 - self.rank)
        totals = [own + self.recv(torch.empty_like(own)) for own in tensors]
        return totals if batched else totals[0]

    def reduce(self, tensor: Any, dst: int, op: Any = None, batched: bool = False) -> Any:
        tensors = tensor if batched else [tensor]
        if self.rank != dst:
            for own in tensors:
                self.send(own, dst)
            return None
        totals = [own + self.recv(torch.empty_like(own)) for own in tensors]
        return totals if batched else totals[0]

    def send_obj(self, *_: Any) -> None:
        raise NotImplementedError(
            "objects are not sent between the parties (nothing received is unpickled)"
        )

    recv_obj = broadcast_obj = send_obj

    # -- the envelope side -------------------------------------------------------
    def take_outbox(self, shares: Any) -> None:
        """Move the outbox into a message's repeated ``Array`` field ``shares``."""
        for array in self.outbox:
            add_array(shares, array)
        self.outbox = []

    def fill_inbox(self, arrays: Any, max_elements: int) -> None:
        if self.inbox:
            raise ProtocolError("a share was left unread")
        for array in arrays:
            value = array_from_pb(array, max_elements=max_elements)
            if value.dtype != np.int64:
                raise ProtocolError("a share is not a ring element array (int64)")
            self.inbox.append(value)


def column_chunks(count: int, rows: int, chunk_values: int) -> list[tuple[int, int]]:
    """The column ranges ``[start, stop)`` that carry a ``rows x count`` transfer in messages
    of at most ``chunk_values`` ring elements (both parties compute the same)."""
    width = max(1, chunk_values // rows)
    return [(start, min(start + width, count)) for start in range(0, count, width)]


# A step's progress, after each chunk: (whether it was the last, the step's result then).
Progress = Iterator[tuple[bool, Any]]


class SharedProducts:
    """One party's side of steps 1-6 (:mod:`ppir_itk.backends.spdz`); both parties run the
    same steps in the same order.

    ``dealer`` gives this party's masks and triples; ``communicator`` carries
    the openings. Each step streams its level-sized transfer in column chunks of at most
    ``chunk_values`` ring elements (:func:`column_chunks`), one exchange each: a step is a
    generator that yields after each chunk. The moving party runs it to its end with
    :meth:`run`; the fixed party advances it by one chunk per message it answers.
    """

    def __init__(
        self,
        rank: int,
        dealer: DealerClient,
        communicator: MailboxCommunicator,
        chunk_values: int,
    ) -> None:
        self.shared = crypten.mpc.primitives.ArithmeticSharedTensor
        self.rank = rank
        self.dealer = dealer
        self.communicator = communicator
        self.chunk_values = chunk_values
        self._mask: Any = None  # the fixed party's b
        self._opened: Any = None  # F = Y - b, public
        self._mask_sequence = -1
        self._sequence = 0
        self._next: Callable[[], tuple[np.ndarray | None, np.ndarray]] | None = None
        self._chunks: list[tuple[int, int]] = []  # an iteration's, for X's rows
        self._rows: Any = None
        self._mapped = 0  # X's first rows, whose products go through the map

    def _share(self, values: np.ndarray) -> Any:
        return self.shared.from_shares(torch.from_numpy(values), precision=0)

    def run(self, steps: Progress) -> Any:
        """The moving party's side of a step, to its end: each chunk's opening leaves in an
        exchange of its own (an opening to the moving party exchanges as it reads it)."""
        for last, result in steps:
            if last:
                return result
            self.communicator.send_pending()
        raise AssertionError("a step ends with its last chunk")

    def open_fixed_operand(
        self,
        level: int,
        fixed_rows: np.ndarray | None,
        count: int,
        rows: Sequence[int],
        mapped: int,
        fixed_row_count: int,
    ) -> Progress:
        """Steps 1-2; ``fixed_rows`` is the fixed party's ``Y`` (``None`` on the moving party).
        The layout is :func:`~ppir_itk.backends.spdz.pairing`'s: ``rows[i]`` the row of Y
        that X's row i meets, the first ``mapped`` through the map, Y of
        ``fixed_row_count`` rows."""
        self._drain()
        self._mask_sequence = level
        self._mapped = mapped
        self._rows = torch.tensor(list(rows))
        self._chunks = column_chunks(count, len(rows), self.chunk_values)
        if self.rank == FIXED:
            self._mask = torch.from_numpy(self.dealer.masks(level, fixed_row_count, count).copy())
        else:
            self._opened = torch.empty((fixed_row_count, count), dtype=torch.int64)
        chunks = column_chunks(count, fixed_row_count, self.chunk_values)
        for index, (start, stop) in enumerate(chunks):
            if self.rank == FIXED:
                assert fixed_rows is not None, "the fixed party's Y"
                own = fixed_rows[:, start:stop] - self._mask[:, start:stop].numpy()
            else:  # the moving party's share of Y - b
                own = np.zeros((fixed_row_count, stop - start), dtype=np.int64)
            with acting_as(self.communicator):
                opened = self._share(own).reveal(dst=MOVING)
            if self.rank == MOVING:
                self._opened[:, start:stop] = opened
            last = index == len(chunks) - 1
            if last:
                self._prefetch(0)
            yield last, None

    def _prefetch(self, chunk: int) -> None:
        """Ask the dealer for the triples of an iteration's ``chunk`` now, so they are here
        when needed."""
        start, stop = self._chunks[chunk]
        self._next = self.dealer.post_triples(
            self._sequence, stop - start, self._mask_sequence, self._rows.tolist(), start
        )
        self._sequence += 1

    def _drain(self) -> None:
        # The batch asked ahead for an iteration that did not come (the level ended):
        # both parties take it and drop it, so their sequence numbers stay in step.
        if self._next is not None:
            self._next()
            self._next = None

    def close(self) -> pb.Closed:
        """End the dealer session; the dealer's accounting of it."""
        self._drain()
        return self.dealer.close()

    def sums(
        self,
        moving_rows: np.ndarray | None,
        moments_map: Callable[[Any], Any],
        noise: SumNoise | None = None,
    ) -> Progress:
        """Steps 3-6: ends with the moments (of every mapped row) and the totals (of the
        others) on the moving party, ``None`` on the fixed party.

        ``moments_map`` is the public linear map of step 6 on a share of ``Z[:d]``
        (:meth:`~ppir_itk.linear_map.PublicLinearMap.ring`). ``noise`` (the fixed party's)
        is added to its shares before they are opened, so the moving party opens the
        noisy sums only.
        """
        product = np.empty((len(self._rows), self._chunks[-1][1]), dtype=np.int64)
        for index, (start, stop) in enumerate(self._chunks):
            assert self._next is not None, "open_fixed_operand() and each chunk ask ahead"
            a, c = self._next()
            self._prefetch((index + 1) % len(self._chunks))  # this iteration's, or the next's
            with acting_as(self.communicator):
                if self.rank == MOVING:
                    assert moving_rows is not None and a is not None, "the moving party's X, a"
                    x = np.ascontiguousarray(moving_rows[:, start:stop])
                    self._share(x - a).reveal(dst=FIXED)  # sends E
                    share = torch.from_numpy(x) * self._opened[:, start:stop][self._rows]
                else:
                    masked = self._share(np.zeros_like(c)).reveal(dst=FIXED)  # receives E
                    share = masked * self._mask[:, start:stop][self._rows]  # c1 + E * b
            np.add(share.numpy(), c, out=product[:, start:stop])  # c0 + X * F on the moving
            if index < len(self._chunks) - 1:
                yield False, None
        d = self._mapped
        # this party's share of the products, mapped and summed locally (int64 wraps
        # modulo 2^64 as the ring does)
        moments = moments_map(torch.from_numpy(product[:d])).numpy()
        sums = product[d:].sum(axis=1)
        with acting_as(self.communicator):
            if noise is not None:  # ring elements: int64 wraps modulo 2^64 as the ring does
                moment_noise = [*noise.moments, *noise.masked_moments]
                moments = moments + np.array(moment_noise, dtype=np.int64).reshape(moments.shape)
                sums = sums + np.array([*noise.totals, *noise.masked_totals], dtype=np.int64)
            moments, sums = self._share(moments), self._share(sums)
            yield True, self.shared.reveal_batch([moments, sums], dst=MOVING)
