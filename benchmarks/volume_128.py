"""A 3-D affine registration of a 128^3 volume through the two-party runtime.

    python benchmarks/volume_128.py [--backend he] [--fraction 1.0] [--size 128]

A generated head phantom and a copy moved by a known affine, levels 4, 2, 1;
Clear first, then the private backend, both with the fixed party in its own
process. Prints the agreement with Clear and the truth, and each party's
time and bytes, in total and per level.
"""

from __future__ import annotations

import argparse
import time
import warnings

import ppir_itk
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.transforms import make_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="he")
    parser.add_argument(
        "--fraction", type=float, default=1.0, help="URS fraction (1.0: every voxel)"
    )
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    fixed = head_phantom((args.size,) * 3)
    truth = make_transform("affine", 3)
    truth.center = fixed.geometry.center()
    truth.parameters = [1.03, 0.02, 0.0, -0.02, 0.98, 0.01, 0.0, 0.01, 1.0, 1.5, -1.0, 0.5]
    moving = moved_copy(fixed, truth)
    options = dict(
        transform="affine",
        shrink_factors=[4, 2, 1],
        smoothing_sigmas=[2, 1, 0],
        sampling="urs" if args.fraction < 1 else "none",
        sampling_fraction=args.fraction,
        seed=0,
        deadline=600,
    )
    start = time.perf_counter()
    clear = ppir_itk.register(fixed, moving, backend="clear", **options)
    clear_seconds = time.perf_counter() - start
    start = time.perf_counter()
    private = ppir_itk.register(fixed, moving, backend=args.backend, **options)
    seconds = time.perf_counter() - start
    voxel = min(fixed.geometry.spacing)
    versus_clear = displacement_rmse(private.transform, clear.transform, fixed.geometry) / voxel
    versus_truth = displacement_rmse(private.transform, truth, fixed.geometry) / voxel
    print(
        f"{args.size}^3 affine, fraction {args.fraction}: clear {clear_seconds:.1f} s "
        f"({clear.iterations} iterations); {args.backend} {seconds:.1f} s "
        f"({private.iterations} iterations); RMSE vs clear {versus_clear:.5f} voxel, "
        f"vs truth {versus_truth:.4f}"
    )
    for name, party in private.parties.items():
        sent, received = party["bytes_sent"] / 1e6, party["bytes_received"] / 1e6
        print(
            f"  {name} party: {party['seconds']:.1f} s, sent {sent:.1f} MB, "
            f"received {received:.1f} MB"
        )
    for level in private.levels:
        moving_party, fixed_party = level.parties["moving"], level.parties["fixed"]
        print(
            f"  level {level.level}: {level.points} points, {level.iterations} iterations, "
            f"{level.seconds:.1f} s ({level.setup_seconds:.1f} s set-up); fixed party "
            f"{fixed_party['seconds']:.1f} s; moving party sent "
            f"{moving_party['bytes_sent'] / 1e6:.1f} MB, received "
            f"{moving_party['bytes_received'] / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()
