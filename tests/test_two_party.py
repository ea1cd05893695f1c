"""Two parties as separate processes over gRPC with mutual TLS on loopback."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from conftest import known_pair, register_in_process, speaks_to_unauthenticated

import ppir_itk
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.phantoms import head_phantom
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import PROTOCOL_VERSION
from ppir_itk.protocol.tls import CA_CERTIFICATE, CERTIFICATE, PRIVATE_KEY
from ppir_itk.registration import register_with
from ppir_itk.wrapping.images import write_image
from ppir_itk.wrapping.transforms import read_transform

AFFINE = [1.04, 0.05, -0.04, 0.97, 2.0, -1.0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return ppir_itk.init_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return ppir_itk.init_pki(tmp_path_factory.mktemp("other-pki"), ca_name="another CA")


@pytest.fixture
def server(pki, phantom_2d):
    """A fixed party's server in this process (its sessions run on threads)."""
    log: list[str] = []
    server = FixedPartyServer(
        phantom_2d,
        "127.0.0.1:0",
        ppir_itk.TLS.for_role(pki, "fixed-party"),
        policy=ppir_itk.FixedPolicy(backends=("clear",)),
        deadline=3.0,
        log=log.append,
    ).start()
    server.lines = log
    yield server
    server.stop(grace=None)


def _hello() -> pb.Envelope:
    return pb.Envelope(
        hello=pb.Hello(
            protocol_version=PROTOCOL_VERSION,
            backend="clear",
            metric="meansquares",
            levels=[pb.Level(shrink_factor=1)],
            sampling="none",
        )
    )


def test_clear_over_the_wire_equals_in_process(phantom_2d):
    moving, _ = known_pair(phantom_2d, "affine", AFFINE)
    options = dict(
        shrink_factors=[2, 1],
        smoothing_sigmas=[1.0, 0.0],
        sampling="urs",
        sampling_fraction=0.5,
        seed=3,
    )
    remote = ppir_itk.register(phantom_2d, moving, backend="clear", **options)
    local = register_in_process(phantom_2d, moving, **options)
    assert remote.transport == "grpc+mtls" and local.transport == "in-process"
    np.testing.assert_allclose(
        remote.transform.parameters, local.transform.parameters, rtol=1e-9, atol=0
    )
    assert remote.iterations == local.iterations
    # Both parties' accounting came back, on the wire and as payload.
    moving_party, fixed_party = remote.parties["moving"], remote.parties["fixed"]
    assert moving_party["wire_bytes_received"] > moving_party["payload_bytes_received"] > 0
    # The fixed party counts up to its last answer ('Closed'), which its count cannot include.
    assert 0 < moving_party["payload_bytes_received"] - fixed_party["payload_bytes_sent"] < 200
    assert 0 < moving_party["wire_bytes_received"] - fixed_party["wire_bytes_sent"] < 500
    assert fixed_party["payload_bytes_received"] == moving_party["payload_bytes_sent"]
    assert remote.fixed_startup_seconds is not None


def test_sessions_one_after_another_and_a_second_concurrent_one_refused(server, pki, phantom_2d):
    moving, truth = known_pair(phantom_2d, "rigid", [0.05, 1.0, -1.0])
    tls = ppir_itk.TLS.for_role(pki, "moving-party")
    for _ in range(2):
        session = ppir_itk.connect(server.address, tls)
        result = register_with(
            session,
            moving,
            backend="clear",
            transform="rigid",
            shrink_factors=[1],
            smoothing_sigmas=[0],
        )
        assert result.iterations > 0
    first = ppir_itk.connect(server.address, tls, deadline=5)
    first.start(_hello().hello)
    second = ppir_itk.connect(server.address, tls, deadline=5)
    with pytest.raises(ppir_itk.PeerError, match="busy"):
        second.start(_hello().hello)
    first.close()
    third = ppir_itk.connect(server.address, tls, deadline=5)
    third.start(_hello().hello)
    third.close()


