"""Attack 4 of issue 14: what the fixed party reads in the decryption noise of ``packed``.

The fixed party holds the BFV secret key, so of every ciphertext it receives it can
compute the raw decryption noise ``e = [c0 + c1 s - round(q m / t)]_q`` (centred),
not only the message ``m``. Without the flood (:data:`ppir_itk.backends.he.FLOOD_NOISE`)
that noise is mostly the rounding of the moving party's modulus switches, which is
fixed by the plaintexts it multiplied: the fixed party, which knows J and the public
protocol, recomputes the switched ciphertext for a candidate moving image and
correlates the noise it predicts with the noise it observes (*confirmation*), or
correlates the noise of two ciphertexts (*linkability*).

:class:`NoiseAttacker` plays the fixed party (its SEAL context and secret key, the
level ciphertexts it sent, the ciphertexts it received); :func:`z_score` scores a set
of correlations. The arithmetic is NumPy and Python integers on SEAL's RNS
coefficients (:meth:`~ppir_itk.backends.he.HEContext.coefficients`); SEAL's own NTT
multiplies by the secret key, which SEAL keeps in NTT form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppir_itk._kernels import central_gradient
from ppir_itk.backends.base import MovingFields
from ppir_itk.backends.he import (
    HEPackedBackend,
    HEPackedFixedSide,
    interleave,
    sum_pairs,
    switched,
)
from ppir_itk.fixed_point import PLAIN_MODULUS, encode, exponent
from ppir_itk.image import ImageGrid
from ppir_itk.points import PointSet
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb


def fields_at_identity(image: ImageGrid) -> MovingFields:
    """The moving party's fields when its transform is the identity on the fixed grid
    (the first evaluation of a registration of images on one grid): I, its gradient
    (as the metric computes it) and every point valid."""
    gradient = np.empty(image.array.shape + (image.dimension,))
    central_gradient(image.array, gradient)
    d = image.dimension
    return MovingFields(
        gradient=gradient.reshape(-1, d),
        warped=image.array.ravel().copy(),
        valid=np.ones(image.array.size, dtype=np.uint8),
        coefficients=np.eye(d * (d + 1)),
    )


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two noise polynomials (as floats)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    scale = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / scale if scale else 0.0


def z_score(correlations: Sequence[float], degree: int) -> float:
    """The combined z-score of correlations over ``degree`` coefficients each: under
    independence each is about normal with variance ``1 / degree``."""
    return float(np.mean(correlations)) * math.sqrt(degree * len(correlations))


@dataclass(frozen=True)
class Observation:
    """One received ciphertext as the fixed party reads it."""

    noise: np.ndarray  # the centred decryption noise, one float per coefficient
    slots: np.ndarray  # the decrypted (masked) slots
    switches: int  # modulus switches between the level ciphertexts and this one


class NoiseAttacker:
    """The fixed party of a ``packed`` session (affine basis), reading noise.

    ``side`` is its :class:`~ppir_itk.backends.he.HEPackedFixedSide` after
    ``on_points``: the context, the secret key and the level ciphertexts it sent.
    """

    def __init__(self, side: HEPackedFixedSide, points: PointSet) -> None:
        self.he = side.he
        self.points = points
        self._decryptor = side._decryptor
        self._encryptor = side._encryptor
        key = side._secret_key.data()  # a Plaintext in NTT form, every prime of the key level
        self._secret_ntt = np.fromiter(
            (key.data(i) for i in range(key.coeff_count())), dtype=np.uint64
        ).reshape(-1, self.he.degree)
        level = [self.he.from_bytes("Ciphertext", blob) for blob in side._level_blobs]
        self._fixed_rows = [self._slots(ciphertext) for ciphertext in level]
        self._level = [self._ntt(ciphertext) for ciphertext in level]  # as the moving party

    def noise(self, ciphertext: Any) -> np.ndarray:
        """The centred decryption noise of ``ciphertext`` (coefficient form), as floats."""
        he = self.he
        primes = he.moduli(ciphertext.parms_id())
        ntt = self._ntt(ciphertext)
        c0, c1 = he.coefficients(ntt).astype(object)
        secret = self._secret_ntt[: len(primes)].astype(object)
        value = np.zeros_like(c0)
        for index, prime in enumerate(primes):  # c0 + c1 s, pointwise in the NTT domain
            value[index] = (c0[index] + c1[index] * secret[index]) % prime
        # SEAL's inverse NTT on (c0 + c1 s, c1): a zero second component would make the
        # ciphertext "transparent", which SEAL refuses; only the first is read.
        back = he.with_coefficients(ntt, np.stack([value, c1]).astype(np.uint64), ntt_form=True)
        he.evaluator.transform_from_ntt_inplace(back)
        residues = he.coefficients(back)[0].astype(object)
        q = math.prod(primes)
        whole = np.zeros(he.degree, dtype=object)
        for index, prime in enumerate(primes):  # CRT to one integer mod q per coefficient
            cofactor = q // prime
            whole = (whole + residues[index] * (cofactor * pow(cofactor, -1, prime))) % q
        t = he.t
        message = ((whole * t + q // 2) // q) % t
        noise = (whole - (message * q + t // 2) // t) % q
        noise = np.where(noise > q // 2, noise - q, noise)
        return noise.astype(np.float64)

    def observe(self, blob: bytes) -> Observation:
        """What the fixed party reads in one received ciphertext."""
        ciphertext = self.he.from_bytes("Ciphertext", blob)
        context = self.he.context
        switches = (
            context.get_context_data(self._level[0].parms_id()).chain_index()
            - context.get_context_data(ciphertext.parms_id()).chain_index()
        )
        return Observation(self.noise(ciphertext), self._slots(ciphertext), switches)

    def predicted_noise(self, candidate: MovingFields, seen: Observation) -> np.ndarray:
        """The noise ``seen``'s ciphertext would have before its fresh encryption of zero,
        had the moving party's fields been ``candidate``: the products recomputed, the
        mask read off the decrypted slots (slots minus the candidate's products mod t),
        then as many switches (:func:`~ppir_itk.backends.he.switched`)."""
        he, slots = self.he, seen.slots
        rows = self._moving_rows(candidate)
        accumulator = None
        values = np.zeros(he.slots, dtype=object)
        for row, fixed, ciphertext in zip(rows, self._fixed_rows, self._level, strict=True):
            values = (values + row.astype(object) * fixed.astype(object)) % he.t
            if not row.any():
                continue
            plain = he.encode(row)
            he.evaluator.transform_to_ntt_inplace(plain, ciphertext.parms_id())
            product = he.seal.Ciphertext()
            he.evaluator.multiply_plain(ciphertext, plain, product)
            if accumulator is None:
                accumulator = product
            else:
                he.evaluator.add_inplace(accumulator, product)
        mask = np.array((slots.astype(object) - values) % he.t, dtype=np.uint64)
        ciphertext = switched(
            he, accumulator, mask, self._level[0].parms_id(), seen.switches, self._encryptor
        )
        return self.noise(ciphertext)

    def _moving_rows(self, candidate: MovingFields) -> np.ndarray:
        """The moving party's interleaved rows for ``candidate`` (the public protocol:
        :meth:`~ppir_itk.backends.he.HEPackedBackend._joint_term`)."""
        basis = self.points.linear_map
        d = candidate.gradient.shape[1]
        bits = basis.budget(PLAIN_MODULUS)
        e_g = exponent(float(np.abs(candidate.gradient).max(initial=0.0)), bits.g_bits)
        e_w = exponent(float(np.abs(candidate.warped).max(initial=0.0)), bits.w_bits)
        vectors = [encode(candidate.gradient[:, k], e_g) for k in range(d)]
        vectors += [encode(candidate.warped, e_w), candidate.valid.astype(np.int64)]
        return interleave([vectors[v] for v, _ in sum_pairs(d, basis.outputs)], self.he.slots)

    def _ntt(self, ciphertext: Any) -> Any:
        """A copy of ``ciphertext`` in NTT form."""
        ntt = self.he.seal.Ciphertext()
        self.he.evaluator.transform_to_ntt(ciphertext, ntt)
        return ntt

    def _slots(self, ciphertext: Any) -> np.ndarray:
        plain = self.he.seal.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        return np.array(self.he.encoder.decode_uint64(plain), dtype=np.uint64)


class _Wire:
    """The moving party's channel straight to the fixed side, keeping what it sends."""

    single_process = True

    def __init__(self, side: HEPackedFixedSide) -> None:
        self.side = side
        self.sent: list[bytes] = []

    def exchange(self, message: pb.BackendMessage) -> pb.BackendMessage:
        if message.WhichOneof("body") == "he_masked_products":
            self.sent.extend(message.he_masked_products.ciphertexts)
        return self.side.handle(message)

    def connect_dealer(self, first_party: bool) -> Any:
        raise RuntimeError("the he backend has no dealer")


class PackedSession:
    """One level of a ``packed`` session in this process: the project's moving half
    (:class:`~ppir_itk.backends.he.HEPackedBackend`) against its fixed half, every
    point of ``fixed``'s grid, the affine basis; :attr:`attacker` is the fixed party."""

    def __init__(self, fixed: ImageGrid, parameters: dict[str, str] | None = None) -> None:
        parameters = dict(parameters or {})
        self.points = PointSet(fixed.geometry, None)
        self.side = HEPackedFixedSide(parameters, FixedPolicy())
        self.side.on_points(fixed.array.ravel().astype(np.float64), self.points)
        self._wire = _Wire(self.side)
        self.backend = HEPackedBackend(self._wire, parameters)
        self.backend.on_points(self.points)
        self.attacker = NoiseAttacker(self.side, self.points)

    def evaluate(self, fields: MovingFields) -> bytes:
        """One joint-term evaluation; the ciphertext the fixed party received."""
        self.backend.joint_term(fields)
        return self._wire.sent[-1]

    def close(self) -> None:
        self.backend.close()
        self.side.close()
