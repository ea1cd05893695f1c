"""``ppir bench``: the paper's table for any image pair, from the runtime's own accounting.

Every row is one solution (a backend and its protocol) with one sampling
mode. Each row runs ``repeats`` times through the real two-party runtime
(the fixed party, and for ``spdz`` the dealer, in their own processes on
loopback, with mutual TLS): every repeat starts new processes, so new keys
and new shares, with the same public sampling seed. Clear always runs: it is
the reference of the displacement RMSE and of the time ratio.

A run that passes ``time_cap`` seconds is stopped at its next iteration. Its
row is marked as the paper marked its infeasible rows (✗), and the cost of one
iteration at full resolution (the finest level alone, the level's set-up
included) is measured instead, once per repeat. A solution that refuses the
transform (the paper's CKKS protocols take linear transforms only) is marked
✗ with its reason.

The columns (DESIGN.md §9), each the mean and standard deviation over the
repeats (population, ``ddof=0``, so one repeat gives 0):

- ``ssd``: intensity error, the mean of ``(F - M∘T)^2`` over the whole fixed
  grid (:func:`ppir_itk.evaluation.intensity_error`), whatever the sampling;
- ``iterations``: optimizer iterations over all levels;
- ``rmse_mm``: displacement RMSE against Clear with the same sampling, over
  the fixed grid, physical units;
- per party (``moving``, ``fixed``, ``dealer``): seconds and MB sent, in all
  (``*_total``) and per iteration (``*_per_iteration``: the total over the
  iterations, so averaged over the levels, as the paper);
- ``time_vs_clear``: the moving party's seconds per iteration over Clear's,
  same sampling (for a capped row: its full-resolution iteration over
  Clear's finest-level iteration).

Outputs (``write_outputs``): ``table.md``, ``table.csv``, ``results.json`` and
the figures of :mod:`ppir_itk.figures`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ppir_itk import figures
from ppir_itk._version import __version__
from ppir_itk.errors import InputError
from ppir_itk.evaluation import displacement_rmse, intensity_error
from ppir_itk.image import ImageGrid
from ppir_itk.options import DEFAULT_TIME_CAP, RegistrationOptions
from ppir_itk.registration import PARTIES, RegistrationResult, register
from ppir_itk.sampling import PAPER_SAMPLINGS, SAMPLINGS

SOLUTIONS = ("clear", "he/packed", "he/paper-v1", "he/paper-v2", "spdz")
# The options each row sets for itself; the settings' values of these are not used.
PER_ROW = ("backend", "backend_parameters", "sampling")
FIGURES = ("seconds", "mb_sent")
VERSIONED = ("numpy", "itk", "SimpleITK", "tenseal", "crypten", "torch", "grpcio")


@dataclass(frozen=True)
class Row:
    """One line of the table: a backend, its protocol, a sampling mode."""

    backend: str
    protocol: str | None
    sampling: str

    @property
    def solution(self) -> str:
        return self.backend if self.protocol is None else f"{self.backend} {self.protocol}"

    @property
    def label(self) -> str:
        return (
            self.solution
            if self.sampling == "none"
            else f"{self.solution} + {self.sampling.upper()}"
        )

    @property
    def slug(self) -> str:
        return self.label.replace(" + ", "-").replace(" ", "-").lower()

    @property
    def backend_parameters(self) -> dict[str, str]:
        return {} if self.protocol is None else {"protocol": self.protocol}


def parse_solution(text: str) -> tuple[str, str | None]:
    """``clear``, ``he`` (protocol ``packed``), ``he/paper-v1``, ``spdz`` ...: the
    backend, and its protocol where it has several."""
    from ppir_itk.backends import BACKENDS, check_backend_name, check_protocol

    backend, _, protocol = text.partition("/")
    backend = check_backend_name(backend)
    protocol = check_protocol(backend, protocol or None)
    return backend, protocol if len(BACKENDS[backend]) > 1 else None


def rows_for(solutions: Sequence[str], samplings: Sequence[str]) -> list[Row]:
    """The table's rows, Clear first (the reference), in the order given."""
    for sampling in samplings:
        if sampling not in SAMPLINGS:
            raise InputError(f"unknown sampling '{sampling}': choose from {', '.join(SAMPLINGS)}")
    parsed = [parse_solution(text) for text in solutions]
    if ("clear", None) not in parsed:
        parsed.insert(0, ("clear", None))
    parsed.sort(key=lambda item: item != ("clear", None))
    unique = list(dict.fromkeys(parsed))
    return [
        Row(backend, protocol, sampling)
        for sampling in dict.fromkeys(samplings)
        for backend, protocol in unique
    ]


