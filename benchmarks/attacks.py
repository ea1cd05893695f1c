"""What a moving party recovers of the fixed image J: issue 14's attacks 1 to 3, measured.

    python benchmarks/attacks.py [--attacks fine-grid one-hot honest] [--backends he spdz]
        [--size 128] [--transport process] [--data ../shared/data/brain-affine-pair]

Every attack plays the moving party with the project's own client
(:mod:`ppir_itk.attacks`) against a fixed party in its own process (``ppir serve``,
and ``ppir dealer`` for spdz, on loopback with mutual TLS; ``--transport in-process``
keeps them in this process), default policy: today's, without the defence issue 14
asks for.

- ``fine-grid``: a 1-px B-spline control grid on a ``--size``² head phantom, one
  evaluation, a least-squares solve;
- ``one-hot``: one-hot weights on the same phantom: affine, one session and as many
  as it takes; a 4-px control grid;
- ``honest``: the brain pair (template fixed), affine (he) then a B-spline after it,
  on the last of ``--backends``
  (16 mm and 8 mm grids, bending weight 100, levels 4, 2, 1 of at most 50
  iterations); what the honest moving party received at full resolution is
  reconstructed (Tikhonov, TV, towards its own registered image), with and without
  the I_w.J sums.

Printed per row: attack, setting, backend -> PSNR (dB), correlation with J, the
fraction of J's pixels recovered exactly (at the fixed-point precision the backend
reveals), evaluations and sessions used, seconds.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import ppir_itk
from ppir_itk.attacks import (
    AttackResult,
    RecordingMovingParty,
    correlation,
    psnr,
    reconstruct_from_view,
    recover_by_fine_grid,
    recover_by_one_hot,
)
from ppir_itk.compose import connect, in_process_session, spawn_fixed_party
from ppir_itk.metric import PrivateMeanSquaresImageToImageMetric
from ppir_itk.optimizer import GaussNewtonOptimizer
from ppir_itk.phantoms import head_phantom
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol.session import Session
from ppir_itk.registration import ImageRegistrationMethod
from ppir_itk.wrapping.images import as_image_grid

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-affine-pair"
HEADER = (
    f"{'attack':<28} {'setting':<30} {'backend':<7} {'PSNR dB':>8} {'r':>6} "
    f"{'exact':>7} {'evals':>6} {'sess':>5} {'s':>7}"
)


def row(
    attack: str,
    setting: str,
    backend: str,
    psnr: float,
    r: float,
    exact: float | None,
    evaluations: int,
    sessions: int,
    seconds: float,
) -> None:
    exact_text = "-" if exact is None else f"{100 * exact:.1f}%"
    print(
        f"{attack:<28} {setting:<30} {backend:<7} {psnr:8.1f} {r:6.3f} {exact_text:>7} "
        f"{evaluations:6d} {sessions:5d} {seconds:7.1f}",
        flush=True,
    )


def result_row(result: AttackResult, setting: str, j: np.ndarray) -> None:
    row(
        result.attack,
        setting,
        result.backend,
        result.psnr(j),
        result.correlation(j),
        result.exact_fraction(j),
        result.evaluations,
        result.sessions,
        result.seconds,
    )
    if result.stopped:
        print(f"    stopped: {result.stopped}")


@contextmanager
def fixed_party(
    fixed, transport: str, backends: tuple[str, ...]
) -> Iterator[Callable[[], Session]]:
    """``connect()`` to a fixed party holding ``fixed`` (default policy and budget)."""
    if transport == "in-process":
        yield lambda: in_process_session(fixed, FixedPolicy(backends=backends))
        return
    with spawn_fixed_party(fixed, backends=backends) as process:
        yield lambda: connect(process.address, process.client_tls, dealer=process.dealer_address)


def attack_phantom(attacks: list[str], backends: list[str], size: int, transport: str) -> None:
    fixed = head_phantom((size, size))
    j = fixed.array.astype(np.float64)
    with fixed_party(fixed, transport, tuple(backends)) as reach:
        for backend in backends:
            if "fine-grid" in attacks:
                result = recover_by_fine_grid(reach, backend=backend)
                result_row(result, f"1-px grid, {size}x{size}", j)
            if "one-hot" in attacks:
                result = recover_by_one_hot(reach, backend=backend, max_sessions=1)
                result_row(result, f"affine, 1 session, {size}x{size}", j)
                result = recover_by_one_hot(reach, backend=backend)
                result_row(result, f"affine, all sessions, {size}x{size}", j)
                result = recover_by_one_hot(reach, backend=backend, grid_spacing=4)
                result_row(result, f"4-px grid, {size}x{size}", j)


def attack_honest(data: Path, transport: str, grids: list[float], backend: str) -> None:
    fixed = as_image_grid(str(data / "template.png"), name="fixed image")
    moving = as_image_grid(str(data / "moving.png"), name="moving image")
    j = fixed.array.astype(np.float64)
    with fixed_party(fixed, transport, ("he", backend)) as reach:
        affine = ppir_itk.register_with(
            reach(),
            moving,
            transform="affine",
            backend="he",
            shrink_factors=(8, 4, 2, 1),
            smoothing_sigmas=(4, 2, 1, 0),
        )
        prior_affine = affine.resample(moving).array
        row(
            "prior alone",
            "own image after the affine",
            "-",
            psnr(prior_affine, j),
            correlation(prior_affine, j),
            None,
            0,
            0,
            0.0,
        )
        for grid in grids:
            start = time.perf_counter()
            party = RecordingMovingParty(reach(), backend)
            metric = PrivateMeanSquaresImageToImageMetric(party, bending_energy_weight=100.0)
            metric.SetMovingImage(moving)
            method = ImageRegistrationMethod(
                metric,
                GaussNewtonOptimizer(NumberOfIterations=50),
                "bspline",
                shrink_factors=(4, 2, 1),
                smoothing_sigmas=(2, 1, 0),
                grid_spacing=grid,
                bulk_transform=affine.transform,
            )
            prior = method.run().resample(moving).array
            evaluations = len(party.view)
            for warped_dot, sums in ((False, "moments"), (True, "moments and I_w.J")):
                scores = reconstruct_from_view(
                    party.view,
                    fixed.geometry,
                    j,
                    prior=prior,
                    warped_dot=warped_dot,
                    weights=(1e-4, 1e-2, 1e-1, 1.0),
                    tv_weights=(1e-2, 1e-1),
                    iterations=60,
                    tv_iterations=200,
                )
                seconds = time.perf_counter() - start
                for score in scores:
                    if score.method == "prior alone" and warped_dot:
                        continue
                    name = (
                        "prior alone"
                        if score.method == "prior alone"
                        else f"honest: {score.method}"
                    )
                    setting = (
                        f"{grid:g} mm, {sums}"
                        if name != "prior alone"
                        else f"own image after the {grid:g} mm B-spline"
                    )
                    row(
                        name,
                        setting + (f", w {score.weight:g}" if score.weight else ""),
                        backend,
                        score.psnr,
                        score.correlation,
                        None,
                        evaluations,
                        1,
                        seconds,
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=["fine-grid", "one-hot", "honest"],
        choices=["fine-grid", "one-hot", "honest"],
    )
    parser.add_argument("--backends", nargs="+", default=["he", "spdz"], choices=["he", "spdz"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--transport", default="process", choices=["process", "in-process"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--grids", type=float, nargs="+", default=[16.0, 8.0])
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")  # the backends' start-up notices, not results
    print(HEADER)
    phantom_attacks = [a for a in arguments.attacks if a != "honest"]
    if phantom_attacks:
        attack_phantom(phantom_attacks, arguments.backends, arguments.size, arguments.transport)
    if "honest" in arguments.attacks:
        attack_honest(arguments.data, arguments.transport, arguments.grids, arguments.backends[-1])


if __name__ == "__main__":
    main()
