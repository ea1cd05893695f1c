"""Two-party additive share arithmetic over Z_2^128 (the ``spdz`` Mattes protocol's log).

A value ``v`` is held as shares ``v_0 + v_1 = v mod 2^128`` (party 0, the moving party;
party 1, the fixed party), one NumPy object array of Python ints in ``[0, 2^128)`` per
party; on the wire a share travels as an int64 array of shape ``(..., 2)`` (low word,
high word: :func:`to_words`, :func:`from_words`). Fixed point: ``q(v) = round(v 2^F)``,
``F = FRACTION_BITS``, signed (the upper half of the ring is negative).

- :func:`multiply`: Beaver's product of shared operands with the dealer's triples
  ``(a, b, c = a b)``: each party opens its shares of ``x - a`` and ``y - b`` (uniform to
  the other), then ``[x y] = [c] + e [b] + f [a] + e f`` (``e f`` by party 0), truncated;
- :func:`truncate`: SecureML's local truncation by ``k`` bits: party 0 shifts its share,
  party 1 negates, shifts and negates. The result is ``floor(v / 2^k)`` or one more
  (1 ulp) unless the shares' sum wraps in between, which for ``|v| < 2^m`` happens with
  probability at most ``2^(m + 1 - 128)`` per element: the protocol keeps every truncated
  value below ``2^84`` in absolute value (products of two values below ``2^28`` at 56
  fractional bits), so a truncation fails with probability below ``2^-43`` per element;
  :func:`log` truncates 73 times per value;
- :func:`log`: the natural logarithm by CrypTen's Householder iteration (below), of
  ``v`` given as shares of ``100 v``. Its largest error, measured on 1200 points from
  ``1e-6`` to 1 (``tests/test_spdz_mattes.py``): 4e-5 over ``[1e-6, 1]``, 8e-6 over
  ``[1e-5, 1]``, 1.4e-6 over ``[1e-4, 1]`` (the float iteration's own error and the
  2^-28 fixed point of ``100 v``).

The protocol steps are generators: ``yield Send(array)`` hands this party's opening to
the driver, ``received = yield RECEIVE`` takes the peer's next one; a driver runs two
parties' generators against each other (:mod:`ppir_itk.backends.spdz_mattes`).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppir_itk.protocol.messages import ProtocolError

BITS = 128
MODULUS = 1 << BITS
MASK = MODULUS - 1
WORD = 1 << 64
WORD_MASK = WORD - 1
FRACTION_BITS = 28
LOG_SCALE = 100.0  # the log's input is scaled into CrypTen's range of convergence
LOG_ITERATIONS = 3
EXP_LIMIT_SQUARINGS = 8  # exp(z) ~ (1 + z / 2^8)^(2^8)
TAYLOR_SQUARINGS = 6  # exp(z) ~ T4(z / 2^6)^(2^6)
HOUSEHOLDER_ORDER = 8
# Products per element of one log (the dealer's triples): the limit's squarings, then per
# iteration u^2, u^3, u^4, the Taylor squarings, X exp(-y), and h^2 .. h^8.
LOG_PRODUCTS = EXP_LIMIT_SQUARINGS + LOG_ITERATIONS * (3 + TAYLOR_SQUARINGS + 1 + 7)
# Its product depths (one opening each way): u^2; u^3 and u^4; h^2; h^3 and h^4; h^5 .. h^8.
LOG_DEPTH = EXP_LIMIT_SQUARINGS + LOG_ITERATIONS * (2 + TAYLOR_SQUARINGS + 1 + 3)


@dataclass(frozen=True)
class Send:
    """A step's opening (int64 words) for the peer."""

    array: np.ndarray


RECEIVE = object()  # a step waits for the peer's next opening
Steps = Generator[object, Any, Any]  # a party's steps, as a driver runs them


def from_words(words: np.ndarray) -> np.ndarray:
    """An int64 array of shape ``(..., 2)`` (low, high words) as ring elements."""
    unsigned = np.ascontiguousarray(words).view(np.uint64)
    return unsigned[..., 0].astype(object) + unsigned[..., 1].astype(object) * WORD


