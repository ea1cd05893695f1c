"""Hostile load on the listening ports: floods, leaks, old TLS, strangers on local ports.

``ppir serve`` and ``ppir dealer`` run as their own processes (local mode's), each
behind its byte-counting relay (``ppir_itk/protocol/relay.py``). Plain TCP floods must
not keep a good client out nor leave descriptors behind; sessions one after another
must leave the fixed party's descriptors and memory where they were; only TLS 1.3 is
served; the moving party's own relay serves its own process only.
"""

from __future__ import annotations

import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import known_pair
from processes import descriptors, settled_descriptors, status_bytes, threads

import ppir_itk
from ppir_itk.compose import spawn_fixed_party
from ppir_itk.dealer_client import open_dealer
from ppir_itk.phantoms import head_phantom
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import PROTOCOL_VERSION
from ppir_itk.protocol.tls import CA_CERTIFICATE, CERTIFICATE, PRIVATE_KEY, TLS, init_pki
from ppir_itk.registration import register_with
from ppir_itk.roles import MOVING_PARTY

HELLO = pb.Hello(
    protocol_version=PROTOCOL_VERSION,
    backend="clear",
    metric="meansquares",
    levels=[pb.Level(shrink_factor=1)],
    sampling="none",
)
FLOOD = 2000  # plain TCP connections, opened and held
SERVED_AFTER_FLOOD = 5.0  # seconds a good client may wait once the flood ends


@pytest.fixture(scope="module")
def parties(tmp_path_factory) -> Iterator[dict]:
    """Local mode's ``ppir serve`` (clear and spdz) and ``ppir dealer``, and a copy of
    their PKI (the moving party's certificate)."""
    fixed = head_phantom((48, 44))
    with ExitStack() as stack:
        certificates = init_pki(tmp_path_factory.mktemp("local") / "pki")
        running = stack.enter_context(
            spawn_fixed_party(fixed, backends=("clear", "spdz"), pki=certificates)
        )
        yield {
            "fixed": fixed,
            "tls": TLS.for_role(certificates, MOVING_PARTY),
            "bundle": certificates / MOVING_PARTY,
            "fixed party": (running.process.pid, running.address),
            "dealer": (running.dealer_process.pid, running.dealer_address),
        }


def _session(role: str, address: str, tls: TLS) -> None:
    """One whole (short) session with the fixed party or the dealer."""
    if role == "dealer":
        open_dealer(address, tls, os.urandom(16), deadline=10).close()
    else:
        session = ppir_itk.connect(address, tls, deadline=10)
        session.start(HELLO)
        session.close()


def _settles_at(pid: int, baseline: int, timeout: float = 15.0) -> int:
    """The process's descriptor count once it is back at ``baseline`` (or at the timeout)."""
    end = time.monotonic() + timeout
    while (count := descriptors(pid)) != baseline and time.monotonic() < end:
        time.sleep(0.2)
    return count


def _flood(port: int, count: int) -> list[socket.socket]:
    """``count`` plain TCP connections to 127.0.0.1:``port`` that send nothing, held open
    by the caller (the server closes them when it sees fit)."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        held.append(sock)
    return held


@pytest.fixture(scope="module", autouse=True)
def _room_for_a_flood(parties) -> Iterator[None]:
    """This process may hold the flood's descriptors; the servers, started first, keep the
    limit they were given."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, FLOOD + 1024)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- floods ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["fixed party", "dealer"])
def test_a_flood_of_plain_connections_keeps_no_client_out_and_leaves_no_descriptor(
    role, parties, capsys
):
    """2,000 plain TCP connections held open against the public port: a good client's
    session is served during the flood (or within 5 s after it), and the server's
    descriptors come back to what they were."""
    pid, address = parties[role]
    port = int(address.rsplit(":", 1)[1])
    _session(role, address, parties["tls"])  # everything a session opens once is open
    before = settled_descriptors(pid), threads(pid)
    held = _flood(port, FLOOD)
    served: list[float] = []  # when the good client's session ended

    def good_client() -> None:
        _session(role, address, parties["tls"])
        served.append(time.monotonic())

    try:
        time.sleep(0.5)  # the server sees the flood
        during = descriptors(pid), threads(pid)
        started = time.monotonic()
        client = threading.Thread(target=good_client, daemon=True)
        client.start()
        client.join(timeout=10)
        served_in_flood = bool(served)
    finally:
        for sock in held:
            sock.close()
        flood_ended = time.monotonic()
    client.join(timeout=SERVED_AFTER_FLOOD)
    assert served, "the good client was not served within 5 s of the flood's end"
    assert served_in_flood or served[0] - flood_ended <= SERVED_AFTER_FLOOD
    after = _settles_at(pid, before[0]), threads(pid)
    with capsys.disabled():
        print(
            f"\n{role}: fds/threads before {before}, during {during}, after {after}; "
            f"served {'during' if served_in_flood else 'after'} the flood, "
            f"in {served[0] - started:.2f} s"
        )
    assert after[0] == before[0]
    # Bounded: 256 waiting for their first bytes, and two sockets for each of the dealer's
    # (the larger) 4 x 8 + 28 forwarded connections.
    assert during[0] <= before[0] + 256 + 2 * 60


# -- sessions one after another ---------------------------------------------------------------


def _registrations(parties: dict, count: int) -> None:
    _, address = parties["fixed party"]
    moving, _ = known_pair(parties["fixed"], "translation", [1.0, -0.5])
    for _ in range(count):
        register_with(
            ppir_itk.connect(address, parties["tls"], deadline=10),
            moving,
            backend="clear",
            transform="translation",
            shrink_factors=[1],
            smoothing_sigmas=[0.0],
            iterations=2,
        )


