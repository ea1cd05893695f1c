"""Processes and files the library starts end with their parent, however it ends.

Local-mode ``ppir register`` starts ``ppir serve`` (and ``ppir dealer`` for spdz) as
children and writes a throw-away PKI (and the fixed image, if it is not a file) to a
private temporary folder. SIGKILL, SIGTERM or Ctrl-C of the parent must leave no child
running and no folder behind within 5 s; Ctrl-C ends with one line and exit 130.
Servers say "listening on" (and write ``--ready-file``) only once they complete a TLS
handshake, and a moving party started at the same moment as its server retries until
the server listens.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
from processes import children as children_of
from processes import running

from ppir_itk.protocol.tls import init_pki

DATA = resources.files("ppir_itk") / "data"
GONE_WITHIN = 5.0  # seconds, the bound
# Registrations that last well past the moment they are killed (seconds each, alone).
LONG_RUNS = {
    "clear": ["--transform", "bspline", "--grid-spacing", "4", "--iterations", "200"],
    "spdz": ["--iterations", "500", "--shrink-factors", "1", "--smoothing-sigmas", "0"],
}


def _ppir(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "ppir_itk.cli", *arguments]


def _local_register(tmp_path: Path, backend: str) -> tuple[subprocess.Popen, list[int], Path]:
    """A local-mode registration in its own session (as a terminal's foreground job), once
    its children run; its temporary folders go to ``tmp_path / 'tmp'``."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with resources.as_file(DATA) as data:
        process = subprocess.Popen(
            _ppir(
                "register",
                "--fixed",
                str(data / "demo_fixed.mha"),
                "--moving",
                str(data / "demo_moving.mha"),
                "--backend",
                backend,
                "--output-transform",
                str(tmp_path / "result.tfm"),
                *LONG_RUNS[backend],
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "TMPDIR": str(scratch)},
            start_new_session=True,
        )
    children: list[int] = []
    end = time.monotonic() + 60
    while len(children) < (2 if backend == "spdz" else 1) and time.monotonic() < end:
        assert process.poll() is None, process.communicate()[1]
        children = children_of(process.pid)
        time.sleep(0.02)
    assert children, "the local fixed party never started"
    return process, children, scratch


def _assert_all_gone(children: list[int], scratch: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < GONE_WITHIN:
        if not any(running(pid) for pid in children) and not any(scratch.iterdir()):
            return time.monotonic() - start
        time.sleep(0.05)
    alive = [pid for pid in children if running(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    raise AssertionError(
        f"{GONE_WITHIN:g} s after: children still running {alive}, "
        f"left in the temporary folder {sorted(p.name for p in scratch.iterdir())}"
    )


def _said(stderr: str) -> list[str]:
    """The messages of ``stderr``'s log lines (``TIME LEVEL ppir COMMAND: MESSAGE``) but
    the clear backend's warning; any other line (a traceback's) fails."""
    messages = []
    for line in stderr.splitlines():
        match = re.fullmatch(r"\S+ [A-Z]+ ppir [a-z ]+: (.*)", line)
        assert match, f"not a log line: {line!r}"
        if "NOT private" not in match[1]:
            messages.append(match[1])
    return messages


def _kill_and_check(tmp_path: Path, backend: str, signal_number: int, delay: float) -> None:
    process, children, scratch = _local_register(tmp_path, backend)
    time.sleep(delay)  # start-up, handshake or the registration itself
    assert process.poll() is None, "the registration ended before the signal: make it longer"
    os.kill(process.pid, signal_number)
    _, stderr = process.communicate(timeout=30)
    _assert_all_gone(children, scratch)
    if signal_number == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 128 + signal_number
        assert _said(stderr)[-1:] == [f"stopped by {signal.Signals(signal_number).name}"]
        assert not [line for line in _said(stderr)[:-1] if "stopped" in line]


@pytest.mark.parametrize("backend", ["clear", "spdz"])
@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_a_killed_local_registration_leaves_no_process_and_no_folder(
    tmp_path, backend, signal_number
):
    _kill_and_check(tmp_path, backend, signal_number, delay=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
@pytest.mark.parametrize("backend", ["clear", "spdz"])
@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_killed_at_any_moment_local_registrations_leave_nothing(
    tmp_path, backend, signal_number, trial
):
    """20 trials: each signal and backend five times, at moments from the children's
    start-up to well inside the registration."""
    _kill_and_check(tmp_path, backend, signal_number, delay=random.uniform(0.0, 3.0))


def test_ctrl_c_ends_a_local_registration_with_one_line_and_130(tmp_path):
    process, children, scratch = _local_register(tmp_path, "spdz")
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends its foreground job
    _, stderr = process.communicate(timeout=30)
    _assert_all_gone(children, scratch)
    assert process.returncode == 130
    assert _said(stderr)[-1:] == ["interrupted"]
    assert not [line for line in _said(stderr)[:-1] if "interrupted" in line]


def _serve_and_register_together(tmp_path: Path, pki: Path, dealer: str, port: int) -> None:
    with resources.as_file(DATA) as data:
        serve = subprocess.Popen(
            _ppir(
                "serve",
                "--fixed",
                str(data / "demo_fixed.mha"),
                "--listen",
                f"127.0.0.1:{port}",
                "--tls-dir",
                str(pki / "fixed-party"),
                "--backends",
                "he",
                "spdz",
                "--dealer",
                dealer,
                "--ledger",
                ":memory:",
                "--ready-file",
                str(tmp_path / "serve.ready"),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        try:
            register = subprocess.run(
                _ppir(
                    "register",
                    "--peer",
                    f"127.0.0.1:{port}",
                    "--dealer",
                    dealer,
                    "--moving",
                    str(data / "demo_moving.mha"),
                    "--tls-dir",
                    str(pki / "moving-party"),
                    "--backend",
                    "spdz",
                    "--iterations",
                    "2",
                    "--output-transform",
                    str(tmp_path / "result.tfm"),
                ),
                capture_output=True,
                text=True,
                cwd=tmp_path,
                timeout=120,
            )
            assert register.returncode == 0, register.stderr
            assert (tmp_path / "serve.ready").read_text().strip() == f"127.0.0.1:{port}"
        finally:
            serve.terminate()
            _, log = serve.communicate(timeout=30)
    assert serve.returncode == 128 + signal.SIGTERM, log
    assert _said(log)[-1] == "stopped by SIGTERM"
    assert not (tmp_path / "serve.ready").exists(), "the ready file outlived its server"


@pytest.fixture(scope="module")
def dealer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dealer")
    pki = init_pki(folder / "pki")
    ready = folder / "dealer.ready"
    process = subprocess.Popen(
        _ppir(
            "dealer",
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            str(pki / "dealer"),
            "--ready-file",
            str(ready),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=folder,
    )
    end = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < end:
        assert process.poll() is None
        time.sleep(0.05)
    yield pki, ready.read_text().strip()
    process.terminate()
    process.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_moving_party_started_with_its_server_is_served(tmp_path, dealer):
    """``ppir serve --backends he spdz`` (CrypTen's import, seconds) and ``ppir register``
    started at the same moment: the moving party retries the refused connection."""
    pki, address = dealer
    _serve_and_register_together(tmp_path, pki, address, _free_port())


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(20))
def test_moving_parties_started_with_their_servers_are_served(tmp_path, dealer, trial):
    pki, address = dealer
    _serve_and_register_together(tmp_path, pki, address, _free_port())


def test_a_server_that_cannot_complete_a_handshake_with_itself_does_not_say_ready(
    tmp_path, phantom_2d
):
    """Its certificate from one CA, the CA it trusts another: no client could connect, so
    it stops with a sentence instead of saying "listening on"."""
    from ppir_itk.errors import InputError
    from ppir_itk.fixed_party import FixedPartyServer
    from ppir_itk.protocol.tls import TLS

    ours, theirs = init_pki(tmp_path / "ours"), init_pki(tmp_path / "theirs")
    own = TLS.for_role(ours, "fixed-party")
    mismatched = TLS(own.certificate, own.key, TLS.for_role(theirs, "fixed-party").ca)
    log: list[str] = []
    server = FixedPartyServer(phantom_2d, "127.0.0.1:0", mismatched, log=log.append)
    with pytest.raises(InputError, match="could not complete a TLS handshake with itself"):
        server.start(ready_timeout=2.0)
    assert not [line for line in log if "listening on" in line]