def to_words(values: np.ndarray) -> np.ndarray:
    """Ring elements as int64 words of shape ``values.shape + (2,)``."""
    values = np.asarray(values, dtype=object) & MASK
    words = np.empty((*values.shape, 2), dtype=np.uint64)
    words[..., 0] = (values & WORD_MASK).astype(np.uint64)
    words[..., 1] = (values >> 64).astype(np.uint64)
    return words.view(np.int64)


def from_ring64(values: np.ndarray) -> np.ndarray:
    """Z_2^64 elements (int64) as the integers ``[0, 2^64)`` in Z_2^128."""
    return np.asarray(values).view(np.uint64).astype(object)


def to_ring64(values: np.ndarray) -> np.ndarray:
    """Reduction mod 2^64 (a ring map: shares stay shares), as int64."""
    return (np.asarray(values, dtype=object) & WORD_MASK).astype(np.uint64).view(np.int64)


def encode(values: np.ndarray | float, bits: int = FRACTION_BITS) -> np.ndarray:
    """``round(values 2^bits)`` as ring elements."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 2.0**bits)
    return np.vectorize(lambda v: int(v) & MASK, otypes=[object])(scaled)


def signed(values: np.ndarray) -> np.ndarray:
    """Ring elements read as signed integers in ``[-2^127, 2^127)``."""
    values = np.asarray(values, dtype=object) & MASK
    return np.where(values >= MODULUS // 2, values - MODULUS, values)


def decode(values: np.ndarray, bits: int = FRACTION_BITS) -> np.ndarray:
    """Opened ring elements back to floats (``signed(values) / 2^bits``)."""
    return np.vectorize(lambda v: math.ldexp(float(v), -bits), otypes=[np.float64])(signed(values))


def truncate(share: np.ndarray, bits: int, party: int) -> np.ndarray:
    """SecureML's local truncation of a share by ``bits`` (module docstring)."""
    share = np.asarray(share, dtype=object) & MASK
    if party == 0:
        return share >> bits
    return (-((-share & MASK) >> bits)) & MASK


def add_public(share: np.ndarray, value: np.ndarray | float, party: int) -> np.ndarray:
    """The share of ``v + value`` (party 0 adds the public value's encoding)."""
    return (share + encode(value)) & MASK if party == 0 else share


def scale(share: np.ndarray, factor: float, party: int) -> np.ndarray:
    """The share of ``v * factor`` for a public real ``factor`` (one truncation)."""
    return truncate(share * int(encode(factor)), FRACTION_BITS, party)


