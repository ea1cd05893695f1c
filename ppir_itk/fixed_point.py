"""Fixed-point encoding and the exactness budget of the private backends' sums.

The private backends compute the joint term on integers: ``q(x) = round(x 2^e)``
with a power-of-two exponent ``e`` chosen per vector (:func:`exponent`,
:func:`encode`), and every sum they reveal is an exact integer sum, decoded by
dividing out the exponents (:func:`decode`). A sum is exact when its true value
fits the modulus it is computed in (the ring Z_2^64 of ``spdz``, read as signed
integers; BFV's plain modulus ``t`` of ``he``, read as centred
representatives). :func:`budget` gives every factor its bits so that it does.

The argument, in one place
--------------------------

A factor encoded with ``b`` bits has ``|q| <= 2^(b - 1)`` (:func:`exponent` puts
the largest value below ``2^(b - 1)``; rounding can reach it, not pass it). A
public map's weights (:mod:`ppir_itk.linear_map`) satisfy ``|w| < 2^W``
(``W = weight_bits``) and each of its outputs sums over at most ``s`` points
(``s = support``). With ``n`` points, ``L(x) = ceil(log2(max(x, 2)))`` and the
modulus's ``B = bits``:

- a moment ``sum_x w(x) q(g(x)) q(J(x))`` over one output's points:
  ``|.| <= 2^(L(s) + W + (b_g - 1) + (b_J - 1))``; the budget spends
  ``L(s) + W + b_g + b_J = B``, so ``|.| < 2^(B - 2)``;
- for a map whose every output sums over all n points (the affine basis), the
  two totals ``sum_x q(I_w) q(J)`` and ``sum_x m q(J)^2`` (``m`` in {0, 1}) are
  sums of the same shape with the weight 1: ``b_w = b_g + W`` gives
  ``|sum q(I_w) q(J)| <= 2^(B - 2)``, and ``2 b_J <= B - L(n) - W`` keeps
  ``sum q(J)^2`` below it;
- for a map with local support (a B-spline's control points) the totals sum
  over more points than any output, with the modulus's own limits:
  ``L(n) + 2 b_J <= squared_bits`` and ``L(n) + b_w + b_J = warped_bits``, so
  ``|sum q(J)^2| <= 2^(squared_bits - 2)`` and
  ``|sum q(I_w) q(J)| <= 2^(warped_bits - 2)``;
- correlation's ``sum_x m q(J)``: ``|.| <= 2^(L(n) + b_J - 1)``, below the bound of
  ``sum q(J)^2`` by ``b_J - 1`` bits, so it is exact wherever that sum is.
- a fixed mask ``M``: below.

The moduli: :data:`PLAIN_MODULUS` (``he``: ``t`` is a 60-bit prime, so every
``|sum| < 2^58 = 2^SUM_BITS`` is below ``t / 2``, and ``B = 59`` keeps the moments
under ``2^57``) and :data:`RING` (``spdz``: ``B = 64`` keeps them under
``2^62 < 2^63``). No product is ever truncated and the masks add modulo the same
modulus, so the unmasked sum is the true integer sum; decoding divides by a
power of two, exactly. ``b_J`` takes half of what the moments leave (less if a
total binds), ``b_g`` the rest; fewer than :data:`MINIMUM_BITS` for any factor is
refused. Both parties derive the bits from public figures (``n``, the map).

A fixed mask ``M`` (``M(x)`` in {0, 1}, the fixed party's) replaces ``J`` by ``M J`` and adds
sums whose fixed-party factor is ``M`` itself (:class:`~ppir_itk.backends.base.MaskedSums`):
``q(M J) = M q(J)`` keeps every bound above, and a moving-party row ``r`` against ``M`` has
one factor of at most 1 where ``q(J)`` had ``2^(b_J - 1)``. :func:`masked_budget` gives the
rows of its own (requantised) products their bits: ``q(g_k I_w)`` through the map with
``b_p = B - 1 - L(s) - W``, so ``|sum w M q(g_k I_w)| <= 2^(B - 2)`` as the moments;
``q(I_w^2)`` over the n points with ``b_s = squared_bits - 1 - L(n)``, so
``|sum M q(I_w^2)| <= 2^(squared_bits - 2)``, as the joint term's totals.
Correlation's ``sum M q(I_w)`` and the map of ``M q(g_k)`` take the joint term's own
``q(I_w)`` and ``q(g)``: their bounds are those of ``sum q(I_w) q(J)`` and the moments
without the factor ``|q(J)|``. ``sum m M`` is at most n.

Noise (``FixedPolicy.joint_term_noise``): the fixed party may add an integer noise
to each sum before the moving party sees it, of deviation ``beta`` times the most
one voxel of J can add to that sum (:func:`voxel_bits`). The bounds above leave
each sum below ``2^(limit - 2)``, half of what its modulus holds; a noise below
``2^(limit - 2)`` keeps the noisy sum exact too (:func:`noise_room`). Correlation's
``sum m q(J)``, of which one voxel adds at most ``2^(b_J - 1)``, takes the same
``beta`` with room to spare: ``sum q(J)^2``'s noise bounds its noise. The masked sums'
rooms are at least the moments' (``2^L(s) / 9``): one voxel of ``M`` adds at most
``2^(B - 2 - L(s))`` to a moment of ``M q(g_k I_w)`` and ``2^(limit - 2 - L(n))`` to
``sum M q(I_w^2)``, so :func:`noise_room` bounds them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import overload

import numpy as np

from ppir_itk.errors import InputError

PLAIN_BITS = 60  # BFV's batching plain modulus t: a prime of this many bits
SUM_BITS = PLAIN_BITS - 2  # every exact sum mod t stays below 2^SUM_BITS in absolute value
RING_BITS = 64
MINIMUM_BITS = 8  # fewer bits for J, g or I_w would make the joint term too coarse


@dataclass(frozen=True)
class Modulus:
    """Where a backend's exact sums live and the bits :func:`budget` may spend on them."""

    where: str  # how the refusal names it ("in the 64-bit ring")
    bits: int  # B: the moments' factors and support
    squared_bits: int  # local-support maps: L(n) + 2 b_J at most this
    warped_bits: int  # local-support maps: L(n) + b_w + b_J exactly this


