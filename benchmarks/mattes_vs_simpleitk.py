"""Mattes mutual information on multi-modal pairs: ppir_itk (clear, spdz) against SimpleITK.

    python benchmarks/mattes_vs_simpleitk.py [--quick] [--pairs 2d 3d]
        [--backends clear spdz] [--out mattes.json]

Needs nilearn's MNI152 templates (``pip install --no-deps nilearn==0.14.1``; see
``benchmarks/multimodal_pairs.py``): the T1 template (fixed) against the grey-matter map
(moving) moved by a known affine, on an axial slice (2-D, 1 mm) and on the volumes at
2 mm (3-D, 1.07e6 voxels). For each pair, in one run (the machine is shared: compare
within a run):

- SimpleITK's Mattes MI affine registration (32 bins, RANDOM sampling with a fixed seed,
  regular-step gradient descent with physical-shift scales, levels 4-2-1 with sigmas
  2-1-0 mm, geometry-centred start: CenteredTransformInitializer's GEOMETRY) and its
  correlation and mean squares with the same settings (which should fail: the pair is
  multi-modal); residual against the truth (displacement RMSE
  over the fixed grid, mm and voxels) and wall time (Mattes: median of ``--repeats``);
- ppir_itk's ``register`` with ``metric="mattes"``, the regular-step optimizer and the
  same sampling fraction, schedule and seed, for each backend (the fixed party, and
  spdz's dealer, in their own processes): residual, registration seconds with the
  parties' start-up apart (clear: the median of ``--repeats`` runs, as SimpleITK's), the
  finest level's moving-party seconds and each party's
  bytes per iteration, and the displacement RMSE of each private result against clear.

``--quick``: the 2-D pair only, one SimpleITK repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import multimodal_pairs  # noqa: E402

import ppir_itk  # noqa: E402
from ppir_itk.errors import InputError  # noqa: E402
from ppir_itk.evaluation import displacement_rmse, sitk_reference_registration  # noqa: E402
from ppir_itk.options import RegistrationOptions  # noqa: E402
from ppir_itk.transforms import make_transform  # noqa: E402

SCHEDULE = {"shrink_factors": (4, 2, 1), "smoothing_sigmas": (2.0, 1.0, 0.0)}
# Regular-step gradient descent as tuned for SimpleITK on these pairs: learning rates 1-2,
# minimum steps 1e-4-1e-3 and relaxation 0.5-0.8 all end at 0.075-0.093 mm in 2-D (25-50 %)
# and 0.297-0.316 mm in 3-D (10 %), so the residual is the sample's, not the optimizer's;
# the same settings for correlation and mean squares.
SITK_SETTINGS = {
    "histogram_bins": 32,
    "learning_rate": 2.0,
    "minimum_step": 1e-4,
    "relaxation_factor": 0.5,
    "iterations": 200,
}
FRACTIONS = {"2d": 0.25, "3d": 0.10}
SEED = 1  # SimpleITK's seed 0 would be the wall clock's
PAIRS = {"2d": multimodal_pairs.slice_pair, "3d": multimodal_pairs.volume_pair}


def _residual(transform: Any, pair: multimodal_pairs.Pair) -> dict[str, float]:
    mm = displacement_rmse(transform, pair.truth, pair.fixed.geometry)
    return {"residual_mm": mm, "residual_voxels": mm / min(pair.fixed.geometry.spacing)}


def simpleitk_rows(pair: multimodal_pairs.Pair, fraction: float, repeats: int) -> list[dict]:
    initial = make_transform("affine", pair.fixed.dimension)
    initial.center = pair.fixed.geometry.center()
    initial.translation = pair.moving.geometry.center() - pair.fixed.geometry.center()
    rows = []
    for metric in ("mattes", "correlation", "meansquares"):
        seconds = []
        # the same result each time (fixed seed): the repeats are for Mattes's time only
        for _ in range(repeats if metric == "mattes" else 1):
            start = time.perf_counter()
            found = sitk_reference_registration(
                pair.fixed,
                pair.moving,
                initial,
                metric=metric,
                sampling_fraction=fraction,
                seed=SEED,
                **SCHEDULE,
                **SITK_SETTINGS,
            )
            seconds.append(time.perf_counter() - start)
        rows.append(
            {
                "method": "SimpleITK",
                "metric": metric,
                "seconds": statistics.median(seconds),
                "seconds_all": seconds,
                "parameters": found.parameters.tolist(),
                **_residual(found, pair),
            }
        )
    return rows


def ppir_row(
    pair: multimodal_pairs.Pair, backend: str, fraction: float, repeats: int
) -> tuple[dict, Any]:
    """One backend's row; ``clear`` runs ``repeats`` times (the median time, as SimpleITK's),
    a private backend once."""
    options = RegistrationOptions(
        transform="affine",
        metric="mattes",
        backend=backend,
        optimizer="regular-step",
        sampling="urs",
        sampling_fraction=fraction,
        seed=SEED,
        histogram_bins=SITK_SETTINGS["histogram_bins"],
        learning_rate=SITK_SETTINGS["learning_rate"],
        minimum_step_length=SITK_SETTINGS["minimum_step"],
        initializer="geometry",
        iterations=SITK_SETTINGS["iterations"],
        **SCHEDULE,
    )
    seconds = []
    for _ in range(repeats if backend == "clear" else 1):
        start = time.perf_counter()
        result = ppir_itk.register(pair.fixed, pair.moving, options)
        wall = time.perf_counter() - start
        seconds.append(result.seconds)
    finest = result.levels[-1]
    per_iteration = {party: figures["per_iteration"] for party, figures in finest.parties.items()}
    row = {
        "method": f"ppir_itk {backend}",
        "metric": "mattes",
        "seconds": statistics.median(seconds),
        "seconds_all": seconds,
        "wall_seconds": wall,
        "fixed_startup_seconds": result.fixed_startup_seconds,
        "iterations": result.iterations,
        "iterations_per_level": [level.iterations for level in result.levels],
        "stop_condition": finest.stop_condition,
        "finest_points": finest.points,
        "finest_moving_seconds_per_iteration": per_iteration["moving"]["seconds"],
        "finest_bytes_sent_per_iteration": {
            party: figures["bytes_sent"] for party, figures in per_iteration.items()
        },
        # the dealer's figures are per run only (its level is not reported apart)
        "whole_run_bytes_sent_per_iteration": {
            party: figures["bytes_sent"] / max(result.iterations, 1)
            for party, figures in result.parties.items()
        },
        "parameters": result.transform.parameters.tolist(),
        **_residual(result.transform, pair),
    }
    return row, result


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    pair = PAIRS[name]()
    fraction = FRACTIONS[name]
    print(f"{pair.name}: fixed {pair.fixed.geometry.size}, sampling {fraction:.0%}", flush=True)
    start = displacement_rmse(
        make_transform("affine", pair.fixed.dimension), pair.truth, pair.fixed.geometry
    )
    record: dict[str, Any] = {
        "pair": pair.name,
        "size": list(pair.fixed.geometry.size),
        "spacing_mm": list(pair.fixed.geometry.spacing),
        "sampling_fraction": fraction,
        "truth": pair.truth.parameters.tolist(),
        "start_residual_mm": start,
        "rows": simpleitk_rows(pair, fraction, args.repeats),
    }
    clear = None
    for backend in args.backends:
        try:
            row, result = ppir_row(pair, backend, fraction, args.repeats)
        except InputError as error:  # a backend that does not compute Mattes (yet)
            record.setdefault("ppir_not_run", []).append(f"{backend}: {error}")
            continue
        if backend == "clear":
            clear = result
        elif clear is not None:
            row["rmse_vs_clear_voxels"] = displacement_rmse(
                result.transform, clear.transform, pair.fixed.geometry
            ) / min(pair.fixed.geometry.spacing)
            row["finest_time_vs_clear"] = (
                row["finest_moving_seconds_per_iteration"]
                / clear.levels[-1].parties["moving"]["per_iteration"]["seconds"]
            )
        record["rows"].append(row)
        print(f"  {row['method']}: {row['residual_voxels']:.3f} voxels", flush=True)
    return record


def markdown(records: list[dict]) -> str:
    lines = [
        "| pair | method | metric | residual mm | residual voxels | seconds | iterations "
        "| start-up s | moving s/it (finest) | x clear | bytes/it moving / fixed (finest) "
        "| dealer bytes/it (whole run) | vs clear (voxels) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for record in records:
        start = record["start_residual_mm"]
        spacing = min(record["spacing_mm"])
        lines.append(
            f"| {record['pair']} | (start: identity) | | {start:.3f} | {start / spacing:.3f} "
            "| | | | | | | | |"
        )
        for row in record["rows"]:
            sent = row.get("finest_bytes_sent_per_iteration", {})
            if (
                row["method"] == "ppir_itk spdz"
                and "dealer" not in row["whole_run_bytes_sent_per_iteration"]
            ):
                notes.append(f"{record['pair']}: the spdz run's report has no dealer figures.")
            cells = [
                record["pair"],
                row["method"],
                row["metric"],
                f"{row['residual_mm']:.3f}",
                f"{row['residual_voxels']:.3f}",
                f"{row['seconds']:.2f}",
                str(row.get("iterations", "")),
                _format(row.get("fixed_startup_seconds"), ".2f"),
                _format(row.get("finest_moving_seconds_per_iteration"), ".4f"),
                _format(row.get("finest_time_vs_clear"), ".0f"),
                f"{_bytes(sent['moving'])} / {_bytes(sent['fixed'])}" if sent else "",
                _bytes(row.get("whole_run_bytes_sent_per_iteration", {}).get("dealer")),
                _format(row.get("rmse_vs_clear_voxels"), ".2g"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if "ppir_not_run" in record:
            for reason in record["ppir_not_run"]:
                notes.append(f"{record['pair']}: ppir_itk not run, {reason}.")
    return "\n".join(lines + [""] + notes)


def _bytes(value: float | None) -> str:
    if value is None:
        return ""
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} B"


def _format(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 2-D pair only, one repeat")
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["2d", "3d"])
    parser.add_argument("--backends", nargs="+", default=["clear", "spdz"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="SimpleITK Mattes and ppir_itk clear runs (the median time)",
    )
    parser.add_argument("--out", type=Path, help="write the measurements as JSON")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.repeats = ["2d"], 1
    warnings.simplefilter("ignore")
    records = [measure(name, args) for name in args.pairs]
    table = markdown(records)
    print(table)
    if args.out:
        settings = {
            "schedule": SCHEDULE,
            "simpleitk": SITK_SETTINGS,
            "fractions": FRACTIONS,
            "seed": SEED,
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "command": " ".join(sys.argv),
        }
        args.out.write_text(json.dumps({"settings": settings, "pairs": records}, indent=2))


if __name__ == "__main__":
    main()