@pytest.mark.parametrize("kind", ["other CA", "no certificate"])
def test_clients_without_a_certificate_from_the_ca_are_refused(kind, server, pki, other_pki):
    assert not speaks_to_unauthenticated(
        server.address, pki, other_pki if kind == "other CA" else None
    )
    # Through gRPC too: the session never starts.
    session = ppir_itk.connect(
        server.address, ppir_itk.TLS.for_role(other_pki, "moving-party"), deadline=5
    )
    with pytest.raises(ppir_itk.PeerError):
        session.start(_hello().hello)
    assert not [line for line in server.lines if "opened" in line]


def test_a_moving_party_busy_longer_than_the_deadline_is_not_dropped(server, pki):
    """Heartbeats: silence between requests, longer than the server's 3 s deadline, is fine
    while the moving party's process is alive."""
    session = ppir_itk.connect(
        server.address, ppir_itk.TLS.for_role(pki, "moving-party"), deadline=5
    )
    session.start(_hello().hello)
    time.sleep(7.0)  # long local work, e.g. a level of the clear backend
    session.close()
    assert [line for line in server.lines if "closed" in line]


def test_tls_is_1_3_with_a_good_certificate(server, pki):
    host, port = server.address.split(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bundle = pki / "moving-party"
    context.load_verify_locations(bundle / CA_CERTIFICATE)
    context.load_cert_chain(bundle / CERTIFICATE, bundle / PRIVATE_KEY)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="fixed-party") as tls_socket:
            assert tls_socket.version() == "TLSv1.3"


def _raw_stream(server, pki, frames):
    tls = ppir_itk.TLS.for_role(pki, "moving-party")
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.certificate)
    with grpc.secure_channel(
        server.address, credentials, options=[("grpc.ssl_target_name_override", "fixed-party")]
    ) as channel:
        stream = channel.stream_stream(
            f"/{FixedPartyServer.service}/Session",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.Frame.FromString,
        )
        try:
            return list(stream(iter(frames), timeout=10))
        except grpc.RpcError as error:
            return error


def _frame(**body) -> bytes:
    return pb.Frame(envelope=pb.Envelope(**body)).SerializeToString()


BAD_STREAMS = {
    "oversized": [
        _frame(hello=_hello().hello),
        pb.Frame(chunk=pb.Chunk(total_size=1 << 40, data=b"x")).SerializeToString(),
    ],
    "out of order": [_frame(open_level=pb.OpenLevel(level=3))],
    "garbage bytes": [b"\xff\x00\x13garbage"],
    "unknown backend message": [
        _frame(hello=_hello().hello),
        _frame(open_level=pb.OpenLevel(level=0)),
        _frame(select_points=pb.SelectPoints(kind="all")),
        _frame(backend=pb.BackendMessage(spdz_sums=pb.SpdzSums())),
    ],
}


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_malformed_or_oversized_messages_end_only_that_session(case, server, pki, phantom_2d):
    frames = BAD_STREAMS[case]
    answer = _raw_stream(server, pki, frames)
    if isinstance(answer, grpc.RpcError):
        assert case == "garbage bytes"
    else:
        assert answer[-1].envelope.WhichOneof("body") == "abort"
    # The server lives on and serves the next session.
    moving, _ = known_pair(phantom_2d, "translation", [1.0, 0.5])
    session = ppir_itk.connect(server.address, ppir_itk.TLS.for_role(pki, "moving-party"))
    result = register_with(
        session,
        moving,
        backend="clear",
        transform="translation",
        shrink_factors=[1],
        smoothing_sigmas=[0],
    )
    assert result.iterations > 0


def test_a_stalled_moving_party_is_dropped_after_the_deadline(server, pki):
    session = ppir_itk.connect(server.address, ppir_itk.TLS.for_role(pki, "moving-party"))
    session.start(_hello().hello)
    time.sleep(3.5)  # the server's deadline is 3 s
    with pytest.raises(ppir_itk.PeerError):
        session.request(pb.Envelope(open_level=pb.OpenLevel(level=0)), "level_opened")
    assert any("sent nothing for 3 s" in line for line in server.lines)


