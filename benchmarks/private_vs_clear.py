"""A private backend against Clear on the paper's 2-D brain pair, in one run.

    python benchmarks/private_vs_clear.py [--backend he] [--protocol packed]
        [--sampling none urs] [--transform affine]
        [--data ../shared/data/brain-affine-pair]

For each sampling mode: displacement RMSE between the private and the Clear
transform (pixels), iterations, total time, and per level the moving party's
time per iteration (optimizer iterations only, level set-up apart) for both
backends and their ratio, and the bytes of one joint-term evaluation (what
moves per iteration) apart from the level's one-off set-up traffic, against
the floor (d + 1) n 8 bytes. Then the same over the whole registration:
moving-party time per iteration (all levels' optimizer time over all
iterations) for both backends. Both runs go through the two-party runtime
(the fixed party, and the dealer for spdz, in their own processes).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import ppir_itk
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.wrapping.images import as_image_grid

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-affine-pair"


def iteration_seconds(level) -> float:
    return (level.seconds - level.setup_seconds) / max(level.iterations, 1)


def whole_registration(result) -> float:
    """Moving-party optimizer time per iteration over all levels."""
    seconds = sum(level.seconds - level.setup_seconds for level in result.levels)
    return seconds / max(sum(level.iterations for level in result.levels), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backend", default="he")
    parser.add_argument(
        "--protocol", help="the backend's protocol (he: packed, paper-v1, paper-v2)"
    )
    parser.add_argument("--sampling", nargs="+", default=["none", "urs"])
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--transform", default="affine")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    fixed = as_image_grid(args.data / "template.png", name="template")
    moving = as_image_grid(args.data / "moving.png", name="moving")
    options = dict(
        transform=args.transform,
        shrink_factors=[8, 4, 2, 1],
        smoothing_sigmas=[4.0, 2.0, 1.0, 0.0],
        threads=1,
        seed=0,
        sampling_fraction=args.fraction,
    )
    for sampling in args.sampling:
        clear = ppir_itk.register(fixed, moving, backend="clear", sampling=sampling, **options)
        start = time.perf_counter()
        parameters = {"protocol": args.protocol} if args.protocol else {}
        private = ppir_itk.register(
            fixed,
            moving,
            backend=args.backend,
            sampling=sampling,
            backend_parameters=parameters,
            **options,
        )
        seconds = time.perf_counter() - start
        rmse = displacement_rmse(private.transform, clear.transform, fixed.geometry)
        name = f"{args.backend} {args.protocol or ''}".strip()
        print(
            f"{name} vs clear, sampling {sampling}: displacement RMSE "
            f"{rmse / min(fixed.geometry.spacing):.6f} pixel; iterations {private.iterations} "
            f"(clear {clear.iterations}); whole registration {seconds:.1f} s"
        )
        for ours, theirs in zip(private.levels, clear.levels, strict=True):
            moving_party = ours.parties["moving"]
            evaluations = max(ours.iterations + 1, 1)
            fixed_party = ours.parties["fixed"]
            floor = (fixed.dimension + 1) * ours.points * 8
            print(
                f"  level {ours.level} ({ours.points} points): moving party "
                f"{iteration_seconds(ours) * 1e3:.1f} ms/iteration vs clear "
                f"{iteration_seconds(theirs) * 1e3:.2f} ms "
                f"(x{iteration_seconds(ours) / iteration_seconds(theirs):.0f}); "
                f"per evaluation, moving party sent "
                f"{moving_party['bytes_sent'] / evaluations / 1e6:.3f} MB "
                f"({moving_party['bytes_sent'] / evaluations / floor:.2f} x (d+1)n8), "
                f"fixed party sent {fixed_party['bytes_sent'] / evaluations / 1e6:.3f} MB "
                f"({fixed_party['bytes_sent'] / evaluations / floor:.2f} x); "
                f"received {moving_party['bytes_received'] / 1e6:.1f} MB this level"
            )
        ours, theirs = whole_registration(private), whole_registration(clear)
        print(
            f"  whole registration: moving party {ours * 1e3:.1f} ms/iteration vs clear "
            f"{theirs * 1e3:.2f} ms (x{ours / theirs:.1f})"
        )
        if "dealer" in private.parties:
            dealer = private.parties["dealer"]
            print(f"  dealer: {dealer['seconds']:.2f} s, sent {dealer['bytes_sent'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
