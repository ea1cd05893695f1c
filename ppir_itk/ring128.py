"""Two-party additive share arithmetic over Z_2^128 (the ``spdz`` Mattes protocol's log).

A value ``v`` is held as shares ``v_0 + v_1 = v mod 2^128`` (party 0, the moving party;
party 1, the fixed party), each a NumPy uint64 array of shape ``(..., 2)``: the low and
the high 64-bit words, added, multiplied and shifted with their carries by the functions
below (C kernels, :mod:`ppir_itk._kernels` ``ring128_*``: NumPy's per-call overhead
dominated arrays of B^2 + B values); on the wire a share travels as the same words
viewed as int64 (:func:`to_words`, :func:`from_words`). Fixed point: ``q(v) = round(v 2^F)``,
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
  :func:`log` truncates 96 times per value;
- :func:`log`: the natural logarithm by CrypTen's Householder iteration (below), of
  ``v`` given as shares of ``100 v``, in 31 product depths (:data:`LOG_DEPTH`; CrypTen's
  three order-8 iterations with exp by a degree-4 Taylor and six squarings took 44): each
  exp is a degree-8 or -16 Taylor polynomial, its terms ``u^k / k!`` doubled per depth
  (:func:`_powers`), and one squaring. Its largest error, measured on 1200 points from
  ``1e-6`` to 1 (``tests/test_spdz_mattes.py``), over 300 draws of shares and triples:
  7.5e-5 over ``[1e-6, 1]``, 2.05e-6 over ``[1e-5, 1]`` (the float iteration's own error,
  6e-5 and 3e-7, and the 2^-28 fixed point of ``100 v``), and over ``[1e-4, 1]`` 8.3e-7
  in the median draw, 1.28e-6 in the worst: there the truncations' random ulps dominate,
  multiplied by ``X`` (up to 100) in the last iteration's ``h = 1 - X exp(-y)``.

The protocol steps are generators: ``yield Send(array)`` hands this party's opening to
the driver, ``received = yield RECEIVE`` takes the peer's next one; a driver runs two
parties' generators against each other (:mod:`ppir_itk.backends.spdz_mattes`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppir_itk import _kernels
from ppir_itk.protocol.messages import ProtocolError

BITS = 128
MODULUS = 1 << BITS
MASK = MODULUS - 1
WORD = 1 << 64
WORD_MASK = WORD - 1
FRACTION_BITS = 28
LOG_SCALE = 100.0  # the log's input is scaled into CrypTen's range of convergence
LIMIT_SQUARINGS = 7  # the start's exp_lim(z) = (1 + z / 2^7)^(2^7)


@dataclass(frozen=True)
class LogIteration:
    """One Householder iteration of :func:`log`: ``exp(-y) ~ T(-y / 2^squarings)^(2^squarings)``
    with ``T`` the Taylor polynomial of ``degree``, and the series ``sum_{k<=order} h^k / k``
    (``degree`` and ``order`` powers of two: their powers take log2 of them product depths)."""

    degree: int
    squarings: int
    order: int

    @property
    def products(self) -> int:
        return (self.degree - 1) + self.squarings + 1 + (self.order - 1)

    @property
    def depth(self) -> int:
        return self.degree.bit_length() - 1 + self.squarings + 1 + self.order.bit_length() - 1


# Only the last iteration's exp sets the log's accuracy (an earlier one's error moves y, which
# the next h measures), so the earlier ones take a degree-8 exp; by the last, |h| < 0.05 for
# v >= 1e-5 (float, 4000 points), where order 4 leaves h^5 / 5 < 1e-7.
LOG_ITERATIONS = (LogIteration(8, 1, 8), LogIteration(8, 1, 8), LogIteration(16, 1, 4))
# Products per element of one log (the dealer's triples) and their depths (one opening each
# way per depth): the limit's squarings, then per iteration the Taylor terms, the squarings,
# X exp(-y) and h^2 .. h^order.
LOG_PRODUCTS = LIMIT_SQUARINGS + sum(iteration.products for iteration in LOG_ITERATIONS)
LOG_DEPTH = LIMIT_SQUARINGS + sum(iteration.depth for iteration in LOG_ITERATIONS)
# The most products one depth opens per element (the last doubling of the terms or powers).
LOG_WIDTH = max(max(iteration.degree, iteration.order) // 2 for iteration in LOG_ITERATIONS)


@dataclass(frozen=True)
class Send:
    """A step's opening (int64 words) for the peer."""

    array: np.ndarray