def test_a_hundred_sessions_leave_descriptors_and_memory_as_they_were(parties, capsys):
    """100 registrations one after another (clear, a few seconds in all) leave the fixed
    party's descriptor count where it was and its resident memory within 5 %."""
    pid, _ = parties["fixed party"]
    _registrations(parties, 3)  # caches, pools and the allocator's arenas fill once
    fds, rss = settled_descriptors(pid), status_bytes(pid, "VmRSS") // 1024
    started = time.monotonic()
    _registrations(parties, 100)
    after_fds, after_rss = _settles_at(pid, fds), status_bytes(pid, "VmRSS") // 1024
    with capsys.disabled():
        print(
            f"\n100 sessions in {time.monotonic() - started:.1f} s: fixed party's fds "
            f"{fds} -> {after_fds}, RSS {rss} -> {after_rss} kB"
        )
    assert after_fds == fds
    assert abs(after_rss - rss) <= 0.05 * rss


# -- TLS versions ------------------------------------------------------------------------------


def _handshake(port: int, parties: dict, maximum: ssl.TLSVersion) -> str:
    """The TLS version a handshake with the server at ``port`` agreed (a client capped at
    ``maximum``, with the moving party's certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bundle = parties["bundle"]
    context.load_verify_locations(bundle / CA_CERTIFICATE)
    context.check_hostname = False
    context.maximum_version = maximum
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(bundle / CERTIFICATE, bundle / PRIVATE_KEY)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as connection,
    ):
        return str(connection.version())


@pytest.mark.parametrize("role", ["fixed party", "dealer"])
def test_only_tls_1_3_is_served(role, parties):
    """A client that offers TLS 1.2 at most is refused before its hello reaches gRPC; a
    TLS 1.3 client completes the handshake."""
    _, address = parties[role]
    port = int(address.rsplit(":", 1)[1])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(port, parties, ssl.TLSVersion.TLSv1_2)
    assert _handshake(port, parties, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


# -- the moving party's own relay --------------------------------------------------------------


def _client_relays() -> set[str]:
    """Names of the abstract Unix sockets this process listens on for its gRPC clients."""
    inodes = {
        os.readlink(f"/proc/self/fd/{fd}")[8:-1]
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
        and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:[")
    }
    names = set()
    for line in Path("/proc/self/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[6] in inodes and int(fields[3], 16) & 0x10000:
            if fields[7].startswith("@ppir-client-"):
                names.add(fields[7][1:])
    return names


REACH_RELAY = """
import socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.settimeout(5)
    sock.connect("\\0" + sys.argv[1])
    try:
        sock.sendall(bytes.fromhex(sys.argv[2]))
        print(len(sock.recv(1 << 16)))
    except (BrokenPipeError, ConnectionResetError):  # closed on at once
        print(0)
"""


def test_the_moving_partys_relay_serves_no_other_process(parties):
    """Another local process that connects to the moving party's relay and sends a
    ClientHello is closed on without an answer; the moving party's session goes on."""
    _, address = parties["fixed party"]
    before = _client_relays()
    session = ppir_itk.connect(address, parties["tls"], deadline=10)
    try:
        session.start(HELLO)
        (relay,) = _client_relays() - before
        hello = _client_hello()
        stranger = subprocess.run(
            [sys.executable, "-c", REACH_RELAY, relay, hello.hex()],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert stranger.stdout.strip() == "0", stranger.stdout + stranger.stderr  # no answer
    finally:
        session.close()
    _session("fixed party", address, parties["tls"])


def _client_hello() -> bytes:
    """A real TLS 1.3 ClientHello, as Python's ssl sends it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="fixed-party")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# -- the accept loop ---------------------------------------------------------------------------

RELAY_OUT_OF_DESCRIPTORS = """
import resource, socket, sys, threading
from ppir_itk.protocol.relay import Relay

echo = socket.create_server(("127.0.0.1", 0))
def answer(connection):
    with connection:
        while data := connection.recv(1 << 16):
            connection.sendall(data)
def serve():
    while True:
        threading.Thread(target=answer, args=(echo.accept()[0],), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
relay = Relay(("127.0.0.1", 0), echo.getsockname(), outbound=True, handshake_timeout=2)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
print(relay.address[1], flush=True)
for _ in sys.stdin:
    total = relay.total()
    print(total.sent, total.received, *relay.connection_counts(), flush=True)
"""


def test_the_relay_accepts_on_after_running_out_ofdescriptors(tmp_path):
    """A relay in a process allowed 64 descriptors, flooded with 200 silent connections,
    runs out of descriptors (accept fails with EMFILE); once the flood is gone it forwards
    the next client and counts exactly that client's bytes."""
    relay = subprocess.Popen(
        [sys.executable, "-c", RELAY_OUT_OF_DESCRIPTORS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        port = int(relay.stdout.readline())
        held = _flood(port, 200)
        time.sleep(1.0)  # it accepts until no descriptor is left, then backs off
        for sock in held:
            sock.close()
        message = os.urandom(5000)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(message)
            echoed = b""
            while len(echoed) < len(message):
                chunk = client.recv(1 << 16)
                assert chunk, "the relay closed the connection"
                echoed += chunk
        assert echoed == message
        time.sleep(0.3)  # the relay sees the client's end
        relay.stdin.write("\n")
        relay.stdin.flush()
        assert relay.stdout.readline().split() == ["5000", "5000", "0", "0"]
    finally:
        relay.kill()
        relay.wait()
