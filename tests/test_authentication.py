"""Authentication: no port of any role serves a peer without a good certificate from the CA.

The issue's item: no listening port of any role (the MPC library's included) accepts a
peer without a certificate from the configured CA; expired certificates and certificates
whose name is not the expected peer's are refused, by servers and by clients.

The ports, by design (``relay.py``): a server listens on its public address (a
byte-counting relay) and on gRPC's own port on loopback behind it; a client reaches each
server through a relay of its own on loopback. A relay only copies bytes, so each of its
ports must lead to a TLS server that demands a certificate. CrypTen opens none: its
traffic rides the session (``MailboxCommunicator``).

A refused TLS client is told nothing by gRPC's server (it closes the connection after the
handshake), so the specific reason is read from the server's log, where gRPC's TLS stack
writes it; a refused certificate name is the server's own answer to the session's call.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import known_pair

import ppir_itk
from ppir_itk.compose import spawn_fixed_party
from ppir_itk.dealer import DealerServer
from ppir_itk.dealer_client import open_dealer
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.image import ImageGrid
from ppir_itk.phantoms import head_phantom
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import PROTOCOL_VERSION
from ppir_itk.protocol.tls import ROLES, TLS, issue_certificate
from ppir_itk.protocol.transport import PartyServer
from ppir_itk.registration import register_with

# HTTP/2's client preface: a gRPC server that accepted the client answers it with SETTINGS.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TLS_ALERT = 0x15  # the first byte of a TLS alert record
HELLO = pb.Hello(
    protocol_version=PROTOCOL_VERSION,
    backend="clear",
    levels=[pb.Level(shrink_factor=1)],
    sampling="none",
)


def _issue_test_certificates(directory: Path) -> Path:
    """Certificates from ``directory``'s CA that must be refused: expired, or misnamed."""
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    for role in ROLES:
        issue_certificate(directory, role, not_before=past, days=1, file_stem=f"expired-{role}")
    issue_certificate(directory, "intruder")
    return directory


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return _issue_test_certificates(ppir_itk.init_pki(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> Path:
    return ppir_itk.init_pki(tmp_path_factory.mktemp("other-pki"), ca_name="another CA")


# -- what a process listens on, and what answers there ----------------------------------------


def _address(field: str) -> tuple[str, int]:
    """A /proc/net address (``HEX_IP:HEX_PORT``, the IP in 32-bit host-order words)."""
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def _listening(pid: int) -> set[tuple[str, str, int]]:
    """``(protocol, host, port)`` of every socket where process ``pid`` takes peers: TCP in
    LISTEN, UDP bound without a peer, listening Unix sockets (``("unix", path, 0)``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, open_state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and fields[3] == open_state:
                found.add((table.rstrip("6"), *_address(fields[1])))
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[6] in inodes and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            found.add(("unix", fields[7] if len(fields) > 7 else "", 0))
    return found


def _tls_reply(port: int, ca: Path, client: Path | None = None) -> tuple[str, bytes]:
    """Handshake with the TLS server at 127.0.0.1:``port`` as ``client`` (a certificate's
    path, its key beside it; None: no certificate) and send HTTP/2's preface.

    Returns the name on the server's certificate and the server's first bytes: ``b""``
    when it closed the connection (it refused the client) or sent a TLS alert.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.check_hostname = False  # the caller checks the name read back
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client, client.with_suffix(".key"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as connection,
    ):
        subject = dict(item[0] for item in connection.getpeercert()["subject"])
        connection.sendall(PREFACE)
        try:
            reply = connection.recv(64)
        except (ssl.SSLError, ConnectionResetError):
            reply = b""
    return subject["commonName"], reply


def _plain_reply(port: int) -> bytes:
    """What the server at 127.0.0.1:``port`` answers to HTTP/2 without TLS."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(PREFACE)
        try:
            return raw.recv(64)
        except ConnectionResetError:
            return b""


class _Log:
    """A child process's stderr as it comes: its own lines and gRPC's handshake errors."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._fd = process.stderr.fileno()
        self.text = ""

    def read(self) -> str:
        while select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                break
            self.text += chunk.decode(errors="replace")
        return self.text

    def wait_for(self, pattern: str, since: int, timeout: float = 10.0) -> str:
        """The log after offset ``since``, once ``pattern`` is in it."""
        end = time.monotonic() + timeout
        while pattern not in (new := self.read()[since:]) and time.monotonic() < end:
            time.sleep(0.02)
        assert pattern in new, f"'{pattern}' is not in the log: {new!r}"
        return new


class _Server:
    """One of the local mode's serving processes, its public port and its log."""

    def __init__(self, role: str, process: subprocess.Popen, address: str) -> None:
        self.role, self.process = role, process
        self.name = {"fixed party": "fixed-party", "dealer": "dealer"}[role]
        self.public = int(address.rsplit(":", 1)[1])
        self.log = _Log(process)

    def port(self, kind: str) -> int:
        """The ``public`` port, or gRPC's own behind the relay."""
        ports = {port for _, _, port in _listening(self.process.pid)}
        assert self.public in ports and len(ports) == 2, ports
        return self.public if kind == "public" else (ports - {self.public}).pop()


def _session(server: str, address: str, tls: TLS, **options: str) -> None:
    """One whole session with the ``server`` (``fixed-party`` or ``dealer``) at ``address``
    as the holder of ``tls``; ``options`` go to ``connect`` or ``open_dealer``."""
    if server == "dealer":
        open_dealer(address, tls, os.urandom(16), deadline=10, **options).close()
    else:
        session = ppir_itk.connect(address, tls, deadline=10, **options)
        session.start(HELLO)
        session.close()


@pytest.fixture(scope="module")
def parties(tmp_path_factory) -> Iterator[dict]:
    """Local mode's ``ppir dealer`` and ``ppir serve`` (clear and spdz), and certificates
    from their CA (a copy of local mode's throw-away PKI: it keeps the CA's key)."""
    fixed = head_phantom((48, 44))
    with ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("GRPC_VERBOSITY", "INFO")  # the children log why a handshake failed
            running = stack.enter_context(spawn_fixed_party(fixed, backends=("clear", "spdz")))
        certificates = tmp_path_factory.mktemp("local") / "pki"
        shutil.copytree(running.directory / "pki", certificates)
        yield {
            "fixed": fixed,
            "certificates": _issue_test_certificates(certificates),
            "fixed party": _Server("fixed party", running.process, running.address),
            "dealer": _Server("dealer", running.dealer_process, running.dealer_address),
        }


# -- every port each role opens during a registration ------------------------------------------


def test_during_an_spdz_registration_every_port_of_every_role_is_a_tls_server_refusing_strangers(
    parties,
):
    """Moving party, fixed party and dealer as three processes: the ports each listens on
    while SPDZ runs are exactly its servers' (public and gRPC's own) and its relays to the
    servers it uses, each answered by that server's certificate, each refusing a client
    without one; nothing else (no port of CrypTen, PyTorch or gloo), at any iteration."""
    certificates = parties["certificates"]
    processes = {
        "moving party": os.getpid(),
        "fixed party": parties["fixed party"].process.pid,
        "dealer": parties["dealer"].process.pid,
    }
    before = _listening(os.getpid())  # this test process may hold other tests' servers
    views: list[dict[str, set]] = []
    answers: dict[tuple[str, int], tuple[str, bytes]] = {}

    def inspect(_method) -> None:
        view = {role: _listening(pid) for role, pid in processes.items()}
        view["moving party"] -= before
        views.append(view)
        if len(views) == 1:  # the tunnels exist only now: ask each port who answers there
            for role, sockets in view.items():
                for protocol, _, port in sockets:
                    try:
                        answers[role, port] = _tls_reply(port, certificates / "ca.pem")
                    except OSError as error:  # ssl.SSLError and timeouts too
                        answers[role, port] = (f"{protocol}: no TLS server ({error})", None)

    moving, _ = known_pair(parties["fixed"], "translation", [1.0, -0.5])
    session = ppir_itk.connect(
        f"127.0.0.1:{parties['fixed party'].public}",
        TLS.for_role(certificates, "moving-party"),
        dealer=f"127.0.0.1:{parties['dealer'].public}",
    )
    result = register_with(
        session,
        moving,
        backend="spdz",
        transform="translation",
        shrink_factors=[1],
        smoothing_sigmas=[0.0],
        iterations=3,
        observers={"IterationEvent": inspect},
    )
    assert result.iterations == len(views) > 1
    assert all(view == views[0] for view in views)
    servers_behind = {
        role: sorted(answers[role, port][0] for _, _, port in sockets)
        for role, sockets in views[0].items()
    }
    assert servers_behind == {
        "moving party": ["dealer", "fixed-party"],  # its relays to the two servers
        "fixed party": ["dealer", "fixed-party", "fixed-party"],  # + its relay to the dealer
        "dealer": ["dealer", "dealer"],
    }
    assert {(protocol, host) for view in views[0].values() for protocol, host, _ in view} == {
        ("tcp", "127.0.0.1")
    }
    assert parties["fixed party"].public in {port for _, _, port in views[0]["fixed party"]}
    assert parties["dealer"].public in {port for _, _, port in views[0]["dealer"]}
    assert {reply for _, reply in answers.values()} == {b""}  # no certificate: refused
    # The relays close with their sessions.
    assert _listening(os.getpid()) - before == set()


# -- each server port refuses each kind of stranger, and serves on -------------------------------

REFUSALS = {  # client -> what the server's TLS stack logs (None: refused by name, not by TLS)
    "plain TCP": "WRONG_VERSION_NUMBER",
    "no certificate": "PEER_DID_NOT_RETURN_A_CERTIFICATE",
    "another CA": "unable to get local issuer certificate",
    "expired": "certificate has expired",
    "named 'dealer'": None,  # a role of this CA that is not a client of either server
    "named 'intruder'": None,
}


@pytest.mark.parametrize("case", REFUSALS)
@pytest.mark.parametrize("port_kind", ["public", "gRPC's own"])
@pytest.mark.parametrize("role", ["fixed party", "dealer"])
def test_each_server_port_refuses_a_client_without_a_good_certificate_and_serves_on(
    role, port_kind, case, parties, other_pki
):
    """The fixed party's and the dealer's public port and gRPC's own port behind it: a
    client that does not speak TLS, has no certificate, has one from another CA, an
    expired one, or one naming someone the server does not serve gets no session, for
    the reason named; the server serves the next good client."""
    server, certificates = parties[role], parties["certificates"]
    port = server.port(port_kind)
    mark = len(server.log.read())
    if case == "plain TCP":
        reply = _plain_reply(port)
        assert reply == b"" or reply[0] == TLS_ALERT
    elif REFUSALS[case] is None:
        name = case.split("'")[1]
        with pytest.raises(
            ppir_itk.PeerError, match=f"certificate name '{name}' is not one of .*moving-party"
        ):
            _session(server.name, f"127.0.0.1:{port}", TLS.for_role(certificates, name))
    else:
        client = {
            "no certificate": None,
            "another CA": other_pki / "moving-party.pem",
            "expired": certificates / "expired-moving-party.pem",
        }[case]
        assert _tls_reply(port, certificates / "ca.pem", client) == (server.name, b"")
    if REFUSALS[case] is not None:
        server.log.wait_for(REFUSALS[case], since=mark)
    _session(server.name, f"127.0.0.1:{port}", TLS.for_role(certificates, "moving-party"))
    opened = re.findall(r"opened by (\S+)", server.log.wait_for("opened by", since=mark))
    assert opened == ["moving-party"]  # the good client's session, and no other


# -- clients refuse servers with bad certificates ------------------------------------------------

BAD_SERVERS = {  # the server's certificate -> the client's reason to refuse it
    "expired": "certificate has expired",
    "named as another role": "Hostname Verification Check failed",
    "from another CA": "unable to get local issuer certificate",
}
IMPOSTOR = {"fixed-party": "dealer", "dealer": "fixed-party"}  # server -> a role posing as it


def _start_server(server: str, tls: TLS, fixed: ImageGrid, log: list[str]) -> PartyServer:
    if server == "dealer":
        return DealerServer("127.0.0.1:0", tls, deadline=5, log=log.append).start()
    return FixedPartyServer(
        fixed,
        "127.0.0.1:0",
        tls,
        deadline=5,
        log=log.append,
        policy=ppir_itk.FixedPolicy(backends=("clear",)),
    ).start()


@pytest.mark.parametrize("kind", BAD_SERVERS)
@pytest.mark.parametrize(
    "client, server",
    [("moving-party", "fixed-party"), ("moving-party", "dealer"), ("fixed-party", "dealer")],
)
def test_a_client_refuses_a_server_with_a_bad_certificate(
    client, server, kind, pki, other_pki, phantom_2d
):
    """The moving party checks its fixed party, and both parties check their dealer: a
    server certificate that expired, names another role (e.g. the fixed party posing as the
    dealer to learn the moving party's masks) or comes from another CA is refused."""
    tls = {
        "expired": TLS.for_role(pki, f"expired-{server}"),
        "named as another role": TLS.for_role(pki, IMPOSTOR[server]),
        "from another CA": TLS.for_role(other_pki, server),
    }[kind]
    log: list[str] = []
    bad = _start_server(server, tls, phantom_2d, log)
    try:
        with pytest.raises(ppir_itk.PeerError, match=BAD_SERVERS[kind]):
            _session(server, bad.address, TLS.for_role(pki, client))
    finally:
        bad.stop(grace=None)
    assert not [line for line in log if "opened" in line]


def test_the_server_name_a_client_expects_is_the_name_it_checks(pki, phantom_2d):
    """``server_name`` (``--server-name``) chooses the certificate name the moving party
    accepts: a fixed party certified as ``fixed-party-b`` is refused under the default name
    and served when the client expects it."""
    issue_certificate(pki, "fixed-party-b")
    log: list[str] = []
    server = _start_server("fixed-party", TLS.for_role(pki, "fixed-party-b"), phantom_2d, log)
    try:
        moving_party = TLS.for_role(pki, "moving-party")
        with pytest.raises(ppir_itk.PeerError, match=BAD_SERVERS["named as another role"]):
            _session("fixed-party", server.address, moving_party)
        _session("fixed-party", server.address, moving_party, server_name="fixed-party-b")
    finally:
        server.stop(grace=None)
    opened = [line for line in log if "opened" in line]
    assert len(opened) == 1 and opened[0].startswith("session 1 opened by moving-party (sha256:")
