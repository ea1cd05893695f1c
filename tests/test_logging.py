"""Logs an operator and a Python caller can use (ppir_itk/log.py, docs/architecture.md "Logs").

- the library logs to loggers under ``ppir_itk`` and, left alone, prints nothing; a
  caller's handler receives the records;
- a real ``ppir serve``, after a real registration against it, logs one line as each
  session opens and one as it ends, each with its time, the client's certificate name
  and fingerprint, the backend, the evaluations, the bytes both ways, the outcome and
  the duration; ``--log-file`` keeps the same lines;
- ``ppir register`` with stderr on a pipe logs progress lines with their time, at most
  ``--progress-interval`` apart; ``--quiet`` leaves warnings only;
- ``ppir --version`` names the libraries' versions and imports none of them.
"""

from __future__ import annotations

import datetime
import logging
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from conftest import FIVE_EVALUATIONS, known_pair, ppir_serve

import ppir_itk
from ppir_itk.cli import LIBRARIES
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.phantoms import head_phantom
from ppir_itk.protocol.tls import TLS
from ppir_itk.protocol.transport import certificate_fingerprint
from ppir_itk.registration import register_with
from ppir_itk.wrapping.images import write_image

# TIME LEVEL PROGRAM: MESSAGE, the time ISO 8601 in UTC to the millisecond
LINE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00) (DEBUG|INFO|WARNING|ERROR) "
    r"(ppir [a-z ]+): (.*)$"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return ppir_itk.init_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def pair() -> tuple[ppir_itk.ImageGrid, ppir_itk.ImageGrid]:
    fixed = head_phantom((64, 64))
    return fixed, known_pair(fixed, "affine", [1.02, 0.03, -0.02, 0.98, 1.5, -1.0])[0]


def _parsed(text: str) -> list[tuple[datetime.datetime, str, str, str]]:
    """Every line as (time, level, program, message); a line of another shape fails."""
    lines = []
    for line in text.splitlines():
        match = LINE.match(line)
        assert match, f"not a log line: {line!r}"
        moment, level, program, message = match.groups()
        lines.append((datetime.datetime.fromisoformat(moment), level, program, message))
    return lines


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_python_caller_routes_the_librarys_records_and_nothing_prints_without_it(
    pki, pair, capfd
):
    fixed, moving = pair
    handler = _Records()
    logging.getLogger("ppir_itk").addHandler(handler)
    logging.getLogger("ppir_itk").setLevel(logging.INFO)
    try:
        server = FixedPartyServer(
            fixed, "127.0.0.1:0", TLS.for_role(pki, "fixed-party"), deadline=20
        ).start()
        try:
            session = ppir_itk.connect(server.address, TLS.for_role(pki, "moving-party"))
            register_with(session, moving, **FIVE_EVALUATIONS)
            # the session's last line comes after its last answer
            for _ in range(100):
                if any("closed" in record.getMessage() for record in handler.records):
                    break
                time.sleep(0.05)
        finally:
            server.stop(grace=None)
    finally:
        logging.getLogger("ppir_itk").removeHandler(handler)
        logging.getLogger("ppir_itk").setLevel(logging.NOTSET)
    said = [(record.name, record.levelname, record.getMessage()) for record in handler.records]
    assert said[0] == ("ppir_itk.fixed_party", "INFO", f"listening on {server.address}")
    assert [message.split(":")[0] for _, _, message in said[1:]] == [
        "session 1 opened by moving-party (sha256",
        "session 1 closed",
    ]
    assert "backend he (packed), 5 evaluations" in said[2][2]
    assert capfd.readouterr().err == ""  # the library's records went to the handler only

    # Left alone (no handler of the caller's, unlike pytest here), a warning prints
    # nothing: the package's NullHandler keeps logging's last resort quiet.
    alone = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging, ppir_itk; logging.getLogger('ppir_itk.fixed_party').warning('x')",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert alone.stderr == ""


