"""A serving party's answers plus its accounting, for any transport.

:class:`Endpoint` is the serving party's bookkeeping around its session object
(the fixed party's :class:`~ppir_itk.fixed_party.FixedPartySession` or the
dealer's :class:`~ppir_itk.dealer.DealerSession`), shared by the in-process
and the gRPC transports: it turns protocol errors into ``Abort`` and fills the
serving party's accounting into ``Closed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import Counters
from ppir_itk.protocol.messages import ProtocolError, body


class Serving(Protocol):
    """What a serving party's session object offers a transport (fixed party or dealer)."""

    seconds: float
    level_seconds: list[float]

    def handle(self, envelope: pb.Envelope) -> pb.Envelope: ...


class Endpoint:
    """A serving party's answers plus its accounting, for any transport.

    ``session`` answers envelopes (:class:`~ppir_itk.fixed_party.FixedPartySession`
    or :class:`~ppir_itk.dealer.DealerSession`); ``counters`` returns the
    transport's traffic so far, as seen by the serving party.
    """

    def __init__(self, session: Serving, counters: Callable[[], Counters]) -> None:
        self.session = session
        self.counters = counters
        self._level_marks: list[Counters] = []

    def answer(self, envelope: pb.Envelope) -> pb.Envelope:
        kind = body(envelope)
        try:
            reply = self.session.handle(envelope)
        except ProtocolError as error:
            return pb.Envelope(abort=pb.Abort(reason=str(error)))
        if kind == "open_level":
            self._level_marks.append(self.counters())
        elif kind == "close":
            now = self.counters()
            marks = self._level_marks + [now]
            reply.closed.stats.CopyFrom(now.to_pb(self.session.seconds))
            for level, (begin, end) in enumerate(zip(marks[:-1], marks[1:], strict=True)):
                reply.closed.levels[level].CopyFrom(
                    (end - begin).to_pb(self.session.level_seconds[level])
                )
        return reply
