"""Private registration over an emulated hospital link: compute, transfer and round trips.

    python benchmarks/link.py [--pairs brain volume] [--backends he spdz]
        [--rate-mbit 100] [--delay-ms 10 20] [--data ../shared/data/brain-affine-pair]

Affine, mean squares, through the two-party runtime (``ppir serve``, and ``ppir dealer``
for spdz, as child processes, mutual TLS end to end). Two pairs: the paper's 2-D brain
pair (every pixel), and the MNI152 T1 volume at 2 mm (98 x 116 x 94) moved by a known
affine, with 10 % URS (nilearn's wheel, see benchmarks/multimodal_pairs.py). Each runs
first on loopback, then with a :class:`LinkEmulator` on every connection: moving ->
fixed, moving -> dealer and fixed -> dealer (the dealer is a third site). Each emulated
link has the same rate and one-way delay in both directions.

Columns of the table:

- ``wall s``: the moving party's wall time from opening the session to its report;
- ``iters``: optimizer iterations over all levels;
- ``trips``: request/answer exchanges of the moving party with the fixed party (its
  report's ``messages_sent``: every request waits for its answer);
- ``dealer``: requests both parties made to the dealer (the dealer's ``messages_received``);
- ``MB out`` / ``MB in``: bytes the moving party sent to / received from the fixed party on
  the wire (TLS included); ``MB dealer``: bytes on both parties' links with the dealer;
- ``compute s``: the parties' own busy seconds: the moving party's CPU seconds (this
  process, gRPC's threads included; its report's ``seconds`` is wall time, waiting
  included), plus the fixed party's and the dealer's ``seconds`` from the run report (the
  time they spent answering). The parties mostly take turns, so the sum is the serial
  compute of the session;
- ``transfer s``: (MB out + MB in + MB dealer) x 8 / rate: the time to push every byte
  through one link at full rate (the three links are apart, so an upper bound);
- ``trips s``: (trips + dealer) x round-trip time (2 x one-way delay).

Loopback rows give the transfer and trips columns as 0; the split of an emulated row is a
model (the three columns need not add up to the wall time: transfers and trips overlap,
and gRPC/TCP add their own slow-start and framing).
"""

from __future__ import annotations

import argparse
import heapq
import socket
import tempfile
import threading
import time
import warnings
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppir_itk.compose import _child, connect, spawn_fixed_party
from ppir_itk.metric_kinds import MEAN_SQUARES
from ppir_itk.phantoms import moved_copy
from ppir_itk.protocol.tls import init_pki
from ppir_itk.registration import register_with
from ppir_itk.roles import DEALER
from ppir_itk.wrapping.images import as_image_grid

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-affine-pair"
_CHUNK = 1 << 16


class _Direction(threading.Thread):
    """One direction of a link: read from ``source``, hold each chunk until it has been
    serialised at ``rate`` (after the chunks before it) and travelled ``delay``, then write
    it to ``target``. The link's queue is unbounded: the sender never waits for the link,
    as over a long fat pipe with large socket buffers."""

    def __init__(
        self, source: socket.socket, target: socket.socket, rate: float, delay: float
    ) -> None:
        super().__init__(daemon=True)
        self.source, self.target = source, target
        self.seconds_per_byte = 8.0 / rate
        self.delay = delay
        self.line_free_at = 0.0  # when the last queued byte has left the sender's end
        self.queue: list[tuple[float, int, bytes]] = []
        self.arrived = threading.Condition()
        self.closed = False
        self.writer = threading.Thread(target=self._deliver, daemon=True)

    def run(self) -> None:
        self.writer.start()
        sequence = 0
        try:
            while data := self.source.recv(_CHUNK):
                now = time.monotonic()
                self.line_free_at = max(now, self.line_free_at) + len(data) * self.seconds_per_byte
                with self.arrived:
                    heapq.heappush(self.queue, (self.line_free_at + self.delay, sequence, data))
                    sequence += 1
                    self.arrived.notify()
        except OSError:
            pass
        with self.arrived:
            self.closed = True
            self.arrived.notify()
        self.writer.join()

    def _deliver(self) -> None:
        try:
            while True:
                with self.arrived:
                    while not self.queue and not self.closed:
                        self.arrived.wait()
                    if not self.queue:
                        break
                    due, _, data = self.queue[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        self.arrived.wait(wait)
                        continue
                    heapq.heappop(self.queue)
                self.target.sendall(data)
            self.target.shutdown(socket.SHUT_WR)
        except OSError:
            self.source.close()


class LinkEmulator:
    """A TCP forwarder on 127.0.0.1 that gives every connection to ``upstream`` a link of
    ``rate`` bit/s and ``delay`` s one way, in each direction (it only copies bytes: TLS
    runs end to end through it). ``address`` is where to connect instead of ``upstream``."""

    def __init__(self, upstream: str, rate: float, delay: float) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate, self.delay = rate, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream)
                for sock in (client, server):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sockets += [client, server]
                _Direction(client, server, self.rate, self.delay).start()
                _Direction(server, client, self.rate, self.delay).start()
        except OSError:
            pass  # the listener was closed

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@dataclass(frozen=True)
class Link:
    """The emulated link between every two sites (rate 0: loopback, no emulator)."""

    rate: float  # bit/s
    delay: float  # s, one way

    @property
    def name(self) -> str:
        if not self.rate:
            return "loopback"
        return f"{self.rate / 1e6:g} Mbit/s, {self.delay * 1e3:g} ms"


