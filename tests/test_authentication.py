"""Authentication: no port of any role serves a peer without a good certificate from the CA.

The issue's item: no listening port of any role (the MPC library's included) accepts a
peer without a certificate from the configured CA; expired certificates and certificates
whose name is not the expected peer's are refused, by servers and by clients.

The ports, by design (``relay.py``): a server listens on its public address (a
byte-counting relay that forwards TLS 1.3 ClientHellos only) and on gRPC's own abstract Unix
socket behind it (the tests reach that one through a relay of their own); a client reaches
each server through a relay of its own on an abstract Unix socket. A relay only copies
bytes, so each of its ports must lead to a TLS server that demands a certificate. CrypTen
opens none: its traffic rides the session (``MailboxCommunicator``).

A refused TLS client is told nothing by gRPC's server (it closes the connection after the
handshake), so the specific reason is read from the server's log, where gRPC's TLS stack
writes it; a refused certificate name is the server's own answer to the session's call.
"""

from __future__ import annotations

import datetime
import inspect
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import known_pair

import ppir_itk
from ppir_itk.cli import main
from ppir_itk.compose import ChildLog, spawn_fixed_party
from ppir_itk.dealer import DealerServer
from ppir_itk.dealer_client import open_dealer
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.image import ImageGrid
from ppir_itk.phantoms import head_phantom
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import PROTOCOL_VERSION
from ppir_itk.protocol.relay import Relay
from ppir_itk.protocol.tls import (
    CA_CERTIFICATE,
    CA_FOLDER,
    CA_PRIVATE_KEY,
    CERTIFICATE,
    PRIVATE_KEY,
    ROLES,
    TLS,
    init_pki,
    issue_certificate,
)
from ppir_itk.protocol.transport import PartyServer
from ppir_itk.registration import register_with
from ppir_itk.wrapping.images import write_image

# HTTP/2's client preface: a gRPC server that accepted the client answers it with SETTINGS.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TLS_ALERT = 0x15  # the first byte of a TLS alert record
HELLO = pb.Hello(
    protocol_version=PROTOCOL_VERSION,
    backend="clear",
    metric="meansquares",
    levels=[pb.Level(shrink_factor=1)],
    sampling="none",
)


def _issue_test_certificates(pki: Path) -> Path:
    """Bundles from the CA of the pki root ``pki`` that must be refused: expired, misnamed,
    or old-style (an older ppir's certificates: ``localhost`` and ``127.0.0.1`` too)."""
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    for role in ROLES:
        issue_certificate(
            pki / CA_FOLDER, role, bundle=pki / f"expired-{role}", not_before=past, days=1
        )
        _certificate(pki, f"old-style-{role}", role, [role, "localhost", "127.0.0.1"])
    issue_certificate(pki / CA_FOLDER, "intruder")
    return pki


def _certificate(
    pki: Path, bundle: str, common_name: str, alternative_names: list[str] | None
) -> Path:
    """A bundle ``pki/bundle`` whose certificate, from ``pki``'s CA, carries any names
    (``alternative_names``: DNS names and addresses; None: no such extension), as another
    CA's tooling or an older ppir may issue; ``issue_certificate`` names a role only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_pem = (pki / CA_FOLDER / CA_CERTIFICATE).read_bytes()
    ca_key = serialization.load_pem_private_key(
        (pki / CA_FOLDER / CA_PRIVATE_KEY).read_bytes(), password=None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(x509.load_pem_x509_certificate(ca_pem).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if alternative_names is not None:
        entries: list[x509.GeneralName] = []
        for name in alternative_names:
            try:
                entries.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                entries.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    folder = pki / bundle
    folder.mkdir()
    certificate = builder.sign(ca_key, hashes.SHA256())
    (folder / CERTIFICATE).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / PRIVATE_KEY).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / CA_CERTIFICATE).write_bytes(ca_pem)
    return folder


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


def _connect(where: int | str) -> socket.socket:
    """A connection to 127.0.0.1:``where``, or to the abstract Unix socket of that name."""
    if isinstance(where, int):
        return socket.create_connection(("127.0.0.1", where), timeout=10)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(f"\0{where}")
    return raw


def _where(protocol: str, host: str, port: int) -> int | str:
    """What :func:`_connect` takes for a socket of :func:`_listening`."""
    return host.removeprefix("@") if protocol == "unix" else port


def _tls_reply(where: int | str, ca: Path, client: Path | None = None) -> tuple[str, bytes]:
    """Handshake with the TLS server at ``where`` (:func:`_connect`) as ``client`` (a bundle's
    folder; None: no certificate) and send HTTP/2's preface.

    Returns the name on the server's certificate and the server's first bytes: ``b""``
    when it closed the connection (it refused the client) or sent a TLS alert.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.check_hostname = False  # the caller checks the name read back
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client / CERTIFICATE, client / PRIVATE_KEY)
    with (
        _connect(where) as raw,
        context.wrap_socket(raw) as connection,
    ):
        subject = dict(item[0] for item in connection.getpeercert()["subject"])
        try:  # a refusing server may close before the preface goes out (fast on Unix sockets)
            connection.sendall(PREFACE)
            reply = connection.recv(64)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
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

    def __init__(self, log: ChildLog) -> None:
        self._log = log

    def read(self) -> str:
        return self._log.text()

    def wait_for(self, pattern: str, since: int, timeout: float = 10.0) -> str:
        """The log after offset ``since``, once ``pattern`` is in it."""
        end = time.monotonic() + timeout
        while pattern not in (new := self.read()[since:]) and time.monotonic() < end:
            time.sleep(0.02)
        assert pattern in new, f"'{pattern}' is not in the log: {new!r}"
        return new


