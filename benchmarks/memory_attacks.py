"""What an authenticated peer makes ``ppir serve`` and ``ppir dealer`` hold, and keep.

    python benchmarks/memory_attacks.py fixed [--declared 96] [--rounds 5] [--cap]
    python benchmarks/memory_attacks.py dealer [--values 33554432] [--pending 8] [--tokens 2]

``fixed``: a moving party (its certificate, a raw gRPC stream) declares a message of
``--declared`` MiB, sends all of it but 4 MiB, and drops; ``--rounds`` times. ``--cap``
also starts the server with ``--max-message-bytes`` of the declared size (servers
before that option have none: leave it out). ``dealer``: for each of ``--tokens``
tokens, the fixed party asks two masks of ``--values`` ring elements, the moving party
``--pending`` triple batches ahead, and the fixed party takes the first, each while the
dealer's caps allow (its defaults). Both print the server's RSS (``/proc/PID/status``)
before, during (the attack at its height), at its peak (VmHWM) and 3 s after the peer
has gone. The servers run from whatever ``ppir_itk`` is on PYTHONPATH, so the same
command measures another checkout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

import ppir_itk
from ppir_itk.dealer_client import open_dealer
from ppir_itk.phantoms import head_phantom
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import FIXED_PARTY_SERVICE, FRAME_BYTES
from ppir_itk.wrapping.images import write_image

MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["fixed", "dealer"])
    parser.add_argument("--declared", type=int, default=96, help="MiB per message")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cap", action="store_true")
    parser.add_argument("--values", type=int, default=1 << 25)
    parser.add_argument("--pending", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        ppir_itk.init_pki(folder / "pki")
        if args.target == "fixed":
            _fixed(folder, args)
        else:
            _dealer(folder, args)


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def _start(folder: Path, arguments: list[str], role: str) -> tuple[subprocess.Popen, str, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "ppir_itk.cli", *arguments, "--tls-dir", str(folder / "pki" / role)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=folder,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    while "listening on" not in line:
        assert line, "the server did not start"
        line = process.stderr.readline()
    time.sleep(2)  # start-up allocations settle
    return process, line.split("listening on", 1)[1].strip(), _rss(process.pid)


def _report(label: str, baseline: int, during: int, peak: int, after: int) -> None:
    print(
        f"{label}: baseline {baseline // MIB} MiB, during {during // MIB}, "
        f"peak {peak // MIB}, after {after // MIB}",
        flush=True,
    )


def _fixed(folder: Path, args: argparse.Namespace) -> None:
    write_image(head_phantom((64, 64)), folder / "fixed.nrrd")
    declared = args.declared * MIB
    arguments = ["serve", "--fixed", str(folder / "fixed.nrrd"), "--listen", "127.0.0.1:0"]
    arguments += ["--backends", "clear", "--ledger", str(folder / "ledger.sqlite")]
    if args.cap:
        arguments += ["--max-message-bytes", str(declared)]
    server, address, baseline = _start(folder, arguments, "fixed-party")
    tls = ppir_itk.TLS.for_role(folder / "pki", "moving-party")
    data = os.urandom(FRAME_BYTES)
    sent = declared // FRAME_BYTES - 4
    try:
        for number in range(args.rounds):
            channel = grpc.secure_channel(
                address,
                grpc.ssl_channel_credentials(tls.ca, tls.key, tls.certificate),
                options=[("grpc.ssl_target_name_override", "fixed-party")],
            )
            stop = [False]

            def frames(stop: list[bool] = stop) -> Iterator[bytes]:
                for _ in range(sent):
                    chunk = pb.Chunk(total_size=declared - 1, data=data, last=False)
                    yield pb.Frame(chunk=chunk).SerializeToString()
                while not stop[0]:
                    time.sleep(0.05)

            call = channel.stream_stream(
                f"/{FIXED_PARTY_SERVICE}/Session",
                request_serializer=lambda raw: raw,
                response_deserializer=pb.Frame.FromString,
            )(frames(), timeout=120)
            end = time.monotonic() + 60
            while _rss(server.pid) < baseline + sent * FRAME_BYTES * 9 // 10:
                if time.monotonic() > end:
                    break
                time.sleep(0.05)
            during = _rss(server.pid)
            call.cancel()
            stop[0] = True
            channel.close()
            time.sleep(3)
            _report(
                f"fixed party, round {number}",
                baseline,
                during,
                _rss(server.pid, "VmHWM"),
                _rss(server.pid),
            )
    finally:
        server.terminate()
        server.wait()


def _dealer(folder: Path, args: argparse.Namespace) -> None:
    server, address, baseline = _start(
        folder, ["dealer", "--listen", "127.0.0.1:0", "--deadline", "60"], "dealer"
    )
    sessions, refusals = [], []
    try:
        for _ in range(args.tokens):
            token = os.urandom(16)
            fixed, moving = (
                open_dealer(
                    address, ppir_itk.TLS.for_role(folder / "pki", role), token, deadline=60
                ).session
                for role in ("fixed-party", "moving-party")
            )
            sessions += [fixed, moving]
            triples = [
                pb.Envelope(
                    triple_request=pb.TripleRequest(
                        sequence=sequence, count=args.values, mask_sequence=1, mask_rows=[0]
                    )
                )
                for sequence in range(args.pending)
            ]
            try:
                for sequence in (0, 1):
                    mask = pb.MaskRequest(sequence=sequence, rows=1, count=args.values)
                    fixed.request(pb.Envelope(mask_request=mask), "masks")
                for request in triples:
                    moving.request(request, "triples")
                fixed.request(triples[0], "triples")
            except ppir_itk.PeerError as error:
                refusals.append(str(error))
        during, peak = _rss(server.pid), _rss(server.pid, "VmHWM")
        for session in sessions:
            session.abort("done")
        time.sleep(3)
        _report("dealer", baseline, during, peak, _rss(server.pid))
        for refusal in refusals:
            print(f"  refused: {refusal}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
