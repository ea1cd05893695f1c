"""Local mode: both images on this machine, the fixed party in its own process.

:func:`spawn_fixed_party` makes a throw-away PKI, writes the fixed image
where only the child reads it, and starts ``ppir serve`` as a separate OS
process on loopback. The moving party then connects over gRPC with mutual
TLS exactly as it would to another machine.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppir_itk.protocol.channel import PeerError
from ppir_itk.protocol.tls import TLS, init_pki

READY = "listening on "


@dataclass
class FixedPartyProcess:
    """A running local fixed party (and, for ``spdz``, its dealer)."""

    process: subprocess.Popen
    address: str
    client_tls: TLS
    startup_seconds: float
    directory: Path
    dealer_address: str | None = None
    dealer_process: subprocess.Popen | None = None


@contextmanager
def spawn_fixed_party(fixed: Any, *, backends: tuple[str, ...] = ("clear",),
                      deadline: float = 60.0, startup_timeout: float = 60.0,
                      extra_arguments: tuple[str, ...] = ()) -> Iterator[FixedPartyProcess]:
    """Start ``ppir serve`` for ``fixed`` on 127.0.0.1 with fresh certificates.

    With ``spdz`` among ``backends``, ``ppir dealer`` starts first, as a third
    process on the same PKI. The processes are stopped when the context exits.
    """
    from ppir_itk.wrapping.images import as_image_grid, write_image

    with tempfile.TemporaryDirectory(prefix="ppir-local-") as folder, ExitStack() as processes:
        directory = Path(folder)
        init_pki(directory / "pki")
        if isinstance(fixed, (str, os.PathLike)):
            image_path = Path(fixed)
        else:
            image_path = directory / "fixed.nrrd"
            write_image(as_image_grid(fixed, name="fixed image"), image_path)
        common = ["--listen", "127.0.0.1:0", "--tls-dir", str(directory / "pki"),
                  "--deadline", str(deadline)]
        start = time.perf_counter()
        dealer_address, dealer_process = None, None
        if "spdz" in backends:
            dealer_process, dealer_address = processes.enter_context(_child(
                ["dealer", *common], directory, "dealer", startup_timeout))
            extra_arguments = (*extra_arguments, "--dealer", dealer_address)
        process, address = processes.enter_context(_child(
            ["serve", "--fixed", str(image_path), *common, "--backends", *backends,
             *extra_arguments], directory, "fixed party", startup_timeout))
        yield FixedPartyProcess(process, address, TLS.for_role(directory / "pki", "moving-party"),
                                time.perf_counter() - start, directory, dealer_address,
                                dealer_process)


@contextmanager
def _child(arguments: list[str], directory: Path, role: str,
           startup_timeout: float) -> Iterator[tuple[subprocess.Popen, str]]:
    """``ppir ARGUMENTS`` as a child process, until it says where it listens."""
    process = subprocess.Popen([sys.executable, "-m", "ppir_itk.cli", *arguments],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=directory)
    try:
        yield process, _wait_until_listening(process, startup_timeout, role)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr):
            stream.close()


def _wait_until_listening(process: subprocess.Popen, timeout: float, role: str) -> str:
    """Read the child's stderr until it says where it listens."""
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < end:
        if not selector.select(timeout=max(0.0, end - time.monotonic())):
            break
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line.strip())
        if READY in line:
            return line.split(READY, 1)[1].strip()
    process.kill()
    said = lines[-1] if lines else "nothing"
    raise PeerError(f"the local {role} did not start (it said: {said})")
