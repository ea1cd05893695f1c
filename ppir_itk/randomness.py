"""Secret randomness: every mask, share, seed and token comes from here.

Seeds come from ``os.urandom`` (the operating system's CSPRNG); long streams
expand a 32-byte seed with AES-256 in counter mode, so that a party that holds
the seed can rebuild the stream and nobody else can tell it from uniform.

- :func:`expand`: the ring Z_2^64 (int64 words), for the dealer's masks and
  triples, which travel as seeds;
- :func:`uniform_below`: exactly uniform values mod any ``t < 2^63``, for the
  homomorphic backend's masks mod the plain modulus.

Public randomness (URS and GMS sampling with their public seeds, test data)
does not need this module and uses NumPy's generators.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ppir_itk.protocol.messages import ProtocolError

SEED_BYTES = 32
MODULUS_LIMIT = 1 << 63  # values below it stay non-negative as int64 (SEAL's encoder takes int64)


def secret_seed() -> bytes:
    """A fresh 32-byte seed from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


def expand(seed: bytes, count: int) -> np.ndarray:
    """``count`` uniform int64 values (ring Z_2^64) from a 32-byte seed: AES-256-CTR keystream."""
    if len(seed) != SEED_BYTES:
        raise ProtocolError(f"a seed must be {SEED_BYTES} bytes")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * count)), dtype=np.int64)


def uniform_below(modulus: int, shape: int | tuple[int, ...]) -> np.ndarray:
    """Values exactly uniform on ``[0, modulus)``, independent, as uint64 of ``shape``.

    Rejection sampling on a keystream under fresh seeds (:func:`secret_seed`,
    :func:`expand`): each 64-bit word keeps its low ``b = modulus.bit_length()``
    bits, a value uniform on ``[0, 2^b)``, and is kept only if it is below
    ``modulus``. A uniform value conditioned on lying in ``[0, modulus)`` is
    uniform there, so every kept value is exactly uniform, with no modular
    bias; and since ``modulus > 2^(b - 1)``, more than half the words are kept.
    """
    if not 1 <= modulus < MODULUS_LIMIT:
        raise ValueError(f"the modulus {modulus} is not between 1 and 2^63 - 1")
    count = int(np.prod(shape))
    low_bits = np.uint64((1 << modulus.bit_length()) - 1)
    kept = [np.empty(0, dtype=np.uint64)]
    missing = count
    while missing > 0:
        # Words for the expected acceptance plus a margin, so one round almost always suffices.
        words = missing * (1 << modulus.bit_length()) // modulus + missing // 16 + 64
        candidates = expand(secret_seed(), words).view(np.uint64) & low_bits
        accepted = candidates[candidates < np.uint64(modulus)][:missing]
        kept.append(accepted)
        missing -= accepted.size
    return np.concatenate(kept).reshape(shape)