def test_ppir_serve_logs_each_session_with_time_identity_backend_figures_and_outcome(
    pki, pair, tmp_path
):
    fixed, moving = pair
    write_image(fixed, tmp_path / "fixed.nrrd")
    log, kept = tmp_path / "serve.log", tmp_path / "kept.log"
    options = ("--backends", "he", "--log-file", str(kept))
    with ppir_serve(pki, tmp_path / "fixed.nrrd", log, *options) as address:
        result = register_with(
            ppir_itk.connect(address, TLS.for_role(pki, "moving-party")),
            moving,
            **FIVE_EVALUATIONS,
        )
        with pytest.raises(ppir_itk.PeerError, match="not offered"):
            register_with(
                ppir_itk.connect(address, TLS.for_role(pki, "moving-party")),
                moving,
                **{**FIVE_EVALUATIONS, "backend": "clear"},
            )
        for _ in range(200):  # the second session's last line follows its answer
            if "session 2 aborted" in log.read_text():
                break
            time.sleep(0.05)
    lines = _parsed(log.read_text())
    assert {program for _, _, program, _ in lines} == {"ppir fixed party"}
    times = [moment for moment, _, _, _ in lines]
    assert times == sorted(times)
    assert all(abs(datetime.datetime.now(datetime.UTC) - t).total_seconds() < 300 for t in times)
    messages = [message for _, _, _, message in lines]
    assert messages[0] == f"listening on {address}"
    fingerprint = certificate_fingerprint(TLS.for_role(pki, "moving-party").certificate)[:16]
    identity = f"moving-party (sha256:{fingerprint})"
    assert messages[1] == f"session 1 opened by {identity}"
    closed = re.fullmatch(
        rf"session 1 closed: {re.escape(identity)}, backend he \(packed\), (\d+) evaluations, "
        r"40 linear measurements of the fixed image this session, 40 of its 64 in all "
        r"\(62\.5% of its cap\), sent ([\d.]+) MB, received ([\d.]+) MB, ([\d.]+) s",
        messages[2],
    )
    assert closed, messages[2]
    evaluations, sent, received, seconds = closed.groups()
    fixed_figures = result.parties["fixed"]
    assert int(evaluations) == result.iterations + 1 == 5
    # (the line counts the Closed answer too, which the report's figures cannot hold)
    assert abs(float(sent) - fixed_figures["bytes_sent"] / 1e6) < 0.02
    assert abs(float(received) - fixed_figures["bytes_received"] / 1e6) < 0.02
    assert 0 < float(seconds) < 120
    assert messages[3] == f"session 2 opened by {identity}"
    assert lines[4][1] == "WARNING" and re.fullmatch(
        rf"session 2 aborted: {re.escape(identity)}, no backend agreed, 0 linear "
        r"measurements .*, sent [\d.]+ MB, received [\d.]+ MB, [\d.]+ s; "
        r"backend 'clear' is not offered here \(offered: he\)",
        messages[4],
    ), messages[4]
    assert lines[5][1:] == ("WARNING", "ppir fixed party", "stopped by SIGTERM")
    assert len(lines) == 6
    assert kept.read_text() == log.read_text()  # --log-file: the same lines


def _register(
    folder: Path, *options: str, shape: tuple[int, ...] = (96, 96), in_process: bool = True
) -> subprocess.CompletedProcess:
    """``ppir register`` in local mode (``in_process``: the fixed party in the process),
    stderr on a pipe."""
    fixed = head_phantom(shape)
    moving, _ = known_pair(fixed, "translation", [2.5, -2.0, 1.5][: len(shape)])
    write_image(fixed, folder / "fixed.nrrd")
    write_image(moving, folder / "moving.nrrd")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ppir_itk.cli",
            "register",
            "--fixed",
            str(folder / "fixed.nrrd"),
            "--moving",
            str(folder / "moving.nrrd"),
            "--output-transform",
            str(folder / "out.tfm"),
            *(["--in-process"] if in_process else []),
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=600,
        check=True,
    )


def _progress_gaps(stderr: str, interval: float) -> list[float]:
    """Seconds between the progress lines, after checking each line's shape."""
    lines = _parsed(stderr)
    progress = [(t, m) for t, level, _, m in lines if level == "INFO" and m.startswith("level ")]
    starts = [m for _, m in progress if " started, at most " in m]
    assert len(starts) == 2, stderr  # each level's start has its line
    beats = [m for _, m in progress if re.search(r"iteration \d+/\d+, metric [-\d.e]+, ", m)]
    assert beats, stderr
    assert all(re.search(r", [\d.]+ s$", m) for _, m in progress)
    times = [t for t, _ in progress]
    return [
        (later - earlier).total_seconds() for earlier, later in zip(times, times[1:], strict=False)
    ]


