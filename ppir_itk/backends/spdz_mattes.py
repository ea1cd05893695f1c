"""Mattes mutual information on the ``spdz`` backend: additive shares and the dealer.

Notation: n points (the level's), B bins, d dimensions; Z64 = Z_2^64 (int64, wrapping),
Z128 = Z_2^128 (:mod:`ppir_itk.ring128`). The moving party is party 0, the fixed party
party 1. Every mask and share comes from the dealer (:mod:`ppir_itk.dealer`): one
``BatchRequest`` per evaluation and party, both asking the same items
(:func:`batch_items`), each party's own values from one seed, the fixed party's shares
``c1`` of the products and triples in full. Both parties ask for the next batch as soon as
they took one (it is there when the next evaluation starts). "Owned" products (one
operand known in full to each party) use the dealer's ``c0 + c1 = a b`` with ``a`` the
moving party's mask and ``b`` the fixed party's.

Inputs. The fixed party: its bins ``f`` (n,) in ``[0, B)``; ``A`` (B, n) one-hot,
``A[f_p, p] = 1``. The moving party (:class:`~ppir_itk.backends.base.ParzenFields`): ``W``
(B, n) its Parzen weights ``q(w) = round(w 2^e_W)`` on rows ``first_bin .. first_bin + 3``
(zero columns where invalid), ``D`` (B, n) their derivatives ``q(dw) = round(dw 2^e_D)``,
``q(g)`` (d, n) its gradient, ``C_j = sum_p W[j, p]``. Bits and why every Z64 sum is an
exact integer: :func:`ppir_itk.fixed_point.mattes_budget`.

Per level.

L1. Moving: ``spdz_mattes_level`` (empty). Fixed: takes the level mask ``U`` (B, n) from
    the dealer (``MaskRequest``) and answers ``F = A - U`` (Z64). The moving party
    learns nothing: F is uniform to it, which never sees U.

Per evaluation (:meth:`SPDZMattesBackend.histogram_term`).

R1. Moving sends ``E_W = W - V``, ``E_D = D - V2``, ``E_g = q(g) - V4`` (fresh moving
    masks; uniform to the fixed party). Shares of the histogram ``H = A W^T`` (B, B):
    moving ``h_0 = F W^T + c0``, fixed ``h_1 = U E_W^T + c1``, ``c0 + c1 = U V^T``.
R2. Lift to Z128: ``0 <= H < 2^62``, so the shares' sum wraps exactly when either share's
    top bit is set: ``h_0 + h_1 = H + 2^64 (m0 OR m1)``, ``m0 OR m1 = m0 + m1 - m0 m1``.
    ``m0 m1`` is an owned product: moving sends ``m0 - a``, fixed sends ``m1 - b`` (each
    uniform to its receiver), shares ``m0 (m1 - b) + c0`` and ``(m0 - a) b + c1``; it
    enters times 2^64, so shares mod 2^64 suffice. ``[H]_128 = h - 2^64 m + 2^64 [m0 m1]``
    per party.
R3. Fixed point, ``F = 28`` fractional bits in Z128: ``X = 100 H / (n 2^e_W)`` (times the
    public ``round(100 2^52 / n)``, truncated by ``e_W + 24`` bits: below 2^83) and its
    row sums (local). The secure log (:func:`ppir_itk.ring128.log`: 31 product depths,
    each one opening each way, all B^2 + B values at once) of ``X + 2^-28`` gives
    ``l = log(x)``; one more exact product gives ``100 Q = sum X l(x) - sum R l(r)`` at
    2^-56, and the fixed party sends its share of it: the moving party opens this one
    number. ``L = l(x) - log(C_j / (n 2^e_W))`` on column j (the moving party subtracts
    the public-to-it term from its share), truncated to ``f_L`` bits and reduced mod 2^64
    (a ring map: still shares).
R4. ``T = L D`` (B, n). The fixed party opens ``G = L_1 - b_L`` (uniform; b_L fresh);
    moving ``T_0 = (L_0 + G) D + c0``, fixed ``T_1 = b_L E_D + c1``, ``c0 + c1 = b_L V2``.
R5. ``s_p = sum_i A[i, p] T[i, p]``. Moving sends ``E_T = T_0 - V3`` (uniform). Moving
    ``s_0 = sum_i F . T_0 + c0``; fixed ``s_1 = T_1[f_p, p] + sum_i U . E_T + c1``,
    ``c0 + c1 = sum_i U . V3`` (the dealer's column sums).
R6. ``z = s q(g)`` (d, n). The fixed party opens ``O = s_1 - b_s`` (uniform; b_s fresh):
    moving ``z_0 = q(g) (s_0 + O) + c0``, fixed ``z_1 = E_g b_s + c1``, ``c0 + c1 = V4
    b_s``. ``|z| < 2^61``: offset by 2^61 (party 0) it lifts to Z128 as H did (R2, d n
    owned bits). The public map (16-bit limbs of the Z128 shares, each through the map's
    Z64 form) gives each party its share of the moments ``map(s g)`` (d, outputs), below
    2^127; the fixed party sends its share and the moving party decodes
    (``2^-(f_L + e_D + e_g + the map's column bits)``).

With a fixed mask ``M`` (the fixed party's, private to it; ``Welcome.fixed_masked``). L1: A's
column is zero at a point outside M (bin "none"), so H drops those points; R5's fixed term
``T_1[f_p, p]`` is taken only inside M. The moving marginal over the points inside M, ``c``
(H's column sums), is then joint:

R1 M. Moving also sends ``E_v = m - V5`` (its valid row, 1 x n; uniform); shares of
    ``A m^T`` (B x 1): moving ``F m^T + c0``, fixed ``U E_v^T + c1`` (``c0 + c1 = U V5^T``);
    each sums its share over the bins: shares of ``N = sum_p M_p m_p`` (exact, in Z64).
R3 M. The log takes the B column sums of X with the cells and the rows (B^2 + 2B values
    in the same 31 depths: no round trip more), ``Q' = sum x log x - sum r log r -
    sum c log c`` (one more exact product in the same batch) and ``L = l(x) - l(c_j)`` on
    shares (no public correction). The fixed party sends its share of N with its share of
    Q': the moving party opens ``Q'`` and ``N`` (``MaskedHistogram.count``), nothing else.

Folding ``sum c log c`` into Q' opens one number fewer than opening the moving marginal's
entropy apart: with ``S = N / n``, MI's value is ``(n / N) Q' + log S`` (the weights of a
point sum to 1), so the moving party reports ``entropy_difference = Q' + S log S`` and
``moving_negative_entropy = 0`` (base.py's ``MaskedHistogram``: the metric's
``(n / N) entropy_difference - moving_negative_entropy`` is the same value), and learns
no entropy of its own image restricted to M that the value does not already give.

Messages: ``spdz_mattes_step`` (moving -> fixed) and ``spdz_mattes_answer`` (fixed ->
moving) carry a round's openings in protocol order. Both parties run their steps as a
generator (``yield Send(array)``, ``received = yield RECEIVE``): the moving party sends
what it has when a step must wait for the fixed party, the fixed party answers when a step
must wait for the moving party or its evaluation is done. Symmetric openings pipeline, two
product depths per round trip: 19 round trips per evaluation (:data:`ROUND_TRIPS`), with or
without a fixed mask. Payload bytes per evaluation, moving to fixed:
``8 ((3B + 2d) n + B^2) + 32 (P + 1) V`` (R1, R2, R5 and R6's openings, then each party's
two Z128 openings of each of the log's P = 59 products and Q's one, over V = B^2 + B values;
message framing apart): 3.88 MB at B = 32, n = 2304, d = 2. A fixed mask adds ``8 n`` (E_v)
and makes ``V = B^2 + 2B``; the fixed party's answers grow by the same ``32 (P + 1) B`` and
8 bytes (N's share).

Failure bound. Every Z64 sum is an exact signed integer (the budget), and every lift is
exact. Each Z128 truncation is off by at most 1 ulp (2^-28) and fails (wrong by about
2^100) with probability at most ``2^(m + 1 - 128)`` for an input below ``2^m``
(:func:`ppir_itk.ring128.truncate`); every truncated input is below 2^84, so below 2^-43
per element. An evaluation truncates 98 (B^2 + B) elements (the log's 96 per value, X,
and L), so by the union bound it fails with probability below 2^-26 at B = 32 and 2^-20
at B = 256 (most inputs are far below 2^84: the bound is loose).

Disclosure. The moving party: Q and the d x outputs moments per evaluation (the fixed
party's policy counts ``d outputs + 1``; with a fixed mask Q' and N, ``d outputs + 2``).
Every other value either party receives is uniform to it (masked by a dealer mask its
receiver never sees); the dealer sees the sizes (B, n, d) and sequence numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppir_itk import _kernels, ring128
from ppir_itk.backends.base import (
    FixedSide,
    HistogramBackend,
    HistogramTerm,
    MaskedHistogram,
    MovingChannel,
    ParzenFields,
)
from ppir_itk.backends.spdz import TFP_REFUSED, dealer_figures, provider_of, session_token
from ppir_itk.dealer_client import (
    LEVEL_MASK,
    DealerClient,
    apply_product,
    mask_item,
    product_item,
    triples_item,
)
from ppir_itk.disclosure import Disclosure, Message, ProtocolTable
from ppir_itk.errors import InputError
from ppir_itk.fixed_point import MattesBits, decode, encode, exponent, mattes_budget
from ppir_itk.metric_kinds import MATTES, MetricSettings
from ppir_itk.points import PointSet
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import Counters, PeerError
from ppir_itk.protocol.messages import ProtocolError, add_array, array_from_pb, array_to_pb
from ppir_itk.randomness import secret_seed
from ppir_itk.ring128 import FRACTION_BITS, RECEIVE, Send, Steps, Triples
from ppir_itk.roles import FIXED, FIXED_PARTY, MOVING, MOVING_PARTY

MATTES_SETTINGS = MetricSettings(MATTES)
# Added to the log's inputs X: one ulp, so a truncated 0 (-1 ulp at worst) is not negative.
DELTA = 2.0**-FRACTION_BITS
SCALE_BITS = 24  # X = H round(100 2^(F + SCALE_BITS) / n) / 2^(e_W + SCALE_BITS)
LIMB_BITS = 16
# Added to s q(g) (below 2^61 in absolute value) before its lift: the sum's top bit is clear.
PRODUCT_OFFSET = np.uint64(1 << 61)
WINDOW = 4  # Parzen bins per point (cubic B-spline)
# Round trips per evaluation: the symmetric depths (the lift, the log's, Q's) pipeline two
# per round trip; then E_T for O (R5), R6's lift, and the moments.
ROUND_TRIPS = (1 + ring128.LOG_DEPTH + 1) // 2 + 3

TABLE = ProtocolTable(
    title="spdz, metric mattes (shares over Z_2^64 and Z_2^128, a trusted dealer; "
    "honest-but-curious, no MACs)",
    messages=(
        Message("spdz_mattes_level", MOVING_PARTY, "once per level", "nothing", "nothing"),
        Message(
            "spdz_mattes_level_opened",
            FIXED_PARTY,
            "once per level",
            "F = A - U: the fixed bins' one-hot B x n matrix under the dealer's uniform U",
            "nothing: F is uniform to the moving party, which never sees U",
        ),
        Message(
            "spdz_mattes_step",
            MOVING_PARTY,
            "per evaluation",
            "E_W = W - V, E_D = D - V2, E_g = q(g) - V4 (with a fixed mask E_v = m - V5), "
            "the two lifts' m0 - a, its share of "
            "each product's x - a and y - b (the log, Q), E_T = T_0 - V3 (fresh masks)",
            "nothing: every value is uniform to the fixed party",
        ),
        Message(
            "spdz_mattes_answer",
            FIXED_PARTY,
            "per evaluation",
            "the two lifts' m1 - b, its share of each product's openings, its share of Q "
            "(with a fixed mask, of Q' and N), "
            "G = L_1 - b_L, O = s_1 - b_s and its share of the moments",
            "Q and the moments, once added to the moving party's shares; the rest is uniform",
        ),
    ),
    disclosures=(
        Disclosure(
            "histogram_term",
            MOVING_PARTY,
            "the Mattes term",
            "values",
            "evaluation",
            note="the entropy difference Q = sum x log x - sum r log r of the joint "
            "histogram and the public map's d x outputs moments of s g_k; with a fixed mask, "
            "the histogram of the points inside it, Q' = Q - sum c log c (its moving "
            "marginal's term folded in, so that no entropy is opened apart) and the count N "
            "of points inside both masks",
        ),
        Disclosure(
            "opened_level",
            MOVING_PARTY,
            "F = A - U, the fixed bins' one-hot matrix hidden by the dealer's uniform U",
            "ring elements",
            "level",
            masked=True,
        ),
        Disclosure(
            "opened_fixed_shares",
            MOVING_PARTY,
            "the fixed party's openings (the lifts' m1 - b, each product's, G, O), each "
            "hidden by a dealer mask",
            "ring elements",
            "evaluation",
            masked=True,
        ),
        Disclosure(
            "opened_moving_shares",
            FIXED_PARTY,
            "E_W, E_D, E_g, E_T, m0 - a and each product's openings, each hidden by a fresh "
            "dealer mask",
            "ring elements",
            "evaluation",
            masked=True,
        ),
    ),
)


def log_values(bins: int, masked: bool) -> int:
    """The values the secure log takes per evaluation: the B^2 cells and the B row sums
    (with a fixed mask, the B column sums too)."""
    return bins * bins + (2 if masked else 1) * bins


def batch_items(bins: int, count: int, dimension: int, masked: bool = False) -> list[pb.DealerItem]:
    """One evaluation's dealer batch, in the order :func:`_moving_steps` uses it."""
    values = log_values(bins, masked)
    masked_items = [
        mask_item(MOVING, 1, count),  # 17 V5
        product_item("gram", 17, LEVEL_MASK),  # 18 U V5^T
    ]
    return [
        mask_item(MOVING, bins, count),  # 0 V
        mask_item(MOVING, bins, count),  # 1 V2
        mask_item(MOVING, dimension, count),  # 2 V4
        product_item("gram", 0, LEVEL_MASK),  # 3 U V^T
        mask_item(MOVING, bins, bins),  # 4 a (the lift's m0)
        mask_item(FIXED, bins, bins),  # 5 b (m1)
        product_item("elementwise", 4, 5),  # 6 a b
        triples_item((ring128.LOG_PRODUCTS + 1) * values),  # 7 the log's and Q's
        mask_item(MOVING, bins, count),  # 8 V3
        product_item("column_sums", 8, LEVEL_MASK),  # 9 sum_i U . V3
        mask_item(FIXED, bins, bins),  # 10 b_L
        product_item("left", 1, 10),  # 11 b_L V2
        mask_item(FIXED, 1, count),  # 12 b_s
        product_item("elementwise", 2, 12),  # 13 V4 b_s
        mask_item(MOVING, dimension, count),  # 14 a' (the second lift's m0)
        mask_item(FIXED, dimension, count),  # 15 b' (m1)
        product_item("elementwise", 14, 15),  # 16 a' b'
        *(masked_items if masked else []),
    ]


