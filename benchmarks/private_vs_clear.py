"""A private backend against Clear on the paper's 2-D brain pair, in one run.

    python benchmarks/private_vs_clear.py [--backend ckks] [--protocol packed]
        [--sampling none urs]
        [--data ../shared/data/brain-affine-pair]

For each sampling mode: displacement RMSE between the private and the Clear
transform (pixels), iterations, total time, and per level the moving party's
time per iteration (optimizer iterations only, level set-up apart) for both
backends and their ratio, and the bytes of one joint-term evaluation (what
moves per iteration) apart from the level's one-off set-up traffic. Both
runs go through the two-party runtime (the fixed party in its own process).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backend", default="ckks")
    parser.add_argument("--protocol", help="the backend's protocol (ckks: packed, paper-v1, "
                                           "paper-v2)")
    parser.add_argument("--sampling", nargs="+", default=["none", "urs"])
    parser.add_argument("--fraction", type=float, default=0.05)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    fixed = as_image_grid(args.data / "template.png", name="template")
    moving = as_image_grid(args.data / "moving.png", name="moving")
    options = dict(transform="affine", shrink_factors=[8, 4, 2, 1],
                   smoothing_sigmas=[4.0, 2.0, 1.0, 0.0], threads=1, seed=0,
                   sampling_fraction=args.fraction)
    for sampling in args.sampling:
        clear = ppir_itk.register(fixed, moving, backend="clear", sampling=sampling, **options)
        start = time.perf_counter()
        parameters = {"protocol": args.protocol} if args.protocol else {}
        private = ppir_itk.register(fixed, moving, backend=args.backend, sampling=sampling,
                                    backend_parameters=parameters, **options)
        seconds = time.perf_counter() - start
        rmse = displacement_rmse(private.transform, clear.transform, fixed.geometry)
        name = f"{args.backend} {args.protocol or ''}".strip()
        print(f"{name} vs clear, sampling {sampling}: displacement RMSE "
              f"{rmse / min(fixed.geometry.spacing):.6f} pixel; iterations {private.iterations} "
              f"(clear {clear.iterations}); whole registration {seconds:.1f} s")
        for ours, theirs in zip(private.levels, clear.levels, strict=True):
            moving_party = ours.parties["moving"]
            evaluations = max(ours.iterations + 1, 1)
            print(f"  level {ours.level} ({ours.points} points): moving party "
                  f"{iteration_seconds(ours) * 1e3:.1f} ms/iteration vs clear "
                  f"{iteration_seconds(theirs) * 1e3:.2f} ms "
                  f"(x{iteration_seconds(ours) / iteration_seconds(theirs):.0f}); "
                  f"sent {moving_party['bytes_sent'] / evaluations / 1e6:.3f} MB/evaluation, "
                  f"received {moving_party['bytes_received'] / 1e6:.1f} MB this level")


if __name__ == "__main__":
    main()
