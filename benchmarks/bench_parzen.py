"""Mattes mutual information's arithmetic (ppir_itk/parzen.py, src/ppir_parzen.c) on 10^6
samples.

    python benchmarks/bench_parzen.py [--samples 1000000] [--bins 50] [--repeats 5]

Random fixed values, moving values a non-monotonic function of them, 10 % invalid;
prints the best of ``--repeats`` for each step: the fixed bins and the moving
windows (each party's own), the joint histogram, its entropy difference and PRatio, and
the per-sample weights.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from ppir_itk import parzen


def best_of(repeats: int, step: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10**6)
    parser.add_argument("--bins", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    fixed = rng.normal(size=args.samples)
    moving = np.sin(2.0 * fixed) + 0.1 * rng.normal(size=args.samples)
    valid = (rng.random(args.samples) > 0.1).astype(np.uint8)
    fixed_range = parzen.IntensityBins.from_values(fixed, args.bins)
    moving_range = parzen.IntensityBins.from_values(moving, args.bins)
    fixed_bin = parzen.fixed_bins(fixed, fixed_range)
    windows = parzen.moving_parzen(moving, valid, moving_range)
    first, weights = windows.first_bin, windows.weights
    histogram = parzen.joint_histogram(fixed_bin, first, weights, windows.inside, args.bins)
    ratio = parzen.log_ratio(histogram)
    steps: dict[str, Callable[[], object]] = {
        "fixed_bins": lambda: parzen.fixed_bins(fixed, fixed_range),
        "moving_parzen": lambda: parzen.moving_parzen(moving, valid, moving_range),
        "joint_histogram": lambda: parzen.joint_histogram(
            fixed_bin, first, weights, windows.inside, args.bins
        ),
        "entropy_difference + log_ratio": lambda: (
            parzen.entropy_difference(histogram / args.samples),
            parzen.log_ratio(histogram),
        ),
        "sample_weights": lambda: parzen.sample_weights(
            ratio, fixed_bin, first, windows.derivatives
        ),
    }
    print(f"{args.samples} samples, {args.bins} bins, best of {args.repeats}")
    for name, step in steps.items():
        print(f"{name:>32} {best_of(args.repeats, step) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
