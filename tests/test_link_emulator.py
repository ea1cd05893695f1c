"""The link emulator of benchmarks/link.py: its delay and its rate, on a real TCP echo."""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

RATE = 10e6  # bit/s, each way
DELAY = 0.020  # s, one way


def _load_link():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "link.py"
    spec = importlib.util.spec_from_file_location("benchmark_link", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def echo_through_link():
    """A socket to an echo server through a 10 Mbit/s, 20 ms link."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        connection, _ = server.accept()
        with connection:
            while data := connection.recv(1 << 16):
                connection.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    emulator = _load_link().LinkEmulator(f"127.0.0.1:{server.getsockname()[1]}", RATE, DELAY)
    host, port = emulator.address.rsplit(":", 1)
    client = socket.create_connection((host, int(port)))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    yield client
    client.close()
    emulator.close()
    server.close()


def _echo_seconds(client: socket.socket, size: int) -> float:
    start = time.monotonic()
    client.sendall(b"x" * size)
    received = 0
    while received < size:
        received += len(client.recv(1 << 16))
    return time.monotonic() - start


def test_a_small_round_trip_takes_twice_the_delay(echo_through_link):
    seconds = min(_echo_seconds(echo_through_link, 100) for _ in range(3))
    # Measured 40.3-40.6 ms (2 x 20 ms): never less, a few ms more on a loaded machine.
    assert 2 * DELAY <= seconds < 2 * DELAY + 0.015


def test_a_megabyte_takes_its_bits_over_the_rate(echo_through_link):
    size = 1_000_000
    seconds = _echo_seconds(echo_through_link, size)
    # Out and back: 8 Mbit at 10 Mbit/s one way (0.8 s) then the delay each way, the way
    # back overlapping the way out but for the last chunk. Measured 0.89-0.90 s.
    serialisation = size * 8 / RATE
    assert serialisation + 2 * DELAY <= seconds < serialisation + 2 * DELAY + 0.25
