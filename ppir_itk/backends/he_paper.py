"""The paper's CKKS protocols v1 and v2 (Taiello et al., MedIA 2024, section 5.4.2).

Kept to reproduce the paper's table: both reveal more than the joint term
(see each class), and the run reports it. Use ``packed`` for registrations.


``paper-v1`` (:class:`PaperV1Backend`): the fixed party encrypts J, cut into
sub-arrays of N/2 values, under its own CKKS key, and sends them once per level
together with a public context (public key and the Galois keys that DotProduct's rotations need).
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

from ppir_itk.backends.base import (
    FixedSide,
    JointTerm,
    JointTermBackend,
    MovingChannel,
    MovingFields,
)
from ppir_itk.disclosure import Disclosure, Message, ProtocolTable
from ppir_itk.errors import InputError
from ppir_itk.metric_kinds import MEAN_SQUARES_SETTINGS, MetricSettings
from ppir_itk.points import PointSet
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError, array_from_pb, array_to_pb
from ppir_itk.roles import FIXED_PARTY, MOVING_PARTY


def _answer(reply: pb.BackendMessage, kind: str) -> Any:
    """The body of the fixed party's answer, which must be a ``kind``."""
    if reply.WhichOneof("body") != kind:
        raise ProtocolError(
            f"the fixed party answered '{reply.WhichOneof('body')}' where '{kind}' was due"
        )
    return getattr(reply, kind)


POLY_MODULUS_DEGREE = 8192  # the paper's N; 128-bit security with these moduli
COEFF_MOD_BIT_SIZES = (60, 40, 40, 60)
SCALE_BITS = 40


PARAMETER_TERM = "R = S^T J, I_w . J and the sum of J^2 over the overlap"
V1_TABLE = ProtocolTable(
    title="he, protocol paper-v1 (CKKS, the paper's; reveals more than the joint term)",
    messages=(
        Message("paper_v1_context_request", MOVING_PARTY, "once per session", "nothing", "nothing"),
        Message(
            "paper_v1_context",
            FIXED_PARTY,
            "once per session",
            "a CKKS public context: public and Galois keys",
            "nothing about J",
        ),
        Message("paper_v1_level_request", MOVING_PARTY, "once per level", "nothing", "nothing"),
        Message(
            "paper_v1_level",
            FIXED_PARTY,
            "once per level",
            "[[J]] and [[J^2]] in blocks",
            "nothing about J (IND-CPA)",
        ),
        Message(
            "paper_v1_products",
            MOVING_PARTY,
            "per evaluation",
            "|theta| + 2 ciphertexts: DotProducts of S's columns, I_w and the valid mask",
            f"the fixed party decrypts {PARAMETER_TERM}",
        ),
        Message(
            "paper_v1_decrypted",
            FIXED_PARTY,
            "per evaluation",
            "the decrypted numbers",
            f"{PARAMETER_TERM}",
        ),
    ),
    disclosures=(
        Disclosure(
            "parameter_term",
            FIXED_PARTY,
            f"paper-v1: {PARAMETER_TERM}, in the clear",
            "numbers",
            "evaluation",
        ),
        Disclosure(
            "parameter_term", MOVING_PARTY, f"paper-v1: {PARAMETER_TERM}", "numbers", "evaluation"
        ),
    ),
)
V2_TABLE = ProtocolTable(
    title="he, protocol paper-v2 (CKKS, reconstructed from the paper; reveals more)",
    messages=(
        Message(
            "paper_v2_context",
            MOVING_PARTY,
            "once per session",
            "the moving party's CKKS public context",
            "nothing about I",
        ),
        Message(
            "paper_v2_context",
            FIXED_PARTY,
            "once per session",
            "the fixed party's CKKS public context",
            "nothing about J",
        ),
        Message(
            "paper_v2_level_request",
            MOVING_PARTY,
            "once per level",
            "the number of columns, |theta| + 2",
            "nothing",
        ),
        Message(
            "paper_v2_level",
            FIXED_PARTY,
            "once per level",
            "[[J_1]] (the first half of the points), once per column",
            "nothing about J (IND-CPA)",
        ),
        Message(
            "paper_v2_products",
            MOVING_PARTY,
            "per evaluation",
            "per column: S_1 * [[J_1]] summed over blocks; [[S_2]] under the moving key",
            "the fixed party decrypts slot-wise partial sums of S_1 * J_1",
        ),
        Message(
            "paper_v2_answer",
            FIXED_PARTY,
            "per evaluation",
            "the decrypted first-half sums R_1; per column [[S_2]] * J_2 summed over blocks",
            "R_1, and slot-wise partial sums of S_2 * J_2 (J_2 itself where a column half "
            "fits one ciphertext)",
        ),
    ),
    disclosures=(
        Disclosure(
            "partial_sums",
            FIXED_PARTY,
            "paper-v2: slot-wise partial sums of S_1 * J_1 and R_1, in the clear",
            "values",
            "evaluation",
        ),
        Disclosure(
            "partial_sums",
            MOVING_PARTY,
            "paper-v2: slot-wise partial sums of S_2 * J_2 (J_2 itself where a column "
            "half fits one ciphertext)",
            "values",
            "evaluation",
        ),
    ),
)


