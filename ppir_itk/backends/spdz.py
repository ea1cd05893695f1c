"""The ``spdz`` backend: the joint term on additive secret shares (CrypTen), with a dealer.

Values enter the computation as additive shares over the ring Z_2^64
(CrypTen's ``ArithmeticSharedTensor``, precision 0; moving party rank 0,
fixed party rank 1); the dealer (:mod:`ppir_itk.dealer`) supplies the masks
and Beaver triples. The protocol, which both halves below run step by step in
the same order (``SharedProducts``):

Once per level, for the fixed party's ``Y = (q(J), q(J)^2)`` (2 x n):

1. the fixed party takes a mask ``b`` (2 x n, uniform) from the dealer;
2. ``[Y - b]`` is opened to the moving party: the fixed party sends
   ``F = Y - b`` (2n ring elements), uniform to the moving party, which never
   sees ``b``.

Each iteration, for the moving party's ``X = (q(g_1) .. q(g_d), q(I_w), m)``
((d + 2) x n; ``m`` the valid mask; rows 0..d pair with ``q(J)``, row d + 1
with ``q(J)^2``; a correlation session adds row d + 2, ``m`` again, paired with
``q(J)`` for ``sum_valid J``):

3. both take the iteration's triples: the moving party ``a`` (uniform) and
   ``c0``, the fixed party ``c1``, with ``c0 + c1 = a * b[rows]``;
4. ``[X - a]`` is opened to the fixed party: the moving party sends
   ``E = X - a`` ((d + 2) n ring elements), uniform to the fixed party, which
   never sees ``a`` (fresh every iteration);
5. Beaver's identity ``X * Y = (E + a) * (F + b)`` splits into shares each
   party computes from what it holds: the moving party ``c0 + X * F``, the
   fixed party ``c1 + E * b``;
6. the public linear map of DESIGN.md §2 on the shares, locally: the affine
   moments ``Z[:d] (q(phi), 1)`` (for a B-spline transform, the control
   grid's basis with fixed-point weights instead:
   :meth:`~ppir_itk.linear_map.PublicLinearMap.ring`),
   ``sum Z[d]`` (I_w . J), ``sum Z[d+1]`` (sum_valid J^2) and, for correlation,
   ``sum Z[d+2]`` (sum_valid J). The fixed party
   sends its shares of these values, which the moving party adds to its own:
   only it learns them.

With a fixed mask ``M`` (the fixed party's, ``Welcome.fixed_masked``; base.py's
``MaskedSums``), ``Y = (q(M J), q(M J)^2, M)`` (3 x n: ``M q(J)``, so the joint
term's sums are of ``M J``) and X grows by the rows that meet ``M`` (:func:`pairing`):
``q(g_k I_w)`` (d rows, requantised to their own exponent,
:func:`~ppir_itk.fixed_point.masked_budget`) through the map (``warped_moments``),
``m`` (``count``) and ``q(I_w^2)`` (``warped_squared``); for correlation also
``q(I_w)`` (``warped_sum``) and ``q(g_k)`` through the map (``gradient_moments``).
The same steps, the same single round trip: the fixed party opens ``3n`` ring
elements per level, the moving party sends ``(2d + 4) n`` per iteration (correlation
``(3d + 6) n``) and receives the joint term's sums and the masked ones
(:func:`~ppir_itk.backends.base.masked_sums_per_evaluation`).

Streaming: F and E travel in column chunks of at most ``chunk_values`` ring elements
(a backend parameter, default and most 2^24: 128 MiB), one exchange each, and each
chunk of E has its own triples from the dealer (``TripleRequest.mask_start``), so
neither the messages nor the dealer's requests cap the image size. Up to 3.3 M points
in 3-D (8.4 M in 2-D) an iteration is one chunk; the 11.85 M points of a 228^3 volume
take four. Chunking changes no value: every chunk's products land in the same
(rows x n) share, mapped and summed once.

One round trip per iteration: the moving party sends (d + 2) n ring elements
and receives d (d + 1) + 2 (a B-spline: d M + 2), whatever the transform
(rigid and affine cost the same). The secure work is d + 2 element-wise
products per point, O(d n).

Fixed point: values are integers before they are shared, with power-of-two
scales chosen so that every opened sum stays below 2^63
(:func:`ppir_itk.fixed_point.budget`); no product is ever truncated. (CrypTen's default
16-bit encoding truncates every product by a local division, which for two
parties fails by about 2^48 with probability near |x|/2^64 per element: a few
elements of every 10^5-point iteration.)

The steps are :class:`~ppir_itk.backends.spdz_shares.SharedProducts`, in a
module of their own because importing CrypTen takes seconds and only SPDZ
sessions need it.

Communication: CrypTen's openings (``reduce``) go through
:class:`~ppir_itk.backends.spdz_shares.MailboxCommunicator` into the session's ``BackendMessage``
envelopes, i.e. over the runtime's mutual-TLS channel: SPDZ opens no port of
its own, and nothing received is unpickled.

``provider=tfp`` (CrypTen's trusted-first-party idea: the moving party deals
the masks and triples itself, so it could open J) exists for single-process
tests and is refused anywhere else, by both halves.

What each party learns: the moving party, the joint term (with a fixed mask, its
masked sums too) and the power of two bounding J (``M J``) per level; the fixed party,
nothing (uniform openings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ppir_itk.backends.base import (
    EXACT_SUMS_DISCLOSURES,
    LINEAR_SUMS_METRICS,
    MASKED_SUMS_DISCLOSURE,
    ExactSumsBackend,
    ExactSumsFixedSide,
    JointTerm,
    MaskedSums,
    MovingChannel,
    MovingFields,
    wants_fixed_sum,
)
from ppir_itk.dealer_client import DealerClient
from ppir_itk.disclosure import Disclosure, Message, ProtocolTable
from ppir_itk.errors import InputError
from ppir_itk.fixed_point import RING, decode, encode, exponent, masked_budget
from ppir_itk.linear_map import PublicLinearMap
from ppir_itk.metric_kinds import MEAN_SQUARES_SETTINGS, MetricSettings
from ppir_itk.points import PointSet
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import Counters, PeerError
from ppir_itk.protocol.messages import SPDZ_CHUNK_VALUES, ProtocolError
from ppir_itk.randomness import secret_seed
from ppir_itk.roles import FIXED, FIXED_PARTY, MOVING, MOVING_PARTY

# The protocol's two steps: the moving party's message and the fixed party's answer.
LEVEL, ITERATION = ("spdz_level", "spdz_level_opened"), ("spdz_iteration", "spdz_sums")
PROVIDERS = ("dealer", "tfp")
TABLE = ProtocolTable(
    title="spdz (additive shares over Z_2^64, a trusted dealer; honest-but-curious, no MACs)",
    messages=(
        Message(
            "spdz_level",
            MOVING_PARTY,
            "once per level (per chunk)",
            "the moving party's part of opening F (no share: it holds none of Y)",
            "nothing",
        ),
        Message(
            "spdz_level_opened",
            FIXED_PARTY,
            "once per level (per chunk)",
            "F = (q(J), q(J)^2) - b with the dealer's uniform b (with a fixed mask "
            "(q(M J), q(M J)^2, M) - b), and the exponent e_J",
            "e_J; F is uniform to the moving party, which never sees b",
        ),
        Message(
            "spdz_iteration",
            MOVING_PARTY,
            "per evaluation (per chunk)",
            "E = X - a: the moving party's d + 2 fixed-point rows (d + 3 for correlation; "
            "with a fixed mask 2d + 4, or 3d + 6) minus a fresh uniform a",
            "nothing: E is uniform to the fixed party, which never sees a",
        ),
        Message(
            "spdz_sums",
            FIXED_PARTY,
            "per evaluation (per chunk)",
            "after the last chunk, the fixed party's shares of the moments and the two sums "
            "(three for correlation) and, with a fixed mask, of the masked sums; nothing "
            "after the others",
            "the joint term, once added to the moving party's own shares",
        ),
    ),
    disclosures=(
        *EXACT_SUMS_DISCLOSURES,
        MASKED_SUMS_DISCLOSURE,
        Disclosure(
            "opened_level",
            MOVING_PARTY,
            "F = (q(J), q(J)^2) - b (with a fixed mask (q(M J), q(M J)^2, M) - b), hidden by "
            "the dealer's uniform b",
            "ring elements",
            "level",
            masked=True,
        ),
        Disclosure(
            "opened_rows",
            FIXED_PARTY,
            "E = X - a, the moving party's rows hidden by a fresh uniform a",
            "ring elements",
            "evaluation",
            masked=True,
        ),
    ),
)


@dataclasses.dataclass(frozen=True)
class Pairing:
    """How X's rows meet Y's (steps 3-5): ``rows[i]`` is the row of Y that X's row i
    multiplies; the first ``mapped`` products go through the map, the others are summed."""

    rows: tuple[int, ...]
    mapped: int
    fixed_rows: int  # Y's rows: (q(J), q(J)^2), and M with a fixed mask


def pairing(dimension: int, fixed_sum: bool, masked: bool) -> Pairing:
    """X's layout, both halves': mapped ``q(g_k)`` (against q(J)), with a mask ``q(g_k I_w)``
    (against M), for correlation ``q(g_k)`` again (against M); then summed ``q(I_w)``, ``m``
    (against q(J)^2), for correlation ``m``, with a mask ``m`` and ``q(I_w^2)`` (against M),
    for correlation ``q(I_w)`` (against M). Without a mask, the protocol's first layout."""
    fixed, squared, mask = 0, 1, 2
    gradient = [fixed] * dimension
    masked_gradient = [mask] * dimension
    mapped = gradient + (masked_gradient if masked else [])
    summed = [fixed, squared] + ([fixed] if fixed_sum else [])
    if masked:
        summed += [mask, mask]
        if fixed_sum:
            mapped += masked_gradient
            summed += [mask]
    return Pairing(tuple(mapped + summed), len(mapped), 3 if masked else 2)