@dataclass
class Run:
    """One repeat of one row, in the runtime's own figures."""

    seconds: float
    iterations: int
    final_metric: float  # the registration's own metric (e.g. minus Mattes MI)
    ssd: float | None
    rmse_mm: float | None
    parties: dict[str, dict[str, float]]  # party -> seconds / mb_sent, total and per iteration
    finest_seconds_per_iteration: float
    metric_values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, result: RegistrationResult, ssd: float | None, rmse_mm: float | None) -> Run:
        iterations = max(result.iterations, 1)
        parties = {}
        for name in PARTIES:
            figures = result.parties.get(name, {"seconds": 0.0, "bytes_sent": 0})
            total = {
                "seconds": float(figures["seconds"]),
                "mb_sent": float(figures["bytes_sent"]) / 1e6,
            }
            parties[name] = {
                **{f"{key}_total": value for key, value in total.items()},
                **{f"{key}_per_iteration": value / iterations for key, value in total.items()},
            }
        finest = result.levels[-1]
        return cls(
            seconds=result.seconds,
            iterations=result.iterations,
            final_metric=result.final_metric,
            ssd=ssd,
            rmse_mm=rmse_mm,
            parties=parties,
            finest_seconds_per_iteration=(finest.seconds - finest.setup_seconds)
            / max(finest.iterations, 1),
            metric_values=list(result.metric_values),
        )


@dataclass
class RowResult:
    """A row's repeats, or why it has none (``status`` ``capped`` or ``refused``)."""

    row: Row
    status: str = "ok"
    reason: str = ""
    runs: list[Run] = field(default_factory=list)
    first: RegistrationResult | None = None  # the first repeat, for the figures

    def column(self, name: str) -> list[float]:
        """The repeats' values of one column (``ssd``, ``moving.seconds_total`` ...)."""
        party, _, key = name.rpartition(".")
        values = [run.parties[party][key] if party else getattr(run, key) for run in self.runs]
        return [float(value) for value in values if value is not None]

    def seconds_per_iteration(self) -> list[float]:
        """The moving party's, as the time ratio compares them (full resolution if capped)."""
        return self.column(
            "finest_seconds_per_iteration"
            if self.status == "capped"
            else "moving.seconds_per_iteration"
        )


@dataclass
class BenchSettings:
    """What the bench runs: every row registers with ``registration``, its backend,
    protocol and sampling set by the row (:data:`PER_ROW`)."""

    repeats: int = 3
    time_cap: float = DEFAULT_TIME_CAP
    solutions: Sequence[str] = SOLUTIONS
    samplings: Sequence[str] = PAPER_SAMPLINGS
    registration: RegistrationOptions = field(default_factory=RegistrationOptions)


def run_bench(
    fixed: ImageGrid, moving: ImageGrid, settings: BenchSettings, say: Callable[[str], None] = print
) -> list[RowResult]:
    """Run every row ``settings.repeats`` times; Clear rows first, as the reference."""
    if settings.repeats < 1:
        raise InputError(f"--repeats {settings.repeats} must be at least 1")
    if settings.time_cap <= 0:
        raise InputError(f"--time-cap {settings.time_cap:g} must be positive")
    rows = rows_for(settings.solutions, settings.samplings)
    clear: dict[str, RegistrationResult] = {}
    results = []
    for row in rows:
        outcome = _run_row(row, fixed, moving, settings, clear.get(row.sampling), say)
        if row.backend == "clear" and outcome.first is not None:
            clear[row.sampling] = outcome.first
        results.append(outcome)
    return results