class _Server:
    """One of the local mode's serving processes, its public port and its log."""

    def __init__(self, role: str, process: subprocess.Popen, address: str, log: ChildLog) -> None:
        self.role, self.process = role, process
        self.name = {"fixed party": "fixed-party", "dealer": "dealer"}[role]
        self.public = int(address.rsplit(":", 1)[1])
        self.log = _Log(log)
        self._relays: list[Relay] = []

    def port(self, kind: str) -> int:
        """The ``public`` port, or one of this process's that leads to gRPC's own socket."""
        sockets = _listening(self.process.pid)
        (grpc_socket,) = [_where(*where) for where in sockets if where[0] == "unix"]
        assert {port for _, _, port in sockets} == {self.public, 0}, sockets
        if kind == "public":
            return self.public
        self._relays.append(Relay(("127.0.0.1", 0), grpc_socket, outbound=True))
        return self._relays[-1].address[1]

    def close(self) -> None:
        for relay in self._relays:
            relay.close()


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
    """Local mode's ``ppir dealer`` and ``ppir serve`` (clear and spdz) on a PKI of this
    test's, and more certificates from its CA."""
    fixed = head_phantom((48, 44))
    certificates = init_pki(tmp_path_factory.mktemp("local") / "pki")
    with ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("GRPC_VERBOSITY", "INFO")  # the children log why a handshake failed
            running = stack.enter_context(
                spawn_fixed_party(fixed, backends=("clear", "spdz"), pki=certificates)
            )
        servers = {
            "fixed party": _Server("fixed party", running.process, running.address, running.log),
            "dealer": _Server(
                "dealer", running.dealer_process, running.dealer_address, running.dealer_log
            ),
        }
        yield {"fixed": fixed, "certificates": _issue_test_certificates(certificates), **servers}
        for server in servers.values():
            server.close()


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
                for protocol, host, port in sockets:
                    where = _where(protocol, host, port)
                    try:
                        answers[role, where] = _tls_reply(
                            where, certificates / CA_FOLDER / CA_CERTIFICATE
                        )
                    except OSError as error:  # ssl.SSLError and timeouts too
                        if role != "moving party" and str(where).startswith("ppir-client-"):
                            answers[role, where] = ("its own process only", b"")  # not ours
                            continue
                        answers[role, where] = (f"{protocol}: no TLS server ({error})", None)

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
        role: sorted(answers[role, _where(*where)][0] for where in sockets)
        for role, sockets in views[0].items()
    }
    assert servers_behind == {
        "moving party": ["dealer", "fixed-party"],  # its relays to the two servers
        # + its relay to the dealer, which serves no other process (this test's)
        "fixed party": ["fixed-party", "fixed-party", "its own process only"],
        "dealer": ["dealer", "dealer"],
    }
    # TCP on loopback only, and Unix sockets only abstract ones (no file to leave behind).
    assert {
        (protocol, host if protocol == "tcp" else host[:6])
        for view in views[0].values()
        for protocol, host, _ in view
    } == {("tcp", "127.0.0.1"), ("unix", "@ppir-")}
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
            "another CA": other_pki / "moving-party",
            "expired": certificates / "expired-moving-party",
        }[case]
        ca = certificates / CA_FOLDER / CA_CERTIFICATE
        assert _tls_reply(port, ca, client) == (server.name, b"")
    if REFUSALS[case] is not None and (case, port_kind) != ("plain TCP", "public"):
        server.log.wait_for(REFUSALS[case], since=mark)  # the relay refuses plain TCP unsaid
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
    """A server with ``tls``, started without its handshake with itself: an expired
    certificate would not pass it, and these servers are there to be refused."""
    if server == "dealer":
        return DealerServer("127.0.0.1:0", tls, deadline=5, log=log.append).start(None)
    return FixedPartyServer(
        fixed,
        "127.0.0.1:0",
        tls,
        deadline=5,
        log=log.append,
        policy=ppir_itk.FixedPolicy(backends=("clear",)),
    ).start(None)


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