def ring_map(basis: PublicLinearMap) -> Callable[[Any], Any]:
    """Step 6's public map on a share of ``Z[:d]`` (d x n torch int64): d x outputs."""
    import torch

    return lambda share: torch.from_numpy(np.ascontiguousarray(basis.ring(share.numpy().T)))


MIN_CHUNK_VALUES = 1 << 10


def chunk_values_of(parameters: dict[str, str]) -> int:
    """The session's ``chunk_values``: ring elements per message of a streamed opening and
    per triple request (both halves read it from the moving party's parameters)."""
    text = parameters.get("chunk_values", str(SPDZ_CHUNK_VALUES))
    if not (text.isdigit() and MIN_CHUNK_VALUES <= int(text) <= SPDZ_CHUNK_VALUES):
        raise InputError(
            f"backend 'spdz' parameter chunk_values '{text[:20]}' is not a whole number "
            f"from {MIN_CHUNK_VALUES} to {SPDZ_CHUNK_VALUES}"
        )
    return int(text)


def provider_of(parameters: dict[str, str]) -> str:
    provider = parameters.get("provider", PROVIDERS[0])
    if provider not in PROVIDERS:
        raise InputError(
            f"backend 'spdz' has no provider '{provider[:20]}': choose one of "
            f"{', '.join(PROVIDERS)}"
        )
    return provider