PLAIN_MODULUS = Modulus("at this plain modulus", SUM_BITS + 1, SUM_BITS, SUM_BITS + 1)
# The ring's totals keep two bits more headroom than its moments (unlike the plain
# modulus's): kept so that B-spline results stay bit-identical.
RING = Modulus("in the 64-bit ring", RING_BITS, RING_BITS - 2, RING_BITS - 2)


@dataclass(frozen=True)
class Bits:
    """Fixed-point bits (sign included) of ``q(J)``, ``q(g)`` and ``q(I_w)``."""

    j_bits: int
    g_bits: int
    w_bits: int


def exponent(largest: float, bits: int) -> int:
    """The power-of-two scale that puts ``largest`` just below ``2^(bits - 1)``."""
    if largest <= 0 or not math.isfinite(largest):
        return bits - 1
    return bits - 1 - math.ceil(math.log2(largest * (1 + 1e-12)))


def encode(values: np.ndarray, scale: int) -> np.ndarray:
    """``round(values 2^scale)`` as int64 (halves to even, as NumPy rounds)."""
    return np.round(values * 2.0**scale).astype(np.int64)


@overload
def decode(values: float, scale: int) -> float: ...
@overload
def decode(values: np.ndarray, scale: int | np.ndarray) -> np.ndarray: ...
def decode(values: np.ndarray | float, scale: int | np.ndarray) -> np.ndarray | float:
    """``values / 2^scale``: exact sums back to floats (``scale`` may be per column)."""
    return values / 2.0**scale


def log2_ceiling(count: int) -> int:
    """``L(count) = ceil(log2(max(count, 2)))``: the bits a sum over ``count`` terms adds."""
    return math.ceil(math.log2(max(count, 2)))