# -- one name per role, checked whatever host name is dialled ------------------------------------

SITES = {"fixed-party": ("dealer", "moving-party"), "dealer": ("fixed-party", "moving-party")}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest.mark.parametrize("style", ["role only", "old-style"])
@pytest.mark.parametrize(
    "server, impostor", [(server, role) for server, roles in SITES.items() for role in roles]
)
def test_a_client_refuses_another_roles_certificate_whatever_host_it_dials(
    server, impostor, style, host, pki, phantom_2d
):
    """A server presenting the certificate of another role of the same CA (the dealer or a
    moving party posing as the fixed party, e.g. to unmask J; the fixed party or a moving
    party posing as the dealer) is refused by the moving party, whether it dials the
    server as 127.0.0.1 or as localhost, and even with an old-style certificate that also
    names localhost and 127.0.0.1: the name checked is the role of the service called."""
    bundle = impostor if style == "role only" else f"old-style-{impostor}"
    log: list[str] = []
    bad = _start_server(server, TLS.for_role(pki, bundle), phantom_2d, log)
    port = bad.address.rsplit(":", 1)[1]
    try:
        with pytest.raises(ppir_itk.PeerError, match=BAD_SERVERS["named as another role"]):
            _session(server, f"{host}:{port}", TLS.for_role(pki, "moving-party"))
    finally:
        bad.stop(grace=None)
    assert not [line for line in log if "opened" in line]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest.mark.parametrize("server", SITES)
def test_a_client_is_served_by_its_servers_role_whatever_host_it_dials(
    server, host, pki, phantom_2d
):
    """The counterpart of the refusals above: the right role's certificate, at either host."""
    log: list[str] = []
    good = _start_server(server, TLS.for_role(pki, server), phantom_2d, log)
    try:
        port = good.address.rsplit(":", 1)[1]
        _session(server, f"{host}:{port}", TLS.for_role(pki, "moving-party"))
    finally:
        good.stop(grace=None)
    opened = [line for line in log if "opened" in line]
    assert len(opened) == 1 and opened[0].startswith("session 1 opened by moving-party (sha256:")


GRPC_NAME_CHECK = {  # the fixed party's certificate (CN, DNS names) -> the moving party accepts
    ("fixed-party", ("dealer",)): False,  # a DNS name is there: the common name is not read
    ("dealer", ("fixed-party",)): True,
    ("fixed-party", None): True,  # no DNS name: the common name is checked instead
    ("dealer", None): False,
}


@pytest.mark.parametrize("names", GRPC_NAME_CHECK)
def test_grpc_checks_a_servers_dns_names_and_its_common_name_only_without_them(
    names, pki, phantom_2d
):
    """How gRPC's client (``grpc.ssl_target_name_override``) checks the server's name: a
    subject alternative DNS name must match; the common name counts only when there is no
    such name. Servers check a client's common name, so a certificate whose two names
    differ would pass as one role to clients and as another to servers: the CA issues
    certificates whose common name and one DNS name are both the role, and a party
    refuses to start with any other (below)."""
    common_name, dns_names = names
    probe = f"probe-{common_name}-{'-'.join(dns_names or ['no-dns-name'])}"
    bundle = _certificate(pki, probe, common_name, dns_names)
    log: list[str] = []
    server = _start_server("fixed-party", TLS.from_bundle(bundle), phantom_2d, log)
    try:
        moving_party = TLS.for_role(pki, "moving-party")
        if GRPC_NAME_CHECK[names]:
            _session("fixed-party", server.address, moving_party)
        else:
            with pytest.raises(ppir_itk.PeerError, match=BAD_SERVERS["named as another role"]):
                _session("fixed-party", server.address, moving_party)
    finally:
        server.stop(grace=None)


def test_no_option_or_argument_chooses_the_name_a_client_accepts(capsys):
    """The name a client checks is fixed by the service it calls: neither the command nor
    the library takes a server name that could widen it (``--server-name`` is gone)."""
    for function in (ppir_itk.connect, open_dealer):
        assert "server_name" not in inspect.signature(function).parameters
    register = ["register", "--peer", "127.0.0.1:1", "--moving", "m.mha"]
    with pytest.raises(SystemExit) as exit_status:
        main([*register, "--output-transform", "t.tfm", "--server-name", "dealer"])
    assert exit_status.value.code == 2
    assert "unrecognized arguments: --server-name dealer" in capsys.readouterr().err


