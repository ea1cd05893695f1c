"""Attack 4 of issue 14 at scale: the fixed party reads the packed ciphertext's noise.

    python benchmarks/noise_attack.py [--ciphertexts 100] [--size 64]

A head phantom (``--size`` pixels a side) is the fixed image; the moving image is
its grey levels (whole numbers) with a little noise, a wrong candidate is it shifted
by 3 pixels, and a third candidate is the true one with one pixel one grey level
brighter. For each mode, the defence off (the protocol as before it: N = 8192, two
modulus switches, no flood) and on (the default: N = 16384, the flood of
``ppir_itk.backends.he.flooding``), ``--ciphertexts`` evaluations of the true
image's fields go through the project's moving and fixed halves
(:class:`ppir_itk.noise_attack.PackedSession`) and the fixed party scores:

- confirmation: the correlation of each ciphertext's observed noise with the noise
  predicted from each candidate, the mean and the combined z-score;
- linkability: the correlation of the noise of consecutive ciphertexts of identical
  plaintexts, and of each with a ciphertext of the wrong image;
- cost: the moving party's time per evaluation (its joint term) and the bytes of the
  ciphertext it sends.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ppir_itk.backends import he
from ppir_itk.image import ImageGrid
from ppir_itk.noise_attack import PackedSession, correlation, fields_at_identity, z_score
from ppir_itk.phantoms import head_phantom

MODES = (("off", False, {"poly_modulus_degree": "8192"}), ("on", True, {}))


def run(
    fixed: ImageGrid,
    candidates: dict[str, ImageGrid],
    count: int,
    flood: bool,
    parameters: dict[str, str],
) -> None:
    he.FLOOD_NOISE = flood
    session = PackedSession(fixed, parameters)
    attacker, degree = session.attacker, session.side.he.degree
    true = fields_at_identity(candidates["true"])
    wrong = fields_at_identity(candidates["wrong"])
    seen, seconds, sent = [], 0.0, 0
    for _ in range(count):
        start = time.perf_counter()
        blob = session.evaluate(true)
        seconds += time.perf_counter() - start
        sent += len(blob)
        seen.append(attacker.observe(blob))
    print(
        f"  N = {degree}, {seen[0].switches} modulus switches; moving party "
        f"{1e3 * seconds / count:.1f} ms and {sent / count / 1e6:.3f} MB per evaluation"
    )
    for name, candidate in candidates.items():
        fields = fields_at_identity(candidate)
        found = [correlation(s.noise, attacker.predicted_noise(fields, s)) for s in seen]
        print(
            f"  confirmation, {name:>5} candidate: mean correlation {np.mean(found):+.4f}, "
            f"z = {z_score(found, degree):+.1f} over {count} ciphertexts"
        )
    same = [correlation(a.noise, b.noise) for a, b in zip(seen, seen[1:], strict=False)]
    other = attacker.observe(session.evaluate(wrong))
    different = [correlation(s.noise, other.noise) for s in seen]
    for name, values in (("identical plaintexts", same), ("different plaintexts", different)):
        print(
            f"  linkability, {name}: mean correlation {np.mean(values):+.4f}, "
            f"largest |correlation| {np.max(np.abs(values)):.4f} over {len(values)} pairs"
        )
    session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ciphertexts", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    fixed = head_phantom((args.size, args.size))
    rng = np.random.default_rng(1)
    grey = np.round(fixed.array * 200) + rng.integers(0, 3, fixed.array.shape)
    poked = grey.copy()
    poked[args.size // 3, args.size // 3] += 1
    candidates = {
        "true": ImageGrid(grey),
        "wrong": ImageGrid(np.roll(grey, 3, axis=0)),
        "poked": ImageGrid(poked),
    }
    for mode, flood, parameters in MODES:
        print(f"defence {mode}:")
        run(fixed, candidates, args.ciphertexts, flood, parameters)


if __name__ == "__main__":
    main()
