"""Secret randomness: every mask, share, seed and token comes from here.

Seeds come from ``os.urandom`` (the operating system's CSPRNG); long streams
expand a 32-byte seed with AES-256 in counter mode, so that a party that holds
the seed can rebuild the stream and nobody else can tell it from uniform.

- :func:`expand`: the ring Z_2^64 (int64 words), for the dealer's masks and
  triples, which travel as seeds;
- :func:`uniform_below`: exactly uniform values mod any ``t < 2^63``, for the
  homomorphic backend's masks mod the plain modulus;
- :func:`gaussian_integers`: the fixed party's noise on the sums it returns
  (:mod:`ppir_itk.backends.base`, ``FixedPolicy.joint_term_noise``).

Public randomness (URS and GMS sampling with their public seeds, test data)
does not need this module and uses NumPy's generators.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ppir_itk.protocol.messages import ProtocolError

SEED_BYTES = 32
MODULUS_LIMIT = 1 << 63  # values below it stay non-negative as int64 (SEAL's encoder takes int64)


def secret_seed() -> bytes:
    """A fresh 32-byte seed from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


# The keystream is the encryption of zeros, taken a cache-sized chunk at a time: one zero
# buffer of the stream's size and the cipher's own output buffer cost more than the AES.
_ZEROS = memoryview(bytes(1 << 18))


def expand(seed: bytes, count: int) -> np.ndarray:
    """``count`` uniform int64 values (ring Z_2^64) from a 32-byte seed: AES-256-CTR keystream."""
    if len(seed) != SEED_BYTES:
        raise ProtocolError(f"a seed must be {SEED_BYTES} bytes")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    size = 8 * count
    # update_into wants room for a block beyond its input (unused in CTR mode)
    out = np.empty(size + 16, dtype=np.uint8)
    buffer = out.data
    for start in range(0, size, len(_ZEROS)):
        stop = min(start + len(_ZEROS), size)
        encryptor.update_into(_ZEROS[: stop - start], buffer[start : stop + 15])
    return out[:size].view(np.int64)


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


# The noise is Gaussian to 2^-RESOLUTION_BITS of its deviation; below that, uniform.
RESOLUTION_BITS = 30


def gaussian_integers(deviations: Sequence[float]) -> list[int]:
    """Independent integers of mean 0, the i-th of deviation ``deviations[i]``.

    A standard normal ``z`` by Box and Muller from two 53-bit uniforms of the CSPRNG
    (so ``|z| <= 8.6``: the tail beyond is never drawn), scaled and floored to a grid
    of ``2^c`` (``c`` puts at least ``2^RESOLUTION_BITS`` grid steps in a deviation),
    plus an integer uniform on ``[0, 2^c)``. The low ``c`` bits of the result are then
    exactly uniform and independent of the rest: a floating-point Gaussian alone would
    leave them fixed, and the low bits of a noisy sum would be those of the true sum.
    """
    count = len(deviations)
    if count == 0:
        return []
    words = expand(secret_seed(), 3 * count).view(np.uint64)
    first = ((words[:count] >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53  # (0, 1]
    second = (words[count : 2 * count] >> np.uint64(11)).astype(np.float64) / 2.0**53
    normal = np.sqrt(-2.0 * np.log(first)) * np.cos(2.0 * math.pi * second)
    out = []
    for z, low, deviation in zip(
        normal.tolist(), words[2 * count :].tolist(), deviations, strict=True
    ):
        if deviation <= 0:
            out.append(0)
            continue
        cell = max(0, math.floor(math.log2(deviation)) - RESOLUTION_BITS)
        steps = math.floor(z * deviation / 2.0**cell)  # |.| < 2^(RESOLUTION_BITS + 5)
        out.append(steps * (1 << cell) + (int(low) & ((1 << cell) - 1)))
    return out
