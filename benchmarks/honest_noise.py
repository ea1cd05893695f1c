"""Issue 14's study: what an honest B-spline run reveals of J, against how far it moves.

    python benchmarks/honest_noise.py [--grids 16 8] [--noises 0 0.01 0.03 0.1 0.3]
        [--backend spdz] [--data ../shared/data/brain-affine-pair] [--one-hot 64]

The brain pair (template fixed), its affine registration first (``clear``: the same
bulk transform for every row), then the B-spline of ``benchmarks/attacks.py``'s
``honest`` attack (bending weight 100, levels 4, 2, 1 of at most 50 iterations) per
control spacing: once with ``clear`` (the reference) and once per fixed-party noise
``beta`` (``FixedPolicy.joint_term_noise``: each sum of a control grid's evaluation
gets an integer noise of deviation ``beta`` times the most one voxel can add to it)
on ``--backend``, a real private backend with its fixed half in this process.

Per row: control spacing and beta -> the private transform's displacement RMSE
against Clear's (pixels, over the fixed image's foreground), its iterations, and
attack 2 on what the moving party received at full resolution: from the sums alone
(no prior; the moments and I_w.J, Tikhonov with the best weight), correlation with J
and PSNR, and the correlation from the moments alone; and towards the moving party's
own registered image, the PSNR gained over that image alone.

``--one-hot SIZE``: then attack 3 under a grant (every limit lifted) on a SIZE² head
phantom per beta, affine and on an 8-px control grid: what one-hot reads give when
the sums are noisy.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import ppir_itk
from ppir_itk.attacks import (
    RecordingMovingParty,
    correlation,
    psnr,
    reconstruct_from_view,
    recover_by_one_hot,
)
from ppir_itk.compose import in_process_session
from ppir_itk.metric import PrivateMeanSquaresImageToImageMetric
from ppir_itk.optimizer import GaussNewtonOptimizer
from ppir_itk.phantoms import head_phantom
from ppir_itk.policy import FixedPolicy
from ppir_itk.registration import ImageRegistrationMethod, RegistrationResult
from ppir_itk.wrapping.images import as_image_grid

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-affine-pair"
HEADER = (
    f"{'grid':>5} {'beta':>6} {'RMSE px':>8} {'its':>4} {'r sums':>7} {'dB sums':>8} "
    f"{'how':<16} {'r mom':>6} {'dB prior':>8} {'gain dB':>8} {'s':>6}"
)
WEIGHTS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def displacement_rmse(first, second, fixed, where: np.ndarray) -> float:
    """RMS distance between two transforms' images of the fixed grid's points ``where``,
    in pixels."""
    grid = fixed.geometry
    points = grid.physical_points(grid.flat_to_index(where))
    moved = first.transform_points(points) - second.transform_points(points)
    return float(np.sqrt((moved**2).sum(axis=1).mean()) / min(grid.spacing))


def bspline(
    session, backend: str, moving, grid: float, bulk
) -> tuple[RegistrationResult, RecordingMovingParty]:
    """The B-spline registration of the study, by a moving party that records its view."""
    party = RecordingMovingParty(session, backend)
    metric = PrivateMeanSquaresImageToImageMetric(party, bending_energy_weight=100.0)
    metric.SetMovingImage(moving)
    method = ImageRegistrationMethod(
        metric,
        GaussNewtonOptimizer(NumberOfIterations=50),
        "bspline",
        shrink_factors=(4, 2, 1),
        smoothing_sigmas=(2, 1, 0),
        grid_spacing=grid,
        bulk_transform=bulk,
    )
    return method.run(), party


def honest_study(data: Path, grids: list[float], noises: list[float], backend: str) -> None:
    """Attack 2 and the displacement against Clear, per control spacing and beta."""
    backends = ("clear", backend)
    fixed = as_image_grid(str(data / "template.png"), name="fixed image")
    moving = as_image_grid(str(data / "moving.png"), name="moving image")
    j = fixed.array.astype(np.float64)
    foreground = np.flatnonzero(j.ravel() > 0.1 * j.max())
    affine = ppir_itk.register_with(
        in_process_session(fixed),
        moving,
        transform="affine",
        backend="clear",
        shrink_factors=(8, 4, 2, 1),
        smoothing_sigmas=(4, 2, 1, 0),
    )
    print(HEADER, flush=True)
    for grid in grids:
        clear, _ = bspline(in_process_session(fixed), "clear", moving, grid, affine.transform)
        for beta in noises:
            start = time.perf_counter()
            policy = FixedPolicy.holding_both_images(backends, joint_term_noise=beta)
            private, party = bspline(
                in_process_session(fixed, policy),
                backend,
                moving,
                grid,
                affine.transform,
            )
            rmse = displacement_rmse(private.transform, clear.transform, fixed, foreground)
            scores = {
                s.method: s
                for s in reconstruct_from_view(
                    party.view,
                    fixed.geometry,
                    j,
                    prior=private.resample(moving).array,
                    weights=WEIGHTS,
                    tv_weights=(),
                    iterations=60,
                )
            }
            moments = reconstruct_from_view(
                party.view, fixed.geometry, j, warped_dot=False, weights=WEIGHTS, tv_weights=()
            )[0]
            alone = scores["tikhonov"]
            how = f"tikhonov w {alone.weight:g}"
            gain = scores["towards the prior"].psnr - scores["prior alone"].psnr
            print(
                f"{grid:5g} {beta:6g} {rmse:8.3f} {private.iterations:4d} "
                f"{alone.correlation:7.3f} {alone.psnr:8.1f} {how:<16} "
                f"{moments.correlation:6.3f} {scores['prior alone'].psnr:8.1f} {gain:8.2f} "
                f"{time.perf_counter() - start:6.0f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=float, nargs="*", default=[16.0, 8.0])
    parser.add_argument("--noises", type=float, nargs="+", default=[0.0, 0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--one-hot", type=int, default=0, metavar="SIZE")
    parser.add_argument("--backend", default="spdz", choices=["spdz", "he"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")  # the clear backend's warning and start-up notices
    backends = ("clear", arguments.backend)
    if arguments.grids:
        honest_study(arguments.data, arguments.grids, arguments.noises, arguments.backend)
    if arguments.one_hot:
        one_hot(arguments.one_hot, arguments.noises, backends)


def one_hot(size: int, noises: list[float], backends: tuple[str, ...]) -> None:
    """Attack 3 under a grant (every limit lifted), per beta: 64 evaluations of one-hot
    affine reads, and one session on an 8-px control grid."""
    phantom = head_phantom((size, size))
    j = phantom.array.astype(np.float64)
    print(
        f"\none-hot reads under a grant, {size}x{size} ({backends[-1]}): setting, beta -> "
        "pixels read, exact among them, PSNR dB and r over them",
        flush=True,
    )
    for setting, options in (
        ("affine, 64 evaluations", {"max_evaluations": 64}),
        ("8-px grid, 1 session", {"grid_spacing": 8, "max_sessions": 1}),
    ):
        for beta in noises:
            policy = FixedPolicy.holding_both_images(backends, joint_term_noise=beta)
            result = recover_by_one_hot(
                lambda policy=policy: in_process_session(phantom, policy),
                backend=backends[-1],
                **options,
            )
            read = result.read
            assert read is not None
            exact = result.quantised(result.estimate, j)[read] == result.quantised(j, j)[read]
            print(
                f"{setting:<24} {beta:6g} {int(read.sum()):6d} {100 * exact.mean():6.1f}% "
                f"{psnr(result.estimate[read], j[read]):6.1f} "
                f"{correlation(result.estimate[read], j[read]):6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
