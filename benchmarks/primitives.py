"""Throughput of the HE and MPC primitives the private backends are built from.

    python benchmarks/primitives.py [--repeats 3] [--batch 8]

Single thread (``torch.set_num_threads(1)``; SEAL and TenSEAL run these calls
on the calling thread), best of ``--repeats``. Every line calls the backends'
own code where it exists, so it measures what a registration runs. Times are
seconds per 10^6 values: for HE, per 10^6 slot values, i.e. one call's time x
10^6 / (slots it fills); each HE timing runs ``--batch`` ciphertexts. MB per
10^6 values is what would travel for them (``save``/``serialize`` lengths for
ciphertexts, 8 bytes per int64 ring element for shares), left blank for local
work.

``he`` protocol ``packed`` (BFV, ``backends/he.py``):
the backend's own ``HEContext`` with its default parameters (N = 16384,
SEAL's HE-standard 128-bit coefficient modulus, 60-bit batching plain
modulus; 16384 slots, all filled). In a 2-D affine iteration every point
fills d (d + 1) + 2 = 8 slots, so 10^6 points are 8 x 10^6 slot values.

- encode + encrypt: the fixed party's work per ciphertext of its level upload
  (``HEPackedFixedSide.on_points`` encrypts under the secret key, seeded; here public-key
  encryption, serialisation apart);
- save (serialise): ``HEContext.to_bytes`` on a fresh ciphertext; MB is the
  level upload's size per 10^6 slot values;
- load + to NTT: the moving party's per-level work on each received
  ciphertext (``HEPackedBackend._on_points``);
- ct x pt: ``HEPackedBackend._product`` (encode the moving party's row, to NTT,
  ``multiply_plain``), once per ciphertext per iteration;
- ct + ct: adding a product into the accumulator (``add_inplace``);
- mask, switch down, re-randomise, save: ``HEPackedBackend.masked`` on one
  product (once per iteration in the protocol); MB is its output;
- load + decrypt + decode: ``HEPackedFixedSide._decrypt``, the fixed party's
  per-iteration work on what it receives;
- ct x ct + relinearise: NOT used by any protocol (no ct x ct product, no
  rotation in ``packed``); for reference, with relinearisation keys made for
  it.

``he`` protocols ``paper-v1`` / ``paper-v2`` (real CKKS, TenSEAL,
``backends/he_paper.py``): the context of ``_new_context()`` (N = 8192,
coefficient modulus 60, 40, 40, 60 bits, scale 2^40) with the Galois keys
paper-v1's fixed party makes; 4096 slots (N / 2), all filled.

- encrypt: ``ts.ckks_vector`` (fixed party per level; paper-v2's moving party
  per iteration too); serialise: its size (the level upload, and paper-v2's
  per-iteration upload, per 10^6 values);
- ct x pt: ``cipher * block`` as paper-v2 does (multiply, auto-rescale);
- dot product: ``cipher.dot(block)`` as paper-v1 does (multiply, then a sum by
  log2(4096) = 12 rotations); MB is one result ciphertext's size per 10^6
  values it sums (paper-v1 sends |theta| + 2 such ciphertexts per iteration in
  all, not one per 4096 values);
- ct x ct (relinearise, rescale): NOT used by either protocol, for reference;
- decrypt.

``spdz`` (``backends/spdz.py``, ``spdz_shares.py``, ``dealer.py``), ring
Z_2^64, int64 values; one Beaver product per value, laid out as a 2-D affine
iteration lays them out (d + 2 = 4 rows of 250 000 points, rows paired with
``q(J)`` or ``q(J)^2`` by ``SharedProducts``'s row map):

- expand a seed: ``randomness.expand`` (AES-256-CTR keystream to int64), how the
  dealer's masks, ``a`` and ``c0`` reach the parties; MB: one 32-byte seed;
- dealer triples, both parties: ``DealerClient.masks`` then
  ``DealerClient.post_triples`` for each party against ``TriplePool`` in this
  process (``local_dealer``: same envelopes, no socket): the dealer draws the
  seed and computes ``c1 = a * b - c0``, the moving party expands ``a, c0``, the
  fixed party receives ``c1``; MB: what the dealer sent both parties;
- share (mask) X: ``E = X - a`` made a CrypTen share (``SharedProducts._share``),
  the moving party's step 4 before it opens E;
- open to one party: ``ArithmeticSharedTensor.reveal(dst=...)`` through two
  ``MailboxCommunicator`` wired as the runtime wires them: the sender's share
  into an envelope array and back out, the receiver adds it; MB: the envelope
  arrays sent;
- Beaver product, moving party / fixed party: each party's local work given
  its triple part, the expressions of ``SharedProducts.sums``
  (``c0 + X * F[rows]``, ``c1 + E * b[rows]``);
- one secure step, both parties: ``SharedProducts.sums`` for both parties in
  this process (triples from the in-process dealer, open E, Beaver, the affine
  map, open the d (d + 1) + 2 sums): the whole per-iteration secure work of a
  2-D affine registration without the transport; MB: both parties' openings
  and the dealer's ``c1``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MILLION = 10**6
SPDZ_ROWS = 4  # d + 2 rows of a 2-D affine iteration


@dataclass(frozen=True)
class Row:
    """One line of the table: seconds and megabytes per 10^6 values (None: not applicable)."""

    primitive: str
    seconds: float
    megabytes: float | None = None


def best_of(
    repeats: int, call: Callable[[Any], Any], setup: Callable[[], Any] = lambda: None
) -> float:
    """The shortest of ``repeats`` timings of ``call(setup())`` (set-up not timed)."""
    times = []
    for _ in range(repeats):
        argument = setup()
        start = time.perf_counter()
        call(argument)
        times.append(time.perf_counter() - start)
    return min(times)


def packed_rows(repeats: int, batch: int) -> tuple[str, list[Row]]:
    """BFV as protocol ``packed`` runs it, through the backend's own objects."""
    from ppir_itk.backends.he import HEPackedBackend, HEPackedFixedSide
    from ppir_itk.randomness import uniform_below

    fixed = HEPackedFixedSide({}, policy=None)  # holds the keys, as the fixed party does
    moving = HEPackedBackend(session=None, parameters={})  # no session: local calls only
    he, seal = moving.he, moving.he.seal
    moving._public_key = he.from_bytes("PublicKey", fixed.he.to_bytes(fixed._public_key))
    moving._encryptor = seal.Encryptor(he.context, moving._public_key)
    slots = he.slots
    per = MILLION / (batch * slots)  # seconds for `batch` ciphertexts -> per 10^6 slots
    rng = np.random.default_rng(0)
    fixed_rows = [rng.integers(-(1 << 26), 1 << 26, slots) for _ in range(batch)]
    moving_rows = [rng.integers(-(1 << 20), 1 << 20, slots) for _ in range(batch)]

    def encrypt(_: Any) -> list[Any]:
        out = []
        for row in fixed_rows:
            ciphertext = fixed.he.seal.Ciphertext()
            fixed._encryptor.encrypt(fixed.he.encode(row), ciphertext)
            out.append(ciphertext)
        return out

    fresh = encrypt(None)
    saved = [fixed.he.to_bytes(ciphertext) for ciphertext in fresh]

    def load(_: Any) -> list[Any]:
        out = []
        for data in saved:
            ciphertext = he.from_bytes("Ciphertext", data)
            he.evaluator.transform_to_ntt_inplace(ciphertext)
            out.append(ciphertext)
        return out

    level = load(None)

    def products(_: Any = None) -> list[Any]:
        return [moving._product(c, row) for c, row in zip(level, moving_rows, strict=True)]

    def accumulate(terms: list[Any]) -> None:
        for term in terms[1:]:
            he.evaluator.add_inplace(terms[0], term)

    mask = uniform_below(he.t, slots)
    sent = [moving.masked(product, mask) for product in products()]

    def masked(terms: list[Any]) -> None:
        for term in terms:
            moving.masked(term, mask)

    keys = seal.KeyGenerator(he.context)
    relin = seal.RelinKeys()
    keys.create_relin_keys(relin)

    def squares(_: Any) -> None:
        for ciphertext in fresh_moving:
            out = seal.Ciphertext()
            he.evaluator.multiply(ciphertext, ciphertext, out)
            he.evaluator.relinearize_inplace(out, relin)

    fresh_moving = [he.from_bytes("Ciphertext", data) for data in saved]
    rows = [
        Row("encode + encrypt (public key)", best_of(repeats, encrypt) * per),
        Row(
            "save (serialise) a fresh ciphertext",
            best_of(repeats, lambda _: [fixed.he.to_bytes(c) for c in fresh]) * per,
            np.mean([len(data) for data in saved]) * MILLION / slots / 1e6,
        ),
        Row("load + to NTT (moving party, per level)", best_of(repeats, load) * per),
        Row("ct x pt: encode, NTT, multiply_plain", best_of(repeats, products) * per),
        Row(
            "ct + ct (accumulate)",
            best_of(repeats, accumulate, products) * batch / (batch - 1) * per,
        ),
        Row(
            "mask, 2 mod switches, re-randomise, save",
            best_of(repeats, masked, products) * per,
            np.mean([len(data) for data in sent]) * MILLION / slots / 1e6,
        ),
        Row(
            "load + decrypt + decode (fixed party)",
            best_of(repeats, lambda _: [fixed._decrypt(data) for data in sent]) * per,
        ),
        Row("ct x ct + relinearise (not used)", best_of(repeats, squares) * per),
    ]
    bits = [m.bit_count() for m in he.context.key_context_data().parms().coeff_modulus()]
    title = (
        f"he packed (BFV, N={he.degree}, coefficient modulus {'+'.join(map(str, bits))} "
        f"bits, plain modulus {he.t.bit_length()} bits; {slots} slots)"
    )
    return title, rows


