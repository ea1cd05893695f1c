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

import collections
import itertools
import logging
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
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
from ppir_itk.metric_kinds import METRICS
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
from ppir_itk.roles import DEALER, FIXED_PARTY, MOVING_PARTY
from ppir_itk.wrapping.images import as_image_grid, write_atomically, write_image


def connect(
    target: str,
    tls: TLS,
    *,
    deadline: float = DEFAULT_DEADLINE,
    dealer: str | None = None,
) -> RemoteSession:
    """A session with the fixed party's ``ppir serve`` at ``target`` (``HOST:PORT``).

    ``dealer`` (``HOST:PORT`` of ``ppir dealer``) is needed by the ``spdz`` backend;
    this party reaches it with the same certificate.
    """
    session = RemoteSession(target, tls, deadline=deadline)
    if dealer is not None:
        session.dealer = lambda token: open_dealer(dealer, tls, token, deadline=deadline)
    return session


def local_dealer(pool: TriplePool, party_name: str) -> Callable[[bytes], DealerClient]:
    """Sessions with a dealer living in this process (single-process runs and tests)."""
    return lambda token: DealerClient(
        LocalSession(DealerSession(pool, party_name), peer="dealer (in-process)"), token
    )


def in_process_session(
    fixed: Any, policy: FixedPolicy | None = None, *, fixed_mask: Any = None
) -> LocalSession:
    """A session with a fixed party living in this process (tests, benchmarks).

    Whoever runs it holds both images already, so by default every backend,
    ``clear`` included, is offered with no measurement limit
    (:meth:`FixedPolicy.holding_both_images`); SPDZ gets a dealer in this process
    too. A ``policy`` given is held across this session only (an in-memory ledger).
    ``fixed_mask``: the fixed party's mask (:class:`FixedPartySession`'s).
    """
    policy = policy or FixedPolicy.holding_both_images(tuple(BACKENDS))
    policy.single_process = True
    pool = TriplePool()
    if policy.dealer is None:
        policy.dealer = local_dealer(pool, FIXED_PARTY)
    session = LocalSession(
        FixedPartySession(
            fixed, policy, ledger=Ledger(IN_MEMORY), client="in-process", fixed_mask=fixed_mask
        )
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
    metrics: tuple[str, ...] | list[str] = METRICS,
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
    ready_file: str | os.PathLike | None = None,
    local_mode_folder: str | os.PathLike | None = None,
    fixed_mask: Any = None,
) -> None:
    """Serve the fixed image until interrupted (``ppir serve``).

    ``fixed_mask``: the fixed party's own mask (:class:`FixedPartySession`'s), never sent.

    ``metrics``: those served (:mod:`ppir_itk.metric_kinds`). The measurement limits are
    :class:`FixedPolicy`'s; ``ledger`` is the SQLite file
    that counts each client's measurements across sessions and restarts (default:
    beside ``fixed`` when it is a path, ``IMAGE.ppir-ledger.sqlite``). ``dealer``
    (``HOST:PORT``) is the ``ppir dealer`` this party trusts for ``spdz`` sessions;
    it is reached with this party's own certificate. ``max_message_bytes`` is the
    largest message accepted from a moving party (a larger one ends its session).
    ``ready_file`` and ``local_mode_folder``: :func:`_run_until_interrupted`.
    """
    ledger = ledger_path(fixed, ledger)
    policy = FixedPolicy(
        backends=tuple(backends),
        metrics=tuple(metrics),
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
            fixed_mask=fixed_mask,
        ),
        ready_file,
        local_mode_folder,
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
    ready_file: str | os.PathLike | None = None,
    local_mode_folder: str | os.PathLike | None = None,
) -> None:
    """Deal Beaver triples until interrupted (``ppir dealer``).

    What an authenticated party can make it hold is capped: ``max_message_bytes`` per
    request, ``max_request_values`` ring elements per request, ``max_pending`` batches
    one party is ahead of the other per token, ``max_pending_bytes`` for all tokens.
    ``ready_file`` and ``local_mode_folder``: :func:`_run_until_interrupted`.
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
        ),
        ready_file,
        local_mode_folder,
    )


def _run_until_interrupted(
    server: PartyServer,
    ready_file: str | os.PathLike | None = None,
    local_mode_folder: str | os.PathLike | None = None,
) -> None:
    """Start ``server`` and serve until it stops or an exception (a signal's) ends the wait.

    ``ready_file`` gets the server's ``HOST:PORT`` once it has completed a handshake
    (written whole, removed when the server stops). ``local_mode_folder`` makes this a
    local-mode child: it stops when its standard input closes (the parent holds the other
    end, and the system closes it however the parent ends, SIGKILL included), and removes
    that folder (the throw-away PKI and image) when it stops.
    """
    if ready_file is not None:
        ready_file = caller_path(ready_file)  # removed again when the server stops
    try:
        server.start()
        if ready_file is not None:
            write_atomically(lambda path: Path(path).write_text(server.address + "\n"), ready_file)
        if local_mode_folder is not None:
            threading.Thread(
                target=_stop_at_end_of_input, args=(server,), name="ppir-parent", daemon=True
            ).start()
        server.wait()
    finally:
        server.stop()
        if ready_file is not None:
            Path(ready_file).unlink(missing_ok=True)
        if local_mode_folder is not None:
            shutil.rmtree(local_mode_folder, ignore_errors=True)


def caller_path(path: str | os.PathLike) -> str:
    """``path`` resolved against the caller's working directory, now: the form a path takes
    where it is handed to another process (local mode's children run in the temporary
    folder) or used again later. Messages go on naming the path as the caller gave it."""
    return os.path.abspath(os.fspath(path))


def _stop_at_end_of_input(server: PartyServer) -> None:
    while os.read(sys.stdin.fileno(), 1 << 12):
        pass
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
    dealer_address: str | None = None
    dealer_process: subprocess.Popen | None = None
    log: ChildLog | None = None  # the fixed party's stderr after "listening on"
    dealer_log: ChildLog | None = None

    def connect(self, deadline: float = DEFAULT_DEADLINE) -> RemoteSession:
        """A moving party's session with this fixed party (and its dealer)."""
        return connect(self.address, self.client_tls, deadline=deadline, dealer=self.dealer_address)


class ChildLog:
    """A local child's stderr after start-up, line by line: handed on to the
    ``ppir_itk.local`` logger (debug) and kept, the last ``keep`` lines, for whoever reads
    it (tests read the servers' session lines and gRPC's handshake errors there)."""

    def __init__(self, process: subprocess.Popen, role: str, keep: int = 10000) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._seen = 0  # lines read from the child so far
        self._handed = 0  # lines handed out by next_line
        self._ended = False
        self._changed = threading.Condition()
        threading.Thread(
            target=self._read, args=(process, role), name="ppir-child-log", daemon=True
        ).start()

    def text(self) -> str:
        return "".join(f"{line}\n" for line in tuple(self.lines))

    def next_line(self, timeout: float) -> str:
        """The next line not handed out yet, waiting up to ``timeout`` s ("" if none comes)."""
        with self._changed:
            self._changed.wait_for(lambda: self._seen > self._handed or self._ended, timeout)
            return self._pending(1)

    def rest(self, timeout: float) -> str:
        """Every line not handed out yet, once the child has closed its stderr (or after
        ``timeout`` s)."""
        with self._changed:
            self._changed.wait_for(lambda: self._ended, timeout)
            return self._pending(self._seen - self._handed)

    def _pending(self, count: int) -> str:
        dropped = self._seen - len(self.lines)  # lines read but no longer kept
        first = max(self._handed, dropped)
        taken = list(itertools.islice(self.lines, first - dropped, first - dropped + count))
        self._handed = first + len(taken)
        return "".join(f"{line}\n" for line in taken)

    def _read(self, process: subprocess.Popen, role: str) -> None:
        logger = logging.getLogger("ppir_itk.local")
        assert process.stderr is not None, "_child() opens the child's stderr as a pipe"
        try:
            for raw in process.stderr:
                line = raw.decode(errors="replace").rstrip()
                logger.debug("%s: %s", role, line)
                with self._changed:
                    self.lines.append(line)
                    self._seen += 1
                    self._changed.notify_all()
        except (OSError, ValueError):  # closed by _child() as the child ends
            pass
        with self._changed:
            self._ended = True
            self._changed.notify_all()


@contextmanager
def spawn_fixed_party(
    fixed: Any,
    *,
    backends: tuple[str, ...] = ("clear",),
    deadline: float = DEFAULT_DEADLINE,
    startup_timeout: float = STARTUP_TIMEOUT,
    extra_arguments: tuple[str, ...] = (),
    pki: str | os.PathLike | None = None,
    fixed_mask: Any = None,
) -> Iterator[FixedPartyProcess]:
    """Start ``ppir serve`` for ``fixed`` on 127.0.0.1 with fresh certificates.

    With ``spdz`` among ``backends``, ``ppir dealer`` starts first, as a third
    process on the same PKI. The caller holds both images, so the fixed party has no
    measurement limit (:meth:`FixedPolicy.holding_both_images`) and an in-memory ledger.

    The throw-away PKI (or the one in ``pki``, made by :func:`init_pki`: tests) and a
    copy of an in-memory ``fixed`` are written to a private temporary folder that is
    removed as soon as the children have read them, and in any case when the context
    exits. The children stop when the context exits, and by themselves when this process
    ends however it ends (they watch a pipe from it), removing the folder if it is
    still there; they run in their own session, so a Ctrl-C reaches this process only.
    They run in that folder: a path ``fixed`` or ``pki`` is the caller's, resolved against
    its working directory (:func:`caller_path`). ``fixed_mask`` (a path, or an image copied
    to that folder as ``fixed``) goes to the fixed party's process only
    (``ppir serve --fixed-mask``).
    """
    directory = Path(tempfile.mkdtemp(prefix="ppir-local-"))
    try:
        with ExitStack() as processes:
            pki_folder = Path(caller_path(pki)) if pki is not None else init_pki(directory / "pki")
            client_tls = TLS.for_role(pki_folder, MOVING_PARTY)
            if isinstance(fixed, (str, os.PathLike)):
                image_path = Path(caller_path(fixed))
            else:
                image_path = directory / "fixed.nrrd"
                grid = as_image_grid(fixed, name="fixed image")
                write_image(grid, image_path)
                # The caller took this image under its own limits: the child admits it as is.
                extra_arguments = (
                    *extra_arguments,
                    *("--max-image-voxels", str(grid.array.size)),
                    *("--max-image-bytes", str(grid.array.nbytes)),
                )
            if fixed_mask is not None:
                if isinstance(fixed_mask, (str, os.PathLike)):
                    mask_path = Path(caller_path(fixed_mask))
                else:
                    mask_path = directory / "fixed-mask.nrrd"
                    write_image(as_image_grid(fixed_mask, name="fixed mask"), mask_path)
                extra_arguments = (*extra_arguments, "--fixed-mask", str(mask_path))
            common = [
                "--listen",
                "127.0.0.1:0",
                "--deadline",
                str(deadline),
                "--local-mode-folder",
                str(directory),
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
                IN_MEMORY,
            ]
            start = time.perf_counter()
            dealer_address, dealer_process, dealer_log = None, None, None
            if "spdz" in backends:
                dealer_process, dealer_address, dealer_log = processes.enter_context(
                    _child(
                        ["dealer", "--tls-dir", str(pki_folder / DEALER), *common],
                        "dealer",
                        startup_timeout,
                    )
                )
                extra_arguments = (*extra_arguments, "--dealer", dealer_address)
            process, address, log = processes.enter_context(
                _child(
                    [
                        "serve",
                        "--fixed",
                        str(image_path),
                        "--tls-dir",
                        str(pki_folder / FIXED_PARTY),
                        *common,
                        "--backends",
                        *backends,
                        *unlimited,
                        *extra_arguments,
                    ],
                    "fixed party",
                    startup_timeout,
                )
            )
            # Both children hold their keys and the image in memory now: nothing of this
            # run needs to stay on disk, whatever happens to this process from here on.
            shutil.rmtree(directory, ignore_errors=True)
            yield FixedPartyProcess(
                process,
                address,
                client_tls,
                time.perf_counter() - start,
                dealer_address,
                dealer_process,
                log,
                dealer_log,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


CHILD_STOP_TIMEOUT = 5.0  # seconds a local child may take to stop once its input closes


@contextmanager
def _child(
    arguments: list[str], role: str, startup_timeout: float
) -> Iterator[tuple[subprocess.Popen, str, ChildLog]]:
    """``ppir ARGUMENTS`` as a child process, until it says where it listens.

    Its standard input is a pipe whose other end only this process holds: closing it (or
    this process ending) tells the child to stop. After start-up its log goes on to this
    process's :class:`ChildLog`, so the pipe never fills.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "ppir_itk.cli", *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tempfile.gettempdir(),  # not the source tree, which may hold an unbuilt package
        start_new_session=True,
    )
    try:
        address = _wait_until_listening(process, startup_timeout, role)
        yield process, address, ChildLog(process, role)
    finally:
        assert process.stdin is not None, "Popen above opens stdin as a pipe"
        process.stdin.close()
        try:
            process.wait(timeout=CHILD_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None, "Popen above opens stderr as a pipe"
        process.stderr.close()


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
