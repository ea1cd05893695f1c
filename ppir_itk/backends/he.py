"""The ``he`` backend: the joint term under homomorphic encryption (SEAL via TenSEAL).

Protocol ``packed`` (the default), per level and per iteration:

1. Once per session the fixed party sends its public key and encryption
   parameters. Once per level it encrypts and sends its fixed-point vectors
   ``q(phi_j) q(J)`` (j < d), ``q(J)`` and ``q(J)^2`` on the agreed points,
   interleaved so that each of the ``d (d + 1) + 2`` sums the joint term needs
   has its own range of slots in every ciphertext (:func:`interleave`), under its
   secret key: a fresh symmetric BFV ciphertext travels seeded (half its bytes), at
   the lowest level of the modulus chain that leaves the moving party room for its
   flood (:func:`upload_level`: 5 of the 8 primes at N = 16384, 5/8 of the bytes
   again; 567 kB a ciphertext against 1.83 MB unseeded at the top level).
   ``q`` is fixed-point: ``q(J) = round(J 2^e_J)`` with a power-of-two exponent
   ``e_J`` the fixed party publishes, ``q(phi) = round(phi 2^e_phi)`` with an
   exponent both parties derive from the public grid.
2. Each iteration, the moving party lays its own fixed-point vectors
   (``q(g_k)``, ``q(I_w)``, the valid mask) out the same way, multiplies each
   ciphertext by its plaintext row - plaintext x ciphertext products only, no
   rotations - and adds the products into one accumulator. It adds a mask
   drawn uniformly mod t in every slot (from the operating system's CSPRNG,
   :func:`~ppir_itk.randomness.uniform_below`), switches the modulus down as far
   as the flood leaves room for, adds a fresh encryption of zero under the fixed
   party's key and floods the noise (:func:`flooding`): noise uniform on a range
   2^40 N times the computation's worst-case noise bound, so that what the fixed
   party decrypts has a noise within statistical distance 2^-40 of one that
   depends on nothing (and a second component the encryption of zero makes
   pseudorandom under RLWE): it depends on the masked slots only. The fixed
   party holds the secret key and could otherwise read the moving party's
   plaintexts in the rounding noise of the switches (:mod:`ppir_itk.noise_attack`).
   It sends that one ciphertext.
3. The fixed party decrypts it and returns the total of each slot range mod
   t. Those totals are uniformly random to it: the masks hide them exactly.
   The moving party removes its masks (it knows their range totals), gets the
   exact integer sums and divides out the fixed-point exponents: the affine
   moments, ``I_w . J`` and ``sum_valid J^2``.

Large levels, one point per slot (:func:`one_point_per_slot`, which both parties derive
from the public n and number of sums): interleaving uploads every fixed vector, so the
level costs ``ceil(n / floor(N / sums))`` ciphertexts; the fixed party then encrypts only
``q(J)`` and ``q(J)^2`` (and ``M``) one point per slot (``2 ceil(n / N)``, or 3), and the
moving party folds the public weights ``q(phi_j)`` into its own rows
(:func:`point_factor`): one accumulator per sum, the same products, each masked,
switched and flooded as above, and the fixed party returns each ciphertext's slot total
mod t. The same exact sums; ``sums - 1`` more reply ciphertexts per evaluation, so
this layout is taken where the level ciphertexts it saves outweigh
:data:`REPLY_EVALUATIONS` evaluations' extra replies (the MNI volume at 2 mm, 1.07 M
points, 14 sums: 198 ciphertexts at most against 914; the brain pair's 56,576 points
stay interleaved).

A correlation session also needs ``sum_valid J``: one more slot range, which
pairs the moving party's valid mask with the ``q(J)`` the level already
encrypts (:func:`sum_pairs`), so the fixed party encrypts nothing new; a
B-spline sends one more accumulated product, ``q(J) m``.

B-spline transforms (a control grid in the points): the joint term's public
map has one output per control point, too many for slot ranges, so the map
moves to the fixed party's side of the masking. Per level the fixed party
encrypts ``q(J)`` and ``q(J)^2`` one point per slot. Per iteration the moving
party sends, for each k, the products ``q(J) q(g_k)`` (ceil(n / slots)
ciphertexts), and the two accumulated products ``q(J) q(I_w)`` and
``q(J)^2 m``, each masked uniformly mod t per slot, switched down and
re-randomised as above. The fixed party decrypts the uniformly masked values,
applies the public B-spline map mod t (fixed-point weights,
:meth:`~ppir_itk.linear_map.PublicLinearMap.mod_t`) and totals the two sums;
the moving party applies the same map to its masks and subtracts. The moving
party's own ``S^T I_w`` uses the same weights.

A fixed mask ``M`` (the fixed party's, 0 or 1 at each point; ``Welcome.fixed_masked``
says there is one): the fixed party encrypts ``M q(J)`` for ``q(J)`` (so ``M q(J)^2`` for
``q(J)^2``) and, as more fixed vectors, ``w_c M`` and ``M``; the moving party pairs them
with ``q(g_k I_w)`` and ``q(I_w^2)`` (its own products, each with its own exponent of
:func:`~ppir_itk.fixed_point.masked_budget` bits), its valid mask, and (correlation)
``q(g_k)`` and ``q(I_w)``: the :class:`~ppir_itk.backends.base.MaskedSums` are
``d outputs + 2`` more slot ranges (correlation: ``2 d outputs + 3``) of the same
accumulator (:func:`sum_pairs`). Still one ciphertext and one round trip per iteration
(measured, 64 x 60 points, N = 16384: 672 kB per evaluation either way, the totals 68
bytes more for mean squares, 124 for correlation); per level the fixed party sends as
many rows as the ranges need (``ceil(n / floor(N / sums))``). A B-spline adds ``M``'s
rows to the level (``ceil(n / N)``), and per iteration ``d ceil(n / N)`` products of
``M`` with ``q(g_k I_w)`` (correlation: with ``q(g_k)`` too) and two (three) totals:
2.7 MB -> 5.4 MB per evaluation for mean squares, 3.4 -> 8.1 MB for correlation (the
same points, an 8-pixel control grid).
``M`` is encrypted under the fixed party's key like ``J``: the moving party learns only
the masked sums (linear measurements of ``M``, counted and noised as the joint term's),
the fixed party nothing more than before.

The scheme is BFV (exact integers mod t), not CKKS: a mask drawn uniformly mod
t hides a BFV message perfectly, while a CKKS mask only hides it statistically
and costs precision. The paper's protocols (:mod:`.he_paper`) run CKKS.

What each party learns: the moving party learns the joint term (and, from
the exponent, the power of two that bounds J's largest value); the fixed
party learns nothing (uniformly masked sums, and ciphertexts whose noise is
flooded). Parameters: ``poly_modulus_degree`` 16384 (default) or 32768, SEAL's
HE-standard coefficient modulus for 128-bit security, a 60-bit batching plain
modulus; anything weaker is refused, and so is 8192, which leaves no room for
the flood.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import zstandard

from ppir_itk import _kernels
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
    sums_per_evaluation,
    wants_fixed_sum,
)
from ppir_itk.disclosure import Disclosure, Message, ProtocolTable
from ppir_itk.errors import InputError
from ppir_itk.fixed_point import (
    PLAIN_BITS,
    PLAIN_MODULUS,
    decode,
    encode,
    exponent,
    masked_budget,
)
from ppir_itk.metric_kinds import MEAN_SQUARES_SETTINGS, MetricSettings
from ppir_itk.points import PointSet
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError, array_from_pb, array_to_pb
from ppir_itk.randomness import expand, secret_seed, uniform_below
from ppir_itk.roles import FIXED_PARTY, MOVING_PARTY

POLY_MODULUS_DEGREES = (8192, 16384, 32768)
DEFAULT_DEGREE = 16384  # the smallest with room to flood the noise (8192 is refused then)
SECURITY_LEVELS = {128: "TC128", 192: "TC192", 256: "TC256"}
# Noise flooding (circuit privacy): the ciphertext the fixed party decrypts is within
# statistical distance 2^-FLOOD_SECURITY_BITS of one that depends on the masked slots only.
FLOOD_NOISE = True  # the defence; tests switch it off to show the attack it stops
FLOOD_SECURITY_BITS = 40
UNFLOODED_MOD_SWITCHES = 2  # without flooding: switch down twice (smaller ciphertext)
# one_point_per_slot: the evaluations per level its choice of layout is made for, and the
# vectors a level laid out one point per slot uploads at most (q(J), q(J)^2, M).
REPLY_EVALUATIONS = 20
POINT_ROWS = 3
# SEAL's serialisation header: how the members behind it are compressed.
NO_COMPRESSION, ZSTD_COMPRESSION = 0, 2
# SEAL samples fresh noise from a normal with standard deviation 3.2 clipped at 6 sigma.
NOISE_MAX_DEVIATION = 19.2


TABLE = ProtocolTable(
    title="he, protocol packed (BFV)",
    messages=(
        Message("he_key_request", MOVING_PARTY, "once per session", "nothing", "nothing"),
        Message(
            "he_key",
            FIXED_PARTY,
            "once per session",
            "the fixed party's BFV public key",
            "nothing about J",
        ),
        Message("he_level_request", MOVING_PARTY, "once per level", "nothing", "nothing"),
        Message(
            "he_level",
            FIXED_PARTY,
            "once per level",
            "BFV ciphertexts of q(phi_j) q(J), q(J) and q(J)^2 (a B-spline or a level laid "
            "out one point per slot: q(J) and q(J)^2, one point per slot), and the exponent "
            "e_J; with a fixed mask M, of M q(J) for q(J), and of q(phi_j) M and M too (one "
            "point per slot: of M)",
            "e_J, the power of two bounding J; the ciphertexts hide J and M (IND-CPA)",
        ),
        Message(
            "he_masked_products",
            MOVING_PARTY,
            "per evaluation",
            "one ciphertext (one point per slot: one per sum; a B-spline: d ceil(n / N) + 2, "
            "or + 3 for correlation; with a fixed mask 2 d ceil(n / N) + 4, or "
            "3 d ceil(n / N) + 6) of the "
            "products with the moving party's vectors, each slot masked uniformly mod t, "
            "switched down, "
            "re-randomised, its noise flooded",
            "the decrypted slots are uniform mod t; the decryption noise is flooded (within "
            "2^-40 of a flood alone), so it says nothing of the moving party's plaintexts",
        ),
        Message(
            "he_masked_totals",
            FIXED_PARTY,
            "per evaluation",
            "the masked slot-range totals mod t (one point per slot: each ciphertext's slot "
            "total; a B-spline: the public map mod t of the "
            "masked products, and two totals; three for correlation); with a fixed mask, "
            "the masked sums' totals too",
            "the joint term (and the masked sums), once the moving party removes its masks",
        ),
    ),
    disclosures=(
        *EXACT_SUMS_DISCLOSURES,
        MASKED_SUMS_DISCLOSURE,
        Disclosure(
            "masked_slots",
            FIXED_PARTY,
            "slot totals mod t, each hidden by a uniform mask only the moving party knows",
            "values",
            "evaluation",
            masked=True,
        ),
    ),
)


def _seal() -> Any:
    try:
        import tenseal.sealapi as seal
    except ImportError:  # pragma: no cover - tenseal is a dependency
        raise InputError("backend 'he' needs TenSEAL: pip install tenseal") from None
    return seal


def he_settings(parameters: dict[str, str]) -> tuple[int, int]:
    """``(poly_modulus_degree, security_bits)`` from backend parameters, or a refusal."""
    try:
        degree = int(parameters.get("poly_modulus_degree", DEFAULT_DEGREE))
        security = int(parameters.get("security_bits", 128))
    except ValueError:
        raise InputError("backend 'he' parameters must be whole numbers") from None
    if security not in SECURITY_LEVELS:
        raise InputError(
            f"security_bits={security} is refused: ppir_itk runs homomorphic "
            "encryption at 128, 192 or 256-bit security only"
        )
    if degree not in POLY_MODULUS_DEGREES:
        # With the flood on, 8192 is refused below, with its own reason.
        allowed = [d for d in POLY_MODULUS_DEGREES if not FLOOD_NOISE or d >= DEFAULT_DEGREE]
        raise InputError(
            f"poly_modulus_degree={degree} is refused: exact 60-bit products at "
            f"{security}-bit security need a degree of {' or '.join(map(str, allowed))}"
        )
    if FLOOD_NOISE:  # refused now rather than at the first evaluation
        seal = _seal()
        level = getattr(seal.SEC_LEVEL_TYPE, SECURITY_LEVELS[security])
        primes = [prime.value() for prime in seal.CoeffModulus.BFVDefault(degree, level)]
        flooding(degree, seal.PlainModulus.Batching(degree, PLAIN_BITS).value(), primes[:-1], 1)
    return degree, security


class HEContext:
    """SEAL objects for one set of parameters, and byte (de)serialisation.

    SEAL's Python bindings read and write files only; the bytes pass through
    a private temporary directory, and SEAL's loader validates what it reads.
    """

    def __init__(self, degree: int, security: int) -> None:
        seal = _seal()
        self.seal = seal
        parameters = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
        parameters.set_poly_modulus_degree(degree)
        level = getattr(seal.SEC_LEVEL_TYPE, SECURITY_LEVELS[security])
        parameters.set_coeff_modulus(seal.CoeffModulus.BFVDefault(degree, level))
        parameters.set_plain_modulus(seal.PlainModulus.Batching(degree, PLAIN_BITS))
        self.context = seal.SEALContext(parameters, True, level)
        if not self.context.parameters_set():  # SEAL checks the HE standard's bounds
            raise InputError(
                f"SEAL refuses the parameters: {self.context.parameters_error_message()}"
            )
        self.degree = degree
        self.t = parameters.plain_modulus().value()
        self.encoder = seal.BatchEncoder(self.context)
        self.evaluator = seal.Evaluator(self.context)
        self.slots = self.encoder.slot_count()
        # Removed by close(), or when this object goes (TemporaryDirectory's finaliser).
        self._directory = tempfile.TemporaryDirectory(
            prefix="ppir-he-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        self._folder = self._directory.name
        # SEAL's loader wants its own version in a header: the one its save writes.
        self._version = self.to_bytes(seal.Plaintext())[3:5]

    def close(self) -> None:
        """Remove the folder SEAL's save/load go through."""
        self._directory.cleanup()

    def to_bytes(self, obj: Any) -> bytes:
        path = os.path.join(self._folder, "out")
        obj.save(path)
        with open(path, "rb") as handle:
            return handle.read()

    def from_bytes(self, kind: str, data: bytes) -> Any:
        path = os.path.join(self._folder, "in")
        with open(path, "wb") as handle:
            handle.write(data)
        obj = getattr(self.seal, kind)()
        try:
            obj.load(self.context, path)
        except (RuntimeError, ValueError) as error:
            raise ProtocolError(f"a {kind} from the peer is invalid: {error}") from None
        return obj

    def coefficients(self, ciphertext: Any) -> np.ndarray:
        """The RNS coefficients of ``ciphertext``, shape (size, primes, degree), uint64.

        SEAL's ``save`` compresses (zstd) and the bindings expose no buffer, so the
        coefficients are read one at a time from SEAL's own array (a copy).
        """
        data = ciphertext.dyn_array()
        values = np.fromiter(
            (data[i] for i in range(data.size())), dtype=np.uint64, count=data.size()
        )
        return values.reshape(ciphertext.size(), ciphertext.coeff_modulus_size(), self.degree)

    def with_coefficients(self, ciphertext: Any, values: np.ndarray, ntt_form: bool) -> Any:
        """A ciphertext at ``ciphertext``'s level holding ``values`` (as from
        :meth:`coefficients`): SEAL's documented serialisation, uncompressed, loaded back
        by SEAL's loader (which checks every coefficient against its prime)."""
        array = np.ascontiguousarray(values, dtype="<u8")
        size, primes, degree = array.shape
        data = struct.pack("<Q", array.size) + array.tobytes()
        body = (
            struct.pack("<4Q", *ciphertext.parms_id())
            + bytes([ntt_form])
            + struct.pack("<QQQdQ", size, degree, primes, 1.0, 1)
            + self._header(len(data))
            + data
        )
        return self.from_bytes("Ciphertext", self._header(len(body)) + body)

    def _header(self, payload: int, compression: int = NO_COMPRESSION) -> bytes:
        """SEAL's serialisation header (magic, its size, version, compression, total
        size) for ``payload`` bytes."""
        return (
            struct.pack("<HB", 0xA15E, 16)
            + self._version
            + struct.pack("<BHQ", compression, 0, 16 + payload)
        )

    def _members(self, blob: bytes) -> bytes:
        """What SEAL's ``save`` wrote behind its header, uncompressed."""
        magic, _, _, compression, _, size = struct.unpack_from("<HB2sBHQ", blob)
        assert magic == 0xA15E and size == len(blob), "SEAL's own serialisation"
        body = blob[16:]
        if compression == ZSTD_COMPRESSION:
            return zstandard.ZstdDecompressor().decompress(body)
        assert compression == NO_COMPRESSION, "SEAL compresses with zstd (or not at all)"
        return body

    def levels(self) -> list[Any]:
        """The ``parms_id`` of every level of the modulus chain, the top one first."""
        ids = []
        data = self.context.first_context_data()
        while data is not None:
            ids.append(data.parms_id())
            data = data.next_context_data()
        return ids

    def encrypt_seeded(self, encryptor: Any, values: np.ndarray, parms_id: Any) -> bytes:
        """A fresh symmetric encryption of the batched ``values`` at the level ``parms_id``,
        serialised seeded (``c1`` as SEAL's PRNG seed) and zstd-compressed.

        SEAL encrypts symmetrically at the top level only, and a ciphertext switched down
        loses its seed; so ``encryptor`` (under the secret key) encrypts zero seeded at the
        level, and the plaintext's scaled copy, ``round(q m / t)``, is added to that zero's
        ``c0`` as SEAL's encryption adds it (:func:`~ppir_itk._kernels.bfv_add_scaled`).
        SEAL's loader expands the seed as for any seeded ciphertext.
        """
        zero = self._members(self.to_bytes(encryptor.encrypt_zero_symmetric(parms_id)))
        primes = np.array(self.moduli(parms_id), dtype=np.uint64)
        # Ciphertext members: parms_id, NTT flag, size, degree, primes, scale, correction
        # factor (73 bytes), then a seeded c0 as a DynArray (SEAL header, its length, the
        # words), then the seed.
        size, degree, count = struct.unpack_from("<3Q", zero, 33)
        (words,) = struct.unpack_from("<Q", zero, 73 + 16)
        assert (size, degree, count, words) == (2, self.degree, primes.size, primes.size * degree)
        start = 73 + 24
        c0 = np.frombuffer(zero, dtype="<u8", count=words, offset=start).reshape(count, degree)
        c0 = c0.astype(np.uint64)  # a writeable copy
        q = math.prod(int(p) for p in primes)
        delta = np.array([(q // self.t) % int(p) for p in primes], dtype=np.uint64)
        _kernels.bfv_add_scaled(
            self._plain_coefficients(values), self.t, q % self.t, primes, delta, c0
        )
        members = zero[:start] + c0.astype("<u8").tobytes() + zero[start + 8 * words :]
        body = zstandard.ZstdCompressor().compress(members)
        return self._header(len(body), ZSTD_COMPRESSION) + body

    def _plain_coefficients(self, values: np.ndarray) -> np.ndarray:
        """The batched plaintext of ``values``: its N coefficients mod t."""
        members = self._members(self.to_bytes(self.encode(values)))
        # Plaintext members: parms_id (zero: BFV), coefficient count, scale (48 bytes), then
        # the coefficients as a DynArray (SEAL header, its length, the words).
        (count,) = struct.unpack_from("<Q", members, 48 + 16)
        assert count == self.degree, "a batched plaintext has N coefficients"
        return np.frombuffer(members, dtype="<u8", count=count, offset=48 + 24).astype(np.uint64)

    def moduli(self, parms_id: Any) -> list[int]:
        """The primes of the level ``parms_id``."""
        level = self.context.get_context_data(parms_id)
        return [prime.value() for prime in level.parms().coeff_modulus()]

    def encode(self, values: np.ndarray) -> Any:
        plain = self.seal.Plaintext()
        self.encoder.encode(np.ascontiguousarray(values, dtype=np.int64), plain)
        return plain

    def signed(self, value: int) -> int:
        """The centred representative of ``value`` mod t."""
        value %= self.t
        return value - self.t if value > self.t // 2 else value


@dataclass(frozen=True)
class Flooding:
    """How the moving party floods the noise of what it sends, for one level's parameters.

    ``switches`` modulus switches come first (each shrinks the ciphertext), then the
    fresh encryption of zero, then noise uniform on ``[-2^bits, 2^bits)`` added to
    every coefficient. ``bound_bits`` is log2 of the bound on the noise before the
    flood (:func:`flooding`).
    """

    switches: int
    bits: int
    bound_bits: float


def flooding(degree: int, t: int, primes: Sequence[int], products: int) -> Flooding:
    """The flood for a sum of up to ``products`` plaintext x ciphertext products of fresh
    ciphertexts (the fixed party's) at a level of ``primes``, plain modulus ``t``, or a
    refusal.

    Worst-case bound on the noise (every coefficient, any plaintexts, ternary secret,
    fresh noise at most B = 19.2 (2N + 1) after SEAL's clipped sampling): the products
    bring ``products N (t / 2) (B + 1/2)``, divided by the dropped primes' product ``P``;
    each switch adds at most ``(N + 1) / 2`` of rounding, the encryption of zero ``B``,
    the mask's scaling 1. A flood uniform on ``[-F, F)`` hides such a noise in each of
    the N coefficients within ``bound / (2 F)``, so ``F = 2^40 N bound`` keeps the whole
    ciphertext within 2^-40 of the flood alone. The most switches that still leave
    room for it (``2 (F + bound) < q / (2 t)``) are taken.
    """
    fresh = NOISE_MAX_DEVIATION * (2 * degree + 1)
    for switches in range(len(primes) - 1, -1, -1):
        dropped = math.prod(primes[len(primes) - switches :])
        kept = math.prod(primes[: len(primes) - switches])
        bound = (
            products * degree * (t / 2) * (fresh + 0.5) / dropped
            + switches * (degree + 1) / 2
            + fresh
            + 1
        )
        bits = FLOOD_SECURITY_BITS + math.ceil(math.log2(degree * bound))
        if 2 * (2**bits + bound) < kept / (2 * t):
            return Flooding(switches, bits, math.log2(bound))
    raise InputError(
        f"poly_modulus_degree={degree} leaves no room to flood the decryption "
        f"noise by 2^{FLOOD_SECURITY_BITS}: use 16384 or 32768"
    )


def upload_level(he: HEContext, products: int) -> Any:
    """The level the fixed party encrypts its level vectors at: the lowest whose primes
    leave the moving party room to flood a sum of ``products`` products (:func:`flooding`;
    5 of the 8 primes at N = 16384), so they travel in fewer bytes and the moving party's
    products cost less. Without the flood, the top level (the unflooded attack's setting)."""
    levels = he.levels()
    chosen = levels[0]
    for parms_id in levels[1:] if FLOOD_NOISE else []:
        try:
            flooding(he.degree, he.t, he.moduli(parms_id), products)
        except InputError:
            break
        chosen = parms_id
    return chosen


def slot_total(values: np.ndarray) -> int:
    """Exact sum of up to 2^16 non-negative integers below 2^60 (two 30-bit halves)."""
    low = int((values & np.uint64((1 << 30) - 1)).sum(dtype=np.uint64))
    high = int((values >> np.uint64(30)).sum(dtype=np.uint64))
    return (high << 30) + low


def sum_pairs(
    d: int, outputs: int, fixed_sum: bool = False, fixed_masked: bool = False
) -> list[tuple[int, int]]:
    """(moving vector, fixed vector) of each of the ``d outputs + 2`` sums (and, with
    ``fixed_sum``, correlation's ``sum_valid J`` last), then with ``fixed_masked`` the
    :class:`~ppir_itk.backends.base.MaskedSums`: the moments of ``g_k I_w M``, the count,
    ``sum I_w^2 M`` and (correlation) the moments of ``g_k M`` and ``sum I_w M``.

    Moving vectors: ``q(g_1) .. q(g_d), q(I_w), valid`` (and with a mask
    ``q(I_w^2), q(g_1 I_w) .. q(g_d I_w)``); fixed vectors: ``w_c q(J)`` for each of the
    map's ``outputs`` integer weights ``w_c`` (the affine basis: ``q(phi_1) .. q(phi_d),
    1``), then ``q(J)``, ``q(J)^2`` (with a mask ``M q(J)`` for ``q(J)``, then ``w_c M``
    and ``M``).
    """
    pairs = [(k, c) for k in range(d) for c in range(outputs)]
    pairs += [(d, outputs), (d + 1, outputs + 1)]
    if fixed_sum:
        pairs.append((d + 1, outputs))
    if fixed_masked:
        mask = 2 * outputs + 2
        pairs += [(d + 3 + k, outputs + 2 + c) for k in range(d) for c in range(outputs)]
        pairs += [(d + 1, mask), (d + 2, mask)]
        if fixed_sum:
            pairs += [(k, outputs + 2 + c) for k in range(d) for c in range(outputs)]
            pairs.append((d, mask))
    return pairs


def interleave(vectors: list[np.ndarray], slots: int) -> np.ndarray:
    """Rows of ``slots`` integers: row b, slot ``a L + i`` holds ``vectors[a][b L + i]``.

    Every sum gets its own range of ``L = slots // len(vectors)`` slots, so one
    ciphertext per row carries all the sums and one accumulator collects them.
    """
    count = len(vectors)
    width = slots // count
    rows = -(-vectors[0].size // width)
    out = np.zeros((rows, slots), dtype=np.int64)
    for a, vector in enumerate(vectors):
        padded = np.zeros(rows * width, dtype=np.int64)
        padded[: vector.size] = vector
        out[:, a * width : (a + 1) * width] = padded.reshape(rows, width)
    return out


def range_totals(values: np.ndarray, count: int) -> list[int]:
    """The exact total of each sum's slot range (see :func:`interleave`)."""
    width = values.size // count
    return [slot_total(values[a * width : (a + 1) * width]) for a in range(count)]


def chunk(vector: np.ndarray, row: int, slots: int) -> np.ndarray:
    """Row ``row`` of ``vector`` laid out ``slots`` points a row, zero-padded."""
    out = np.zeros(slots, dtype=np.int64)
    part = vector[row * slots : (row + 1) * slots]
    out[: part.size] = part
    return out


def one_point_per_slot(points: int, sums: int, slots: int) -> bool:
    """Whether a level of a map with few outputs is laid out one point per slot (only
    ``q(J)``, ``q(J)^2`` and ``M`` uploaded, one reply ciphertext per sum) rather than
    interleaved (:func:`interleave`: every fixed vector uploaded, one reply ciphertext).
    Both parties derive it from public figures: one point per slot when the level
    ciphertexts it saves outweigh :data:`REPLY_EVALUATIONS` evaluations' extra replies, a
    reply weighing 3/5 of a level ciphertext (3 of its 5 primes)."""
    interleaved = -(-points // (slots // sums))
    saved = interleaved - POINT_ROWS * -(-points // slots)
    return 5 * saved > 3 * REPLY_EVALUATIONS * (sums - 1)


def point_factor(fixed_vector: int, outputs: int) -> tuple[int, int | None]:
    """Laid out one point per slot, a :func:`sum_pairs` fixed vector is a level vector
    (0: ``q(J)``, 1: ``q(J)^2``, 2: ``M``) times the map's weight column, or None for no
    weight; the moving party folds the public weight into its own vector."""
    if fixed_vector < outputs:
        return 0, fixed_vector
    if fixed_vector < outputs + 2:
        return fixed_vector - outputs, None
    if fixed_vector < 2 * outputs + 2:
        return 2, fixed_vector - outputs - 2
    return 2, None


@dataclass
class _Level:
    ciphertexts: list[Any]  # one per row of the interleaved layout, NTT form
    exponent_j: int


def switched(
    he: HEContext, ciphertext: Any, mask: np.ndarray, parms_id: Any, switches: int, encryptor: Any
) -> Any:
    """``ciphertext + mask`` in coefficient form, switched down ``switches`` times: the
    deterministic part of :meth:`HEPackedBackend.masked` (the fixed party's noise analysis,
    :mod:`ppir_itk.noise_attack`, recomputes it). ``None`` stands for an all-zero product
    at level ``parms_id`` (``encryptor`` encrypts that zero)."""
    if ciphertext is None:
        ciphertext = he.seal.Ciphertext()
        encryptor.encrypt_zero(parms_id, ciphertext)
    else:
        he.evaluator.transform_from_ntt_inplace(ciphertext)
    he.evaluator.add_plain_inplace(ciphertext, he.encode(mask.astype(np.int64)))
    for _ in range(switches):
        he.evaluator.mod_switch_to_next_inplace(ciphertext)
    return ciphertext


def flooded(he: HEContext, ciphertext: Any, bits: int) -> None:
    """Add noise uniform on ``[-2^bits, 2^bits)`` (from the CSPRNG) to every coefficient
    of ``ciphertext``'s decryption noise, in place: a ciphertext ``(e, 0)`` is added."""
    words = -(-(bits + 1) // 64)
    stream = expand(secret_seed(), words * he.degree).view(np.uint64).reshape(he.degree, words)
    noise = np.zeros(he.degree, dtype=object)
    for word in range(words):
        noise = (noise << 64) + stream[:, word].astype(object)
    noise = (noise & ((1 << (bits + 1)) - 1)) - (1 << bits)
    primes = he.moduli(ciphertext.parms_id())
    flood = np.zeros((2, len(primes), he.degree), dtype=np.uint64)
    for index, prime in enumerate(primes):
        flood[0, index] = (noise % prime).astype(np.uint64)
    he.evaluator.add_inplace(ciphertext, he.with_coefficients(ciphertext, flood, ntt_form=False))


class HEPackedBackend(ExactSumsBackend):
    """Moving-party side of the packed protocol."""

    name = "he"
    protocol = "packed"
    scheme = "BFV"
    table = TABLE
    fixed_mask_metrics = LINEAR_SUMS_METRICS

    def __init__(
        self,
        channel: MovingChannel,
        parameters: dict[str, str] | None = None,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        super().__init__(channel, parameters, metric)
        self.he = HEContext(*he_settings(self.parameters))
        self._public_key: Any = None
        self._encryptor: Any = None
        self._level: _Level | None = None
        self._interleaved = False  # the level's layout (one_point_per_slot)

    def close(self) -> None:
        self.he.close()

    @property
    def _agreed_level(self) -> _Level:
        """The level's ciphertexts of J, for what runs after :meth:`_on_points` received them."""
        assert self._level is not None, "joint_term() runs only after on_points()"
        return self._level

    def _on_points(self, points: PointSet) -> None:
        he, seal = self.he, self.he.seal
        if self._public_key is None:
            reply = self.channel.exchange(pb.BackendMessage(he_key_request=pb.HeKeyRequest()))
            if reply.WhichOneof("body") != "he_key":
                raise ProtocolError("the fixed party's public key is missing")
            self._public_key = he.from_bytes("PublicKey", reply.he_key.public_key)
            self._encryptor = seal.Encryptor(he.context, self._public_key)
        reply = self.channel.exchange(pb.BackendMessage(he_level_request=pb.HeLevelRequest()))
        basis = points.linear_map
        sums = sums_per_evaluation(points, self.metric, self.fixed_masked)
        self._interleaved = basis.few_outputs and not one_point_per_slot(
            points.size, sums, he.slots
        )
        if self._interleaved:
            rows = -(-points.size // (he.slots // sums))
        else:  # rows of q(J) and of q(J)^2 (and of M) of slots points each
            rows = (3 if self.fixed_masked else 2) * -(-points.size // he.slots)
        if reply.WhichOneof("body") != "he_level" or len(reply.he_level.ciphertexts) != rows:
            raise ProtocolError("the fixed party's level ciphertexts are malformed")
        ciphertexts = [he.from_bytes("Ciphertext", data) for data in reply.he_level.ciphertexts]
        if len({tuple(ciphertext.parms_id()) for ciphertext in ciphertexts}) != 1:
            raise ProtocolError("the fixed party's level ciphertexts are not at one level")
        for ciphertext in ciphertexts:
            he.evaluator.transform_to_ntt_inplace(ciphertext)
        level_exponent = reply.he_level.fixed_exponent
        self._level = _Level(ciphertexts=ciphertexts, exponent_j=level_exponent)
        if FLOOD_NOISE:
            try:
                self.flooding()
            except InputError:
                raise ProtocolError(
                    "the fixed party's level ciphertexts leave no room to flood the noise"
                ) from None
        self._disclose_bound(basis.budget(PLAIN_MODULUS).j_bits - 1 - level_exponent)

    def _joint_term(self, fields: MovingFields) -> JointTerm:
        basis = self.level_points.linear_map
        if not basis.few_outputs:
            return self._mapped_joint_term(fields)
        he, level = self.he, self._agreed_level
        d = fields.gradient.shape[1]
        bits = basis.budget(PLAIN_MODULUS)
        # Fixed-point exponents for this iteration's vectors (private to the moving party).
        e_g = exponent(float(np.abs(fields.gradient).max(initial=0.0)), bits.g_bits)
        e_w = exponent(float(np.abs(fields.warped).max(initial=0.0)), bits.w_bits)
        vectors = [encode(fields.gradient[:, k], e_g) for k in range(d)]
        vectors += [encode(fields.warped, e_w), fields.valid.astype(np.int64)]
        if self.fixed_masked:
            e_ww, e_gw, squared_warped, products = self._masked_products(fields)
            vectors += [squared_warped, *products.T]
        pairs = sum_pairs(d, basis.outputs, wants_fixed_sum(self.metric), self.fixed_masked)
        if self._interleaved:  # one accumulator; each sum its own range of its slots
            rows = interleave([vectors[v] for v, _ in pairs], he.slots)
            mask = uniform_below(he.t, he.slots)
            blobs = [
                self.masked(
                    self._accumulated(list(zip(level.ciphertexts, rows, strict=True))), mask
                )
            ]
            masks = range_totals(mask, len(pairs))
        else:  # one point per slot: an accumulator per sum, the public weight folded in
            weights = basis.dense_weights()
            count = -(-self.level_points.size // he.slots)
            blobs, masks = [], []
            for v, c in pairs:
                base, column = point_factor(c, basis.outputs)
                vector = vectors[v] if column is None else vectors[v] * weights[:, column]
                terms = [
                    (level.ciphertexts[base * count + r], chunk(vector, r, he.slots))
                    for r in range(count)
                ]
                mask = uniform_below(he.t, he.slots)
                blobs.append(self.masked(self._accumulated(terms), mask))
                masks.append(slot_total(mask))
        reply = self.channel.exchange(
            pb.BackendMessage(he_masked_products=pb.HeMaskedProducts(ciphertexts=blobs))
        )
        totals = None
        if reply.WhichOneof("body") == "he_masked_totals":
            totals = array_from_pb(reply.he_masked_totals.totals, max_elements=len(pairs))
        if totals is None or totals.shape != (len(pairs),):
            raise ProtocolError("the fixed party's sums are malformed")
        sums = [he.signed(int(total) - mask) for total, mask in zip(totals, masks, strict=True)]
        self._disclose_sums()
        count = d * basis.outputs
        unmasked = sums_per_evaluation(self.level_points, self.metric)
        moments = np.array(sums[:count], dtype=np.int64).reshape(d, basis.outputs)
        term = self._decoded(moments, sums[count:unmasked], e_g, e_w)
        if not self.fixed_masked:
            return term
        return replace(term, masked=self._masked_sums(sums[unmasked:], e_g, e_w, e_ww, e_gw))

    def _masked_products(self, fields: MovingFields) -> tuple[int, int, np.ndarray, np.ndarray]:
        """The moving products a fixed mask restricts, each with its own exponent
        (:func:`~ppir_itk.fixed_point.masked_budget`): ``e_ww``, ``e_gw``, ``q(I_w^2)`` (n,)
        and ``q(g_k I_w)`` (n, d)."""
        basis = self.level_points.linear_map
        bits = masked_budget(PLAIN_MODULUS, basis.points.size, basis.weight_bits, basis.support)
        squared = fields.warped**2
        products = fields.gradient * fields.warped[:, None]
        e_ww = exponent(float(squared.max(initial=0.0)), bits.squared_bits)
        e_gw = exponent(float(np.abs(products).max(initial=0.0)), bits.product_bits)
        return e_ww, e_gw, encode(squared, e_ww), encode(products, e_gw)

    def _masked_sums(self, sums: list[int], e_g: int, e_w: int, e_ww: int, e_gw: int) -> MaskedSums:
        """The :class:`MaskedSums` from their exact integer sums, in :func:`sum_pairs`'s
        order."""
        basis = self.level_points.linear_map
        d, outputs = basis.dimension, basis.outputs
        count = d * outputs

        def moments(values: list[int], scale: int) -> np.ndarray:
            integers = np.array(values, dtype=np.int64).reshape(d, outputs)
            return decode(integers, scale + basis.column_bits)

        correlation = wants_fixed_sum(self.metric)
        return MaskedSums(
            count=float(sums[count]),
            warped_squared=decode(sums[count + 1], e_ww),
            warped_moments=moments(sums[:count], e_gw),
            warped_sum=decode(sums[-1], e_w) if correlation else None,
            gradient_moments=moments(sums[count + 2 : -1], e_g) if correlation else None,
        )

    def _decoded(
        self, moments: np.ndarray, totals: list[int], e_g: int, e_w: int, weight_bits: int = 0
    ) -> JointTerm:
        """The joint term from its exact integer sums: the moments, then ``I_w . J``,
        ``sum_valid J^2`` and (correlation) ``sum_valid J``."""
        basis, exponent_j = self.level_points.linear_map, self._agreed_level.exponent_j
        return JointTerm(
            moments=decode(moments, e_g + exponent_j + basis.column_bits),
            warped_dot_fixed=decode(totals[0], e_w + exponent_j),
            fixed_squared=decode(totals[1], 2 * exponent_j),
            fixed_sum=decode(totals[2], exponent_j) if len(totals) > 2 else None,
            basis_weight_bits=weight_bits,
            gradient_exponent=e_g,
        )

    def _accumulated(self, products: list[tuple[Any, np.ndarray]]) -> Any:
        """The sum of the ``(ciphertext, row)`` products (None if every row is zero)."""
        accumulator = None
        for ciphertext, row in products:
            product = self._product(ciphertext, row)
            if accumulator is None or product is None:
                accumulator = accumulator or product
            else:
                self.he.evaluator.add_inplace(accumulator, product)
        return accumulator

    def _product(self, ciphertext: Any, row: np.ndarray) -> Any:
        """``ciphertext * row`` (both in NTT form), or None for an all-zero row (SEAL
        refuses to form a product that is zero)."""
        he = self.he
        if not row.any():
            return None
        plain = he.encode(row)
        he.evaluator.transform_to_ntt_inplace(plain, ciphertext.parms_id())
        product = he.seal.Ciphertext()
        he.evaluator.multiply_plain(ciphertext, plain, product)
        return product

    def masked(self, ciphertext: Any, mask: np.ndarray) -> bytes:
        """What leaves the moving party: ``ciphertext + mask`` (uniform mod t per slot),
        switched down, re-randomised with a fresh encryption of zero and its noise
        flooded (:func:`flooding`), so that what the fixed party decrypts depends on the
        masked slots only.

        ``ciphertext`` (NTT form, changed in place; ``None`` stands for an all-zero
        product) is one accumulated product; ``mask`` holds one value per slot, drawn
        with :func:`~ppir_itk.randomness.uniform_below` mod ``he.t``. Returns the
        serialised ciphertext. Public for ``benchmarks/primitives.py``, which times it.
        """
        he = self.he
        plan = self.flooding() if FLOOD_NOISE else None
        ciphertext = switched(
            he,
            ciphertext,
            mask,
            self._agreed_level.ciphertexts[0].parms_id(),
            plan.switches if plan else UNFLOODED_MOD_SWITCHES,
            self._encryptor,
        )
        zero = he.seal.Ciphertext()  # added at the small modulus, where encrypting is cheaper
        self._encryptor.encrypt_zero(ciphertext.parms_id(), zero)
        he.evaluator.add_inplace(ciphertext, zero)
        if plan is not None:
            flooded(he, ciphertext, plan.bits)
        return he.to_bytes(ciphertext)

    def flooding(self) -> Flooding:
        """This level's flood: at most one product per level ciphertext is summed."""
        level = self._agreed_level
        he = self.he
        return flooding(
            he.degree, he.t, he.moduli(level.ciphertexts[0].parms_id()), len(level.ciphertexts)
        )

    def _mapped_joint_term(self, fields: MovingFields) -> JointTerm:
        """A map with many outputs, applied by the fixed party (protocol docstring,
        "B-spline transforms")."""
        he, level, points = self.he, self._agreed_level, self.level_points
        basis = points.linear_map
        d = fields.gradient.shape[1]
        bits = basis.budget(PLAIN_MODULUS)
        e_g = exponent(float(np.abs(fields.gradient).max(initial=0.0)), bits.g_bits)
        e_w = exponent(float(np.abs(fields.warped).max(initial=0.0)), bits.w_bits)
        gradient = encode(fields.gradient, e_g)  # (n, d)
        warped = encode(fields.warped, e_w)
        rows = -(-points.size // he.slots)
        fixed, squared = level.ciphertexts[:rows], level.ciphertexts[rows : 2 * rows]
        valid = fields.valid.astype(np.int64)
        correlation = wants_fixed_sum(self.metric)
        # Per-point products the fixed party maps, (ciphertexts, (n, d) vectors) each, and
        # the products it totals, in the order of sum_pairs.
        mapped_products = [(fixed, gradient)]
        totalled = [(fixed, warped), (squared, valid)]
        if correlation:
            totalled.append((fixed, valid))
        if self.fixed_masked:
            inside = level.ciphertexts[2 * rows :]
            e_ww, e_gw, squared_warped, products = self._masked_products(fields)
            mapped_products.append((inside, products))
            totalled += [(inside, valid), (inside, squared_warped)]
            if correlation:
                mapped_products.append((inside, gradient))
                totalled.append((inside, warped))
        vectors = d * len(mapped_products)
        masks = uniform_below(he.t, (vectors + len(totalled), rows * he.slots))
        blobs = []
        for group, (ciphertexts, matrix) in enumerate(mapped_products):
            for k in range(d):
                mask = masks[group * d + k]
                for r, ciphertext in enumerate(ciphertexts):
                    blobs.append(
                        self.masked(
                            self._product(ciphertext, chunk(matrix[:, k], r, he.slots)),
                            mask[r * he.slots : (r + 1) * he.slots],
                        )
                    )
        for k, (ciphertexts, vector) in enumerate(totalled):
            total = None
            for r, ciphertext in enumerate(ciphertexts):
                product = self._product(ciphertext, chunk(vector, r, he.slots))
                if total is None or product is None:
                    total = total or product
                else:
                    he.evaluator.add_inplace(total, product)
            blobs.append(self.masked(total, masks[vectors + k, : he.slots]))
        reply = self.channel.exchange(
            pb.BackendMessage(he_masked_products=pb.HeMaskedProducts(ciphertexts=blobs))
        )
        count = basis.outputs
        if reply.WhichOneof("body") != "he_masked_totals":
            raise ProtocolError("the fixed party's sums are malformed")
        mapped = array_from_pb(reply.he_masked_totals.mapped_moments, max_elements=count * vectors)
        totals = array_from_pb(reply.he_masked_totals.totals, max_elements=len(totalled))
        if mapped.shape != (count, vectors) or totals.shape != (len(totalled),):
            raise ProtocolError("the fixed party's sums do not fit the control grid")
        own = basis.mod_t(masks[:vectors, : points.size].T, he.t)  # (vectors, count)
        moments = np.array(
            [
                [he.signed(int(v) - int(m)) for v, m in zip(a, b, strict=True)]
                for a, b in zip(mapped.T, own, strict=True)
            ],
            dtype=np.int64,
        )
        sums = [
            he.signed(int(total) - int(masks[vectors + k, : he.slots].sum(dtype=object)))
            for k, total in enumerate(totals)
        ]
        self._disclose_sums()
        unmasked = 3 if correlation else 2  # I_w . J, sum J^2 (, sum J)
        term = self._decoded(moments[:d], sums[:unmasked], e_g, e_w, basis.axis_weight_bits)
        if not self.fixed_masked:
            return term
        # The masked sums in sum_pairs's order: warped moments, count, warped squared, then
        # correlation's gradient moments and warped sum.
        rest = sums[unmasked:]
        flat = [*moments[d : 2 * d].ravel().tolist(), *rest[:2]]
        if correlation:
            flat += [*moments[2 * d :].ravel().tolist(), rest[2]]
        return replace(term, masked=self._masked_sums(flat, e_g, e_w, e_ww, e_gw))


class HEPackedFixedSide(ExactSumsFixedSide):
    """Fixed-party side: holds the secret key; encrypts J once per level; sums masked slots
    (and adds its policy's noise to the sums)."""

    table = TABLE
    bspline = True
    modulus = PLAIN_MODULUS
    fixed_mask_metrics = LINEAR_SUMS_METRICS

    def __init__(
        self,
        parameters: dict[str, str],
        policy: FixedPolicy,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        super().__init__(parameters, policy, metric)
        # A refusal (InputError) becomes a protocol error in make_fixed_side.
        self.he = HEContext(*he_settings(parameters))
        seal = self.he.seal
        keys = seal.KeyGenerator(self.he.context)
        self._secret_key = keys.secret_key()
        self._public_key = seal.PublicKey()
        keys.create_public_key(self._public_key)
        # Its own uploads under its secret key: a fresh symmetric ciphertext travels seeded
        # (the uniform half as SEAL's PRNG seed), half the bytes of a public-key one, at the
        # lowest level with room for the moving party's flood (HEContext.encrypt_seeded); the
        # moving party loads it as any ciphertext (RLWE, IND-CPA as the public-key form).
        self._encryptor = seal.Encryptor(self.he.context, self._secret_key)
        self._decryptor = seal.Decryptor(self.he.context, self._secret_key)
        self._sums = 0
        self._interleaved = False  # the level's layout (one_point_per_slot)

    def on_points(
        self, values: np.ndarray, points: PointSet, fixed_mask: np.ndarray | None = None
    ) -> None:
        d = points.geometry.dimension
        self._points = points
        basis = points.linear_map
        try:
            j_bits = basis.budget(PLAIN_MODULUS).j_bits
        except InputError as error:
            raise ProtocolError(str(error)) from None
        assert (fixed_mask is not None) == self.fixed_masked, "the mask comes as Welcome says"
        self._noise_for_level(points)
        self._exponent_j = exponent(float(np.abs(values).max(initial=0.0)), j_bits)
        fixed = encode(values, self._exponent_j)
        slots = self.he.slots
        if fixed_mask is not None:  # M J for J; M itself pairs with the masked products
            mask = fixed_mask.astype(np.int64)
            fixed = fixed * mask
        self._interleaved = False
        if basis.few_outputs:
            pairs = sum_pairs(d, basis.outputs, wants_fixed_sum(self.metric), self.fixed_masked)
            self._sums = len(pairs)
            self._interleaved = not one_point_per_slot(points.size, self._sums, slots)
        if self._interleaved:
            weights = basis.dense_weights()
            vectors = [weights[:, c] * fixed for c in range(basis.outputs)]
            vectors += [fixed, fixed * fixed]
            if fixed_mask is not None:
                vectors += [weights[:, c] * mask for c in range(basis.outputs)] + [mask]
            rows = list(interleave([vectors[c] for _, c in pairs], slots))
        else:  # per point: q(J) rows, then q(J)^2 rows (then M rows)
            count = -(-points.size // slots)
            per_point = [fixed, fixed * fixed] + ([] if fixed_mask is None else [mask])
            rows = [chunk(vector, r, slots) for vector in per_point for r in range(count)]
        level = upload_level(self.he, len(rows))
        self._level_blobs = [self.he.encrypt_seeded(self._encryptor, row, level) for row in rows]

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        kind = message.WhichOneof("body")
        if kind == "he_key_request":
            return pb.BackendMessage(he_key=pb.HeKey(public_key=self.he.to_bytes(self._public_key)))
        if kind == "he_level_request":
            return pb.BackendMessage(
                he_level=pb.HeLevel(ciphertexts=self._level_blobs, fixed_exponent=self._exponent_j)
            )
        if kind != "he_masked_products":
            raise ProtocolError(f"'{kind}' is not a request of the he backend")
        ciphertexts = message.he_masked_products.ciphertexts
        self.evaluations += 1
        if not self._points.linear_map.few_outputs:
            return self._mapped_sums(ciphertexts)
        if self._interleaved:
            if len(ciphertexts) != 1:
                raise ProtocolError("the masked products are not one ciphertext")
            totals = range_totals(self._decrypt(ciphertexts[0]), self._sums)
        else:  # one point per slot: a ciphertext per sum
            if len(ciphertexts) != self._sums:
                raise ProtocolError("the masked products are not one ciphertext per sum")
            totals = [slot_total(self._decrypt(data)) for data in ciphertexts]
        totals = [total % self.he.t for total in totals]
        noise = self._noise()
        if noise is not None:  # the moments, the totals, the masked sums, as laid out
            count = len(noise.moments)
            masked_moments, masked_totals = noise.masked_moments, noise.masked_totals
            extra = [*noise.moments, *noise.totals, *masked_moments[:count], *masked_totals[:2]]
            extra += [*masked_moments[count:], *masked_totals[2:]]  # correlation's (sum_pairs)
            totals = [(total + e) % self.he.t for total, e in zip(totals, extra, strict=True)]
        self.received.add("masked_slots", len(totals))
        return pb.BackendMessage(
            he_masked_totals=pb.HeMaskedTotals(totals=array_to_pb(np.array(totals, dtype=np.int64)))
        )

    def close(self) -> None:
        self.he.close()

    def abort(self) -> None:  # remove SEAL's folder now, not when the collector gets to it
        self.he.close()

    def _decrypt(self, data: bytes) -> np.ndarray:
        ciphertext = self.he.from_bytes("Ciphertext", data)
        plain = self.he.seal.Plaintext()
        try:
            self._decryptor.decrypt(ciphertext, plain)
        except (RuntimeError, ValueError) as error:  # SEAL loads, e.g., NTT form, and refuses it
            raise ProtocolError(
                f"a ciphertext from the peer cannot be decrypted: {error}"
            ) from None
        return np.array(self.he.encoder.decode_uint64(plain), dtype=np.uint64)

    def _mapped_sums(self, ciphertexts: Sequence[bytes]) -> pb.BackendMessage:
        """Decrypt the masked per-point products (uniform mod t: nothing about the moving
        party's vectors), apply the public map mod t, total the two sums (three for
        correlation; with a fixed mask, the masked sums too, in :func:`sum_pairs`'s
        order)."""
        points, slots, t = self._points, self.he.slots, self.he.t
        d, outputs = points.geometry.dimension, points.linear_map.outputs
        rows = -(-points.size // slots)
        correlation = wants_fixed_sum(self.metric)
        totalled = 3 if correlation else 2  # I_w . J, sum J^2 (, sum J)
        groups = 1  # the products of q(J) with q(g_k)
        if self.fixed_masked:  # of M with q(g_k I_w) (and q(g_k)); count, sum I_w^2 M (, I_w M)
            groups, totalled = (3, totalled + 3) if correlation else (2, totalled + 2)
        vectors = d * groups
        if len(ciphertexts) != vectors * rows + totalled:
            raise ProtocolError("the masked products do not fit the point set")
        blobs = list(ciphertexts)
        products = np.stack(
            [
                np.concatenate([self._decrypt(blobs[k * rows + r]) for r in range(rows)])[
                    : points.size
                ]
                for k in range(vectors)
            ],
            axis=1,
        )
        self.received.add("masked_slots", products.size + totalled)
        mapped = points.linear_map.mod_t(products, t).T  # (outputs, vectors) on the wire
        totals = [
            int(self._decrypt(data).sum(dtype=object)) % t for data in blobs[vectors * rows :]
        ]
        noise = self._noise()
        if noise is not None:  # added mod t to the masked sums: the moving party unmasks it noisy
            # The masked groups' moments after J's, in the vectors' order; their totals after.
            moments = [*noise.moments, *noise.masked_moments]
            extra = [*noise.totals, *noise.masked_totals]
            grid = np.array(moments, dtype=object).reshape(vectors, outputs).T
            mapped = ((mapped.astype(object) + grid) % t).astype(np.int64)
            totals = [(total + e) % t for total, e in zip(totals, extra, strict=True)]
        return pb.BackendMessage(
            he_masked_totals=pb.HeMaskedTotals(
                totals=array_to_pb(np.array(totals, np.int64)), mapped_moments=array_to_pb(mapped)
            )
        )