def _tenseal() -> Any:
    import tenseal

    return tenseal


def _split(values: np.ndarray, length: int) -> list[list[float]]:
    """``values`` in blocks of ``length``, the last one padded with zeros: ciphertexts of
    one column are summed slot-wise (v2), which needs them all of one size."""
    padded = np.zeros(-(-values.size // length) * length)
    padded[: values.size] = values
    return [padded[i : i + length].tolist() for i in range(0, padded.size, length)]


def _new_context() -> Any:
    ts = _tenseal()
    context = ts.context(
        ts.SCHEME_TYPE.CKKS, POLY_MODULUS_DEGREE, coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES)
    )
    context.global_scale = 2.0**SCALE_BITS
    return context


def _public(context: Any) -> bytes:
    return context.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )


def _load_public(blob: bytes) -> Any:
    ts = _tenseal()
    try:
        context = ts.context_from(blob)
    except Exception:  # TenSEAL raises bare exceptions on bad bytes
        raise ProtocolError("the peer's CKKS context is invalid") from None
    if context.is_private():
        raise ProtocolError("the peer sent its secret key; refusing it")
    return context


def _halves(n: int) -> tuple[slice, slice]:
    half = -(-n // 2)
    return slice(0, half), slice(half, n)


def _summed(ciphers: list[Any], plains: np.ndarray, dot: bool = False) -> Any:
    """Sum over chunks of the products with ``plains``: DotProducts (v1, rotations) or
    element-wise products (v2, none)."""
    total = None
    for cipher, block in zip(ciphers, _split(plains, POLY_MODULUS_DEGREE // 2), strict=True):
        term = cipher.dot(block) if dot else cipher * block
        total = term if total is None else total + term
    return total


class _PaperBackend(JointTermBackend):
    """What the paper's protocols share on the moving party's side: fixed parameters."""

    name = "he"
    scheme = "CKKS"
    private = True

    def __init__(
        self,
        channel: MovingChannel,
        parameters: dict[str, str] | None = None,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        parameters = dict(parameters or {})
        if set(parameters) - {"protocol"}:
            raise InputError(
                f"he protocol '{self.protocol}' runs the paper's parameters "
                f"only (N={POLY_MODULUS_DEGREE}); it takes no other option"
            )
        super().__init__(channel, parameters, metric)


class PaperV1Backend(_PaperBackend):
    """Moving-party side of the paper's protocol v1."""

    protocol = "paper-v1"
    table = V1_TABLE

    def __init__(
        self,
        channel: MovingChannel,
        parameters: dict[str, str] | None = None,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        super().__init__(channel, parameters, metric)
        self._context: Any = None
        self._fixed: list[Any] = []
        self._fixed_squared: list[Any] = []

    def _on_points(self, points: PointSet) -> None:
        ts = _tenseal()
        if self._context is None:
            reply = self.channel.exchange(
                pb.BackendMessage(paper_v1_context_request=pb.PaperV1ContextRequest())
            )
            self._context = _load_public(_answer(reply, "paper_v1_context").public_context)
        reply = self.channel.exchange(
            pb.BackendMessage(paper_v1_level_request=pb.PaperV1LevelRequest())
        )
        parts = -(-points.size // (POLY_MODULUS_DEGREE // 2))
        level = _answer(reply, "paper_v1_level").ciphertexts
        if len(level) != 2 * parts:
            raise ProtocolError("the fixed party's level ciphertexts do not fit the point set")
        vectors = [ts.ckks_vector_from(self._context, data) for data in level]
        self._fixed, self._fixed_squared = vectors[:parts], vectors[parts:]

    def _joint_term(self, fields: MovingFields) -> JointTerm:
        columns = list(fields.steepest_descent(self.level_points).T) + [fields.warped]
        results = [_summed(self._fixed, column, dot=True) for column in columns]
        results.append(_summed(self._fixed_squared, fields.valid.astype(np.float64), dot=True))
        reply = self.channel.exchange(
            pb.BackendMessage(
                paper_v1_products=pb.PaperV1Products(
                    ciphertexts=[result.serialize() for result in results]
                )
            )
        )
        values = array_from_pb(
            _answer(reply, "paper_v1_decrypted").values, max_elements=len(results)
        )
        if values.shape != (len(results),):
            raise ProtocolError("the fixed party's decrypted products are malformed")
        self.received.add("parameter_term", values.size)
        return JointTerm(
            parameter_term=values[:-2].astype(np.float64),
            warped_dot_fixed=float(values[-2]),
            fixed_squared=float(values[-1]),
        )


class PaperV1FixedSide(FixedSide):
    """Fixed-party side of the paper's protocol v1: encrypts J, decrypts (and learns) R."""

    table = V1_TABLE

    def __init__(
        self,
        parameters: dict[str, str],
        policy: FixedPolicy,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        super().__init__(parameters, policy, metric)
        self._context = _new_context()
        self._context.generate_galois_keys()  # DotProduct rotates

    def on_points(
        self, values: np.ndarray, points: PointSet, fixed_mask: np.ndarray | None = None
    ) -> None:
        ts = _tenseal()
        length = POLY_MODULUS_DEGREE // 2
        self._level = [
            ts.ckks_vector(self._context, block).serialize()
            for vector in (values, values * values)
            for block in _split(vector, length)
        ]

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        ts = _tenseal()
        kind = message.WhichOneof("body")
        if kind == "paper_v1_context_request":
            return pb.BackendMessage(
                paper_v1_context=pb.PaperV1Context(
                    public_context=self._context.serialize(
                        save_public_key=True,
                        save_secret_key=False,
                        save_galois_keys=True,
                        save_relin_keys=False,
                    )
                )
            )
        if kind == "paper_v1_level_request":
            return pb.BackendMessage(paper_v1_level=pb.PaperV1Level(ciphertexts=self._level))
        if kind == "paper_v1_products" and 0 < len(message.paper_v1_products.ciphertexts) <= 64:
            self.evaluations += 1
            values = []
            for data in message.paper_v1_products.ciphertexts:
                try:
                    values.append(ts.ckks_vector_from(self._context, data).decrypt()[0])
                except Exception:  # TenSEAL raises bare exceptions on bad bytes
                    raise ProtocolError("a ciphertext from the moving party is invalid") from None
            self.received.add("parameter_term", len(values))
            return pb.BackendMessage(
                paper_v1_decrypted=pb.PaperV1Decrypted(
                    values=array_to_pb(np.array(values, dtype=np.float64))
                )
            )
        raise ProtocolError(f"'{kind}' is not a request of protocol paper-v1")


class PaperV2Backend(_PaperBackend):
    """Moving-party side of the paper's protocol v2 (balanced work, both parties encrypt).

    Reconstructed from the text of section 5.4.2 (the paper's Fig. A4 was not
    at hand): the moving party splits the columns of S (and I_w, the valid mask)
    into two halves of the points. It multiplies the first half by the fixed
    party's encrypted J_1 (element-wise, chunk by chunk, summed per column) and
    sends the results for the fixed party to decrypt; it encrypts the second
    half under its own key and sends it; the fixed party multiplies it by its
    plain J_2, sums per column and sends the results back for the moving party
    to decrypt. R = R_1 + R_2.

    What it reveals: each party decrypts slot-wise partial sums, not only totals.
    The fixed party learns the partial sums of S_1 * J_1 (and R_1); the moving
    party learns the partial sums of S_2 * J_2 - single products, hence J_2
    itself, where a column half fits in one ciphertext (n <= N). The report
    says so.
    """

    protocol = "paper-v2"
    table = V2_TABLE

    def __init__(
        self,
        channel: MovingChannel,
        parameters: dict[str, str] | None = None,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        super().__init__(channel, parameters, metric)
        self._context = _new_context()  # the moving party's own keys
        self._fixed_context: Any = None
        self._fixed_first_half: list[list[Any]] = []

    def _on_points(self, points: PointSet) -> None:
        if self._fixed_context is None:
            reply = self.channel.exchange(
                pb.BackendMessage(
                    paper_v2_context=pb.PaperV2Context(public_context=_public(self._context))
                )
            )
            self._fixed_context = _load_public(_answer(reply, "paper_v2_context").public_context)
        self._fixed_first_half = []  # fetched at the level's first evaluation

    def _fetch_level(self, columns: int) -> None:
        """The fixed party's encrypted, replicated J_1: one copy per column (public count)."""
        ts = _tenseal()
        self._columns = columns
        reply = self.channel.exchange(
            pb.BackendMessage(paper_v2_level_request=pb.PaperV2LevelRequest(columns=columns))
        )
        first, _ = _halves(self.level_points.size)
        chunks = -(-(first.stop - first.start) // (POLY_MODULUS_DEGREE // 2))
        parts = _answer(reply, "paper_v2_level").ciphertexts
        if len(parts) != columns * chunks:
            raise ProtocolError("the fixed party's level ciphertexts do not fit the point set")
        vectors = [ts.ckks_vector_from(self._fixed_context, data) for data in parts]
        self._fixed_first_half = [vectors[c * chunks : (c + 1) * chunks] for c in range(columns)]

    def _joint_term(self, fields: MovingFields) -> JointTerm:
        ts = _tenseal()
        # |theta| + 2 columns: S, then I_w (times J) and the valid mask (times J^2).
        columns = np.column_stack(
            [
                fields.steepest_descent(self.level_points),
                fields.warped,
                fields.valid.astype(np.float64),
            ]
        )
        if not self._fixed_first_half:
            self._fetch_level(columns.shape[1])
        first, second = _halves(columns.shape[0])
        mine = [_summed(self._fixed_first_half[c], columns[first, c]) for c in range(self._columns)]
        theirs = [
            ts.ckks_vector(self._context, block)
            for c in range(self._columns)
            for block in _split(columns[second, c], POLY_MODULUS_DEGREE // 2)
        ]
        reply = self.channel.exchange(
            pb.BackendMessage(
                paper_v2_products=pb.PaperV2Products(
                    first_half=[v.serialize() for v in mine],
                    second_half=[v.serialize() for v in theirs],
                )
            )
        )
        answer = _answer(reply, "paper_v2_answer")
        first_sums = array_from_pb(answer.first_half_sums, max_elements=self._columns)
        second_parts = answer.second_half
        if first_sums.shape != (self._columns,) or len(second_parts) != self._columns:
            raise ProtocolError("the fixed party's answer does not fit the columns")
        second_sums, seen = [], 0
        for data in second_parts:
            slots = np.array(ts.ckks_vector_from(self._context, data).decrypt())
            seen += slots.size
            second_sums.append(float(slots.sum()))
        self.received.add("partial_sums", seen)
        totals = first_sums + np.array(second_sums)
        return JointTerm(
            parameter_term=totals[:-2],
            warped_dot_fixed=float(totals[-2]),
            fixed_squared=float(totals[-1]),
        )


class PaperV2FixedSide(FixedSide):
    """Fixed-party side of the paper's protocol v2."""

    table = V2_TABLE

    def __init__(
        self,
        parameters: dict[str, str],
        policy: FixedPolicy,
        metric: MetricSettings = MEAN_SQUARES_SETTINGS,
    ) -> None:
        super().__init__(parameters, policy, metric)
        self._context = _new_context()  # the fixed party's own keys
        self._moving_context: Any = None

    def on_points(
        self, values: np.ndarray, points: PointSet, fixed_mask: np.ndarray | None = None
    ) -> None:
        first, second = _halves(values.size)
        self._values = values
        self._first, self._second = first, second
        self._columns = 0  # until the level's V2_LEVEL request says how many

    def handle(self, message: pb.BackendMessage) -> pb.BackendMessage:
        ts = _tenseal()
        kind = message.WhichOneof("body")
        if kind == "paper_v2_context":
            self._moving_context = _load_public(message.paper_v2_context.public_context)
            return pb.BackendMessage(
                paper_v2_context=pb.PaperV2Context(public_context=_public(self._context))
            )
        if kind == "paper_v2_level_request":
            self._columns = int(message.paper_v2_level_request.columns)
            if not 3 <= self._columns <= 64:
                raise ProtocolError("paper-v2: the number of columns is out of range")
            blobs = [
                ts.ckks_vector(self._context, block).serialize()
                for vector in self._replicated(self._first)
                for block in _split(vector, POLY_MODULUS_DEGREE // 2)
            ]
            return pb.BackendMessage(paper_v2_level=pb.PaperV2Level(ciphertexts=blobs))
        if kind == "paper_v2_products" and self._moving_context is not None and self._columns:
            chunk = POLY_MODULUS_DEGREE // 2
            second_chunks = -(-(self._second.stop - self._second.start) // chunk)
            products = message.paper_v2_products
            if (
                len(products.first_half) != self._columns
                or len(products.second_half) != self._columns * second_chunks
            ):
                raise ProtocolError("paper-v2: the products do not fit the columns")
            self.evaluations += 1
            try:
                first_sums, seen = [], 0
                for data in products.first_half:
                    slots = np.array(ts.ckks_vector_from(self._context, data).decrypt())
                    seen += slots.size
                    first_sums.append(float(slots.sum()))
                theirs = [
                    ts.ckks_vector_from(self._moving_context, data) for data in products.second_half
                ]
                # inside the try: a vector of the wrong length loads, then cannot multiply
                summed = [
                    _summed(theirs[c * second_chunks : (c + 1) * second_chunks], vector)
                    for c, vector in enumerate(self._replicated(self._second))
                ]
            except Exception:  # TenSEAL raises bare exceptions on bad bytes
                raise ProtocolError("a ciphertext from the moving party is invalid") from None
            self.received.add("partial_sums", seen)
            return pb.BackendMessage(
                paper_v2_answer=pb.PaperV2Answer(
                    first_half_sums=array_to_pb(np.array(first_sums, dtype=np.float64)),
                    second_half=[product.serialize() for product in summed],
                )
            )
        raise ProtocolError(f"'{kind}' is not a request of protocol paper-v2")

    def measurements_per_evaluation(self, points: PointSet) -> int:
        """The moving party decrypts every slot of each column's summed products: the
        slot-wise partial sums of S_2 * J_2, one value per slot the second half fills."""
        filled = min(self._second.stop - self._second.start, POLY_MODULUS_DEGREE // 2)
        return self._columns * filled

    def _replicated(self, half: slice) -> list[np.ndarray]:
        """J on a half, once per column of S and for I_w; J^2 for the valid mask."""
        values = self._values[half]
        return [values] * (self._columns - 1) + [values * values]