def paper_rows(repeats: int, batch: int) -> tuple[str, list[Row]]:
    """CKKS as protocols ``paper-v1`` and ``paper-v2`` run it (TenSEAL)."""
    import tenseal as ts

    from ppir_itk.backends.he_paper import (
        COEFF_MOD_BIT_SIZES,
        POLY_MODULUS_DEGREE,
        SCALE_BITS,
        _new_context,
    )

    context = _new_context()
    context.generate_galois_keys()  # as PaperV1FixedSide: DotProduct rotates
    slots = POLY_MODULUS_DEGREE // 2  # the protocols' sub-array length
    per = MILLION / (batch * slots)
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal(slots).tolist() for _ in range(batch)]

    def encrypt(_: Any) -> list[Any]:
        return [ts.ckks_vector(context, block) for block in blocks]

    fresh = encrypt(None)
    pairs = list(zip(fresh, blocks, strict=True))
    dots = [cipher.dot(block) for cipher, block in pairs]

    def size(vectors: list[Any]) -> float:
        return float(np.mean([len(v.serialize()) for v in vectors])) * MILLION / slots / 1e6

    rows = [
        Row("encrypt", best_of(repeats, encrypt) * per),
        Row(
            "serialise a fresh ciphertext",
            best_of(repeats, lambda _: [v.serialize() for v in fresh]) * per,
            size(fresh),
        ),
        Row(
            "ct x pt (paper-v2: multiply, rescale)",
            best_of(repeats, lambda _: [c * b for c, b in pairs]) * per,
            size([c * b for c, b in pairs]),
        ),
        Row(
            "dot product (paper-v1: ct x pt + 12 rotations)",
            best_of(repeats, lambda _: [c.dot(b) for c, b in pairs]) * per,
            size(dots),
        ),
        Row(
            "ct x ct, relinearise, rescale (not used)",
            best_of(repeats, lambda _: [c * c for c in fresh]) * per,
        ),
        Row("decrypt", best_of(repeats, lambda _: [v.decrypt() for v in fresh]) * per),
    ]
    title = (
        f"he paper-v1 / paper-v2 (CKKS, N={POLY_MODULUS_DEGREE}, coefficient modulus "
        f"{'+'.join(map(str, COEFF_MOD_BIT_SIZES))} bits, scale 2^{SCALE_BITS}; "
        f"{slots} slots)"
    )
    return title, rows


