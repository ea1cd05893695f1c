"""The figures of ``ppir bench``: checkerboards, convergence, time and traffic per party.

Drawn with matplotlib's object API (no pyplot, no global backend switch), each
written atomically as PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ppir_itk.image import ImageGrid
from ppir_itk.registration import PARTIES

# The figures draw bench's rows (bench.RowResult), which bench hands them: figures sit
# below bench and do not import it.
RowResult = Any

PARTY_COLOURS = {"moving": "#1f77b4", "fixed": "#ff7f0e", "dealer": "#2ca02c"}
SAMPLING_STYLES = {"none": "-", "urs": "--", "gms": ":"}


def checkerboard(first: np.ndarray, second: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate ``tiles`` x ``tiles`` blocks of two images of one shape.

    Examples
    --------
    >>> checkerboard(np.zeros((4, 4)), np.ones((4, 4)), tiles=2)
    array([[0., 0., 1., 1.],
           [0., 0., 1., 1.],
           [1., 1., 0., 0.],
           [1., 1., 0., 0.]])
    """
    rows = np.arange(first.shape[0]) * tiles // first.shape[0]
    columns = np.arange(first.shape[1]) * tiles // first.shape[1]
    second_tile = (rows[:, None] + columns[None, :]) % 2 == 1
    return np.where(second_tile, second, first)


def _middle_slice(array: np.ndarray) -> np.ndarray:
    """A 2-D image as it is; the middle slice of the first array axis of a volume."""
    return array if array.ndim == 2 else array[array.shape[0] // 2]


def _save(figure: Any, path: Path) -> Path:
    from ppir_itk.wrapping.images import write_atomically

    write_atomically(lambda tmp: figure.savefig(tmp, dpi=110, bbox_inches="tight"), path)
    return path


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def checkerboard_figure(fixed: ImageGrid, warped: ImageGrid, title: str, path: Path) -> Path:
    """Fixed and warped moving image in alternating tiles, on the fixed image's grey scale."""
    fixed_slice = _middle_slice(fixed.array).astype(np.float64)
    warped_slice = _middle_slice(warped.array).astype(np.float64)
    low, high = np.percentile(fixed_slice, [1, 99])
    scale = max(high - low, 1e-12)
    board = checkerboard((fixed_slice - low) / scale, (warped_slice - low) / scale)
    figure = _figure(5, 5 * board.shape[0] / board.shape[1] + 0.4)
    axes = figure.add_subplot()
    axes.imshow(board, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_title(title, fontsize=9)
    axes.set_axis_off()
    return _save(figure, path)


def convergence_figure(results: Sequence[RowResult], path: Path) -> Path:
    """The metric at every iteration of every row's first repeat, levels one after another."""
    figure = _figure(8, 4.5)
    axes = figure.add_subplot()
    solutions = list(dict.fromkeys(outcome.row.solution for outcome in results))
    for outcome in results:
        if outcome.first is not None and outcome.first.metric_values:
            values = np.asarray(outcome.first.metric_values)
            # Colour by solution, line style by sampling: private rows lie on Clear's.
            axes.plot(
                np.arange(1, values.size + 1),
                values,
                label=outcome.row.label,
                color=f"C{solutions.index(outcome.row.solution)}",
                linestyle=SAMPLING_STYLES.get(outcome.row.sampling, "-"),
                linewidth=1.0,
            )
    axes.set_xlabel("iteration (all levels, coarsest first)")
    axes.set_ylabel("metric (mean squares, this level's points)")
    axes.set_yscale("log")
    axes.legend(fontsize=7, ncol=2)
    axes.set_title("Convergence (first repeat of each row)", fontsize=10)
    return _save(figure, path)


def party_bars_figure(
    results: Sequence[RowResult], figure_name: str, unit: str, title: str, path: Path
) -> Path:
    """Per-iteration ``figure_name`` of each party per row: mean, with the sd as error bar."""
    shown = [outcome for outcome in results if outcome.runs]
    figure = _figure(max(8.0, 0.55 * len(shown) + 2), 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(PARTIES)
    positions = np.arange(len(shown))
    for offset, party in enumerate(PARTIES):
        values = [outcome.column(f"{party}.{figure_name}_per_iteration") for outcome in shown]
        means = np.array([np.mean(v) for v in values])
        errors = np.array([np.std(v) for v in values])
        drawn = means > 0  # a log axis has no room for zero: no bar is no traffic
        axes.bar(
            positions[drawn] + (offset - 1) * width,
            means[drawn],
            width,
            yerr=errors[drawn],
            label=party,
            color=PARTY_COLOURS[party],
            capsize=2,
        )
    axes.set_xticks(
        positions,
        [
            outcome.row.label
            + (" (✗: one full-res. iteration)" if outcome.status == "capped" else "")
            for outcome in shown
        ],
        rotation=45,
        ha="right",
        fontsize=7,
    )
    axes.set_yscale("log")
    axes.set_ylabel(f"{unit} per iteration")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    return _save(figure, path)


def write_figures(
    results: Sequence[RowResult], fixed: ImageGrid, moving: ImageGrid, out: Path
) -> list[Path]:
    """Every figure of the bench into ``out``; returns the files written."""
    written = []
    for outcome in results:
        if outcome.first is None:
            continue
        title = outcome.row.label + (f" — ✗ {outcome.reason}" if outcome.status == "capped" else "")
        written.append(
            checkerboard_figure(
                fixed,
                outcome.first.resample(moving),
                title,
                out / f"checkerboard-{outcome.row.slug}.png",
            )
        )
    written.append(convergence_figure(results, out / "convergence.png"))
    written.append(party_bars_figure(results, "seconds", "s", "Time per party", out / "time.png"))
    written.append(
        party_bars_figure(
            results,
            "mb_sent",
            "MB sent",
            "Communication per party (bytes each party sends)",
            out / "communication.png",
        )
    )
    return written