TFP_REFUSED = (
    "the trusted-first-party provider lets the moving party see every triple and "
    "mask (and so the fixed image); it runs only in single-process tests"
)


def session_token(parameters: dict[str, str]) -> bytes:
    try:
        token = bytes.fromhex(parameters.get("session_token", ""))
    except ValueError:
        token = b""
    if len(token) < 16:
        raise ProtocolError("the SPDZ session token is missing or too short")
    return token


class SPDZBackend(ExactSumsBackend):
    """Moving-party side (rank 0)."""

    name = "spdz"
    protocol = "spdz"
    scheme = "additive secret sharing over Z_2^64, trusted dealer, no MACs"
    table = TABLE
    fixed_mask_metrics = LINEAR_SUMS_METRICS

    def __init__(
        self,
        channel: MovingChannel,
        parameters: dict[str, str] | None = None,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        parameters = dict(parameters or {})
        provider = provider_of(parameters)
        if provider == "tfp" and not channel.single_process:
            raise InputError(TFP_REFUSED)
        connect = channel.connect_dealer(first_party=provider == "tfp")
        parameters["session_token"] = secret_seed().hex()
        parameters["chunk_values"] = str(chunk_values_of(parameters))
        super().__init__(channel, parameters, metric)
        from ppir_itk.backends.spdz_shares import MailboxCommunicator  # imports CrypTen

        self._connect_dealer = connect
        self._communicator = MailboxCommunicator(MOVING, self._flush)
        self._products: Any = None
        self._step = LEVEL
        self._answer: Any = None  # the body of the fixed party's last answer
        self._exponent_j = 0
        self._level_index = -1
        self.dealer_closed: pb.Closed | None = None

    def _flush(self) -> None:
        request, answer = self._step
        message = pb.BackendMessage()
        body = getattr(message, request)
        body.SetInParent()  # the level step's request may carry no share
        self._communicator.take_outbox(body.shares)
        reply = self.channel.exchange(message)
        if reply.WhichOneof("body") != answer:
            raise ProtocolError(
                f"the fixed party answered '{reply.WhichOneof('body')}' to '{request}'"
            )
        self._answer = getattr(reply, answer)
        self._communicator.fill_inbox(self._answer.shares, max_elements=self.level_points.size * 16)

    def _on_points(self, points: PointSet) -> None:
        if self._products is None:
            from ppir_itk.backends.spdz_shares import SharedProducts

            self._products = SharedProducts(
                MOVING,
                self._connect_dealer(bytes.fromhex(self.parameters["session_token"])),
                self._communicator,
                int(self.parameters["chunk_values"]),
            )
        self._step = LEVEL
        self._level_index += 1  # levels come in order: the fixed party counts them the same way
        layout = pairing(points.geometry.dimension, wants_fixed_sum(self.metric), self.fixed_masked)
        products = self._products
        products.run(
            products.open_fixed_operand(
                self._level_index, None, points.size, layout.rows, layout.mapped, layout.fixed_rows
            )
        )
        self._exponent_j = self._answer.fixed_exponent
        basis = points.linear_map
        self._bits = basis.budget(RING)
        self._masked_bits = masked_budget(RING, points.size, basis.weight_bits, basis.support)
        self._map = ring_map(basis)
        self._disclose_bound(self._bits.j_bits - 1 - self._exponent_j)
        self.received.add("opened_level", (3 if self.fixed_masked else 2) * points.size)

    def _joint_term(self, fields: MovingFields) -> JointTerm:
        d = fields.gradient.shape[1]
        basis, bits = self.level_points.linear_map, self._bits
        e_g = exponent(float(np.abs(fields.gradient).max(initial=0.0)), bits.g_bits)
        e_w = exponent(float(np.abs(fields.warped).max(initial=0.0)), bits.w_bits)
        fixed_sum, masked = wants_fixed_sum(self.metric), self.fixed_masked
        gradient, warped = encode(fields.gradient.T, e_g), encode(fields.warped, e_w)
        valid = fields.valid.astype(np.int64)
        # X in the order of pairing(): the mapped rows, then the summed ones
        mapped, summed = [gradient], [warped[None], valid[None]]
        if fixed_sum:
            summed.append(valid[None])
        if masked:
            products = fields.gradient.T * fields.warped
            e_p = exponent(float(np.abs(products).max(initial=0.0)), self._masked_bits.product_bits)
            squares = fields.warped * fields.warped
            e_s = exponent(float(squares.max(initial=0.0)), self._masked_bits.squared_bits)
            mapped.append(encode(products, e_p))
            summed += [valid[None], encode(squares, e_s)[None]]
            if fixed_sum:
                mapped.append(gradient)
                summed.append(warped[None])
        rows = np.concatenate(mapped + summed)
        self._step = ITERATION
        moments, sums = (
            x.numpy() for x in self._products.run(self._products.sums(rows, self._map))
        )
        self._disclose_sums()
        totals = iter(sums.tolist())
        term = JointTerm(
            moments=decode(moments[:d], e_g + self._exponent_j + basis.column_bits),
            warped_dot_fixed=decode(float(next(totals)), e_w + self._exponent_j),
            fixed_squared=decode(float(next(totals)), 2 * self._exponent_j),
            fixed_sum=decode(float(next(totals)), self._exponent_j) if fixed_sum else None,
            basis_weight_bits=basis.axis_weight_bits,
            gradient_exponent=e_g,
        )
        if not masked:
            return term
        count, warped_squared = float(next(totals)), decode(float(next(totals)), e_s)
        return dataclasses.replace(
            term,
            masked=MaskedSums(
                count=count,
                warped_squared=warped_squared,
                warped_moments=decode(moments[d : 2 * d], e_p + basis.column_bits),
                warped_sum=decode(float(next(totals)), e_w) if fixed_sum else None,
                gradient_moments=(
                    decode(moments[2 * d :], e_g + basis.column_bits) if fixed_sum else None
                ),
            ),
        )

    def close(self) -> None:
        if self._products is not None:
            self.dealer_closed = self._products.close()

    def other_parties(self, closed: pb.Closed) -> dict[str, tuple[Any, float]]:
        """The dealer's figures: what it sent both parties, and its time for both."""
        if self._products is None:
            return {}
        assert self.dealer_closed is not None, "the session closes the backend before this"
        return dealer_figures(self._products.dealer, self.dealer_closed, closed)


def dealer_figures(
    dealer: DealerClient, dealer_closed: pb.Closed, closed: pb.Closed
) -> dict[str, tuple[Counters, float]]:
    """The dealer's figures for a report, from the moving party's session with it
    (``dealer``, its ``Closed``) and the fixed party's ``Closed``: what it sent both
    parties and received from them, and its time for both."""
    moving = dealer.session.counters()
    fixed = Counters.from_pb(closed.dealer)
    # The dealer sends what the parties receive, and receives what they send.
    figures = Counters(
        *(
            getattr(moving, name) + getattr(fixed, name)
            for name in (
                "payload_bytes_received",
                "payload_bytes_sent",
                "wire_bytes_received",
                "wire_bytes_sent",
                "messages_received",
                "messages_sent",
            )
        )
    )
    return {"dealer": (figures, dealer_closed.stats.seconds + closed.dealer.seconds)}


class SPDZFixedSide(ExactSumsFixedSide):
    """Fixed-party side (rank 1): answers each step with its openings and shares (its
    shares of the sums with its policy's noise added)."""

    table = TABLE
    bspline = True
    modulus = RING
    fixed_mask_metrics = LINEAR_SUMS_METRICS

    def __init__(
        self,
        parameters: dict[str, str],
        policy: FixedPolicy,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        super().__init__(parameters, policy, metric)
        provider = provider_of(parameters)  # a refusal: make_fixed_side's protocol error
        if provider == "tfp" and not policy.single_process:
            raise ProtocolError(TFP_REFUSED)
        if policy.dealer is None:
            raise ProtocolError("this fixed party has no dealer configured for backend 'spdz'")
        self._token = session_token(parameters)
        self._chunk_values = chunk_values_of(parameters)
        from ppir_itk.backends.spdz_shares import MailboxCommunicator  # imports CrypTen

        self._connect_dealer = policy.dealer
        self._communicator = MailboxCommunicator(FIXED)
        self._products: Any = None
        self._progress: Any = None  # the step under way (SharedProducts' generators)
        self._step = LEVEL
        self._level_index = -1

    def on_points(
        self, values: np.ndarray, points: PointSet, fixed_mask: np.ndarray | None = None
    ) -> None:
        if self._products is None:
            from ppir_itk.backends.spdz_shares import SharedProducts

            with self._dealer_step():
                self._products = SharedProducts(
                    FIXED, self._connect_dealer(self._token), self._communicator, self._chunk_values
                )
        self._points = points
        self._level_index += 1
        try:
            j_bits = points.linear_map.budget(RING).j_bits
        except InputError as error:
            raise ProtocolError(str(error)) from None
        assert (fixed_mask is not None) == self.fixed_masked, "the mask comes with fixed_masked"
        self._noise_for_level(points)
        self._map = ring_map(points.linear_map)
        if fixed_mask is not None:  # M J: the points outside the mask add nothing
            values = values * fixed_mask
        self._exponent_j = exponent(float(np.abs(values).max(initial=0.0)), j_bits)
        fixed = encode(values, self._exponent_j)
        rows = [fixed, fixed * fixed]
        if fixed_mask is not None:
            rows.append(fixed_mask.astype(np.int64))
        self._fixed_rows = np.stack(rows)
        self._pairing = pairing(
            points.geometry.dimension, wants_fixed_sum(self.metric), self.fixed_masked
        )
        self._level_pending = True
        self._progress = None

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        """Answers one chunk of the step under way, or starts the next step with its first."""
        communicator = self._communicator
        points, products = self._points, self._products
        kind = message.WhichOneof("body")
        if self._progress is None:
            self._step = LEVEL if self._level_pending else ITERATION
        step = self._step
        if kind != step[0]:
            raise ProtocolError(f"'{kind}' does not fit this point of the SPDZ protocol")
        communicator.fill_inbox(getattr(message, kind).shares, max_elements=points.size * 16)
        if self._progress is None and step is LEVEL:
            self._level_pending = False
            layout = self._pairing
            self._progress = products.open_fixed_operand(
                self._level_index,
                self._fixed_rows,
                points.size,
                layout.rows,
                layout.mapped,
                layout.fixed_rows,
            )
        elif self._progress is None:
            self.evaluations += 1
            self.received.add("opened_rows", len(self._pairing.rows) * points.size)
            self._progress = products.sums(None, self._map, self._noise())
        with self._dealer_step():
            last, _ = next(self._progress)
        if last:
            self._progress = None
        if communicator.inbox:
            raise ProtocolError("the moving party sent more shares than this step uses")
        reply = pb.BackendMessage()
        answer = getattr(reply, step[1])
        answer.SetInParent()
        if step is LEVEL:
            answer.fixed_exponent = self._exponent_j
        communicator.take_outbox(answer.shares)
        return reply

    def close(self) -> pb.PartyStats | None:
        if self._products is None:
            return None
        with self._dealer_step():
            closed = self._products.close()
        return self._products.dealer.session.counters().to_pb(closed.stats.seconds)

    def abort(self) -> None:
        products, self._products = self._products, None
        if products is not None:  # the dealer forgets the session's masks and triples
            products.dealer.session.abort("the registration session ended with an error")

    @contextmanager
    def _dealer_step(self) -> Iterator[None]:
        """A step that talks to the dealer. A dealer that refuses or fails ends the session
        as a protocol error rather than a fixed-party failure: the moving party can cause it
        (e.g. by asking a triple batch differently through its own dealer session)."""
        try:
            yield
        except PeerError as error:
            self.abort()
            raise ProtocolError(f"the dealer ended this session: {error}") from None
