"""Composition: the parties put together into runnable shapes.

Every way of running a registration builds on the parties' own modules
(:mod:`ppir_itk.fixed_party`, :mod:`ppir_itk.dealer`, the moving party's
:mod:`ppir_itk.moving_party`) and the transport (:mod:`ppir_itk.protocol`):

- :func:`connect`: the moving party's session with a remote ``ppir serve``;
- :func:`serve`, :func:`serve_dealer`: ``ppir serve`` and ``ppir dealer``;
- :func:`in_process_session`: the fixed party (and a dealer) in this process,
  same envelopes, no socket (tests, benchmarks);
- :func:`spawn_fixed_party`: local mode. Both images on this machine: a
  throw-away PKI, the fixed image written where only the child reads it, and
  ``ppir serve`` (and ``ppir dealer`` for ``spdz``) started as separate OS
  processes on loopback; the moving party then connects over gRPC with mutual
  TLS exactly as it would to another machine.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppir_itk.backends import BACKENDS
from ppir_itk.dealer import DealerServer, DealerSession, TriplePool
from ppir_itk.dealer_client import DealerClient, open_dealer
from ppir_itk.errors import InputError
from ppir_itk.fixed_party import FixedPartyServer, FixedPartySession
from ppir_itk.ledger import IN_MEMORY, Ledger
from ppir_itk.policy import (
    DEFAULT_EVALUATION_BUDGET,
    DEFAULT_JOINT_TERM_NOISE,
    DEFAULT_MEASUREMENT_GRANT,
    DEFAULT_MEASUREMENTS_PER_EVALUATION,
    DEFAULT_MEASUREMENTS_PER_LEVEL,
    DEFAULT_MIN_CONTROL_SPACING,
    FixedPolicy,
)
from ppir_itk.protocol.channel import DEFAULT_DEADLINE, PeerError
from ppir_itk.protocol.messages import (
    DEALER_MAX_MESSAGE_BYTES,
    DEALER_MAX_PENDING,
    DEALER_MAX_PENDING_BYTES,
    DEALER_MAX_REQUEST_VALUES,
    DEFAULT_MAX_ENVELOPE,
    DEFAULT_MAX_MESSAGE_BYTES,
)
from ppir_itk.protocol.session import LocalSession, RemoteSession
from ppir_itk.protocol.tls import TLS, init_pki
from ppir_itk.protocol.transport import DEFAULT_SESSION_LIMIT, PartyServer
from ppir_itk.roles import FIXED_PARTY, MOVING_PARTY
from ppir_itk.wrapping.images import as_image_grid, write_image


def connect(
    target: str,
    tls: TLS,
    *,
    deadline: float = DEFAULT_DEADLINE,
    server_name: str = FIXED_PARTY,
    dealer: str | None = None,
) -> RemoteSession:
    """A session with the fixed party's ``ppir serve`` at ``target`` (``HOST:PORT``).

    ``dealer`` (``HOST:PORT`` of ``ppir dealer``) is needed by the ``spdz`` backend;
    this party reaches it with the same certificate.
    """
    session = RemoteSession(target, tls, deadline=deadline, server_name=server_name)
    if dealer is not None:
        session.dealer = lambda token: open_dealer(dealer, tls, token, deadline=deadline)
    return session


def local_dealer(pool: TriplePool, party_name: str) -> Callable[[bytes], DealerClient]:
    """Sessions with a dealer living in this process (single-process runs and tests)."""
    return lambda token: DealerClient(
        LocalSession(DealerSession(pool, party_name), peer="dealer (in-process)"), token
    )


def in_process_session(fixed: Any, policy: FixedPolicy | None = None) -> LocalSession:
    """A session with a fixed party living in this process (tests, benchmarks).

    Whoever runs it holds both images already, so by default every backend,
    ``clear`` included, is offered with no measurement limit
    (:meth:`FixedPolicy.holding_both_images`); SPDZ gets a dealer in this process
    too. A ``policy`` given is held across this session only (an in-memory ledger).
    """
    policy = policy or FixedPolicy.holding_both_images(tuple(BACKENDS))
    policy.single_process = True
    pool = TriplePool()
    if policy.dealer is None:
        policy.dealer = local_dealer(pool, FIXED_PARTY)
    session = LocalSession(
        FixedPartySession(fixed, policy, ledger=Ledger(IN_MEMORY), client="in-process")
    )
    session.dealer = local_dealer(pool, MOVING_PARTY)

    def deal_as_first_party() -> Callable[[bytes], DealerClient]:
        # SPDZ's trusted-first-party mode: the moving party draws every mask and triple and
        # hands the in-process fixed party its shares, so it could open J. Tests only.
        first_party_pool = TriplePool()
        policy.dealer = local_dealer(first_party_pool, FIXED_PARTY)
        return local_dealer(first_party_pool, MOVING_PARTY)

    session.deal_as_first_party = deal_as_first_party
    return session


def serve(
    fixed: Any,
    listen: str,
    tls: TLS,
    *,
    backends: tuple[str, ...] | list[str] = ("he",),
    evaluation_budget: int = DEFAULT_EVALUATION_BUDGET,
    measurement_grant: float = DEFAULT_MEASUREMENT_GRANT,
    max_measurements_per_evaluation: float = DEFAULT_MEASUREMENTS_PER_EVALUATION,
    max_measurements_per_level: float = DEFAULT_MEASUREMENTS_PER_LEVEL,
    min_control_spacing: float = DEFAULT_MIN_CONTROL_SPACING,
    joint_term_noise: float = DEFAULT_JOINT_TERM_NOISE,
    ledger: str | os.PathLike | None = None,
    max_sessions: int = 1,
    deadline: float = DEFAULT_DEADLINE,
    session_limit: float = DEFAULT_SESSION_LIMIT,
    dealer: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> None:
    """Serve the fixed image until interrupted (``ppir serve``).

    The measurement limits are :class:`FixedPolicy`'s; ``ledger`` is the SQLite file
    that counts each client's measurements across sessions and restarts (default:
    beside ``fixed`` when it is a path, ``IMAGE.ppir-ledger.sqlite``). ``dealer``
    (``HOST:PORT``) is the ``ppir dealer`` this party trusts for ``spdz`` sessions;
    it is reached with this party's own certificate. ``max_message_bytes`` is the
    largest message accepted from a moving party (a larger one ends its session).
    """
    ledger = ledger_path(fixed, ledger)
    policy = FixedPolicy(
        backends=tuple(backends),
        evaluation_budget=evaluation_budget,
        measurement_grant=measurement_grant,
        max_measurements_per_evaluation=max_measurements_per_evaluation,
        max_measurements_per_level=max_measurements_per_level,
        min_control_spacing=min_control_spacing,
        joint_term_noise=joint_term_noise,
    )
    if dealer is not None:
        policy.dealer = lambda token: open_dealer(dealer, tls, token, deadline=deadline)
    _run_until_interrupted(
        FixedPartyServer(
            fixed,
            listen,
            tls,
            policy=policy,
            ledger=Ledger(ledger),
            max_sessions=max_sessions,
            deadline=deadline,
            session_limit=session_limit,
            max_envelope=max_message_bytes,
        )
    )


def ledger_path(fixed: Any, ledger: str | os.PathLike | None) -> str:
    """``ledger``, or by default a file beside the fixed image (``IMAGE.ppir-ledger.sqlite``)."""
    if ledger is not None:
        return os.fspath(ledger)
    if not isinstance(fixed, (str, os.PathLike)):
        raise InputError(
            "the fixed image is not a file, so its ledger needs a path: give --ledger PATH"
        )
    return f"{os.fspath(fixed)}{LEDGER_SUFFIX}"


def serve_dealer(
    listen: str,
    tls: TLS,
    *,
    max_sessions: int = 8,
    deadline: float = DEFAULT_DEADLINE,
    session_limit: float = DEFAULT_SESSION_LIMIT,
    max_message_bytes: int = DEALER_MAX_MESSAGE_BYTES,
    max_request_values: int = DEALER_MAX_REQUEST_VALUES,
    max_pending: int = DEALER_MAX_PENDING,
    max_pending_bytes: int = DEALER_MAX_PENDING_BYTES,
) -> None:
    """Deal Beaver triples until interrupted (``ppir dealer``).

    What an authenticated party can make it hold is capped: ``max_message_bytes`` per
    request, ``max_request_values`` ring elements per request, ``max_pending`` batches
    one party is ahead of the other per token, ``max_pending_bytes`` for all tokens.
    """
    _run_until_interrupted(
        DealerServer(
            listen,
            tls,
            max_sessions=max_sessions,
            deadline=deadline,
            session_limit=session_limit,
            max_envelope=max_message_bytes,
            max_request_values=max_request_values,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
        )
    )


def _run_until_interrupted(server: PartyServer) -> None:
    server.start()
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


LEDGER_SUFFIX = ".ppir-ledger.sqlite"  # the default ledger, beside the fixed image
READY = "listening on "
STARTUP_TIMEOUT = 60.0  # seconds a local party may take to say where it listens


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
def spawn_fixed_party(
    fixed: Any,
    *,
    backends: tuple[str, ...] = ("clear",),
    deadline: float = DEFAULT_DEADLINE,
    startup_timeout: float = STARTUP_TIMEOUT,
    extra_arguments: tuple[str, ...] = (),
) -> Iterator[FixedPartyProcess]:
    """Start ``ppir serve`` for ``fixed`` on 127.0.0.1 with fresh certificates.

    With ``spdz`` among ``backends``, ``ppir dealer`` starts first, as a third
    process on the same PKI. The processes are stopped when the context exits.
    The caller holds both images, so the fixed party has no measurement limit
    (:meth:`FixedPolicy.holding_both_images`) and its ledger is a throw-away file.
    """
    with tempfile.TemporaryDirectory(prefix="ppir-local-") as folder, ExitStack() as processes:
        directory = Path(folder)
        init_pki(directory / "pki")
        if isinstance(fixed, (str, os.PathLike)):
            image_path = Path(fixed)
        else:
            image_path = directory / "fixed.nrrd"
            write_image(as_image_grid(fixed, name="fixed image"), image_path)
        common = [
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            str(directory / "pki"),
            "--deadline",
            str(deadline),
        ]
        # Local mode: whoever runs it holds both images, and can learn nothing from the
        # joint term that it does not have, so the fixed party grants without limit (and
        # takes messages up to the runtime's own limit).
        unlimited = [
            "--max-message-bytes",
            str(DEFAULT_MAX_ENVELOPE),
            "--grant-measurements",
            "inf",
            "--max-measurements-per-evaluation",
            "inf",
            "--max-measurements-per-level",
            "inf",
            "--min-control-spacing",
            "0",
            "--joint-term-noise",
            "0",
            "--ledger",
            str(directory / "ledger.sqlite"),
        ]
        start = time.perf_counter()
        dealer_address, dealer_process = None, None
        if "spdz" in backends:
            dealer_process, dealer_address = processes.enter_context(
                _child(["dealer", *common], directory, "dealer", startup_timeout)
            )
            extra_arguments = (*extra_arguments, "--dealer", dealer_address)
        process, address = processes.enter_context(
            _child(
                [
                    "serve",
                    "--fixed",
                    str(image_path),
                    *common,
                    "--backends",
                    *backends,
                    *unlimited,
                    *extra_arguments,
                ],
                directory,
                "fixed party",
                startup_timeout,
            )
        )
        yield FixedPartyProcess(
            process,
            address,
            TLS.for_role(directory / "pki", MOVING_PARTY),
            time.perf_counter() - start,
            directory,
            dealer_address,
            dealer_process,
        )


@contextmanager
def _child(
    arguments: list[str], directory: Path, role: str, startup_timeout: float
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``ppir ARGUMENTS`` as a child process, until it says where it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ppir_itk.cli", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=directory,
    )
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
            assert stream is not None, "Popen above opens both streams as pipes"
            stream.close()


def _wait_until_listening(process: subprocess.Popen, timeout: float, role: str) -> str:
    """Read the child's stderr until it says where it listens.

    Byte by byte from the pipe itself: a buffered ``readline`` can take the next line
    into its buffer too (a server that logs a line just before "listening on"), and
    ``select`` then waits for data that has already arrived. The stream's own buffer
    stays empty, so whoever reads the child's log next starts at the following line.
    """
    stderr = process.stderr
    assert stderr is not None, "_child() opens the child's stderr as a pipe"
    selector = selectors.DefaultSelector()
    selector.register(stderr, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    lines: list[str] = []
    line = bytearray()
    while time.monotonic() < end:
        if not selector.select(timeout=max(0.0, end - time.monotonic())):
            break
        byte = os.read(stderr.fileno(), 1)
        if not byte:
            break
        if byte != b"\n":
            line += byte
            continue
        text = line.decode(errors="replace").strip()
        line.clear()
        lines.append(text)
        if READY in text:
            return text.split(READY, 1)[1].strip()
    process.kill()
    said = lines[-1] if lines else "nothing"
    raise PeerError(f"the local {role} did not start (it said: {said})")
