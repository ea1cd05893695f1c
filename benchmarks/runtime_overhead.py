"""The two-party runtime's own cost, and its accounting against the kernel's socket counters.

    python benchmarks/runtime_overhead.py [--data ../shared/data/brain-affine-pair] [--repeats 3]

Clear backend, affine, on the paper's 2-D brain pair, in one run:

1. per-iteration wall time with the fixed party in-process (same messages,
   no socket) and over the wire (``ppir serve`` as a separate process, gRPC
   with mutual TLS on loopback), best of ``--repeats``; the ratio;
2. local mode's start-up: from spawning ``ppir serve`` to its accepting
   connections, reported apart from the registration time;
3. the bytes the moving party's report gives for the session against what the
   kernel counted on that TCP socket (``ss -tin``: ``bytes_acked`` sent,
   ``bytes_received``), polled while the session runs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import threading
import time
import warnings
from pathlib import Path

import ppir_itk
from ppir_itk.compose import in_process_session, spawn_fixed_party
from ppir_itk.protocol.session import RemoteSession
from ppir_itk.registration import register_with
from ppir_itk.wrapping.images import as_image_grid

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-affine-pair"
# One kernel thread: on a 2-core machine the second core belongs to the fixed party's process.
OPTIONS = dict(
    transform="affine",
    shrink_factors=[8, 4, 2, 1],
    smoothing_sigmas=[4.0, 2.0, 1.0, 0.0],
    threads=1,
)


def per_iteration(result: ppir_itk.RegistrationResult) -> tuple[float, float]:
    """Seconds per iteration: all of each level (set-up included), and the iterations alone."""
    total = sum(level.seconds for level in result.levels)
    setup = sum(level.setup_seconds for level in result.levels)
    return total / result.iterations, (total - setup) / result.iterations


class SocketCounters(threading.Thread):
    """Polls the kernel's counters of the TCP connection to ``port`` (last values win)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.sent = self.received = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            text = subprocess.run(
                ["ss", "-tinH", "dst", f"127.0.0.1:{self.port}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            acked = re.search(r"bytes_acked:(\d+)", text)
            received = re.search(r"bytes_received:(\d+)", text)
            if acked:
                self.sent = max(self.sent, int(acked.group(1)))
            if received:
                self.received = max(self.received, int(received.group(1)))
            time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    fixed = as_image_grid(args.data / "template.png", name="template")
    moving = as_image_grid(args.data / "moving.png", name="moving")

    local_times, wire_times, startups = [], [], []
    iterations = None
    for _ in range(args.repeats):
        local = register_with(in_process_session(fixed), moving, **OPTIONS)
        local_times.append(per_iteration(local))
        with spawn_fixed_party(fixed) as fixed_party:
            startups.append(fixed_party.startup_seconds)
            remote = register_with(
                RemoteSession(fixed_party.address, fixed_party.client_tls), moving, **OPTIONS
            )
        wire_times.append(per_iteration(remote))
        iterations = (local.iterations, remote.iterations)

    # One more run for the byte count, with the socket poller (kept out of the timings).
    with spawn_fixed_party(fixed) as fixed_party:
        counters = SocketCounters(int(fixed_party.address.rsplit(":", 1)[1]))
        counters.start()
        remote = register_with(
            RemoteSession(fixed_party.address, fixed_party.client_tls), moving, **OPTIONS
        )
        counters.running = False
        counters.join()

    print(f"iterations in-process / over the wire: {iterations[0]} / {iterations[1]}")
    for index, what in enumerate(("levels' set-up included", "iterations alone")):
        best_local = min(times[index] for times in local_times)
        best_wire = min(times[index] for times in wire_times)
        print(
            f"per-iteration wall time ({what}), best of {args.repeats}: in-process "
            f"{best_local * 1e3:.3f} ms, over the wire {best_wire * 1e3:.3f} ms, "
            f"ratio {best_wire / best_local:.2f} (target <= 2)"
        )
    print(
        f"local mode start-up (fixed party accepting): {min(startups):.2f} s best, "
        f"{max(startups):.2f} s worst  (target < 5 s)"
    )
    moving_party = remote.parties["moving"]
    for name, ours, kernel in (
        ("sent", moving_party["wire_bytes_sent"], counters.sent),
        ("received", moving_party["wire_bytes_received"], counters.received),
    ):
        print(
            f"moving party bytes {name:8}: report {ours} (payload "
            f"{moving_party['payload_bytes_' + name]}), kernel socket {kernel}, "
            f"difference {abs(ours - kernel) / max(kernel, 1):.2%}"
        )


if __name__ == "__main__":
    main()