def _run_row(
    row: Row,
    fixed: ImageGrid,
    moving: ImageGrid,
    settings: BenchSettings,
    clear: RegistrationResult | None,
    say: Callable[[str], None],
) -> RowResult:
    """The row's repeats; the first one that passes the cap makes the row ``capped``."""
    outcome = RowResult(row)
    for repeat in range(settings.repeats):
        try:
            options = dataclasses.replace(
                settings.registration,
                backend=row.backend,
                sampling=row.sampling,
                backend_parameters=row.backend_parameters,
            )
            result, capped = _register_capped(
                fixed, moving, options, settings.time_cap, one_iteration=outcome.status == "capped"
            )
        except InputError as error:  # e.g. a protocol that takes linear transforms only
            outcome.status, outcome.reason = "refused", str(error)
            say(f"{row.label}: refused: {error}")
            return outcome
        if capped and outcome.status == "ok":
            outcome.first, outcome.status = result, "capped"
            outcome.reason = (
                f"stopped at the {settings.time_cap:g} s cap after {result.iterations} iterations"
            )
            say(
                f"{row.label}: {outcome.reason}; measuring one iteration at full "
                f"resolution instead, {settings.repeats} times"
            )
            result, _ = _register_capped(
                fixed, moving, options, settings.time_cap, one_iteration=True
            )
        outcome.first = outcome.first or result
        if outcome.status == "capped":
            outcome.runs.append(Run.of(result, None, None))
        else:
            reference = outcome.first if clear is None else clear
            outcome.runs.append(
                Run.of(
                    result,
                    intensity_error(fixed, moving, result.transform),
                    displacement_rmse(result.transform, reference.transform, fixed.geometry),
                )
            )
        say(
            f"{row.label}, repeat {repeat + 1}/{settings.repeats}: {result.iterations} "
            f"iterations, {result.seconds:.1f} s"
            + (" (one iteration at full resolution)" if outcome.status == "capped" else "")
        )
    return outcome


def _register_capped(
    fixed: ImageGrid,
    moving: ImageGrid,
    options: RegistrationOptions,
    cap: float,
    *,
    one_iteration: bool,
) -> tuple[RegistrationResult, bool]:
    """One registration, stopped at the first iteration past ``cap`` seconds; and whether
    it was. ``one_iteration``: the finest level alone, for one iteration."""
    if one_iteration:
        options = dataclasses.replace(
            options,
            shrink_factors=[1],
            iterations=1,
            smoothing_sigmas=[options.smoothing_sigmas[-1]],
        )
    start = time.perf_counter()
    stopped: list[bool] = []

    def stop_at_cap(method: Any) -> None:
        if not stopped and time.perf_counter() - start > cap:
            stopped.append(True)
            method.StopRegistration()

    result = register(
        fixed,
        moving,
        options,
        observers={"IterationEvent": stop_at_cap},
        deadline=max(options.deadline, cap),
    )
    return result, bool(stopped)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _sd(values: Sequence[float]) -> float:
    return float(np.std(values)) if values else float("nan")


# -- the outputs ------------------------------------------------------------------------

COLUMNS = (  # (csv name, column of RowResult, markdown header, format)
    ("final_metric", "final_metric", "metric", ".4g"),
    ("ssd", "ssd", "SSD", ".4g"),
    ("iterations", "iterations", "iters", ".3g"),
    ("rmse_mm", "rmse_mm", "disp. RMSE vs Clear (mm)", ".2g"),
    *(
        (
            f"{party}_{figure}_{scope}",
            f"{party}.{figure}_{scope}",
            f"{party} {'s' if figure == 'seconds' else 'MB'}"
            f"{'/it' if scope == 'per_iteration' else ' total'}",
            ".3g",
        )
        for figure in FIGURES
        for party in PARTIES
        for scope in ("per_iteration", "total")
    ),
)
CAPPED_COLUMNS = {"final_metric", "ssd", "iterations", "rmse_mm"} | {
    f"{party}_{figure}_total" for party in PARTIES for figure in FIGURES
}


def table_rows(results: Sequence[RowResult]) -> list[dict[str, Any]]:
    """One dict per row: ``status``, then ``<column>_mean`` and ``<column>_sd`` (None: ✗)."""
    clear = {
        outcome.row.sampling: _mean(outcome.seconds_per_iteration())
        for outcome in results
        if outcome.row.backend == "clear" and outcome.status == "ok"
    }
    clear_finest = {
        outcome.row.sampling: _mean(outcome.column("finest_seconds_per_iteration"))
        for outcome in results
        if outcome.row.backend == "clear"
    }
    lines = []
    for outcome in results:
        line: dict[str, Any] = {
            "solution": outcome.row.solution,
            "sampling": outcome.row.sampling,
            "status": outcome.status,
            "repeats": len(outcome.runs),
        }
        for name, column, _, _ in COLUMNS:
            values = outcome.column(column)
            known = outcome.status == "ok" or (
                outcome.status == "capped" and name not in CAPPED_COLUMNS
            )
            line[f"{name}_mean"] = _mean(values) if known else None
            line[f"{name}_sd"] = _sd(values) if known else None
        reference = (clear_finest if outcome.status == "capped" else clear).get(
            outcome.row.sampling
        )
        ratios = (
            [value / reference for value in outcome.seconds_per_iteration()] if reference else []
        )
        line["time_vs_clear_mean"] = _mean(ratios) if ratios else None
        line["time_vs_clear_sd"] = _sd(ratios) if ratios else None
        lines.append(line)
    return lines