def open_session(fixed: Any, backend: str, link: Link, stack: ExitStack) -> Any:
    """A moving party's session with a fixed party (and a dealer, for spdz) in child
    processes that live as long as ``stack``, every connection through ``link``."""

    def through(address: str) -> str:
        if not link.rate:
            return address
        return stack.enter_context(closing(LinkEmulator(address, link.rate, link.delay))).address

    extra: tuple[str, ...] = ()
    dealer = None
    pki = None
    if backend == "spdz":
        # The dealer is spawned here (not by spawn_fixed_party) so that the fixed party can be
        # told an emulated address for it; the later --backends/--dealer override the defaults.
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="ppir-link-"))
        pki = init_pki(Path(folder) / "pki")
        _, dealer, _ = stack.enter_context(
            _child(
                ["dealer", "--tls-dir", str(pki / DEALER), "--listen", "127.0.0.1:0"],
                "dealer",
                60.0,
            )
        )
        extra = ("--backends", "spdz", "--dealer", through(dealer))
    fixed_party = stack.enter_context(
        spawn_fixed_party(fixed, backends=("clear", "he"), extra_arguments=extra, pki=pki)
    )
    return connect(
        through(fixed_party.address),
        fixed_party.client_tls,
        dealer=through(dealer) if dealer else None,
    )


def run(fixed: Any, moving: Any, backend: str, link: Link, options: dict) -> dict[str, Any]:
    """One registration over ``link``; its row of the table."""
    with ExitStack() as stack:
        session = open_session(fixed, backend, link, stack)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = register_with(session, moving, backend=backend, **options)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    report = result.parties
    moving_party, fixed_party = report["moving"], report["fixed"]
    # The dealer's figures are its own, summed over its links with both parties.
    dealer = report.get("dealer", {})
    out, into = moving_party["bytes_sent"], moving_party["bytes_received"]
    dealer_bytes = dealer.get("bytes_sent", 0) + dealer.get("bytes_received", 0)
    trips = moving_party["messages_sent"]
    dealer_trips = dealer.get("messages_received", 0)
    return dict(
        backend=backend,
        link=link.name,
        wall=wall,
        iterations=result.iterations,
        trips=trips,
        dealer_trips=dealer_trips,
        out=out,
        into=into,
        dealer_bytes=dealer_bytes,
        compute=cpu + fixed_party["seconds"] + dealer.get("seconds", 0.0),
        transfer=(out + into + dealer_bytes) * 8 / link.rate if link.rate else 0.0,
        trip_seconds=(trips + dealer_trips) * 2 * link.delay,
        report=report,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", nargs="+", default=["brain"], choices=["brain", "volume"])
    parser.add_argument("--backends", nargs="+", default=["he", "spdz"])
    parser.add_argument("--rate-mbit", type=float, default=100.0, help="each link, each way")
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[10.0], help="one way")
    parser.add_argument("--no-loopback", action="store_true")
    parser.add_argument("--show-report", action="store_true", help="print the parties' report")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    links = [] if args.no_loopback else [Link(0.0, 0.0)]
    links += [Link(args.rate_mbit * 1e6, delay / 1e3) for delay in args.delay_ms]
    brain = _pair("brain", args.data)
    # This process's first session pays one-off costs (gRPC's start, lazy imports): not timed.
    run(
        brain[0],
        brain[1],
        "clear",
        Link(0.0, 0.0),
        {**brain[2], "shrink_factors": [8], "smoothing_sigmas": [4.0]},
    )
    print(
        f"{'pair':6} {'backend':7} {'link':22} {'wall s':>7} {'iters':>5} {'trips':>5} "
        f"{'dealer':>6} {'MB out':>7} {'MB in':>7} {'MB dealer':>9} {'compute s':>9} "
        f"{'transfer s':>10} {'trips s':>7}"
    )
    for pair in args.pairs:
        fixed, moving, options = _pair(pair, args.data)
        for backend in args.backends:
            for link in links:
                row = run(fixed, moving, backend, link, options)
                print(
                    f"{pair:6} {backend:7} {row['link']:22} {row['wall']:7.1f} "
                    f"{row['iterations']:5d} {row['trips']:5d} {row['dealer_trips']:6d} "
                    f"{row['out'] / 1e6:7.1f} {row['into'] / 1e6:7.1f} "
                    f"{row['dealer_bytes'] / 1e6:9.1f} {row['compute']:9.1f} "
                    f"{row['transfer']:10.1f} {row['trip_seconds']:7.1f}",
                    flush=True,
                )
                if args.show_report:
                    print(row["report"])


def _pair(name: str, data: Path) -> tuple[Any, Any, dict]:
    """The fixed and moving images and the registration options of a pair."""
    options: dict[str, Any] = dict(
        transform="affine",
        metric=MEAN_SQUARES,
        shrink_factors=[8, 4, 2, 1],
        smoothing_sigmas=[4.0, 2.0, 1.0, 0.0],
        threads=1,
        seed=0,
    )
    if name == "brain":
        fixed = as_image_grid(data / "template.png", name="template")
        moving = as_image_grid(data / "moving.png", name="moving")
        return fixed, moving, options
    # Mean squares needs one modality: the T1 volume moved by the pair's known affine.
    from multimodal_pairs import volume_pair

    pair = volume_pair()
    options.update(
        sampling="urs",
        sampling_fraction=0.1,
        shrink_factors=[4, 2, 1],
        smoothing_sigmas=[2.0, 1.0, 0.0],
    )
    return pair.fixed, moved_copy(pair.fixed, pair.truth), options


if __name__ == "__main__":
    main()