class Triples:
    """This party's shares of a batch's Beaver triples, taken in order."""

    def __init__(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        self.a, self.b, self.c = a, b, c
        self.used = 0

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, self.used = self.used, self.used + count
        if self.used > len(self.a):
            raise ValueError("the batch holds fewer triples than the protocol uses")
        return self.a[start : self.used], self.b[start : self.used], self.c[start : self.used]


def multiply(
    pairs: list[tuple[np.ndarray, np.ndarray]], triples: Triples, party: int, *, exact: bool = False
) -> Generator[object, np.ndarray, list[np.ndarray]]:
    """Shares of ``x * y`` for each pair of shared arrays (one opening for all of them);
    fixed point (truncated by ``FRACTION_BITS``) unless ``exact``."""
    shapes = [np.shape(x) for x, _ in pairs]
    x = np.concatenate([np.ravel(x) for x, _ in pairs])
    y = np.concatenate([np.ravel(y) for _, y in pairs])
    a, b, c = triples.take(len(x))
    own = np.concatenate([(x - a) & MASK, (y - b) & MASK])
    yield Send(to_words(own))
    received = yield RECEIVE
    if np.shape(received) != (len(own), 2):
        raise ProtocolError(
            f"an opening of shape {np.shape(received)} arrived for {len(own)} values"
        )
    opened = (own + from_words(received)) & MASK
    e, f = opened[: len(x)], opened[len(x) :]
    product = c + e * b + f * a + (e * f if party == 0 else 0)
    product = product & MASK if exact else truncate(product, FRACTION_BITS, party)
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(product[start : start + size].reshape(shape))
        start += size
    return out


def square(
    value: np.ndarray, triples: Triples, party: int
) -> Generator[object, np.ndarray, np.ndarray]:
    (out,) = yield from multiply([(value, value)], triples, party)
    return out


def log(
    scaled: np.ndarray, triples: Triples, party: int
) -> Generator[object, np.ndarray, np.ndarray]:
    """Shares of ``ln(v)`` from shares of ``X = LOG_SCALE v`` for ``v`` in ``[0, 1]`` (the
    caller scales: X keeps more of a small v's digits than v would), accuracy in the
    module docstring: CrypTen's Householder iteration,
    ``y_0 = X/120 - 20 exp_lim(-2X - 1) + 3``, then three times
    ``h = 1 - X exp(-y); y -= sum_{k=1..8} h^k / k``; ``ln v = y - ln 100``. For ``v``
    near 0, ``y`` stays above -13 (each iteration lowers it by at most
    ``sum 1/k < 2.72``), so every value stays within the truncation bound."""
    big = scaled
    # exp_lim(-2X - 1) = (1 + (-2X - 1) / 256)^256 = (255/256 - X/128)^256
    limit = add_public(-truncate(big, 7, party) & MASK, 1 - 1 / 256, party)
    for _ in range(EXP_LIMIT_SQUARINGS):
        limit = yield from square(limit, triples, party)
    y = add_public((scale(big, 1 / 120, party) - 20 * limit) & MASK, 3.0, party)
    for _ in range(LOG_ITERATIONS):
        u = -truncate(y, TAYLOR_SQUARINGS, party) & MASK  # -y / 64
        u2 = yield from square(u, triples, party)
        u3, u4 = yield from multiply([(u2, u), (u2, u2)], triples, party)
        higher = truncate(
            u2 * int(encode(1 / 2)) + u3 * int(encode(1 / 6)) + u4 * int(encode(1 / 24)),
            FRACTION_BITS,
            party,
        )
        taylor = add_public((u + higher) & MASK, 1.0, party)
        for _ in range(TAYLOR_SQUARINGS):
            taylor = yield from square(taylor, triples, party)
        (product,) = yield from multiply([(big, taylor)], triples, party)
        h = add_public(-product & MASK, 1.0, party)
        h2 = yield from square(h, triples, party)
        h3, h4 = yield from multiply([(h2, h), (h2, h2)], triples, party)
        h5, h6, h7, h8 = yield from multiply(
            [(h4, h), (h4, h2), (h4, h3), (h4, h4)], triples, party
        )
        powers = (h2, h3, h4, h5, h6, h7, h8)
        series = sum(
            (power * int(encode(1 / k)) for k, power in enumerate(powers, start=2)),
            start=h * (1 << FRACTION_BITS),
        )
        y = (y - truncate(series, FRACTION_BITS, party)) & MASK
    return add_public(y, -math.log(LOG_SCALE), party)


def run_pair(moving: Steps, fixed: Steps) -> tuple[object, object]:
    """Run two parties' steps against each other in one process (tests; the dealer-free
    reference of what the session does over messages): each Send goes to the peer's next
    Receive. Returns both generators' results."""
    generators = [moving, fixed]
    inboxes: list[list[np.ndarray]] = [[], []]
    results: list[object] = [None, None]
    done = [False, False]
    pending: list[object] = [None, None]  # the value to send into each generator next
    waiting = [False, False]
    while not all(done):
        progressed = False
        for party in (0, 1):
            if done[party] or (waiting[party] and not inboxes[party]):
                continue
            try:
                if waiting[party]:
                    step = generators[party].send(inboxes[party].pop(0))
                    waiting[party] = False
                else:
                    step = generators[party].send(pending[party])
                pending[party] = None
                while isinstance(step, Send):
                    inboxes[1 - party].append(step.array)
                    step = generators[party].send(None)
                waiting[party] = True
            except StopIteration as stop:
                results[party], done[party] = stop.value, True
            progressed = True
        if not progressed:
            raise RuntimeError("both parties wait for the other")
    return results[0], results[1]