@dataclass(frozen=True)
class _Window:
    """The moving party's B x n matrices W and D as Parzen windows: column p is zero outside
    rows ``first[p] .. first[p] + 3``, where it holds ``weights[p]`` (W) or ``slopes[p]``
    (D), each (n, 4). Its products cost 4 B n multiply-adds, not the dense B^2 n."""

    bins: int
    first: np.ndarray
    weights: np.ndarray
    slopes: np.ndarray

    def subtract(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``M - mask`` over Z64 for M the window matrix of ``values``."""
        out = np.empty((self.bins, len(self.first)), dtype=np.uint64)
        _kernels.ring_window_subtract(self.first, _u64(values), _u64(mask), out)
        return out

    def gram(self, dense: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``dense M^T`` over Z64 for M the window matrix of ``values``."""
        out = np.empty((dense.shape[0], self.bins), dtype=np.uint64)
        _kernels.ring_window_gram(dense, self.bins, self.first, _u64(values), out)
        return out

    def left(self, left: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``left M`` over Z64 for M the window matrix of ``values``."""
        out = np.empty((left.shape[0], len(self.first)), dtype=np.uint64)
        _kernels.ring_window_left(left, self.first, _u64(values), out)
        return out


def _u64(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values).view(np.uint64)


def _i64(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values).view(np.int64)


def _receive(shape: tuple[int, ...]) -> Generator[object, np.ndarray, np.ndarray]:
    received = yield RECEIVE
    if received.shape != shape:
        raise ProtocolError(
            f"a Mattes share of shape {received.shape} arrived where {shape} was due"
        )
    return received


def _lifted(
    h: np.ndarray, top: np.ndarray, own: np.ndarray, opened: np.ndarray, share: np.ndarray
) -> np.ndarray:
    """R2: this party's Z128 share of H from its Z64 share ``h``, its top bits ``top`` and
    its share ``own * opened + share`` of ``m0 m1`` (mod 2^64): as words (..., 2), low
    ``h`` and high ``[m0 m1] - top``, i.e. ``h + 2^64 ([m0 m1] - top)``."""
    words = np.empty((*np.shape(h), 2), dtype=np.uint64)
    words[..., 0] = _u64(h)
    words[..., 1] = _u64(own) * _u64(opened) + _u64(share) - top
    return words.view(np.int64)


def _logs(
    histogram: np.ndarray,
    count: int,
    bits: MattesBits,
    triples: Triples,
    party: int,
    masked: bool = False,
) -> Generator[object, np.ndarray, tuple[Any, np.ndarray]]:
    """R3 for both parties: shares of ``100 Q`` (at 2^-2F) and of ``l(x + delta)`` (B, B) at
    2^-F. The log takes ``X = 100 x`` (:func:`ppir_itk.ring128.log`), computed from H in
    one product by a public integer (below 2^(24 + 7 + 28 + SCALE_BITS) = 2^83).

    ``masked`` (a fixed mask: the column sums ``c`` of x, the moving marginal over the
    points inside it, are joint): the log takes them with the cells and the rows, ``Q`` is
    ``sum x log x - sum r log r - sum c log c`` and the cells' logs come back as
    ``l(x) - l(c_j)``, i.e. L before its truncation (R3 M)."""
    bins = histogram.shape[0]
    factor = round(ring128.LOG_SCALE * 2.0 ** (FRACTION_BITS + SCALE_BITS) / count)
    scaled = ring128.truncate(
        ring128.times(histogram, factor), bits.weight_fraction + SCALE_BITS, party
    )
    marginals = [ring128.total(scaled, axis=1)]
    if masked:
        marginals.append(ring128.total(scaled, axis=0))
    cells_in = scaled.reshape(-1, 2)
    inputs = ring128.add_public(np.concatenate([cells_in, *marginals]), DELTA, party)
    logs = yield from ring128.log(inputs, triples, party)
    cells = logs[: bins * bins]
    marginal_logs = [
        logs[bins * bins + bins * k : bins * bins + bins * (k + 1)] for k in range(len(marginals))
    ]
    weighted, *marginal_weighted = yield from ring128.multiply(
        [(cells_in, cells), *zip(marginals, marginal_logs, strict=True)],
        triples,
        party,
        exact=True,
    )
    entropy = ring128.total(weighted)
    for product in marginal_weighted:
        entropy = ring128.subtract(entropy, ring128.total(product))
    cells = cells.reshape(bins, bins, 2)
    if masked:
        cells = ring128.subtract(cells, marginal_logs[1][None, :])
    return entropy, cells


def _mapped(points: PointSet, words: np.ndarray) -> np.ndarray:
    """The public map of (d, n) Z128 shares as words (d, n, 2): (d, outputs) Z128 shares.
    The map's Z64 form (:meth:`~ppir_itk.linear_map.PublicLinearMap.ring`) on 16-bit limbs,
    each exact: (points per output) 2^(weight_bits + 16) < 2^63
    (:func:`~ppir_itk.fixed_point.mattes_budget` checks it)."""
    basis, unsigned = points.linear_map, _u64(words)
    limb_mask = np.uint64((1 << LIMB_BITS) - 1)
    total: np.ndarray | None = None
    for word in range(2):
        for shift in range(0, 64, LIMB_BITS):
            limb = ((unsigned[..., word] >> np.uint64(shift)) & limb_mask).astype(np.int64)
            mapped = ring128.from_signed(basis.ring(np.ascontiguousarray(limb.T)))
            part = ring128.shift_left(mapped, 64 * word + shift)
            total = part if total is None else ring128.add(total, part)
    assert total is not None, "two words of limbs"
    return total


def _lowered(logs: np.ndarray, bits: MattesBits, party: int) -> np.ndarray:
    """L from 2^-F in Z128 to 2^-f_L in Z64 (truncation, then reduction mod 2^64)."""
    return ring128.to_ring64(ring128.truncate(logs, FRACTION_BITS - bits.log_fraction, party))


class _Dealer:
    """A party's batches: one per evaluation, the next asked for as soon as one is taken."""

    def __init__(self, client: DealerClient) -> None:
        self.client = client
        self._sequence = 0
        self._next: Callable[[], list[Any]] | None = None

    def ask(self, level: int, items: list[pb.DealerItem], level_shape: tuple[int, int]) -> None:
        self._next = self.client.post_batch(self._sequence, level, items, level_shape)
        self._sequence += 1

    def take(self, level: int, items: list[pb.DealerItem], level_shape: tuple[int, int]) -> list:
        assert self._next is not None, "each level asks for its first batch"
        values = self._next()
        self.ask(level, items, level_shape)
        return values

    def drain(self) -> None:
        # The batch asked ahead for an evaluation that did not come (the level ended): both
        # parties take it and drop it, so their sequence numbers stay in step.
        if self._next is not None:
            self._next()
            self._next = None


class SPDZMattesBackend(HistogramBackend):
    """Moving-party half (party 0): R1-R6 of the module docstring."""

    name = "spdz"
    protocol = "spdz"
    scheme = "additive secret sharing over Z_2^64 and Z_2^128, trusted dealer, no MACs"
    private = True
    table = TABLE
    bspline = True
    fixed_mask_metrics = (MATTES,)

    def __init__(
        self,
        channel: MovingChannel,
        parameters: dict[str, str] | None = None,
        metric: MetricSettings = MATTES_SETTINGS,
    ) -> None:
        parameters = dict(parameters or {})
        provider = provider_of(parameters)
        if provider == "tfp" and not channel.single_process:
            raise InputError(TFP_REFUSED)
        self._connect_dealer = channel.connect_dealer(first_party=provider == "tfp")
        parameters["session_token"] = secret_seed().hex()
        super().__init__(channel, parameters, metric)
        self._dealer: _Dealer | None = None
        self._level = -1
        self.round_trips = 0  # of the last evaluation
        self.dealer_closed: pb.Closed | None = None

    def _on_points(self, points: PointSet) -> None:
        if self._dealer is None:
            token = bytes.fromhex(self.parameters["session_token"])
            self._dealer = _Dealer(self._connect_dealer(token))
        self._dealer.drain()
        self._level += 1
        bins, count = self.metric.histogram_bins, points.size
        self._bits = mattes_budget(count, points.linear_map.weight_bits, points.linear_map.support)
        reply = self.channel.exchange(pb.BackendMessage(spdz_mattes_level=pb.SpdzMattesLevel()))
        if reply.WhichOneof("body") != "spdz_mattes_level_opened":
            raise ProtocolError(
                f"the fixed party answered '{reply.WhichOneof('body')}' to 'spdz_mattes_level'"
            )
        opened = array_from_pb(reply.spdz_mattes_level_opened.opened, max_elements=bins * count)
        if opened.shape != (bins, count) or opened.dtype != np.int64:
            raise ProtocolError("the fixed party's opened bins do not fit the level")
        self._opened = opened
        self.received.add("opened_level", bins * count)
        self._items = batch_items(bins, count, points.geometry.dimension, self.fixed_masked)
        self._dealer.ask(self._level, self._items, (bins, count))
        # the map of the lift's offset (R6), taken off the moving party's share
        ones = np.ones((count, points.geometry.dimension), dtype=np.int64)
        self._offset_map = ring128.from_signed(points.linear_map.ring(ones))

    def _histogram_term(self, fields: ParzenFields) -> HistogramTerm:
        assert self._dealer is not None, "on_points() connects the dealer"
        points, bits = self.level_points, self._bits
        bins, count = self.metric.histogram_bins, points.size
        first = np.asarray(fields.first_bin, dtype=np.int64)
        valid = np.asarray(fields.valid).astype(bool)
        if first.shape != (count,) or np.any(valid & ((first < 0) | (first > bins - WINDOW))):
            raise InputError(
                f"the Parzen windows must start in bins 0 to {bins - WINDOW} at the level's "
                f"{count} points"
            )
        e_d = exponent(
            float(np.abs(fields.derivatives[valid]).max(initial=0.0)), bits.derivative_bits
        )
        e_g = exponent(float(np.abs(fields.gradient).max(initial=0.0)), bits.g_bits)
        # W and D as windows (zero at rows 0 .. 3 where invalid), and dense
        window = _Window(
            bins,
            np.where(valid, first, 0),
            np.zeros((count, WINDOW), dtype=np.int64),
            np.zeros((count, WINDOW), dtype=np.int64),
        )
        window.weights[valid] = encode(fields.weights[valid], bits.weight_fraction)
        window.slopes[valid] = encode(fields.derivatives[valid], e_d)
        gradient = np.ascontiguousarray(encode(fields.gradient.T, e_g))
        # C_j = sum_p W[j, p], exact (below 2^62): the window's product with a row of ones
        totals = window.gram(np.ones((1, count), dtype=np.uint64), window.weights)[0]
        totals = totals.view(np.int64)
        correction = np.zeros(bins)
        filled = totals > 0
        if not self.fixed_masked:  # with a fixed mask the marginal is joint: R3 M
            correction[filled] = np.log(totals[filled] / (count * 2.0**bits.weight_fraction))
        values = self._dealer.take(self._level, self._items, (bins, count))
        steps = self._moving_steps(window, gradient, correction, valid, values)
        entropy, mapped, inside = self._run(steps)
        moments = ring128.signed(mapped)
        basis = points.linear_map
        opened = moments.size + 1 + (1 if self.fixed_masked else 0)
        self.received.add("histogram_term", opened, detail=f"{basis.name} moments")
        difference = float(ring128.decode(entropy, 2 * FRACTION_BITS)) / ring128.LOG_SCALE
        masked = None
        if inside is not None:
            # Q folds the moving marginal's sum c log c in: (n / N) Q + log(N / n) is the MI's
            # value, so with N / n folded in too the metric's (n / N) difference - 0 is it.
            share = inside / count
            difference += share * np.log(share) if inside else 0.0
            masked = MaskedHistogram(count=inside, moving_negative_entropy=0.0)
        return HistogramTerm(
            entropy_difference=difference,
            moments=decode(moments, bits.log_fraction + e_d + e_g + basis.column_bits),
            basis_weight_bits=basis.axis_weight_bits,
            masked=masked,
        )

    def _moving_steps(
        self,
        window: _Window,
        gradient: np.ndarray,
        correction: np.ndarray,
        valid: np.ndarray,
        values: list[Any],
    ) -> Generator[object, np.ndarray, tuple[Any, np.ndarray, int | None]]:
        """Party 0's R1-R6 on this evaluation's batch ``values`` (:func:`batch_items`); with
        a fixed mask, the count N too (else None)."""
        v, v2, v4, c_histogram, a, _, c_bit, triples, v3, c_select, _, c_left, _, c_gradient = (
            values[:14]
        )
        a_gradient, _, c_gradient_bit = values[14:17]
        bins, count = window.bins, len(window.first)
        opened, bits, masked = _u64(self._opened), self._bits, self.fixed_masked
        # R1
        yield Send(_i64(window.subtract(window.weights, v)))
        yield Send(_i64(window.subtract(window.slopes, v2)))
        yield Send(_i64(_u64(gradient) - _u64(v4)))
        h = window.gram(opened, window.weights) + _u64(c_histogram)
        if masked:  # R1 M: N = sum_p M_p valid_p, A's column sums times the valid row
            v5, c_count = values[17:]
            valid_row = valid.astype(np.uint64)[None, :]
            yield Send(_i64(valid_row - _u64(v5)))
            count_share = (apply_product("gram", valid_row, opened) + _u64(c_count)).sum()
        # R2
        top = h >> np.uint64(63)
        yield Send(_i64(top - _u64(a)))
        fixed_opening = yield from _receive((bins, bins))
        histogram = ring128.from_words(_lifted(h, top, top, fixed_opening, c_bit))
        # R3
        shared = Triples(*(ring128.from_words(part) for part in triples))
        entropy, logs = yield from _logs(histogram, count, self._bits, shared, MOVING, masked)
        logs = ring128.subtract(logs, ring128.encode(correction)[None, :])
        logs_ring = _lowered(logs, bits, MOVING)
        fixed_entropy = yield from _receive((1, 2))
        entropy = ring128.add(entropy, ring128.from_words(fixed_entropy)[0])
        inside = None
        if masked:
            fixed_count = yield from _receive((1,))
            inside = int(np.add(count_share, _u64(fixed_count)).view(np.int64)[0])
        # R4
        masked_logs = yield from _receive((bins, bins))
        t = window.left(_u64(logs_ring) + _u64(masked_logs), window.slopes) + _u64(c_left)
        # R5
        yield Send(_i64(t - _u64(v3)))
        s = apply_product("column_sums", t, opened)[0] + _u64(c_select)[0]
        # R6
        masked_s = yield from _receive((1, count))
        product = _u64(gradient) * (s + _u64(masked_s)[0]) + _u64(c_gradient) + PRODUCT_OFFSET
        top = product >> np.uint64(63)
        yield Send(_i64(top - _u64(a_gradient)))
        fixed_opening = yield from _receive(product.shape)
        lifted = _lifted(product, top, top, fixed_opening, c_gradient_bit)
        moments = ring128.subtract(
            _mapped(self.level_points, lifted), ring128.times(self._offset_map, int(PRODUCT_OFFSET))
        )
        fixed_moments = yield from _receive(moments.shape)
        return entropy, ring128.add(moments, ring128.from_words(fixed_moments)), inside

    def _run(self, steps: Steps) -> Any:
        """Drive the moving party's steps: send what is due when a step must wait."""
        outbox: list[np.ndarray] = []
        inbox: deque[np.ndarray] = deque()
        answer: np.ndarray | None = None
        self.round_trips = 0
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                if inbox or outbox:
                    raise ProtocolError(
                        "the fixed party sent more shares than Mattes uses"
                    ) from None
                return done.value
            answer = None
            if isinstance(step, Send):
                outbox.append(step.array)
                continue
            if not inbox:
                inbox.extend(self._exchange(outbox))
                outbox = []
                if not inbox:
                    raise ProtocolError("the fixed party's answer lacks a share Mattes needs")
            answer = inbox.popleft()

    def _exchange(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        message = pb.BackendMessage()
        _add_shares(message.spdz_mattes_step.shares, arrays)
        reply = self.channel.exchange(message)
        self.round_trips += 1
        if reply.WhichOneof("body") != "spdz_mattes_answer":
            raise ProtocolError(
                f"the fixed party answered '{reply.WhichOneof('body')}' to 'spdz_mattes_step'"
            )
        received = _arrays(reply.spdz_mattes_answer.shares, self._max_elements)
        self.received.add("opened_fixed_shares", sum(a.size for a in received))
        return received

    @property
    def _max_elements(self) -> int:
        return _max_elements(self.metric.histogram_bins, self.level_points, self.fixed_masked)

    def close(self) -> None:
        if self._dealer is not None:
            self._dealer.drain()
            self.dealer_closed = self._dealer.client.close()

    def other_parties(self, closed: pb.Closed) -> dict[str, tuple[Counters, float]]:
        """The dealer's figures, as the SSD protocol reports them."""
        if self._dealer is None or self.dealer_closed is None:
            return {}
        return dealer_figures(self._dealer.client, self.dealer_closed, closed)


def _max_elements(bins: int, points: PointSet, masked: bool = False) -> int:
    """The most elements one share array of a Mattes round holds: a (B, n) or (d, n)
    opening, or a log depth's openings (``LOG_WIDTH`` products of B^2 + B values, each
    two openings of 2 words)."""
    log_depth = 4 * ring128.LOG_WIDTH * log_values(bins, masked)
    return max(bins, points.geometry.dimension) * points.size + log_depth


def _add_shares(shares: Any, arrays: list[np.ndarray]) -> None:
    """Append a round's share arrays (int64 words) to a message's repeated ``Array`` field,
    built in place (:func:`~ppir_itk.protocol.messages.add_array`)."""
    for array in arrays:
        add_array(shares, _i64(array))


def _arrays(arrays: Any, max_elements: int) -> list[np.ndarray]:
    out = []
    for array in arrays:
        value = array_from_pb(array, max_elements=max_elements)
        if value.dtype != np.int64:
            raise ProtocolError("a Mattes share is not a ring element array (int64)")
        out.append(value)
    return out


class SPDZMattesFixedSide(FixedSide):
    """Fixed-party half (party 1): answers each round with its openings and shares."""

    table = TABLE
    bspline = True
    metrics = (MATTES,)
    fixed_mask_metrics = (MATTES,)

    def __init__(
        self,
        parameters: dict[str, str],
        policy: FixedPolicy,
        metric: MetricSettings = MATTES_SETTINGS,
    ) -> None:
        super().__init__(parameters, policy, metric)
        provider = provider_of(parameters)
        if provider == "tfp" and not policy.single_process:
            raise ProtocolError(TFP_REFUSED)
        if policy.dealer is None:
            raise ProtocolError("this fixed party has no dealer configured for backend 'spdz'")
        if policy.joint_term_noise > 0:
            raise ProtocolError(
                "this fixed party's joint-term noise is for the sums of mean squares and "
                "correlation; metric mattes on backend 'spdz' adds none: serve it without "
                "--joint-term-noise"
            )
        self._token = session_token(parameters)
        self._connect_dealer = policy.dealer
        self._dealer: _Dealer | None = None
        self._level = -1
        self._steps: Steps | None = None
        self._inbox: deque[np.ndarray] = deque()

    def on_points(
        self, values: np.ndarray, points: PointSet, fixed_mask: np.ndarray | None = None
    ) -> None:
        bins = self.metric.histogram_bins
        values = np.asarray(values)
        if values.shape != (points.size,) or not np.all(
            (values == np.floor(values)) & (values >= 0) & (values < bins)
        ):
            raise ProtocolError(f"the fixed bins must be {points.size} integers in [0, {bins})")
        if self._dealer is None:
            with self._dealer_step():
                self._dealer = _Dealer(self._connect_dealer(self._token))
        try:
            self._bits = mattes_budget(
                points.size, points.linear_map.weight_bits, points.linear_map.support
            )
        except InputError as error:
            raise ProtocolError(str(error)) from None
        assert (fixed_mask is not None) == self.fixed_masked, "the mask comes with fixed_masked"
        self._points = points
        self._bins = values.astype(np.int64)
        # the points outside the mask: bin "none", a zero column of A
        self._inside = (
            np.ones(points.size, dtype=np.uint64)
            if fixed_mask is None
            else np.asarray(fixed_mask, dtype=np.uint64)
        )
        self._level += 1
        self._level_pending = True
        self._steps = None

    def sums_per_evaluation(self, points: PointSet) -> int:
        """The moments and Q, with a fixed mask the count N too (checked before any product,
        and charged per evaluation)."""
        masked = 1 if self.fixed_masked else 0
        return points.geometry.dimension * points.linear_map.outputs + 1 + masked

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        kind = message.WhichOneof("body")
        expected = "spdz_mattes_level" if self._level_pending else "spdz_mattes_step"
        if kind != expected:
            raise ProtocolError(f"'{kind}' does not fit this point of the Mattes protocol")
        assert self._dealer is not None, "on_points() connects the dealer"
        bins, count = self.metric.histogram_bins, self._points.size
        if self._level_pending:
            self._level_pending = False
            with self._dealer_step():
                self._dealer.drain()
                self._mask = _u64(self._dealer.client.masks(self._level, bins, count).copy())
                self._items = batch_items(
                    bins, count, self._points.geometry.dimension, self.fixed_masked
                )
                self._dealer.ask(self._level, self._items, (bins, count))
            one_hot = np.zeros((bins, count), dtype=np.uint64)
            one_hot[self._bins, np.arange(count)] = self._inside
            opened = array_to_pb(_i64(one_hot - self._mask))
            return pb.BackendMessage(
                spdz_mattes_level_opened=pb.SpdzMattesLevelOpened(opened=opened)
            )
        received = _arrays(
            message.spdz_mattes_step.shares,
            _max_elements(bins, self._points, self.fixed_masked),
        )
        self.received.add("opened_moving_shares", sum(a.size for a in received))
        self._inbox.extend(received)
        if self._steps is None:
            with self._dealer_step():
                values = self._dealer.take(self._level, self._items, (bins, count))
            self._steps = self._fixed_steps(values)
            answer: np.ndarray | None = None
        elif self._inbox:
            answer = self._inbox.popleft()
        else:
            raise ProtocolError("the moving party's message lacks a share Mattes needs")
        outbox: list[np.ndarray] = []
        while True:
            try:
                step = self._steps.send(answer)
            except StopIteration:
                self._steps = None
                self.evaluations += 1
                if self._inbox:
                    raise ProtocolError(
                        "the moving party sent more shares than Mattes uses"
                    ) from None
                break
            answer = None
            if isinstance(step, Send):
                outbox.append(step.array)
                continue
            if not self._inbox:
                break  # the generator waits at this Receive for the next request
            answer = self._inbox.popleft()
        reply = pb.BackendMessage()
        _add_shares(reply.spdz_mattes_answer.shares, outbox)
        return reply

    def _fixed_steps(self, values: list[Any]) -> Steps:
        """Party 1's R1-R6 on this evaluation's batch ``values`` (:func:`batch_items`)."""
        _, _, _, c_histogram, _, b, c_bit, triples, _, c_select, b_logs, c_left, b_s, c_gradient = (
            values[:14]
        )
        _, b_gradient, c_gradient_bit = values[14:17]
        points, bits, u, masked = self._points, self._bits, self._mask, self.fixed_masked
        bins, count, d = self.metric.histogram_bins, points.size, points.geometry.dimension
        # R1
        masked_weights = yield from _receive((bins, count))
        masked_derivatives = yield from _receive((bins, count))
        masked_gradient = yield from _receive((d, count))
        h = apply_product("gram", _u64(masked_weights), u) + _u64(c_histogram)
        if masked:  # R1 M
            c_count = values[18]
            masked_valid = yield from _receive((1, count))
            count_share = (apply_product("gram", _u64(masked_valid), u) + _u64(c_count)).sum()
        # R2
        top = h >> np.uint64(63)
        yield Send(_i64(top - _u64(b)))
        moving_opening = yield from _receive((bins, bins))
        histogram = ring128.from_words(_lifted(h, top, moving_opening, b, c_bit))
        # R3
        shared = Triples(*(ring128.from_words(part) for part in triples))
        entropy, logs = yield from _logs(histogram, count, bits, shared, FIXED, masked)
        logs_ring = _lowered(logs, bits, FIXED)
        yield Send(ring128.to_words(entropy[None]))
        if masked:
            yield Send(_i64(np.array([count_share], dtype=np.uint64)))
        # R4
        yield Send(_i64(_u64(logs_ring) - _u64(b_logs)))
        t = apply_product("left", _u64(masked_derivatives), _u64(b_logs)) + _u64(c_left)
        # R5
        masked_t = yield from _receive((bins, count))
        selected = t[self._bins, np.arange(count)] * self._inside
        s = selected + apply_product("column_sums", _u64(masked_t), u)[0] + _u64(c_select)[0]
        # R6
        yield Send(_i64(s - _u64(b_s)[0])[None, :])
        product = _u64(masked_gradient) * _u64(b_s) + _u64(c_gradient)
        top = product >> np.uint64(63)
        yield Send(_i64(top - _u64(b_gradient)))
        moving_opening = yield from _receive(product.shape)
        lifted = _lifted(product, top, moving_opening, b_gradient, c_gradient_bit)
        yield Send(ring128.to_words(_mapped(points, lifted)))

    def close(self) -> pb.PartyStats | None:
        if self._dealer is None:
            return None
        with self._dealer_step():
            self._dealer.drain()
            closed = self._dealer.client.close()
        return self._dealer.client.session.counters().to_pb(closed.stats.seconds)

    def abort(self) -> None:
        dealer, self._dealer = self._dealer, None
        if dealer is not None:  # the dealer forgets the session's masks and batches
            dealer.client.session.abort("the registration session ended with an error")

    @contextmanager
    def _dealer_step(self) -> Iterator[None]:
        """A step that talks to the dealer: a dealer that refuses ends the session as a
        protocol error (the moving party can cause it: :class:`~.spdz.SPDZFixedSide`)."""
        try:
            yield
        except PeerError as error:
            self.abort()
            raise ProtocolError(f"the dealer ended this session: {error}") from None