def test_register_logs_progress_lines_at_most_the_interval_apart_when_not_on_a_terminal(
    tmp_path,
):
    interval = 0.25
    completed = _register(
        tmp_path,
        "--backend",
        "he",
        "--shrink-factors",
        "2",
        "1",
        "--smoothing-sigmas",
        "1",
        "0",
        "--iterations",
        "12",
        "8",
        "--progress-interval",
        str(interval),
        shape=(192, 192),  # long enough for four intervals however fast he gets
    )
    gaps = _progress_gaps(completed.stderr, interval)
    print(f"progress gaps (s): {', '.join(f'{gap:.2f}' for gap in gaps)}")
    assert len(gaps) >= 4, completed.stderr
    assert max(gaps) <= interval + 0.25, (gaps, completed.stderr)
    assert "level 1/2 started, at most 12 iterations" in completed.stderr
    assert "level 2/2 started, at most 8 iterations" in completed.stderr


@pytest.mark.slow
def test_a_long_registration_logs_progress_at_least_every_ten_seconds(tmp_path):
    """Over 30 s with the default interval (5 s), stderr on a pipe as in a batch job."""
    start = time.monotonic()
    completed = _register(
        tmp_path,
        "--backend",
        "he",
        "--transform",
        "affine",
        "--shrink-factors",
        "2",
        "1",
        "--smoothing-sigmas",
        "1",
        "0",
        shape=(48, 112, 112),
        in_process=False,
    )
    assert time.monotonic() - start > 30, completed.stderr
    gaps = _progress_gaps(completed.stderr, 5.0)
    # The timer thread needs the GIL, which a long call into SEAL can hold for a while.
    assert len(gaps) >= 6 and max(gaps) <= 10, (gaps, completed.stderr)
    print(f"progress gaps (s): {', '.join(f'{gap:.2f}' for gap in gaps)}")


def test_quiet_leaves_warnings_and_verbose_adds_each_iteration(pki, pair, tmp_path):
    quiet = _register(tmp_path, "--backend", "clear", "--quiet", "--iterations", "3")
    lines = _parsed(quiet.stderr)
    assert [level for _, level, _, _ in lines] == ["WARNING"]  # clear is not private
    assert "NOT private" in lines[0][3]
    # A quiet server says nothing on stderr but that it was stopped (a warning), and all but
    # debug lines in its --log-file.
    write_image(pair[0], tmp_path / "fixed.nrrd")
    kept = tmp_path / "quiet.log"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ppir_itk.cli",
            "serve",
            "--fixed",
            str(tmp_path / "fixed.nrrd"),
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            str(pki / "fixed-party"),
            "--quiet",
            "--log-file",
            str(kept),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and not (kept.exists() and "listening on" in kept.read_text()):
            assert server.poll() is None
            time.sleep(0.1)
    finally:
        server.terminate()
        _, said = server.communicate(timeout=10)
    assert [message for _, _, _, message in _parsed(said)] == ["stopped by SIGTERM"]
    assert " INFO ppir fixed party: listening on 127.0.0.1:" in kept.read_text()
    verbose = _register(
        tmp_path,
        "--backend",
        "clear",
        "--verbose",
        "--shrink-factors",
        "1",
        "--smoothing-sigmas",
        "0",
        "--iterations",
        "3",
    )
    debug = [m for _, level, _, m in _parsed(verbose.stderr) if level == "DEBUG"]
    assert [m.split(", metric")[0] for m in debug if m.startswith("level ")] == [
        f"level 1/1, iteration {k}/3" for k in (1, 2, 3)
    ]


_VERSION = """
import sys
from ppir_itk import cli
try:
    cli.main(["--version"])
except SystemExit as exit:
    print(f"exit {exit.code}")
print(" ".join(sorted(sys.modules)))
"""


def test_version_names_every_library_and_imports_none(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", _VERSION], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    *said, status, modules = completed.stdout.splitlines()
    assert status in ("exit 0", "exit None") and completed.stderr == ""
    assert said == [
        f"ppir_itk {ppir_itk.__version__}",
        *(f"{name} {metadata.version(name)}" for name in LIBRARIES),
    ]
    # (ppir_itk.cli itself imports gRPC, cryptography and SimpleITK, for every command)
    assert not set(modules.split()) & {"tenseal", "crypten", "torch", "itk"}