WRONG_ROLE = {  # command -> the bundle it is given, and the role it runs as
    "serve with the dealer's bundle": ("serve", "dealer", "fixed-party"),
    "serve with a moving party's bundle": ("serve", "moving-party", "fixed-party"),
    "dealer with the fixed party's bundle": ("dealer", "fixed-party", "dealer"),
    "register with the fixed party's bundle": ("register", "fixed-party", "moving-party"),
    "serve with an old-style certificate": ("serve", "old-style-fixed-party", "fixed-party"),
}


@pytest.mark.parametrize("case", WRONG_ROLE)
def test_a_party_started_with_another_roles_certificate_is_refused_with_a_sentence(
    case, pki, tmp_path
):
    """``ppir serve --tls-dir pki/dealer`` and the like: exit status 2, one sentence naming
    the option, the names the certificate carries and the role the command runs as. An
    old-style certificate (``localhost`` beside the role) is refused too."""
    command, bundle, role = WRONG_ROLE[case]
    image = tmp_path / "image.mha"
    write_image(head_phantom((16, 16)), image)
    arguments = {
        "serve": ["serve", "--fixed", str(image), "--listen", "127.0.0.1:0"],
        "dealer": ["dealer", "--listen", "127.0.0.1:0"],
        "register": ["register", "--peer", "127.0.0.1:1", "--moving", str(image)],
    }[command]
    if command == "register":
        arguments += ["--output-transform", str(tmp_path / "out.tfm")]
    if bundle.startswith("old-style"):
        folder = pki / bundle
        tls_options = ["--cert", str(folder / CERTIFICATE), "--key", str(folder / PRIVATE_KEY)]
        tls_options += ["--ca", str(folder / CA_CERTIFICATE)]
        source = f"--cert '{folder / CERTIFICATE}'"
    else:
        tls_options, source = ["--tls-dir", str(pki / bundle)], f"--tls-dir '{pki / bundle}'"
    # Its own process: a party that wrongly starts serves until the timeout, failing the test.
    run = subprocess.run(
        [sys.executable, "-m", "ppir_itk.cli", *arguments, *tls_options],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    names = ", ".join(f"'{name}'" for name in TLS.for_role(pki, bundle).names())
    assert (run.returncode, run.stderr) == (
        2,
        f"ppir: error: {source} holds a certificate for {names}, not for '{role}' only "
        f"(the role 'ppir {command}' runs as)\n",
    )


def test_pki_init_writes_the_ca_apart_and_one_bundle_per_site_with_its_own_key_only(tmp_path):
    """``ppir pki init DIR``: the CA's certificate and key in DIR/ca only; per role a
    bundle with that role's certificate (naming the role and nothing else), the key that
    goes with it and the CA's certificate, and no other key; folders 0700 and keys 0600
    whatever the umask."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    root = tmp_path / "pki"
    umask = os.umask(0)
    try:
        assert main(["pki", "init", str(root)]) == 0
    finally:
        os.umask(umask)
    bundle_files = {CERTIFICATE, PRIVATE_KEY, CA_CERTIFICATE}
    files = [path for path in root.rglob("*") if path.is_file()]
    assert {path.relative_to(root).as_posix() for path in files} == {
        f"{CA_FOLDER}/{CA_CERTIFICATE}",
        f"{CA_FOLDER}/{CA_PRIVATE_KEY}",
    } | {f"{role}/{name}" for role in ROLES for name in bundle_files}
    keys = [path for path in files if b"PRIVATE KEY" in path.read_bytes()]
    assert sorted(path.relative_to(root).as_posix() for path in keys) == sorted(
        [f"{CA_FOLDER}/{CA_PRIVATE_KEY}", *(f"{role}/{PRIVATE_KEY}" for role in ROLES)]
    )
    for folder in [root, root / CA_FOLDER, *(root / role for role in ROLES)]:
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    for key in keys:
        assert key.stat().st_mode & 0o777 == 0o600, key
    ca = (root / CA_FOLDER / CA_CERTIFICATE).read_bytes()
    for role in ROLES:
        tls = TLS.from_bundle(root / role)
        assert tls.ca == ca and tls.names() == (role,) and tls.carries_only(role)
        key = serialization.load_pem_private_key(tls.key, password=None)
        certificate = x509.load_pem_x509_certificate(tls.certificate)
        assert key.public_key() == certificate.public_key()  # its own key, no other