def budget(modulus: Modulus, points: int, weight_bits: int, support: int | None = None) -> Bits:
    """The bits of ``q(J)``, ``q(g)`` and ``q(I_w)`` for exact sums (module docstring).

    ``points`` is n; ``weight_bits`` bounds the map's weights (``|w| < 2^weight_bits``);
    ``support`` bounds the points any one output sums over, or is None when every
    output sums over all n (the affine basis). Raises :class:`InputError` when a
    factor would get fewer than :data:`MINIMUM_BITS`.
    """
    log_n = log2_ceiling(points)
    spare = modulus.bits - log2_ceiling(points if support is None else support) - weight_bits
    if support is None:
        j_bits = spare // 2
        bits = Bits(j_bits, spare - j_bits, spare - j_bits + weight_bits)
    else:
        j_bits = min(spare // 2, (modulus.squared_bits - log_n) // 2)
        bits = Bits(j_bits, spare - j_bits, modulus.warped_bits - log_n - j_bits)
    if min(bits.j_bits, bits.g_bits, bits.w_bits) < MINIMUM_BITS:
        fits = "are too many" if support is None else "and this control grid leave too few bits"
        raise InputError(
            f"{points} points {fits} for exact sums {modulus.where}: sample them (URS) or use fewer"
        )
    return bits


@dataclass(frozen=True)
class MaskedBits:
    """Bits (sign included) of the moving party's requantised rows against a fixed mask."""

    product_bits: int  # q(g_k I_w), through the public map
    squared_bits: int  # q(I_w^2), summed over the points


def masked_budget(
    modulus: Modulus, points: int, weight_bits: int, support: int | None = None
) -> MaskedBits:
    """The bits of ``q(g_k I_w)`` and ``q(I_w^2)`` whose sums against a fixed mask ``M``
    (``|M| <= 1``) stay exact: a moment over one output's points, and a total over all n
    within the totals' bits (module docstring; arguments as :func:`budget`'s)."""
    log_n = log2_ceiling(points)
    bits = MaskedBits(
        modulus.bits - 1 - log2_ceiling(points if support is None else support) - weight_bits,
        modulus.squared_bits - 1 - log_n,
    )
    if min(bits.product_bits, bits.squared_bits) < MINIMUM_BITS:
        raise InputError(
            f"{points} points are too many for exact masked sums {modulus.where}: "
            "sample them (URS) or use fewer"
        )
    return bits


def voxel_bits(bits: Bits, weight_bits: int) -> tuple[int, int, int]:
    """``log2`` of the most one voxel of J adds to a moment, to ``I_w . J`` and to
    ``sum J^2``: ``|w| < 2^W`` and ``|q| <= 2^(b - 1)`` per factor."""
    return (
        weight_bits + bits.g_bits + bits.j_bits - 2,
        bits.w_bits + bits.j_bits - 2,
        2 * bits.j_bits - 2,
    )


def noise_room(modulus: Modulus, bits: Bits, weight_bits: int, local: bool) -> float:
    """The largest noise deviation, as a multiple of one voxel's most (:func:`voxel_bits`),
    that keeps every noisy sum exact: a noise draw is below 9 deviations
    (:func:`ppir_itk.randomness.gaussian_integers`), and ``9 beta 2^v <= 2^(limit - 2)``.
    ``local``: the map has local support (the totals then have their own limits)."""
    limits = (
        modulus.bits,
        modulus.warped_bits if local else modulus.bits,
        modulus.squared_bits if local else modulus.bits,
    )
    return min(
        2.0 ** (limit - 2 - v) / 9
        for limit, v in zip(limits, voxel_bits(bits, weight_bits), strict=True)
    )


# -- spdz Mattes (ppir_itk.backends.spdz_mattes) -----------------------------------------
MATTES_WEIGHT_BITS = 24  # fractional bits of the Parzen weights: H = A q(W)^T is exact
MATTES_LOG_BITS = 14  # fractional bits of L, the log ratio, once lowered to Z_2^64
MATTES_DERIVATIVE_BITS = 20  # bits (sign included) of the Parzen derivatives q(D)
MATTES_GRADIENT_BITS = 21  # bits (sign included) of the gradient q(g)
MATTES_MAX_POINT_BITS = 38  # n 2^MATTES_WEIGHT_BITS <= 2^62: H's shares lift exactly
MATTES_LIMB_BITS = 16  # the map on Z_2^128 shares runs the Z_2^64 map on limbs this wide


@dataclass(frozen=True)
class MattesBits:
    """The fixed-point bits of the spdz Mattes protocol (:func:`mattes_budget`)."""

    weight_fraction: int  # e_W: q(W) = round(W 2^e_W), so H < n 2^e_W
    log_fraction: int  # f_L: L in Z_2^64 at 2^-f_L
    derivative_bits: int  # b_D
    g_bits: int  # b_g


MATTES_BITS = MattesBits(
    MATTES_WEIGHT_BITS, MATTES_LOG_BITS, MATTES_DERIVATIVE_BITS, MATTES_GRADIENT_BITS
)


def mattes_budget(points: int, weight_bits: int, support: int | None = None) -> MattesBits:
    """The bits of the spdz Mattes protocol's exact integer sums (:data:`MATTES_BITS`).

    - The histogram ``H = A q(W)^T`` sums ``n`` one-hot products of weights below
      ``2^e_W``: ``H < n 2^e_W <= 2^62`` for ``n <= 2^38``, so its shares' sum has its
      top bit clear (its lift to Z_2^128 needs it).
    - ``s_p = sum_c q(L)[f_p, c] q(D)[p, c]`` adds 4 terms with ``|q(L)| < 2^(6 + f_L)``
      and ``|q(D)| <= 2^(b_D - 1)``: ``L = l(x) - log(c_j)`` with the secure log ``l``
      in ``[-17.2, 0]`` (:func:`ppir_itk.ring128.log` stays above -17.1 even at 0) and
      ``0 <= -log(c_j) <= log(n 2^e_W) <= 43.1``, so ``|L| < 2^6``. With
      ``|q(g)| <= 2^(b_g - 1)``, ``|s q(g)| < 2^(2 + 6 + f_L + b_D - 1 + b_g - 1)`` and
      ``6 + f_L + b_D + b_g = 61``: offset by 2^61, the value lies in ``(0, 2^62)``, its
      shares' top bits say their wrap, and it lifts to Z_2^128 exactly.
    - The moments ``sum w s q(g)`` then sum over at most ``2^L(s)`` points (``s`` the map's
      support; n for the affine basis) in Z_2^128: below ``2^(L(s) + W + 61) < 2^127``.
      The map runs on 16-bit limbs of the shares, each exact in Z_2^64 while
      ``L(s) + W + 16 <= 62``; a map or point set beyond that is refused.
    """
    outputs = log2_ceiling(points if support is None else support)
    if points > 1 << MATTES_MAX_POINT_BITS or outputs + weight_bits + MATTES_LIMB_BITS > 62:
        raise InputError(
            f"{points} points are too many for the Mattes histogram {RING.where}: "
            "sample them (URS) or use fewer"
        )
    return MATTES_BITS
