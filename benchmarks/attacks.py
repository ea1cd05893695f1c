"""What a malicious moving party recovers of the fixed image J: issue 14's attacks 1 and 3.

    python benchmarks/attacks.py [--attacks fine-grid one-hot] [--backends he spdz]
        [--size 128] [--transport process]

Every attack plays the moving party with the project's own client
(:mod:`ppir_itk.attacks`) against a fixed party in its own process (``ppir serve``,
and ``ppir dealer`` for spdz, on loopback with mutual TLS; ``--transport in-process``
keeps them in this process) with every measurement limit lifted and exact sums: the
defence of issue 14 switched off (``tests/test_attacks.py`` plays attacks 1 and 3
against the default policy, ``benchmarks/honest_noise.py`` attack 2 against noise).

- ``fine-grid``: a 1-px B-spline control grid on a ``--size``² head phantom, one
  evaluation, a least-squares solve;
- ``one-hot``: one-hot weights on the same phantom: affine, one session and as many
  as it takes; a 4-px control grid.

Attack 2 (an honest-but-curious moving party) is ``benchmarks/honest_noise.py``.

Printed per row: attack, setting, backend -> PSNR (dB), correlation with J, the
fraction of J's pixels recovered exactly (at the fixed-point precision the backend
reveals), evaluations and sessions used, seconds.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from ppir_itk.attacks import (
    AttackResult,
    recover_by_fine_grid,
    recover_by_one_hot,
)
from ppir_itk.compose import connect, in_process_session, spawn_fixed_party
from ppir_itk.phantoms import head_phantom
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol.session import Session

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
    """``connect()`` to a fixed party holding ``fixed``: no measurement limit, exact sums,
    the default budget of evaluations per session."""
    if transport == "in-process":
        yield lambda: in_process_session(fixed, FixedPolicy.holding_both_images(backends))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=["fine-grid", "one-hot"],
        choices=["fine-grid", "one-hot"],
    )
    parser.add_argument("--backends", nargs="+", default=["he", "spdz"], choices=["he", "spdz"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--transport", default="process", choices=["process", "in-process"])
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")  # the backends' start-up notices, not results
    print(HEADER)
    attack_phantom(arguments.attacks, arguments.backends, arguments.size, arguments.transport)


if __name__ == "__main__":
    main()