def _serve_process(pki, image, *extra):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ppir_itk.cli",
            "serve",
            "--fixed",
            str(image),
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            str(pki / "fixed-party"),
            "--backends",
            "clear",
            *extra,
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=pki,
    )
    line = process.stderr.readline()
    while line and "listening on" not in line:  # a measurement grant's line comes first
        line = process.stderr.readline()
    assert "listening on" in line, line
    return process, line.split("listening on", 1)[1].strip()


def test_killing_the_fixed_party_ends_ppir_register_cleanly(pki, tmp_path):
    fixed = head_phantom((48, 160, 160))
    moving, _ = known_pair(
        fixed, "affine", [1.03, 0.02, 0.0, -0.02, 0.98, 0.01, 0.0, 0.01, 1.0, 1.0, -1.0, 0.5]
    )
    write_image(fixed, tmp_path / "fixed.nrrd")
    write_image(moving, tmp_path / "moving.nrrd")
    server, address = _serve_process(pki, tmp_path / "fixed.nrrd")
    output = tmp_path / "result.tfm"
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ppir_itk.cli",
            "register",
            "--peer",
            address,
            "--moving",
            str(tmp_path / "moving.nrrd"),
            "--tls-dir",
            str(pki / "moving-party"),
            "--output-transform",
            str(output),
            "--shrink-factors",
            "4",
            "2",
            "1",
            "--smoothing-sigmas",
            "2",
            "1",
            "0",
            "--deadline",
            "10",
            "--quiet",
            "--backend",
            "clear",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    opened = server.stderr.readline()
    assert "session 1 opened" in opened
    time.sleep(0.5)
    server.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = client.communicate(timeout=30)
    assert time.monotonic() - killed < 10
    assert client.returncode == 3, err
    assert err.strip().splitlines()[-1].startswith("ppir: error: ")
    assert "fixed party" in err and "Traceback" not in err
    assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    server.wait()


def test_register_against_ppir_serve_on_the_command_line(pki, tmp_path, phantom_2d):
    import json

    moving, truth = known_pair(phantom_2d, "affine", AFFINE)
    write_image(phantom_2d, tmp_path / "fixed.nii.gz")
    write_image(moving, tmp_path / "moving.nii.gz")
    server, address = _serve_process(pki, tmp_path / "fixed.nii.gz", "--max-sessions", "2")
    try:
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "ppir_itk.cli",
                "register",
                "--peer",
                address,
                "--moving",
                str(tmp_path / "moving.nii.gz"),
                "--tls-dir",
                str(pki / "moving-party"),
                "--output-transform",
                str(tmp_path / "t.h5"),
                "--report",
                str(tmp_path / "r.json"),
                "--quiet",
                "--backend",
                "clear",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
    finally:
        server.terminate()
        server.wait()
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["transport"] == "grpc+mtls"
    assert report["parties"]["fixed"]["bytes_sent"] > 8 * phantom_2d.geometry.number_of_points
    result = read_transform(tmp_path / "t.h5")
    assert displacement_rmse(result, truth, phantom_2d.geometry) < 0.1


def test_a_stalled_fixed_party_ends_the_session_within_the_deadline(pki, tmp_path, phantom_2d):
    write_image(phantom_2d, tmp_path / "fixed.nrrd")
    server, address = _serve_process(pki, tmp_path / "fixed.nrrd")
    try:
        session = ppir_itk.connect(
            address, ppir_itk.TLS.for_role(pki, "moving-party"), deadline=2.0
        )
        session.start(_hello().hello)
        server.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(ppir_itk.PeerError, match="sent nothing for 2 s"):
            session.request(pb.Envelope(open_level=pb.OpenLevel(level=0)), "level_opened")
        assert time.monotonic() - start < 4
        session.abort("test over")
    finally:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait()
