"""Secret randomness: every mask, share, seed and token comes from here.

Seeds come from ``os.urandom`` (the operating system's CSPRNG); long streams
expand a 32-byte seed with AES-256 in counter mode, so that a party that holds
the seed can rebuild the stream and nobody else can tell it from uniform.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ppir_itk.protocol.messages import ProtocolError

SEED_BYTES = 32


def expand(seed: bytes, count: int) -> np.ndarray:
    """``count`` uniform int64 values (ring Z_2^64) from a 32-byte seed: AES-256-CTR keystream."""
    if len(seed) != SEED_BYTES:
        raise ProtocolError(f"a seed must be {SEED_BYTES} bytes")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * count)), dtype=np.int64)


def secret_seed() -> bytes:
    """A fresh 32-byte seed from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)