def _array_bytes(arrays: list[Any]) -> int:
    return sum(array.ByteSize() for array in arrays)


class _Pair:
    """Both parties' ``SharedProducts``, wired as the runtime wires them, and one dealer.

    The moving party's communicator flush hands its outbox to the fixed party,
    runs the fixed party's side of the current step and reads its answer, as
    ``SPDZBackend`` and ``SPDZFixedSide`` do through session envelopes.
    """

    def __init__(self, count: int) -> None:
        from ppir_itk.backends.spdz_shares import MailboxCommunicator, SharedProducts
        from ppir_itk.compose import local_dealer
        from ppir_itk.dealer import TriplePool
        from ppir_itk.roles import FIXED, MOVING

        token = os.urandom(32)
        pool = TriplePool()
        self.fixed_step: Callable[[], Any] = lambda: None
        self.bytes = 0  # envelope arrays both parties sent each other
        self.fixed_comm = MailboxCommunicator(FIXED)
        self.moving_comm = MailboxCommunicator(MOVING, self._flush)
        self.moving = SharedProducts(
            MOVING, local_dealer(pool, "moving-party")(token), self.moving_comm
        )
        self.fixed = SharedProducts(
            FIXED, local_dealer(pool, "fixed-party")(token), self.fixed_comm
        )
        self.limit = count * 16

    def _flush(self) -> None:
        from ppir_itk.backends.crypten_compat import acting_as

        outbox = self.moving_comm.take_outbox()
        self.bytes += _array_bytes(outbox)
        self.fixed_comm.fill_inbox(outbox, max_elements=self.limit)
        with acting_as(self.fixed_comm):
            self.fixed_step()
        answer = self.fixed_comm.take_outbox()
        self.bytes += _array_bytes(answer)
        self.moving_comm.fill_inbox(answer, max_elements=self.limit)

    def dealer_bytes(self) -> int:
        """What the dealer sent both parties so far (envelope payload)."""
        return sum(
            products.dealer.session.counters().payload_bytes_received
            for products in (self.moving, self.fixed)
        )