def markdown_table(results: Sequence[RowResult]) -> str:
    """The paper's table: mean ± sd over the repeats; ✗ where a row could not run."""
    headers = ["solution", "sampling", *(header for _, _, header, _ in COLUMNS), "time × Clear"]
    formats = {name: spec for name, _, _, spec in COLUMNS} | {"time_vs_clear": ".3g"}
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    notes: dict[str, list[str]] = {}
    for outcome, line in zip(results, table_rows(results), strict=True):
        cells = [outcome.row.solution, outcome.row.sampling.upper()]
        for name in [*(name for name, _, _, _ in COLUMNS), "time_vs_clear"]:
            mean, sd = line[f"{name}_mean"], line[f"{name}_sd"]
            if mean is None:
                cells.append("✗")
            elif name.startswith("dealer") and outcome.row.backend != "spdz":
                cells.append("–")
            elif len(outcome.runs) > 1:
                cells.append(f"{mean:{formats[name]}} ± {sd:.2g}")
            else:
                cells.append(f"{mean:{formats[name]}}")
        out.append("| " + " | ".join(cells) + " |")
        if outcome.status != "ok":
            reason = outcome.reason + (
                "; its per-iteration figures are one iteration at full "
                "resolution, the level's set-up included"
                if outcome.status == "capped"
                else ""
            )
            notes.setdefault(reason, []).append(outcome.row.label)
    lines = [f"- ✗ {', '.join(labels)}: {reason}" for reason, labels in notes.items()]
    return "\n".join(out + ([""] + lines if lines else [])) + "\n"


def csv_table(results: Sequence[RowResult]) -> str:
    lines = table_rows(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(lines[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {key: "" if value is None else value for key, value in line.items()} for line in lines
    )
    return buffer.getvalue()


def results_json(
    results: Sequence[RowResult], settings: BenchSettings, images: dict[str, Any]
) -> dict[str, Any]:
    """Every number, with the settings, images, versions and machine they came from."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "repeats": settings.repeats,
            "time_cap_seconds": settings.time_cap,
            "solutions": list(settings.solutions),
            "samplings": list(settings.samplings),
            "registration": _plain(_shared_options(settings.registration)),
        },
        "images": images,
        "versions": {"ppir_itk": __version__, **{name: _version(name) for name in VERSIONED}},
        "machine": machine(),
        "rows": [
            {
                **line,
                "label": outcome.row.label,
                "reason": outcome.reason,
                "runs": [dict(run.__dict__) for run in outcome.runs],
                "learned_in_the_clear": outcome.first.learned if outcome.first else {},
            }
            for outcome, line in zip(results, table_rows(results), strict=True)
        ],
    }


def _shared_options(options: RegistrationOptions) -> dict[str, Any]:
    """The registration options every row shares (those :data:`PER_ROW` differ)."""
    return {
        item.name: getattr(options, item.name)
        for item in dataclasses.fields(options)
        if item.name not in PER_ROW
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _plain(value: Any) -> Any:
    """As JSON allows: NaN as null, transforms and arrays by their repr."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return repr(value)


def write_outputs(
    results: Sequence[RowResult],
    settings: BenchSettings,
    fixed: ImageGrid,
    moving: ImageGrid,
    images: dict[str, Any],
    out: Path,
) -> list[Path]:
    """Write the table, the JSON and the figures into ``out``; returns the files."""
    from ppir_itk.wrapping.images import write_atomically

    written = []

    def text(name: str, content: str) -> None:
        write_atomically(lambda tmp: Path(tmp).write_text(content, encoding="utf-8"), out / name)
        written.append(out / name)

    text("table.md", markdown_table(results))
    text("table.csv", csv_table(results))
    text(
        "results.json",
        json.dumps(_plain(results_json(results, settings, images)), indent=2, allow_nan=False),
    )
    written += figures.write_figures(results, fixed, moving, out)
    return written
