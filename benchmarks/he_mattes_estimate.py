"""Why the ``he`` backend refuses Mattes: the cost of the joint histogram under BFV.

    python benchmarks/he_mattes_estimate.py [--points 100000] [--bins 32]

The packed protocol's way (``ppir_itk/backends/he.py``) to a histogram ``H = A W^T`` with
the fixed party's one-hot ``A`` encrypted once per level: each of the ``B^2`` cells is a
slot-wise product of an encrypted column of ``A`` with a plaintext column of ``W``, so one
iteration costs ``B^2 ceil(n / slots)`` plaintext x ciphertext products (encode, NTT,
multiply), before any rotation or decryption. This times one such product at the
parameters ``he`` runs (N = 16384, 128-bit security) and prints the iteration's floor,
against the issue's bar of 50x Clear's iteration (a few ms to tens of ms).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from ppir_itk.backends.he import HEContext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100000)
    parser.add_argument("--bins", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    he = HEContext(16384, 128)
    seal = he.seal
    keys = seal.KeyGenerator(he.context)
    public_key = seal.PublicKey()
    keys.create_public_key(public_key)
    ciphertext = seal.Ciphertext()
    row = np.random.default_rng(0).integers(0, 1 << 20, he.slots)
    seal.Encryptor(he.context, public_key).encrypt(he.encode(row), ciphertext)
    he.evaluator.transform_to_ntt_inplace(ciphertext)
    start = time.perf_counter()
    for _ in range(args.repeats):
        plain = he.encode(row)
        he.evaluator.transform_to_ntt_inplace(plain, ciphertext.parms_id())
        product = seal.Ciphertext()
        he.evaluator.multiply_plain(ciphertext, plain, product)
    seconds = (time.perf_counter() - start) / args.repeats
    products = args.bins**2 * math.ceil(args.points / he.slots)
    print(f"one plaintext x ciphertext product (N = 16384): {seconds * 1e3:.1f} ms")
    print(
        f"n = {args.points}, B = {args.bins}: {products} products per iteration, "
        f"{products * seconds:.1f} s per iteration for the histogram alone"
    )
    he.close()


if __name__ == "__main__":
    main()