def spdz_rows(repeats: int) -> tuple[str, list[Row]]:
    """The SPDZ backend's share arithmetic, dealer and openings."""
    from ppir_itk.backends.crypten_compat import acting_as, load_crypten
    from ppir_itk.backends.spdz import pairing, ring_map
    from ppir_itk.compose import local_dealer
    from ppir_itk.dealer import TriplePool
    from ppir_itk.fixed_point import RING
    from ppir_itk.image import GridGeometry
    from ppir_itk.points import PointSet
    from ppir_itk.randomness import SEED_BYTES, expand, secret_seed
    from ppir_itk.roles import MOVING

    shared = load_crypten().mpc.primitives.ArithmeticSharedTensor
    rng = np.random.default_rng(0)
    seed = secret_seed()
    ring = np.iinfo(np.int64)
    points = MILLION // SPDZ_ROWS
    d = SPDZ_ROWS - 2

    # Dealer: a mask for the level, then one triple batch per call for both parties.
    token, pool = os.urandom(32), TriplePool()
    clients = [local_dealer(pool, name)(token) for name in ("moving-party", "fixed-party")]
    clients[1].masks(0, 2, MILLION)
    batches = iter(range(repeats))

    def triples(_: Any) -> None:
        sequence = next(batches)
        waits = [client.post_triples(sequence, MILLION, 0, [0]) for client in clients]
        for wait in waits:
            wait()

    before = sum(client.session.counters().payload_bytes_received for client in clients)
    dealer_seconds = best_of(repeats, triples)
    dealt = (
        sum(client.session.counters().payload_bytes_received for client in clients) - before
    ) / repeats

    # The operands of one iteration's Beaver products, laid out as SharedProducts lays them.
    row_map = torch.tensor([0] * (d + 1) + [1])
    x = torch.from_numpy(rng.integers(-(1 << 20), 1 << 20, (SPDZ_ROWS, points)))
    a, c0, c1 = (
        rng.integers(ring.min, ring.max, (SPDZ_ROWS, points), dtype=np.int64, endpoint=True)
        for _ in range(3)
    )
    opened_f, mask_b = (
        torch.from_numpy(
            rng.integers(ring.min, ring.max, (2, points), dtype=np.int64, endpoint=True)
        )
        for _ in range(2)
    )
    e = torch.from_numpy(x.numpy() - a)

    def beaver(operand: torch.Tensor, other: torch.Tensor, c: np.ndarray) -> None:
        share = operand * other[row_map]
        np.add(share.numpy(), c, out=share.numpy())

    # One opening of 10^6 values to the moving party, through the mailboxes.
    pair = _Pair(points)
    share0, share1 = (
        torch.from_numpy(rng.integers(ring.min, ring.max, MILLION, dtype=np.int64, endpoint=True))
        for _ in range(2)
    )
    pair.fixed_step = lambda: shared.from_shares(share1, precision=0).reveal(dst=MOVING)

    def open_once(_: Any) -> None:
        with acting_as(pair.moving_comm):
            shared.from_shares(share0, precision=0).reveal(dst=MOVING)

    open_seconds = best_of(repeats, open_once)
    open_bytes = pair.bytes / repeats

    # The whole secure step of an iteration, both parties (SharedProducts.sums).
    size = int(round(np.sqrt(points)))
    geometry = GridGeometry(
        size=(size, size), spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0)
    )
    basis = PointSet(geometry, None).linear_map
    apply = ring_map(basis)
    values = rng.integers(0, 1 << basis.budget(RING).j_bits, points)
    step = _Pair(geometry.number_of_points)
    layout = pairing(d, False, False)
    shape = (layout.rows, layout.mapped, layout.fixed_rows)
    step.fixed_step = lambda: step.fixed.open_fixed_operand(
        0, np.stack([values, values**2]), geometry.number_of_points, *shape
    )
    step.moving.open_fixed_operand(0, None, geometry.number_of_points, *shape)
    step.fixed_step = lambda: step.fixed.sums(None, apply)
    moving_rows = rng.integers(-(1 << 20), 1 << 20, (SPDZ_ROWS, geometry.number_of_points))
    mark = step.bytes + step.dealer_bytes()
    step_seconds = best_of(repeats, lambda _: step.moving.sums(moving_rows, apply))
    step_bytes = (step.bytes + step.dealer_bytes() - mark) / repeats
    per_product = MILLION / (SPDZ_ROWS * geometry.number_of_points)

    rows = [
        Row(
            "expand a seed (AES-256-CTR)",
            best_of(repeats, lambda _: expand(seed, MILLION)),
            SEED_BYTES / 1e6,
        ),
        Row("dealer triples, both parties (in-process)", dealer_seconds, dealt / 1e6),
        Row(
            "share (mask) X: E = X - a",
            best_of(repeats, lambda _: pair.moving._share(x.numpy() - a)),
        ),
        Row("open to one party (reveal, via mailboxes)", open_seconds, open_bytes / 1e6),
        Row(
            "Beaver product, moving party: c0 + X F",
            best_of(repeats, lambda _: beaver(x, opened_f, c0)),
        ),
        Row(
            "Beaver product, fixed party: c1 + E b",
            best_of(repeats, lambda _: beaver(e, mask_b, c1)),
        ),
        Row(
            "one secure step, both parties (sums)",
            step_seconds * per_product,
            step_bytes * per_product / 1e6,
        ),
    ]
    return (
        f"spdz (CrypTen shares over Z_2^64, int64; {SPDZ_ROWS} rows x {points} points "
        "= 10^6 products)"
    ), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=8, help="ciphertexts per HE timing (at least 2)"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.batch < 2:
        parser.error("--repeats must be at least 1 and --batch at least 2")
    torch.set_num_threads(1)
    print(f"primitives, single thread, best of {args.repeats}; per 10^6 values")
    print(f"{'primitive':<48} {'s / 10^6':>10} {'MB / 10^6':>10}")
    for title, rows in (
        packed_rows(args.repeats, args.batch),
        paper_rows(args.repeats, args.batch),
        spdz_rows(args.repeats),
    ):
        print(title)
        for row in rows:
            megabytes = "" if row.megabytes is None else f"{row.megabytes:.6g}"
            print(f"  {row.primitive:<46} {row.seconds:>10.4g} {megabytes:>10}", flush=True)


if __name__ == "__main__":
    main()