RECEIVE = object()  # a step waits for the peer's next opening
Steps = Generator[object, Any, Any]  # a party's steps, as a driver runs them


U64 = np.uint64
_LOW32 = U64(0xFFFFFFFF)
_ALL = U64(WORD_MASK)


# Ring arithmetic wraps on purpose; NumPy warns of it on 0-d operands (one ring element).
_wrapping = np.errstate(over="ignore")


def _words(low: Any, high: Any) -> np.ndarray:
    out = np.empty((*np.shape(low), 2), dtype=U64)
    out[..., 0], out[..., 1] = low, high
    return out


def from_words(words: np.ndarray) -> np.ndarray:
    """An int64 array of shape ``(..., 2)`` (low, high words), as it travels, as ring
    elements: the same words, unsigned."""
    return np.ascontiguousarray(words).view(U64)


def to_words(values: np.ndarray) -> np.ndarray:
    """Ring elements as the int64 words they travel as."""
    return np.ascontiguousarray(values).view(np.int64)


def scalar(value: int) -> np.ndarray:
    """A public integer (any sign) as one ring element."""
    value &= MASK
    return np.array([value & WORD_MASK, value >> 64], dtype=U64)


def _operand(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as a C-contiguous uint64 array of ``shape`` (a copy only where it must)."""
    if x.shape == shape and x.dtype == U64 and x.flags.c_contiguous:
        return x
    return np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=U64), shape))


def _binary(kernel: Callable[..., None], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A C kernel of :mod:`ppir_itk._kernels` on ``x`` and ``y`` broadcast to one shape."""
    shape = x.shape if x.shape == y.shape else np.broadcast_shapes(x.shape, y.shape)
    out = np.empty(shape, dtype=U64)
    kernel(_operand(x, shape), _operand(y, shape), out)
    return out


def add(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x + y`` mod 2^128 (broadcasting over the leading axes)."""
    return _binary(_kernels.ring128_add, x, y)


def negate(x: np.ndarray) -> np.ndarray:
    """``-x`` mod 2^128: the two's complement."""
    out = np.empty(x.shape, dtype=U64)
    _kernels.ring128_negate(_operand(x, x.shape), out)
    return out


def subtract(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x - y`` mod 2^128 (broadcasting over the leading axes)."""
    return _binary(_kernels.ring128_subtract, x, y)


def multiply_values(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x y`` mod 2^128, elementwise (broadcasting over the leading axes)."""
    return _binary(_kernels.ring128_multiply, x, y)


def times(x: np.ndarray, value: int) -> np.ndarray:
    """``x value`` for a public integer ``value``."""
    return multiply_values(x, scalar(value))


def shift_right(x: np.ndarray, bits: int) -> np.ndarray:
    """``floor(x / 2^bits)`` of ``x`` read in ``[0, 2^128)``."""
    out = np.empty(x.shape, dtype=U64)
    _kernels.ring128_shift_right(_operand(x, x.shape), bits, out)
    return out


def shift_left(x: np.ndarray, bits: int) -> np.ndarray:
    """``x 2^bits`` mod 2^128."""
    low, high = x[..., 0], x[..., 1]
    if bits == 0:
        return x.copy()
    if bits >= 64:
        return _words(np.zeros_like(low), low << U64(bits - 64))
    return _words(low << U64(bits), (high << U64(bits)) | (low >> U64(64 - bits)))


@_wrapping
def total(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """The sum along a leading ``axis``, mod 2^128 (the low words summed in 32-bit halves,
    exact for fewer than 2^32 terms)."""
    low, high = x[..., 0], x[..., 1]
    halves_low = (low & _LOW32).sum(axis=axis, dtype=U64)
    halves_high = (low >> U64(32)).sum(axis=axis, dtype=U64)
    summed_low = halves_low + (halves_high << U64(32))
    carry = (summed_low < halves_low).astype(U64) + (halves_high >> U64(32))
    return _words(summed_low, high.sum(axis=axis, dtype=U64) + carry)


def from_ring64(values: np.ndarray) -> np.ndarray:
    """Z_2^64 elements (int64) as the integers ``[0, 2^64)`` in Z_2^128."""
    low = np.asarray(values).view(U64)
    return _words(low, np.zeros_like(low))


def from_signed(values: np.ndarray) -> np.ndarray:
    """Signed 64-bit integers as ring elements (sign-extended)."""
    values = np.asarray(values, dtype=np.int64)
    return _words(values.view(U64), np.where(values < 0, _ALL, U64(0)))


def to_ring64(values: np.ndarray) -> np.ndarray:
    """Reduction mod 2^64 (a ring map: shares stay shares), as int64."""
    return np.ascontiguousarray(values[..., 0]).view(np.int64)


def encode(values: np.ndarray | float, bits: int = FRACTION_BITS) -> np.ndarray:
    """``round(values 2^bits)`` as ring elements (``|values| 2^bits < 2^63``)."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 2.0**bits)
    if np.any(np.abs(scaled) >= 2.0**63):
        raise ValueError("a fixed-point constant does not fit 64 bits")
    return from_signed(scaled.astype(np.int64))


def signed(values: np.ndarray) -> np.ndarray:
    """Ring elements read as signed integers, as floats (53 bits of them)."""
    negative = values[..., 1] >> U64(63) == 1
    magnitude = np.where(negative[..., None], negate(values), values)
    value = magnitude[..., 1].astype(np.float64) * 2.0**64 + magnitude[..., 0].astype(np.float64)
    return np.where(negative, -value, value)


def decode(values: np.ndarray, bits: int = FRACTION_BITS) -> np.ndarray:
    """Opened ring elements back to floats (``signed(values) / 2^bits``)."""
    return signed(values) * 2.0**-bits


def truncate(share: np.ndarray, bits: int, party: int) -> np.ndarray:
    """SecureML's local truncation of a share by ``bits`` (module docstring)."""
    out = np.empty(share.shape, dtype=U64)
    _kernels.ring128_truncate(_operand(share, share.shape), bits, party, out)
    return out


@functools.lru_cache(maxsize=64)
def _constant(value: float) -> np.ndarray:
    """A public real's encoding (the log's constants, encoded once; read-only)."""
    encoded = encode(value)
    encoded.flags.writeable = False
    return encoded


def add_public(share: np.ndarray, value: float, party: int) -> np.ndarray:
    """The share of ``v + value`` (party 0 adds the public value's encoding)."""
    return add(share, _constant(value)) if party == 0 else share


def scale(share: np.ndarray, factor: float, party: int) -> np.ndarray:
    """The share of ``v * factor`` for a public real ``factor`` (one truncation)."""
    return truncate(multiply_values(share, _constant(factor)), FRACTION_BITS, party)


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
    shapes = [np.shape(x)[:-1] for x, _ in pairs]
    x = np.concatenate([np.reshape(x, (-1, 2)) for x, _ in pairs])
    y = np.concatenate([np.reshape(y, (-1, 2)) for _, y in pairs])
    a, b, c = triples.take(len(x))
    own = np.concatenate([subtract(x, a), subtract(y, b)])
    yield Send(to_words(own))
    received = yield RECEIVE
    if np.shape(received) != (len(own), 2):
        raise ProtocolError(
            f"an opening of shape {np.shape(received)} arrived for {len(own)} values"
        )
    opened = add(own, from_words(received))
    product = np.empty_like(x)
    _kernels.ring128_beaver(opened[: len(x)], opened[len(x) :], a, b, c, party, product)
    if not exact:
        product = truncate(product, FRACTION_BITS, party)
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(product[start : start + size].reshape(*shape, 2))
        start += size
    return out


def square(
    value: np.ndarray, triples: Triples, party: int
) -> Generator[object, np.ndarray, np.ndarray]:
    (out,) = yield from multiply([(value, value)], triples, party)
    return out


def _weighted(terms: list[tuple[np.ndarray, float]], party: int) -> np.ndarray:
    """The share of ``sum w_k v_k`` for public reals ``w_k`` (one truncation)."""
    weighted = [multiply_values(value, _constant(weight)) for value, weight in terms]
    return truncate(functools.reduce(add, weighted), FRACTION_BITS, party)


def _powers(
    x: np.ndarray, count: int, triples: Triples, party: int, weight: Callable[[int], float]
) -> Generator[object, np.ndarray, list[np.ndarray]]:
    """Shares of ``weight(k) x^k`` for ``k = 1 .. count`` (``count`` a power of two,
    ``weight(1) = 1``) in log2(count) product depths: each depth doubles the terms known,
    ``t_{s+j} = t_s t_j weight(s+j) / (weight(s) weight(j))`` (the ratio applied to t_j
    first, one truncation, where it is not 1): with ``weight(k) = 1 / k!`` every term
    stays below ``e^|x|``, where plain powers would pass the truncation bound."""
    terms = [x]
    while len(terms) < count:
        known = len(terms)
        top = terms[-1]
        pairs = []
        for j, term in enumerate(terms, start=1):
            ratio = weight(known + j) / (weight(known) * weight(j))
            pairs.append((top, term if ratio == 1 else scale(term, ratio, party)))
        terms += yield from multiply(pairs, triples, party)
    return terms


def _unweighted(k: int) -> float:
    return 1.0


def _taylor(k: int) -> float:
    return 1 / math.factorial(k)


def _exp(
    z: np.ndarray, iteration: LogIteration, triples: Triples, party: int
) -> Generator[object, np.ndarray, np.ndarray]:
    """Shares of ``exp(z) ~ T(z / 2^s)^(2^s)`` (``T`` of the iteration's degree)."""
    reduced = truncate(z, iteration.squarings, party)
    terms = yield from _powers(reduced, iteration.degree, triples, party, _taylor)
    value = add_public(functools.reduce(add, terms), 1.0, party)
    for _ in range(iteration.squarings):
        value = yield from square(value, triples, party)
    return value


def log(
    scaled: np.ndarray, triples: Triples, party: int
) -> Generator[object, np.ndarray, np.ndarray]:
    """Shares of ``ln(v)`` from shares of ``X = LOG_SCALE v`` for ``v`` in ``[0, 1]`` (the
    caller scales: X keeps more of a small v's digits than v would), accuracy in the
    module docstring: CrypTen's Householder iteration from its start,
    ``y_0 = X/120 - 20 exp_lim(-2X - 1) + 3``, then per :data:`LOG_ITERATIONS`
    ``h = 1 - X exp(-y); y -= sum_{k=1..order} h^k / k``; ``ln v = y - ln 100``. For ``v``
    near 0, ``y`` stays above -13 (``y_0 >= -4.4`` and each iteration lowers it by at most
    ``sum 1/k < 2.72``), so every value stays within the truncation bound."""
    big = scaled
    # exp_lim(-2X - 1) = (1 + (-2X - 1) / 128)^128 = (127/128 - X/64)^128
    limit = add_public(
        negate(truncate(big, LIMIT_SQUARINGS - 1, party)), 1 - 2**-LIMIT_SQUARINGS, party
    )
    for _ in range(LIMIT_SQUARINGS):
        limit = yield from square(limit, triples, party)
    y = add_public(subtract(scale(big, 1 / 120, party), times(limit, 20)), 3.0, party)
    for iteration in LOG_ITERATIONS:
        exp = yield from _exp(negate(y), iteration, triples, party)
        (product,) = yield from multiply([(big, exp)], triples, party)
        h = add_public(negate(product), 1.0, party)
        powers = yield from _powers(h, iteration.order, triples, party, _unweighted)
        series = _weighted([(power, 1 / k) for k, power in enumerate(powers, start=1)], party)
        y = subtract(y, series)
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
