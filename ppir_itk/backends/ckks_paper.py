"""The paper's CKKS protocol v1 (Taiello et al., MedIA 2024, section 5.4.2), for comparison.

``paper-v1``: the fixed party encrypts J, cut into sub-arrays of N/2 values,
under its own CKKS key, and sends them once per level together with a public
context (public key and the Galois keys that DotProduct's rotations need).
Each iteration the moving party forms S = g . dW/dtheta (n x |theta|, O(n
|theta|) work, as in the paper) and computes, for every column, the sum over
sub-arrays of DotProduct(S_i column, [[J_i]]); likewise ``I_w . J`` and
``valid . J^2`` (the metric's value, over [[J^2]]). It sends those |theta| + 2
ciphertexts; the fixed party decrypts them and sends the numbers back.

What it reveals (the paper's design, kept on purpose): **the fixed party
learns R = S^T J, I_w . J and the sum of J^2 over the overlap at every
iteration**, and the report says so. Use the ``packed`` protocol for
registrations; this one exists to reproduce the paper's table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppir_itk.backends.base import FixedSide, JointTerm, JointTermBackend, MovingFields
from ppir_itk.backends.ckks import pack, unpack
from ppir_itk.errors import InputError
from ppir_itk.fixed_party import PointSet
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError, array_from_pb, array_to_pb

POLY_MODULUS_DEGREE = 8192  # the paper's N; 128-bit security with these moduli
COEFF_MOD_BIT_SIZES = (60, 40, 40, 60)
SCALE_BITS = 40
CONTEXT, LEVEL, PRODUCTS = "paper-v1.context", "paper-v1.level", "paper-v1.products"


def _tenseal() -> Any:
    import tenseal

    return tenseal


def _split(values: np.ndarray, length: int) -> list[list[float]]:
    return [values[i:i + length].tolist() for i in range(0, values.size, length)]


class PaperV1Backend(JointTermBackend):
    """Moving-party side of the paper's protocol v1."""

    name = "ckks"
    private = True

    def __init__(self, session: Any, parameters: dict[str, str] | None = None) -> None:
        parameters = dict(parameters or {})
        if set(parameters) - {"protocol"}:
            raise InputError("ckks protocol 'paper-v1' runs the paper's parameters only "
                             f"(N={POLY_MODULUS_DEGREE}); it takes no other option")
        super().__init__(session, parameters)
        self._context: Any = None
        self._fixed: list[Any] = []
        self._fixed_squared: list[Any] = []

    def _on_points(self, points: PointSet) -> None:
        ts = _tenseal()
        if self._context is None:
            reply = self.session.request(
                pb.Envelope(backend=pb.BackendMessage(kind=CONTEXT)), "backend").backend
            try:
                self._context = ts.context_from(reply.blob)
            except Exception:  # TenSEAL raises bare exceptions on bad bytes
                raise ProtocolError("the fixed party's CKKS context is invalid") from None
            if self._context.is_private():
                raise ProtocolError("the fixed party sent its secret key; refusing it")
        reply = self.session.request(
            pb.Envelope(backend=pb.BackendMessage(kind=LEVEL)), "backend").backend
        parts = -(-points.size // (POLY_MODULUS_DEGREE // 2))
        vectors = [ts.ckks_vector_from(self._context, data)
                   for data in unpack(reply.arrays[0], reply.blob, 2 * parts)]
        self._fixed, self._fixed_squared = vectors[:parts], vectors[parts:]

    def _joint_term(self, fields: MovingFields) -> JointTerm:
        length = POLY_MODULUS_DEGREE // 2
        columns = list(fields.steepest_descent(self.points).T) + [fields.warped]
        results = []
        for column in columns:
            total = None
            for cipher, block in zip(self._fixed, _split(column, length), strict=True):
                term = cipher.dot(block)
                total = term if total is None else total + term
            results.append(total)
        total = None
        for cipher, block in zip(self._fixed_squared,
                                 _split(fields.valid.astype(np.float64), length), strict=True):
            term = cipher.dot(block)
            total = term if total is None else total + term
        results.append(total)
        sizes, blob = pack([result.serialize() for result in results])
        reply = self.session.request(pb.Envelope(backend=pb.BackendMessage(
            kind=PRODUCTS, arrays=[sizes], blob=blob)), "backend").backend
        values = array_from_pb(reply.arrays[0], max_elements=len(results))
        if values.shape != (len(results),):
            raise ProtocolError("the fixed party's decrypted products are malformed")
        return JointTerm(parameter_term=values[:-2].astype(np.float64),
                         warped_dot_fixed=float(values[-2]), fixed_squared=float(values[-1]))


class PaperV1FixedSide(FixedSide):
    """Fixed-party side of the paper's protocol v1: encrypts J, decrypts (and learns) R."""

    def __init__(self, parameters: dict[str, str]) -> None:
        super().__init__(parameters)
        ts = _tenseal()
        self._context = ts.context(ts.SCHEME_TYPE.CKKS, POLY_MODULUS_DEGREE,
                                   coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES))
        self._context.global_scale = 2.0**SCALE_BITS
        self._context.generate_galois_keys()
        self._numbers = 0

    def on_points(self, values: np.ndarray, points: PointSet) -> None:
        ts = _tenseal()
        length = POLY_MODULUS_DEGREE // 2
        self._level = [ts.ckks_vector(self._context, block).serialize()
                       for vector in (values, values * values)
                       for block in _split(vector, length)]

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        ts = _tenseal()
        if message.kind == CONTEXT:
            return pb.BackendMessage(kind=CONTEXT, blob=self._context.serialize(
                save_public_key=True, save_secret_key=False, save_galois_keys=True,
                save_relin_keys=False))
        if message.kind == LEVEL:
            sizes, blob = pack(self._level)
            return pb.BackendMessage(kind=LEVEL, arrays=[sizes], blob=blob)
        if message.kind == PRODUCTS and message.arrays:
            self.evaluations += 1
            count = int(array_from_pb(message.arrays[0], max_elements=64).size)
            values = []
            for data in unpack(message.arrays[0], message.blob, count):
                try:
                    values.append(ts.ckks_vector_from(self._context, data).decrypt()[0])
                except Exception:  # TenSEAL raises bare exceptions on bad bytes
                    raise ProtocolError("a ciphertext from the moving party is invalid") from None
            self._numbers += len(values)
            return pb.BackendMessage(kind=PRODUCTS,
                                     arrays=[array_to_pb(np.array(values, dtype=np.float64))])
        raise ProtocolError(f"'{message.kind[:40]}' is not a paper-v1 message")

    def learned(self) -> list[str]:
        if not self.evaluations:
            return []
        return [f"paper-v1: R = S^T J, I_w . J and sum of J^2 over the overlap, in the clear: "
                f"{self._numbers // self.evaluations} numbers per evaluation, "
                f"{self._numbers} in total"]
