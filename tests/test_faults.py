"""SIGKILL the moving party, the fixed party or the dealer in the middle of a registration.

Each trial runs the three roles as the three commands a deployment runs (``ppir dealer``,
``ppir serve``, ``ppir register --peer``) on loopback with mutual TLS and an spdz
registration, kills one of them after a random delay, and checks the survivors:

- the moving party, if it survives, exits within a bound with one ``ppir: error:``
  sentence, and leaves no output file (not even a temporary one);
- the fixed party, if it survives, frees its session and serves the next one;
- the dealer, if it survives, serves that next session too.

The default suite runs one trial per role; ``-m slow`` runs 20 per role at random delays.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import known_pair

import ppir_itk
from ppir_itk.compose import _child
from ppir_itk.phantoms import head_phantom
from ppir_itk.wrapping.images import write_image

DEADLINE = 4.0  # seconds every role waits for its peer
ROLES = ("moving", "fixed", "dealer")


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    pki = ppir_itk.init_pki(folder / "pki")
    fixed = head_phantom((112, 104))
    moving, _ = known_pair(fixed, "affine", [1.03, 0.03, -0.02, 0.97, 2.0, -1.5])
    write_image(fixed, folder / "fixed.nrrd")
    write_image(moving, folder / "moving.nrrd")
    return folder, pki


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _register(folder: Path, pki: Path, fixed: str, dealer: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ppir_itk.cli", "register", "--peer", fixed, "--dealer", dealer,
         "--moving", str(folder / "moving.nrrd"), "--tls-dir", str(pki), "--backend", "spdz",
         "--shrink-factors", "2", "1", "--smoothing-sigmas", "1", "0", "--iterations", "40",
         "--deadline", str(DEADLINE), "--quiet", "--output-transform", str(out / "t.tfm"),
         "--report", str(out / "r.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out)


def _dealer(stack: ExitStack, folder: Path, pki: Path, port: int) -> subprocess.Popen:
    process, _ = stack.enter_context(_child(
        ["dealer", "--listen", f"127.0.0.1:{port}", "--tls-dir", str(pki),
         "--deadline", str(DEADLINE)], folder, "dealer", 60.0))
    return process


def trial(folder: Path, pki: Path, victim: str, delay: float, out: Path) -> dict[str, float]:
    """One registration with ``victim`` killed ``delay`` seconds after the session opened;
    returns what was seen."""
    out.mkdir()
    seen: dict[str, float] = {}
    dealer_port = _free_port()
    dealer_address = f"127.0.0.1:{dealer_port}"
    with ExitStack() as stack:
        processes = {"dealer": _dealer(stack, folder, pki, dealer_port)}
        processes["fixed"], fixed_address = stack.enter_context(_child(
            ["serve", "--fixed", str(folder / "fixed.nrrd"), "--listen", "127.0.0.1:0",
             "--tls-dir", str(pki), "--deadline", str(DEADLINE), "--backends", "spdz",
             "--dealer", dealer_address], folder, "fixed party", 60.0))
        processes["moving"] = _register(folder, pki, fixed_address, dealer_address, out)
        opened = processes["fixed"].stderr.readline()  # the fixed party logs each session
        assert "session 1 opened" in opened, opened
        time.sleep(delay)
        seen["victim_was_running"] = processes[victim].poll() is None
        processes[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        processes[victim].wait()

        if victim != "moving":
            _, err = processes["moving"].communicate(timeout=60)
            seen["moving_exit_seconds"] = time.monotonic() - killed
            seen["moving_returncode"] = processes["moving"].returncode
            if processes["moving"].returncode != 0:  # killed mid-session, not after the end
                assert processes["moving"].returncode == 3, err
                assert err.strip().splitlines()[-1].startswith("ppir: error: "), err
                assert "Traceback" not in err
                assert not list(out.iterdir()), "a failed run left files behind"
        if victim == "fixed":
            return seen
        if victim == "dealer":  # the operator restarts it where the fixed party expects it
            processes["dealer"] = _dealer(stack, folder, pki, dealer_port)
        # The fixed party (and dealer) serve the next session once the broken one is reset.
        retry = out / "next"
        retry.mkdir()
        start = time.monotonic()
        while True:
            for stale in retry.iterdir():
                stale.unlink()
            done = _register(folder, pki, fixed_address, dealer_address, retry)
            _, err = done.communicate(timeout=120)
            if done.returncode == 0 or time.monotonic() - start > 3 * DEADLINE:
                break
            assert "busy" in err, err  # the only acceptable failure: the slot not yet free
            time.sleep(0.5)
        assert done.returncode == 0, err
        assert (retry / "t.tfm").exists() and (retry / "r.json").exists()
        seen["next_session_seconds"] = time.monotonic() - start
        for server in ("fixed", "dealer"):
            assert processes[server].poll() is None, f"the {server} process died"
    return seen


@pytest.mark.parametrize("victim", ROLES)
def test_a_killed_party_leaves_the_others_clean(setting, tmp_path, victim):
    folder, pki = setting
    seen = trial(folder, pki, victim, 0.5, tmp_path / victim)
    if victim != "moving":
        assert seen["moving_returncode"] == 3  # it was killed mid-session
        assert seen["moving_exit_seconds"] < 2 * DEADLINE + 5


@pytest.mark.slow
@pytest.mark.parametrize("victim", ROLES)
def test_twenty_kills_at_random_moments(setting, tmp_path, victim):
    folder, pki = setting
    draw = random.Random(f"faults-{victim}")
    outcomes = []
    for number in range(20):
        delay = draw.uniform(0.0, 3.0)  # from the session's opening to past its end
        outcomes.append((delay, trial(folder, pki, victim, delay, tmp_path / f"{number}")))
    running = sum(seen["victim_was_running"] for _, seen in outcomes)
    failed = sum(seen.get("moving_returncode") == 3 for _, seen in outcomes)
    exits = [seen["moving_exit_seconds"] for _, seen in outcomes if "moving_exit_seconds" in seen]
    served = [seen["next_session_seconds"] for _, seen in outcomes
              if "next_session_seconds" in seen]
    print(f"\n{victim}: {len(outcomes)} trials, killed while running in {running}; the moving "
          f"party ended with exit 3 in {failed}, slowest exit {max(exits, default=0):.1f} s "
          f"after the kill; the next session done in at most {max(served, default=0):.1f} s")
