"""Hostile load on ``ppir serve`` and ``ppir dealer``: a plain TCP flood, then many sessions.

    python benchmarks/hostile_load.py [--flood 2000] [--sessions 100] [--limit 1024]

Local mode's ``ppir serve`` (clear and spdz) and ``ppir dealer`` start as their own
processes with ``--limit`` descriptors (the common default of 1,024). For each:

1. its descriptors and threads (``/proc/PID``) before, during and after ``--flood``
   plain TCP connections to its public port that send nothing and are held open, and
   how long a good client's session took, started while the flood is held (it fails
   when it takes longer than 30 s);
2. the fixed party's descriptors and resident memory before and after ``--sessions``
   clear registrations one after another (translation, 48 x 44 phantom, 2 iterations),
   after 3 to warm up.

The tests of ``tests/test_hostile_load.py`` assert the same with smaller numbers.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import threading
import time
import warnings
from pathlib import Path

import ppir_itk
from ppir_itk.backends import InsecureBackendWarning
from ppir_itk.compose import spawn_fixed_party
from ppir_itk.dealer_client import open_dealer
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import PROTOCOL_VERSION
from ppir_itk.registration import register_with
from ppir_itk.transforms import make_transform

HELLO = pb.Hello(
    protocol_version=PROTOCOL_VERSION,
    backend="clear",
    metric="meansquares",
    levels=[pb.Level(shrink_factor=1)],
    sampling="none",
)


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_kb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:", 1)[1].split()[0])


def quiet(pid: int) -> int:
    """The descriptor count once it has not changed for a second."""
    count, since = descriptors(pid), time.monotonic()
    while time.monotonic() - since < 1.0:
        time.sleep(0.1)
        if (now := descriptors(pid)) != count:
            count, since = now, time.monotonic()
    return count


def session(role: str, address: str, tls: ppir_itk.TLS) -> None:
    if role == "dealer":
        open_dealer(address, tls, os.urandom(16), deadline=30).close()
    else:
        remote = ppir_itk.connect(address, tls, deadline=30)
        remote.start(HELLO)
        remote.close()


def flood(role: str, pid: int, address: str, tls: ppir_itk.TLS, count: int) -> None:
    port = int(address.rsplit(":", 1)[1])
    session(role, address, tls)
    before = quiet(pid), threads(pid)
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        held.append(sock)
    time.sleep(0.5)
    during = descriptors(pid), threads(pid)
    outcome: list[str] = []

    def good_client() -> None:
        started = time.monotonic()
        try:
            session(role, address, tls)
            outcome.append(f"served in {time.monotonic() - started:.2f} s")
        except ppir_itk.PeerError as error:
            outcome.append(f"not served ({error})")

    client = threading.Thread(target=good_client, daemon=True)
    client.start()
    client.join(timeout=30)
    peak = max(during[0], descriptors(pid)), max(during[1], threads(pid))
    for sock in held:
        sock.close()
    client.join(timeout=30)
    end = time.monotonic() + 20
    while descriptors(pid) > before[0] and time.monotonic() < end:
        time.sleep(0.2)
    time.sleep(0.5)
    after = descriptors(pid), threads(pid)
    print(
        f"{role:12s} fds/threads before {before}, during {peak}, 20 s after at most {after}; "
        f"good client during the flood: {outcome[0] if outcome else 'no answer in 30 s'}"
    )


def sessions(address: str, tls: ppir_itk.TLS, pid: int, count: int) -> None:
    fixed = head_phantom((48, 44))
    truth = make_transform("translation", fixed.dimension)
    truth.parameters = [1.0, -0.5]
    moving = moved_copy(fixed, truth)

    def run(times: int) -> None:
        for _ in range(times):
            register_with(
                ppir_itk.connect(address, tls, deadline=30),
                moving,
                backend="clear",
                transform="translation",
                shrink_factors=[1],
                smoothing_sigmas=[0.0],
                iterations=2,
            )

    run(3)
    fds, rss = quiet(pid), rss_kb(pid)
    started = time.monotonic()
    run(count)
    took = time.monotonic() - started
    after_fds, after_rss = quiet(pid), rss_kb(pid)
    print(
        f"{count} sessions in {took:.1f} s: fixed party's fds {fds} -> {after_fds}, "
        f"RSS {rss} -> {after_rss} kB ({100 * (after_rss - rss) / rss:+.1f} %)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--limit", type=int, default=1024, help="the servers' RLIMIT_NOFILE")
    args = parser.parse_args()
    warnings.simplefilter("ignore", InsecureBackendWarning)  # clear is the cheap backend here
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.limit, hard))  # the children inherit it
    fixed = head_phantom((48, 44))
    with spawn_fixed_party(fixed, backends=("clear", "spdz")) as running:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, args.flood + 1024), hard))
        tls = running.client_tls
        assert running.dealer_process is not None and running.dealer_address is not None
        flood("fixed party", running.process.pid, running.address, tls, args.flood)
        flood("dealer", running.dealer_process.pid, running.dealer_address, tls, args.flood)
        if args.sessions:
            sessions(running.address, tls, running.process.pid, args.sessions)


if __name__ == "__main__":
    main()
