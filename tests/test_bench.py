"""``ppir bench``: every file and column, capped rows and refused rows."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import known_pair

from ppir_itk.bench import SOLUTIONS, BenchSettings, markdown_table, rows_for, run_bench
from ppir_itk.cli import main
from ppir_itk.options import RegistrationOptions
from ppir_itk.phantoms import head_phantom
from ppir_itk.wrapping.images import write_image

QUICK = [
    "--shrink-factors",
    "2",
    "1",
    "--smoothing-sigmas",
    "1",
    "0",
    "--iterations",
    "4",
    "--threads",
    "1",
    "--sampling-fraction",
    "0.3",
]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-pair")
    fixed = head_phantom((36, 32))
    moving, _ = known_pair(fixed, "affine", [1.02, 0.03, -0.02, 0.98, 1.0, -0.5])
    write_image(fixed, folder / "fixed.mha")
    write_image(moving, folder / "moving.mha")
    return fixed, moving, folder


def test_bench_writes_every_file_and_column(tiny_pair, tmp_path, capsys):
    _, _, folder = tiny_pair
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--fixed",
                str(folder / "fixed.mha"),
                "--moving",
                str(folder / "moving.mha"),
                "--repeats",
                "1",
                "--out",
                str(out),
                *QUICK,
            ]
        )
        == 0
    )
    rows = rows_for(SOLUTIONS, ["none", "urs", "gms"])
    assert len(rows) == 15
    expected = {
        "table.md",
        "table.csv",
        "results.json",
        "convergence.png",
        "time.png",
        "communication.png",
        *(f"checkerboard-{row.slug}.png" for row in rows),
    }
    assert {path.name for path in out.iterdir()} == expected
    for name in expected - {"table.md", "table.csv", "results.json"}:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(out / "table.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(line["solution"], line["sampling"]) for line in table] == [
        (row.solution, row.sampling) for row in rows
    ]
    for party in ("moving", "fixed", "dealer"):
        for figure in ("seconds", "mb_sent"):
            for scope in ("per_iteration", "total"):
                assert f"{party}_{figure}_{scope}_mean" in table[0]
    for line in table:
        assert line["status"] == "ok" and line["repeats"] == "1"
        numbers = {
            key: value
            for key, value in line.items()
            if key not in ("solution", "sampling", "status")
        }
        assert all(math.isfinite(float(value)) for value in numbers.values()), line
        assert float(line["moving_seconds_total_mean"]) > 0
        assert float(line["iterations_mean"]) >= 1
    private = [line for line in table if line["solution"] != "clear"]
    assert all(float(line["moving_mb_sent_total_mean"]) > 0 for line in private)
    assert all(float(line["rmse_mm_mean"]) < 0.05 for line in private)
    spdz = [line for line in table if line["solution"] == "spdz"]
    assert all(float(line["dealer_mb_sent_total_mean"]) > 0 for line in spdz)

    markdown = (out / "table.md").read_text()
    lines = markdown.splitlines()
    assert sum(line.startswith("| ") for line in lines) == 16  # the header and 15 rows
    assert "✗" not in markdown
    assert markdown in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 15
    assert results["settings"]["repeats"] == 1
    assert results["versions"]["tenseal"] and results["versions"]["ppir_itk"]
    assert results["machine"]["cpus"] >= 1
    assert all(run["metric_values"] for row in results["rows"] for run in row["runs"])


def test_rows_past_the_time_cap_are_marked_and_cost_one_full_resolution_iteration(tiny_pair):
    fixed, moving, _ = tiny_pair
    settings = BenchSettings(
        repeats=2,
        time_cap=1e-3,
        solutions=["he/paper-v1"],
        samplings=["none"],
        registration=RegistrationOptions(
            shrink_factors=[2, 1], smoothing_sigmas=[1.0, 0.0], iterations=4
        ),
    )
    results = run_bench(fixed, moving, settings, say=lambda _: None)
    assert [outcome.row.solution for outcome in results] == ["clear", "he paper-v1"]
    for outcome in results:
        assert outcome.status == "capped" and "cap" in outcome.reason
        assert outcome.first.iterations == 1 and len(outcome.first.levels) == 1
        assert len(outcome.runs) == 2  # two repeats of one full-resolution iteration
        assert all(run.iterations == 1 and run.ssd is None for run in outcome.runs)
    line = markdown_table(results).splitlines()[3]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[:6] == ["he paper-v1", "NONE", "✗", "✗", "✗", "✗"]
    assert "±" in cells[6] and "✗" not in cells[6]  # moving party s/it, measured
    assert "one iteration at full resolution" in markdown_table(results)


def test_a_protocol_that_refuses_the_transform_is_marked(tiny_pair):
    fixed, moving, _ = tiny_pair
    settings = BenchSettings(
        repeats=1,
        solutions=["he/paper-v2"],
        samplings=["none"],
        registration=RegistrationOptions(
            transform="bspline",
            grid_spacing=12.0,
            shrink_factors=[1],
            smoothing_sigmas=[0.0],
            iterations=2,
        ),
    )
    clear, paper = run_bench(fixed, moving, settings, say=lambda _: None)
    assert clear.status == "ok" and paper.status == "refused"
    assert "linear transforms only" in paper.reason and not paper.runs
    assert markdown_table([clear, paper]).splitlines()[3].count("✗") == 17


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backends", "he/paper-v9"], "no protocol 'paper-v9'"),
        (["--backends", "spdz/fast"], "backend 'spdz' has no protocol 'fast'"),
        (["--sampling", "lhs"], "unknown sampling 'lhs'"),
        (["--repeats", "0"], "--repeats 0 must be at least 1"),
        (["--time-cap", "0"], "--time-cap 0 must be positive"),
        (["--fixed", "a.mha"], "give both --fixed and --moving"),
    ],
)
def test_bad_bench_options_are_refused_in_one_sentence(tmp_path, capsys, argv, message):
    assert main(["bench", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_bench_runs_any_metric_and_marks_the_backends_that_do_not_compute_it(
    tiny_pair, tmp_path
):
    """``ppir bench --metric mattes``: the rows are the same, those of a backend that does not
    compute the metric are refused with its sentence, the metric column is the value."""
    _, _, folder = tiny_pair
    out = tmp_path / "bench"
    argv = ["bench", "--fixed", str(folder / "fixed.mha"), "--moving", str(folder / "moving.mha")]
    argv += ["--out", str(out), "--repeats", "1", "--metric", "mattes", "--backends", "clear"]
    assert main([*argv, "he/packed", "--sampling", "urs", *QUICK]) == 0
    lines = (out / "table.md").read_text().splitlines()
    clear, refused = lines[2].split(" | "), lines[3]
    assert clear[0] == "| clear" and -2.0 < float(clear[2]) < 0.0  # minus the mutual information
    assert refused.startswith("| he packed | URS | ✗")
    assert "does not compute metric 'mattes'" in (out / "table.md").read_text()
