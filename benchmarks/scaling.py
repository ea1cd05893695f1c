"""Per-iteration cost of each backend as the image grows, from 10^4 to 10^7 fixed-grid points.

    python benchmarks/scaling.py [--sizes 1e4 1e5 1e6 1e7]
        [--backends clear he:packed he:paper-v1 he:paper-v2 spdz]
        [--iterations 3] [--cap 300] [--max-points BACKEND=N ...]
        [--max-memory-gb 12] [--deadline 300]

For each size n: a 2-D head phantom of side round(sqrt(n)) (``phantoms.head_phantom``)
and a copy moved by a known small affine (``phantoms.moved_copy``); one level
(shrink 1, sigma 0, every point), an affine transform, ``--iterations``
Gauss-Newton iterations (the stop tolerances are set to 0, so every run does
exactly that many), one kernel thread, through the real two-party runtime:
``ppir_itk.register`` with the fixed party (and, for spdz, the dealer) in its
own process over gRPC with mutual TLS on loopback. Each run is a fresh child
process of this script, so that its peak memory is its own and one failed run
does not end the others.

Printed per run, from the result's report:

- wall: the ``register`` call, start-up of the fixed party (and dealer) included;
- set-up: the level's set-up (``level.setup_seconds``: the fixed party smooths,
  the parties agree the points, the backend's per-level work, e.g. he packed's
  encrypted upload of J);
- s/it: the moving party's ``(level.seconds - level.setup_seconds) /
  level.iterations``. A level of k iterations evaluates the joint term k + 1
  times (one before the first step), so this is (k + 1)/k times the cost of one
  evaluation;
- fixed s: the fixed party's busy time for the whole session
  (``result.parties["fixed"]["seconds"]``, its set-up included);
- MB/it (report): ``level.parties[p]["per_iteration"]["bytes_sent"]`` for the
  moving and the fixed party. Note that ``registration.py`` divides the
  *whole level's* traffic by the iterations, the set-up's included (for he
  packed, the encrypted J; for spdz, F = Y - b);
- MB/it alone: what each direction carried from the end of the set-up to the
  last iteration (observers on the method's events read the moving party's
  counters; what the fixed party sent is what the moving party received), per
  iteration (k + 1 evaluations over k, as s/it); set-up MB: what the fixed
  party sent during the set-up;
- peak RSS: the moving party's process (the phantom pair's generation
  included) and the largest of its children (fixed party, dealer), in MB.

Per backend, the slope of log(s/it) against log(n) fitted by least squares
(``numpy.polyfit``) over the sizes run (1.0: linear; below 1 where a fixed
per-iteration cost such as a round trip still dominates), and between the two
largest sizes; at the end, each backend's s/it over clear's at the same n.

Which sizes run. ``--cap`` (seconds, default 300): after a run whose wall
time exceeded the cap, a backend's larger sizes are skipped; otherwise a size
is skipped when the last run's wall time, start-up apart, extrapolated
linearly in n predicts more than the cap ("skipped (predicted X s)").
``--max-memory-gb`` (default 12, half of this 24 GiB machine, which is
shared): a size is skipped when the peak memory of the last two runs,
extrapolated linearly in n, predicts more. ``--max-points BACKEND=N`` overrides
the per-backend limits below, which exist because a larger run would fail or
take far too long (figures from ``benchmarks/primitives.py``, 2-D):

- clear: none;
- he:packed, 4e6: the fixed party's encrypted level upload is one message of
  about 430 B per point (8 slots x 52.8 B; 43 MB measured at 10^5 points), and
  the runtime refuses messages over 2 GiB
  (``protocol.messages.DEFAULT_MAX_ENVELOPE``), i.e. beyond 5e6 points: 1e7
  points would be 4.3 GB (and each party holds two or three copies of it);
- he:paper-v1, 2e6: eight DotProducts per 4096 points at ~38 ms each, about
  80 s per iteration per 10^6 points (8.2 s measured at 10^5): at 1e7 points
  one run of 3 iterations (4 evaluations) would take about an hour;
- he:paper-v2, 5e6: its replicated J_1 (fetched at the first evaluation, so
  counted in the iterations, not the set-up) and every evaluation's upload are
  each about 8 x n/2 x 81 B = 324 B per point (36 MB measured per evaluation
  at 10^5 points), over 2 GiB beyond 6.6e6 points;
- spdz, 8e6: 20 s per iteration measured at 8 x 10^6 points. Its levels stream in
  chunks (``protocol.messages.SPDZ_CHUNK_VALUES``), so larger sizes run, slowly
  (``--max-points spdz=1e7``).

So the default command runs clear at 10^4 to 10^7 and the private backends at
10^4 to 10^6 (paper-v1 at 10^6 only if its 10^5 run predicts under the cap);
on this machine that is about a quarter of an hour.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("clear", "he:packed", "he:paper-v1", "he:paper-v2", "spdz")
MAX_POINTS = {
    "he:packed": 4_000_000,
    "he:paper-v1": 2_000_000,
    "he:paper-v2": 5_000_000,
    "spdz": 8_000_000,
}
# The affine a registration should find (fixed to moving points, centred on the image).
TRUTH = [1.02, 0.01, -0.015, 0.985, 1.5, -1.0]


def run_one(label: str, side: int, iterations: int, deadline: float) -> dict[str, Any]:
    """One registration of a side x side pair with one backend; its figures (child process)."""
    import ppir_itk
    from ppir_itk.phantoms import head_phantom, moved_copy
    from ppir_itk.registration import party_figures
    from ppir_itk.transforms import make_transform

    warnings.simplefilter("ignore")
    backend, _, protocol = label.partition(":")
    fixed = head_phantom((side, side))
    truth = make_transform("affine", 2)
    truth.center = fixed.geometry.center()
    truth.parameters = TRUTH
    moving = moved_copy(fixed, truth)
    marks: dict[str, Any] = {}

    def mark(name: str) -> Any:
        return lambda method: marks.__setitem__(name, method.metric.moving_party.counters())

    start = time.perf_counter()
    result = ppir_itk.register(
        fixed,
        moving,
        backend=backend,
        backend_parameters={"protocol": protocol} if protocol else None,
        transform="affine",
        shrink_factors=[1],
        smoothing_sigmas=[0.0],
        sampling="none",
        iterations=iterations,
        minimum_step_length=0.0,
        relative_value_tolerance=0.0,
        threads=1,
        seed=0,
        deadline=deadline,
        observers={
            ppir_itk.Event.START: mark("start"),
            ppir_itk.Event.MULTI_RESOLUTION_ITERATION: mark("setup"),
            ppir_itk.Event.ITERATION: mark("last"),
        },
    )
    wall = time.perf_counter() - start
    (level,) = result.levels

    def traffic(since: str, until: str) -> tuple[float, float]:
        """(sent, received) by the moving party between two marks."""
        figures = party_figures(marks[until] - marks[since], 0.0)
        return figures["bytes_sent"], figures["bytes_received"]

    alone = traffic("setup", "last")
    setup = traffic("start", "setup")
    steps = max(level.iterations, 1)
    return {
        "points": level.points,
        "wall": wall,
        "startup": result.fixed_startup_seconds or 0.0,
        "setup": level.setup_seconds,
        "iterations": level.iterations,
        "per_iteration": (level.seconds - level.setup_seconds) / steps,
        "fixed_seconds": result.parties["fixed"]["seconds"],
        "moving_sent": level.parties["moving"]["per_iteration"]["bytes_sent"],
        "fixed_sent": level.parties["fixed"]["per_iteration"]["bytes_sent"],
        "alone_moving": alone[0] / steps,
        "alone_fixed": alone[1] / steps,
        "setup_fixed": setup[1],
        "rss_moving": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_others": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def in_child(label: str, side: int, args: argparse.Namespace) -> dict[str, Any]:
    """``run_one`` in a fresh process; its figures, or ``{"error": ...}``."""
    completed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--one",
            label,
            str(side),
            "--iterations",
            str(args.iterations),
            "--deadline",
            str(args.deadline),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode == 0 and lines:
        return json.loads(lines[-1])
    said = [line for line in completed.stderr.strip().splitlines() if line.strip()]
    return {"error": said[-1][:160] if said else f"exit status {completed.returncode}"}


def skip_reason(
    label: str,
    points: int,
    runs: list[dict[str, Any]],
    args: argparse.Namespace,
    limits: dict[str, int],
) -> str | None:
    """Why this size is not run, or None."""
    limit = limits.get(label)
    if limit is not None and points > limit:
        return f"skipped (over {limit:.3g} points for this backend; --max-points)"
    if not runs:
        return None
    last = runs[-1]
    if "error" in last:
        return "skipped (a smaller size failed)"
    if last["wall"] > args.cap:
        return f"skipped (the {last['points']}-point run took {last['wall']:.0f} s > cap)"
    predicted = last["startup"] + (last["wall"] - last["startup"]) * points / last["points"]
    if predicted > args.cap:
        return f"skipped (predicted {predicted:.0f} s)"
    if len(runs) >= 2 and "error" not in runs[-2]:
        before = runs[-2]
        memory = [
            before["rss_moving"] + before["rss_others"],
            last["rss_moving"] + last["rss_others"],
        ]
        slope = (memory[1] - memory[0]) / max(last["points"] - before["points"], 1)
        expected = memory[1] + slope * (points - last["points"])
        if expected > args.max_memory_gb * 1024:
            return f"skipped (predicted {expected / 1024:.3g} GB peak memory)"
    return None


def slopes(runs: list[dict[str, Any]]) -> str:
    """Least-squares slope of log(s/it) against log(n), over all runs and the two largest."""
    done = [run for run in runs if "error" not in run]
    if len(done) < 2:
        return "slope: fewer than two sizes ran"
    n = np.log([run["points"] for run in done])
    seconds = np.log([run["per_iteration"] for run in done])
    overall = np.polyfit(n, seconds, 1)[0]
    last = np.polyfit(n[-2:], seconds[-2:], 1)[0]
    return (
        f"slope of log(s/it) vs log(n): {overall:.2f} over n = {done[0]['points']:.2g} .. "
        f"{done[-1]['points']:.2g}, {last:.2f} between the two largest (1.0 = linear)"
    )


HEADER = (
    f"{'points':>10} {'wall s':>8} {'set-up s':>9} {'s/it':>9} {'fixed s':>8} "
    f"{'MB/it mov':>10} {'MB/it fix':>10} {'alone m>f':>10} {'alone f>m':>10} "
    f"{'set-up MB':>10} {'RSS mov':>8} {'RSS oth':>8}"
)


def row(run: dict[str, Any]) -> str:
    mb = 1e6
    return (
        f"{run['points']:>10} {run['wall']:>8.1f} {run['setup']:>9.2f} "
        f"{run['per_iteration']:>9.4f} {run['fixed_seconds']:>8.2f} "
        f"{run['moving_sent'] / mb:>10.4g} {run['fixed_sent'] / mb:>10.4g} "
        f"{run['alone_moving'] / mb:>10.4g} {run['alone_fixed'] / mb:>10.4g} "
        f"{run['setup_fixed'] / mb:>10.4g} {run['rss_moving']:>8.0f} "
        f"{run['rss_others']:>8.0f}"
    )


def limits_from(overrides: list[str]) -> dict[str, int]:
    limits = dict(MAX_POINTS)
    for item in overrides:
        label, _, value = item.partition("=")
        if label not in BACKENDS or not value:
            raise SystemExit(
                f"--max-points takes BACKEND=N with BACKEND one of "
                f"{', '.join(BACKENDS)}; got '{item}'"
            )
        limits[label] = int(float(value))
    return limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=float,
        default=[1e4, 1e5, 1e6, 1e7],
        help="numbers of fixed-grid points (2-D, side round(sqrt(n)))",
    )
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument(
        "--cap",
        type=float,
        default=300.0,
        help="seconds a run may take (measured, or predicted from the last)",
    )
    parser.add_argument(
        "--max-points",
        nargs="*",
        default=[],
        metavar="BACKEND=N",
        help="override a backend's largest size (e.g. spdz=1e7)",
    )
    parser.add_argument("--max-memory-gb", type=float, default=12.0)
    parser.add_argument(
        "--deadline",
        type=float,
        default=300.0,
        help="seconds either party waits for the other's next message",
    )
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.iterations, args.deadline)))
        return
    limits = limits_from(args.max_points)
    sides = sorted({max(int(round(math.sqrt(size))), 8) for size in args.sizes})
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    backends = sorted(set(args.backends), key=BACKENDS.index)  # clear first
    print(
        f"2-D affine, one level, {args.iterations} iterations, one kernel thread, fixed "
        f"party in its own process; cap {args.cap:g} s"
    )
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for label in backends:
        print(f"\n{label}\n{HEADER}", flush=True)
        runs: list[dict[str, Any]] = []
        for side in sides:
            reason = skip_reason(label, side * side, runs, args, limits)
            if reason is not None:
                print(f"{side * side:>10} {reason}", flush=True)
                continue
            run = in_child(label, side, args)
            runs.append(run)
            if "error" in run:
                print(f"{side * side:>10} failed: {run['error']}", flush=True)
                continue
            results.setdefault(label, {})[side * side] = run
            print(row(run), flush=True)
        print(slopes(runs), flush=True)
    if "clear" not in results or len(results) < 2:
        return
    others = [label for label in backends if label != "clear" and label in results]
    print("\nper-iteration time over clear's, same n")
    print(f"{'points':>10} " + " ".join(f"{label:>14}" for label in others))
    for points, clear in sorted(results["clear"].items()):
        cells = []
        for label in others:
            run = results[label].get(points)
            cells.append(
                f"{run['per_iteration'] / clear['per_iteration']:>13.1f}x" if run else f"{'-':>14}"
            )
        print(f"{points:>10} " + " ".join(cells))


if __name__ == "__main__":
    main()
