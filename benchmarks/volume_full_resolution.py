"""The MNI-sized volume, affine, at full resolution: every backend's wall time against Clear's.

    python benchmarks/volume_full_resolution.py [--backends clear spdz he] [--repeats 1]

The MNI152 T1 template (nilearn's, a test dependency) at 2 mm, 98 x 116 x 94 voxels
(1.07 M), and a copy moved by ``multimodal_pairs.volume_pair``'s known affine; mean
squares, Gauss-Newton, levels 4, 2, 1 (sigmas 2, 1, 0 mm), every voxel, one kernel
thread, through ``ppir_itk.register`` with the fixed party (and spdz's dealer) in its own
process over mutual TLS on loopback. Printed per run: wall seconds of the call (start-up
of the parties included) and its ratio to Clear's in the same run, the levels' own
seconds, iterations, the displacement RMSE to Clear's transform and to the truth (mm),
and per level the bytes the fixed party sent (he: the level upload, almost all of them).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import ppir_itk
from ppir_itk.backends import InsecureBackendWarning
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.phantoms import moved_copy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multimodal_pairs import volume_pair  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["clear", "spdz", "he"])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore", InsecureBackendWarning)
    pair = volume_pair()
    fixed, truth = pair.fixed, pair.truth
    moving = moved_copy(fixed, truth)
    print(f"fixed {fixed.geometry.size}, {fixed.array.size} voxels")
    print(
        "| backend | wall s | × Clear | levels s | iterations | vs Clear (mm) "
        "| vs truth (mm) | fixed party MB sent per level (coarsest first) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    clear_wall, clear_transform = None, None
    for _ in range(args.repeats):
        for backend in args.backends:
            start = time.perf_counter()
            result = ppir_itk.register(
                fixed,
                moving,
                backend=backend,
                transform="affine",
                shrink_factors=[4, 2, 1],
                smoothing_sigmas=[2.0, 1.0, 0.0],
                threads=1,
            )
            wall = time.perf_counter() - start
            if backend == "clear":
                clear_wall, clear_transform = wall, result.transform
            ratio = f"{wall / clear_wall:.2f}" if clear_wall else ""
            versus = (
                f"{displacement_rmse(result.transform, clear_transform, fixed.geometry):.2g}"
                if clear_transform is not None
                else ""
            )
            sent = " / ".join(
                f"{level.parties['fixed']['bytes_sent'] / 1e6:.1f}" for level in result.levels
            )
            print(
                f"| {backend} | {wall:.1f} | {ratio} "
                f"| {sum(level.seconds for level in result.levels):.1f} | {result.iterations} "
                f"| {versus} | {displacement_rmse(result.transform, truth, fixed.geometry):.3g} "
                f"| {sent} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
