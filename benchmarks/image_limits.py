"""What the image limits cost, and why images need 4 pixels along every axis.

    python benchmarks/image_limits.py [--side 10000] [--full] [--small-runs 6]

1. A SIDE x SIDE 8-bit grey PNG (the operator's 10000 x 10000 one by default),
   written to a temporary folder: ``ppir register`` refused by ``--max-image-voxels``
   (half its voxels), wall time and peak RSS of the whole command; the same command
   under the default limits but stopped after reading the images (``as_image_grid``
   of both, as ``ppir register`` does first); ``--full``: the whole default
   registration (clear backend, local fixed party), which the default limits admit.
   Peak RSS is the largest of the command and its children.
2. How often a registration of tiny random images (smoothed noise, seeds 0..N-1,
   translation, rigid and affine, the clear backend in one process) stops with
   "the images do not overlap": the Gauss-Newton step on a few points throws every
   point out of the moving image. The sizes straddle ``LEAST_PIXELS_PER_AXIS``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

READ_BOTH = (
    "import sys; from ppir_itk.wrapping.images import as_image_grid; "
    "[as_image_grid(path, name=path) for path in sys.argv[1:]]"
)


# Runs the command as its child and prints the children's peak RSS: measured from a
# small process, since Linux counts the RSS of whoever forks into the child's peak.
PEAK_OF_CHILD = (
    "import resource, subprocess, sys; "
    "status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, status)"
)


def measured(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (GiB) and exit status of ``argv``, its children included."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-S", "-c", PEAK_OF_CHILD, *argv], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    said = done.stderr.strip().splitlines()
    if said:
        print(f"    it said: {said[-1][:160]}")
    kilobytes, status = done.stdout.split()
    return seconds, int(kilobytes) / 2**20, int(status)


def large_png(side: int, full: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        png = Path(folder) / "large.png"
        pixels = (np.random.default_rng(0).random((side, side)) * 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(pixels), str(png))
        del pixels
        ppir = [sys.executable, "-m", "ppir_itk.cli"]
        register = [*ppir, "register", "--fixed", str(png), "--moving", str(png)]
        register += ["--backend", "clear", "--quiet", "--output-transform"]
        register += [str(Path(folder) / "out.tfm")]
        runs = {
            f"refused (--max-image-voxels {side * side // 2})": [
                *register,
                "--max-image-voxels",
                str(side * side // 2),
            ],
            "default limits, reading both images only": [
                sys.executable,
                "-c",
                READ_BOTH,
                str(png),
                str(png),
            ],
            "python -c 'import ppir_itk.cli' (the floor)": [
                sys.executable,
                "-c",
                "import ppir_itk.cli",
            ],
        }
        if full:
            runs["default limits, the whole registration"] = register
        print(f"{side}x{side} 8-bit PNG ({png.stat().st_size / 1e6:.0f} MB on disk)")
        for label, argv in runs.items():
            seconds, gib, status = measured(argv)
            print(f"  {label}: exit {status}, {seconds:.2f} s, peak RSS {gib:.2f} GiB")


def small_images(runs: int) -> None:
    from ppir_itk import registration
    from ppir_itk.errors import InputError
    from ppir_itk.image import ImageGrid

    # What the check prevents is what is counted here: it is switched off.
    registration.check_large_enough = lambda *_, **__: None

    def image(shape: tuple[int, ...], seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).random(shape)
        if min(shape) < 4:  # the recursive Gaussian needs 4 pixels
            return noise
        return sitk.GetArrayFromImage(
            sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 1.0)
        )

    schedules = {
        "shrink 1": ([1], [0.0], [2, 3, 4, 6, 8]),
        "shrink 4, 2, 1": ([4, 2, 1], [2.0, 1.0, 0.0], [8, 12, 16, 24]),
    }
    print(f"registrations stopped by 'do not overlap', of {3 * runs} per size")
    warnings.simplefilter("ignore")
    for label, (shrink, sigmas, sides) in schedules.items():
        for side in sides:
            stopped = 0
            for seed in range(runs):
                for kind in ("translation", "rigid", "affine"):
                    try:
                        registration.register(
                            ImageGrid(image((side, side), seed)),
                            ImageGrid(image((side, side), seed + 100)),
                            transform=kind,
                            backend="clear",
                            transport="in-process",
                            shrink_factors=shrink,
                            smoothing_sigmas=sigmas,
                            iterations=20,
                        )
                    except InputError as error:
                        stopped += "do not overlap" in str(error)
            print(f"  {label}, {side}x{side}: {stopped}/{3 * runs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=10000)
    parser.add_argument("--full", action="store_true", help="also the whole registration")
    parser.add_argument("--small-runs", type=int, default=6, help="seeds per size")
    args = parser.parse_args()
    large_png(args.side, args.full)
    small_images(args.small_runs)


if __name__ == "__main__":
    main()
