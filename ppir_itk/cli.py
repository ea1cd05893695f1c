"""The ``ppir`` command.

``ppir register --fixed F --moving M --transform affine --backend clear
--output-transform T.tfm [--output-warped W.nii.gz] [--report R.json]``
registers two images on this machine; ``ppir demo`` runs on the example
pair that installs with the package.

Bad input ends with one sentence on stderr and exit status 2, without a
traceback, and without any output file (outputs are written to a temporary
file and renamed at the end).

The subsystems a subcommand runs (the registration, the backends and what they
import, the bench and its figures) are imported by that subcommand, so that
``ppir --help`` and ``ppir pki init`` load none of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import Any

from ppir_itk.errors import InputError
from ppir_itk.log import command_logs
from ppir_itk.metric_kinds import METRICS, OPTIMIZERS, check_metric
from ppir_itk.options import (
    DEFAULT_INITIALIZER,
    DEFAULT_TIME_CAP,
    INITIALIZERS,
    RegistrationOptions,
)
from ppir_itk.policy import (
    DEFAULT_EVALUATION_BUDGET,
    DEFAULT_JOINT_TERM_NOISE,
    DEFAULT_MEASUREMENT_GRANT,
    DEFAULT_MEASUREMENTS_PER_EVALUATION,
    DEFAULT_MEASUREMENTS_PER_LEVEL,
    DEFAULT_MIN_CONTROL_SPACING,
)
from ppir_itk.protocol.channel import DEFAULT_DEADLINE, PeerError
from ppir_itk.protocol.messages import (
    DEALER_MAX_MESSAGE_BYTES,
    DEALER_MAX_PENDING,
    DEALER_MAX_PENDING_BYTES,
    DEALER_MAX_REQUEST_VALUES,
    DEFAULT_MAX_MESSAGE_BYTES,
)
from ppir_itk.protocol.transport import DEFAULT_SESSION_LIMIT
from ppir_itk.sampling import PAPER_SAMPLINGS, SAMPLINGS
from ppir_itk.transform_kinds import TRANSFORMS, transform_kind
from ppir_itk.transforms import LinearTransform
from ppir_itk.wrapping.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_VOXELS, ImageLimits
from ppir_itk.wrapping.transforms import check_transform_path

EXIT_INPUT_ERROR = 2
EXIT_PEER_ERROR = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # a service manager's or a closed terminal's
DEFAULT_PROGRESS_INTERVAL = 5.0  # seconds between progress lines in a log
_LOG = logging.getLogger("ppir_itk.cli")  # not __name__: it is __main__ under python -m
# Formats ITK writes in one file with float64 pixels (ITK picks the writer by suffix).
IMAGE_OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".mha", ".nrrd", ".vtk", ".h5", ".hdf5")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppir", description="Privacy-preserving image registration (SSD, Gauss-Newton)."
    )
    parser.add_argument(
        "--version",
        action=_Version,
        help="print the versions of ppir_itk and of its crypto and imaging libraries",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    register = commands.add_parser(
        "register",
        help="register a moving image onto a fixed image",
        description="With --fixed and --moving, both images are on this machine and the fixed "
        "party runs as a separate local process; with --peer, the fixed party is "
        "'ppir serve' on another machine.",
    )
    register.add_argument("--fixed", help="fixed image (any format ITK reads), local mode")
    register.add_argument("--peer", help="HOST:PORT of the fixed party's 'ppir serve'")
    register.add_argument("--moving", required=True, help="moving image")
    _add_registration_options(register)
    _add_tls_options(register, "moving-party")
    register.add_argument("--dealer", help="--peer only: HOST:PORT of 'ppir dealer' (spdz)")
    register.add_argument(
        "--fixed-mask",
        metavar="PATH",
        help="local mode: the fixed image's mask (nonzero: inside), given to the fixed "
        "party's process only; with --peer the fixed party serves its own (ppir serve "
        "--fixed-mask)",
    )
    register.add_argument(
        "--moving-mask",
        metavar="PATH",
        help="the moving image's mask (nonzero: inside): a point counts only where T(x) is in it",
    )
    register.add_argument(
        "--in-process",
        action="store_true",
        help="local mode only: keep the fixed party in this process",
    )
    register.add_argument(
        "--output-transform",
        required=True,
        help="result transform (.tfm, .txt, .h5, .mat; a B-spline after --initial-transform: "
        "not .mat); maps fixed to moving",
    )
    register.add_argument("--output-warped", help="moving image resampled onto the fixed grid")
    register.add_argument("--report", help="JSON report of the run")
    _add_image_limits(register)

    serve = commands.add_parser("serve", help="serve a fixed image to moving parties (mutual TLS)")
    serve.add_argument("--fixed", required=True, help="fixed image")
    serve.add_argument("--listen", required=True, help="HOST:PORT (port 0: any free port)")
    serve.add_argument(
        "--fixed-mask",
        metavar="PATH",
        help="the fixed image's mask (nonzero: inside), private to this party: the metric "
        "runs over the points inside it; moving parties learn only how many",
    )
    _add_tls_options(serve, "fixed-party")
    serve.add_argument(
        "--backends",
        nargs="+",
        default=["he"],
        help="backends offered (default: he; 'clear' sends the image openly)",
    )
    serve.add_argument(
        "--metrics",
        nargs="+",
        default=list(METRICS),
        help=f"metrics served (default: all, {' '.join(METRICS)})",
    )
    serve.add_argument("--dealer", help="HOST:PORT of the 'ppir dealer' this party trusts (spdz)")
    serve.add_argument(
        "--max-sessions", type=int, default=1, help="sessions served at the same time (default 1)"
    )
    serve.add_argument(
        "--budget",
        type=int,
        default=DEFAULT_EVALUATION_BUDGET,
        help="joint-term evaluations allowed per session, each a few linear "
        f"measurements of the image (default {DEFAULT_EVALUATION_BUDGET})",
    )
    serve.add_argument(
        "--grant-measurements",
        type=float,
        default=DEFAULT_MEASUREMENT_GRANT,
        metavar="FRACTION",
        help="linear measurements of the image one client may hold over all its "
        "sessions, as a fraction of its voxels (default 1/64; inf: no cap; "
        "each can be one exact pixel to a malicious client)",
    )
    serve.add_argument(
        "--max-measurements-per-evaluation",
        type=float,
        default=DEFAULT_MEASUREMENTS_PER_EVALUATION,
        metavar="FRACTION",
        help="measurements one evaluation may reveal, as a fraction of the "
        "level's points (default 1/8)",
    )
    serve.add_argument(
        "--max-measurements-per-level",
        type=float,
        default=DEFAULT_MEASUREMENTS_PER_LEVEL,
        metavar="FRACTION",
        help="measurements one client may hold of one level's grid over all its "
        "sessions, as a fraction of the grid's points (default 1/4)",
    )
    serve.add_argument(
        "--min-control-spacing",
        type=float,
        default=DEFAULT_MIN_CONTROL_SPACING,
        metavar="PIXELS",
        help="least B-spline control spacing, in level pixels (default "
        f"{DEFAULT_MIN_CONTROL_SPACING:g})",
    )
    serve.add_argument(
        "--joint-term-noise",
        type=float,
        default=DEFAULT_JOINT_TERM_NOISE,
        metavar="BETA",
        help="noise on every sum the moving party receives, its deviation in units "
        "of the most one voxel adds to the sum (default "
        f"{DEFAULT_JOINT_TERM_NOISE:g}; 0: exact sums; docs/privacy.md)",
    )
    serve.add_argument(
        "--ledger",
        help="SQLite file counting each client's measurements across "
        "sessions (default: FIXED.ppir-ledger.sqlite)",
    )
    serve.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE,
        help="seconds to wait for the moving party's next message",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metavar="N",
        help="largest message accepted from a moving party (default "
        f"{DEFAULT_MAX_MESSAGE_BYTES}, 256 MiB: three times the largest, a 128^3 "
        "volume's spdz iteration)",
    )
    _add_session_limit(serve)
    _add_service_options(serve)
    _add_image_limits(serve)

    dealer = commands.add_parser("dealer", help="deal Beaver triples to SPDZ sessions (mutual TLS)")
    dealer.add_argument("--listen", required=True, help="HOST:PORT (port 0: any free port)")
    _add_tls_options(dealer, "dealer")
    dealer.add_argument(
        "--max-sessions",
        type=int,
        default=8,
        help="party sessions served at the same time (default 8)",
    )
    dealer.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE,
        help="seconds to wait for a party's next message",
    )
    dealer.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEALER_MAX_MESSAGE_BYTES,
        metavar="N",
        help=f"largest request accepted (default {DEALER_MAX_MESSAGE_BYTES}: requests are small)",
    )
    dealer.add_argument(
        "--max-request-values",
        type=int,
        default=DEALER_MAX_REQUEST_VALUES,
        metavar="N",
        help=f"ring elements one request may ask for (default {DEALER_MAX_REQUEST_VALUES})",
    )
    dealer.add_argument(
        "--max-pending",
        type=int,
        default=DEALER_MAX_PENDING,
        metavar="N",
        help="triple batches one party may be ahead of the other, per session "
        f"(default {DEALER_MAX_PENDING})",
    )
    dealer.add_argument(
        "--max-pending-bytes",
        type=int,
        default=DEALER_MAX_PENDING_BYTES,
        metavar="N",
        help="bytes of masks and triple batches held for all sessions together "
        f"(default {DEALER_MAX_PENDING_BYTES})",
    )
    _add_session_limit(dealer)
    _add_service_options(dealer)

    pki = commands.add_parser("pki", help="throw-away certificates for local runs and tests")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True)
    pki_init = pki_commands.add_parser(
        "init", help="make a CA (DIR/ca) and one bundle per site (DIR/fixed-party, ...)"
    )
    pki_init.add_argument("directory")
    pki_init.add_argument("--days", type=int, default=30)

    bench = commands.add_parser(
        "bench",
        help="the paper's table for an image pair: every backend and sampling mode",
        description="Runs Clear and each private backend/protocol with each sampling mode "
        "through the two-party runtime on this machine, --repeats times each with "
        "new keys and shares, and writes table.md, table.csv, results.json and "
        "PNG figures into --out.",
    )
    bench.add_argument(
        "--fixed", help="fixed image (default: the demo pair shipped with the package)"
    )
    bench.add_argument("--moving", help="moving image (with --fixed)")
    bench.add_argument("--out", required=True, help="output directory (made if missing)")
    bench.add_argument("--repeats", type=int, default=3, help="runs per row (default 3)")
    bench.add_argument(
        "--backends",
        nargs="+",
        metavar="BACKEND[/PROTOCOL]",
        help="solutions to run (default: every backend, each of its protocols); "
        "clear always runs, as the reference",
    )
    bench.add_argument(
        "--sampling",
        nargs="+",
        default=list(PAPER_SAMPLINGS),
        help=f"sampling modes, of {' '.join(SAMPLINGS)} (default: {' '.join(PAPER_SAMPLINGS)})",
    )
    bench.add_argument(
        "--time-cap",
        type=float,
        default=DEFAULT_TIME_CAP,
        help="seconds a run may take before its row is marked infeasible (default 60)",
    )
    _add_registration_options(bench, bench=True)
    _add_image_limits(bench)

    demo = commands.add_parser("demo", help="register the example pair shipped with the package")
    demo.add_argument(
        "--backend",
        default=RegistrationOptions.backend,
        help="joint-term backend (default: he; clear is NOT private)",
    )
    demo.add_argument("--output-dir", help="also write transform, warped image and report here")
    demo.add_argument("--threads", type=int, default=None)
    for name, command in [*commands.choices.items(), *pki_commands.choices.items()]:
        if name != "pki":  # the commands that run, not the one that chooses among them
            _add_log_options(command, progress=name in ("register", "demo"))
    return parser


def _add_log_options(parser: argparse.ArgumentParser, *, progress: bool) -> None:
    logs = parser.add_argument_group("logs (on stderr, each line with its UTC time)")
    logs.add_argument("--verbose", action="store_true", help="debug lines too")
    logs.add_argument(
        "--quiet", action="store_true", help="warnings and errors only: no progress either"
    )
    logs.add_argument(
        "--log-file", metavar="PATH", help="also append the log to PATH (--quiet or not)"
    )
    if progress:
        logs.add_argument(
            "--progress-interval",
            type=float,
            default=DEFAULT_PROGRESS_INTERVAL,
            metavar="SECONDS",
            help="when stderr is not a terminal: a progress line at each level's start "
            f"and every SECONDS (default {DEFAULT_PROGRESS_INTERVAL:g})",
        )


class _Version(argparse.Action):
    """``--version``: the versions from the installed packages' metadata, importing none."""

    def __init__(self, option_strings: Sequence[str], dest: str, **options: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **options)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(versions())
        parser.exit()


# The libraries whose versions matter to a run: the crypto of each backend, the transport
# and its TLS, the imaging (as their distributions name them).
LIBRARIES = (
    "tenseal",
    "crypten",
    "torch",
    "grpcio",
    "protobuf",
    "cryptography",
    "itk",
    "SimpleITK",
)


def versions() -> str:
    """``ppir_itk VERSION`` and one ``LIBRARY VERSION`` line per library (``not installed``).
    TenSEAL bundles Microsoft SEAL without saying which version in its metadata."""
    from importlib import metadata

    from ppir_itk._version import __version__

    lines = [f"ppir_itk {__version__}"]
    for name in LIBRARIES:
        try:
            lines.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{name} not installed")
    return "\n".join(lines)


def _add_registration_options(parser: argparse.ArgumentParser, bench: bool = False) -> None:
    """The options of a registration (defaults: RegistrationOptions'); ``bench`` leaves out
    those it sets per row."""
    defaults = RegistrationOptions
    parser.add_argument(
        "--transform",
        default=defaults.transform,
        help=f"{', '.join(TRANSFORMS)} (default: {defaults.transform})",
    )
    parser.add_argument(
        "--metric",
        default=defaults.metric,
        help=f"{', '.join(METRICS)} (default: {defaults.metric}; mattes: spdz or clear)",
    )
    parser.add_argument(
        "--histogram-bins",
        type=int,
        default=defaults.histogram_bins,
        help=f"mattes: histogram bins, 4 to 256 (default: {defaults.histogram_bins})",
    )
    parser.add_argument(
        "--optimizer",
        help=f"{', '.join(OPTIMIZERS)} (default: gauss-newton for meansquares, "
        "regular-step otherwise)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="regular-step: the first step, in parameters scaled by their physical shift "
        f"(about mm; default {defaults.learning_rate:g})",
    )
    parser.add_argument(
        "--grid-spacing",
        type=float,
        nargs="+",
        metavar="MM",
        help="bspline: control-point spacing in physical units (one value, or one per axis)",
    )
    parser.add_argument(
        "--refine-grid",
        action="store_true",
        help="bspline: start 2^(levels-1) times as coarse and halve the "
        "spacing per level, ending at --grid-spacing or a little finer",
    )
    parser.add_argument(
        "--bending-weight",
        type=float,
        default=defaults.bending_energy_weight,
        help="bspline: weight of the bending-energy penalty in mm^2, relative "
        "to the moving image's variance (about the squared grid "
        f"spacing is strong; default {defaults.bending_energy_weight:g})",
    )
    parser.add_argument(
        "--initial-transform",
        metavar="FILE",
        help="bspline: a linear transform file (e.g. an affine result) the "
        "B-spline is composed with",
    )
    if not bench:
        parser.add_argument(
            "--backend",
            default=defaults.backend,
            help="joint-term backend: he (private), spdz (private, with a "
            f"dealer) or clear (NOT private); default: {defaults.backend}",
        )
        parser.add_argument(
            "--backend-parameter",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="backend option, repeatable (he: protocol=packed, "
            "poly_modulus_degree=16384, security_bits=128; spdz: "
            "provider=dealer)",
        )
        parser.add_argument(
            "--sampling",
            default=defaults.sampling,
            help=f"{', '.join(SAMPLINGS)} (default: {defaults.sampling})",
        )
    parser.add_argument(
        "--sampling-fraction",
        type=float,
        default=defaults.sampling_fraction,
        help=f"fraction of fixed-grid points sampled (default: {defaults.sampling_fraction:g})",
    )
    if not bench:
        parser.add_argument(
            "--reveal-gms-indices",
            action="store_true",
            help="GMS only: send the sample indices to the fixed party (leaks them)",
        )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help=f"sampling seed (public; default: {defaults.seed})",
    )
    parser.add_argument(
        "--shrink-factors",
        type=int,
        nargs="+",
        default=list(defaults.shrink_factors),
        help=f"per level, coarsest first (default: {_shown(defaults.shrink_factors)})",
    )
    parser.add_argument(
        "--smoothing-sigmas",
        type=float,
        nargs="+",
        default=list(defaults.smoothing_sigmas),
        help=f"per level, in physical units (default: {_shown(defaults.smoothing_sigmas)})",
    )
    parser.add_argument(
        "--initializer",
        default=defaults.initializer,
        help=f"{', '.join(INITIALIZERS)} (default: {DEFAULT_INITIALIZER})",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        default=defaults.iterations,
        help="most iterations per level: one for every level, or one per level, coarsest "
        f"first (e.g. 100 50 20); default {defaults.iterations}",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="kernel threads (results are identical for any value; default: every core)",
    )
    if not bench:
        parser.add_argument(
            "--deadline",
            type=float,
            default=defaults.deadline,
            help="seconds to wait for the fixed party's next answer "
            f"(default: {defaults.deadline:g})",
        )


def _shown(values: Sequence[float]) -> str:
    """A default list as the command line takes it: ``4 2 1``."""
    return " ".join(f"{value:g}" for value in values)


def _add_session_limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--session-limit",
        type=float,
        default=DEFAULT_SESSION_LIMIT,
        metavar="SECONDS",
        help=f"longest a session may last, alive or not (default {DEFAULT_SESSION_LIMIT:g})",
    )


def _add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ready-file",
        metavar="PATH",
        help="write HOST:PORT here once the server has completed a TLS handshake through "
        "its port (removed when it stops)",
    )
    # Local mode's children (compose.spawn_fixed_party): stop when standard input closes
    # and remove this folder. Not for users.
    parser.add_argument("--local-mode-folder", help=argparse.SUPPRESS)


def _add_image_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-image-voxels",
        type=int,
        default=DEFAULT_MAX_IMAGE_VOXELS,
        metavar="N",
        help="largest image read, in voxels, checked from the file's header before its "
        f"pixels are read (default {DEFAULT_MAX_IMAGE_VOXELS}: a 512x512x1024 CT)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=DEFAULT_MAX_IMAGE_BYTES,
        metavar="N",
        help="largest image read, in bytes of its pixels as read, every component "
        f"counted (default {DEFAULT_MAX_IMAGE_BYTES}: that CT as float64)",
    )


def _image_limits(args: argparse.Namespace) -> ImageLimits:
    if args.max_image_voxels < 1 or args.max_image_bytes < 1:
        raise InputError("--max-image-voxels and --max-image-bytes must be positive")
    return ImageLimits(args.max_image_voxels, args.max_image_bytes)


def _add_tls_options(parser: argparse.ArgumentParser, role: str) -> None:
    parser.add_argument(
        "--tls-dir",
        metavar="BUNDLE",
        help=f"this site's bundle from 'ppir pki init DIR' (DIR/{role}: certificate, key, CA)",
    )
    parser.add_argument("--cert", help="this party's certificate (PEM), instead of --tls-dir")
    parser.add_argument("--key", help="this party's private key (PEM)")
    parser.add_argument("--ca", help="the CA certificate the peer must be signed by (PEM)")
    parser.set_defaults(tls_role=role)


def _tls(args: argparse.Namespace) -> Any:
    from ppir_itk.protocol.tls import TLS

    if args.tls_dir:
        tls, source = TLS.from_bundle(args.tls_dir), f"--tls-dir '{args.tls_dir}'"
    elif args.cert and args.key and args.ca:
        tls, source = TLS.from_files(args.cert, args.key, args.ca), f"--cert '{args.cert}'"
    else:
        raise InputError(
            "mutual TLS needs this party's certificate: give --tls-dir, or all of "
            "--cert, --key and --ca"
        )
    # Peers check the role on every session; this catches a site given another's bundle.
    if not tls.carries_only(args.tls_role):
        names = ", ".join(f"'{name}'" for name in tls.names())
        raise InputError(
            f"{source} holds a certificate for {names}, not for '{args.tls_role}' only "
            f"(the role 'ppir {args.command}' runs as)"
        )
    problem = tls.validity_problem()
    if problem is not None:
        raise InputError(f"{source} holds a certificate that {problem}")
    return tls


def _address(option: str, address: str) -> None:
    """Refuse an address that is not HOST:PORT, naming the option."""
    from ppir_itk.protocol.transport import parse_address

    try:
        parse_address(address)
    except InputError:
        raise InputError(f"{option} '{address}' is not HOST:PORT (e.g. 127.0.0.1:50051)") from None


class _Stopped(BaseException):
    """A signal asked this process to stop: raised in the main thread, so that every
    ``finally`` runs (children stopped, temporary files removed) before the exit."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


def _raise_stopped(signal_number: int, _frame: Any) -> None:
    raise _Stopped(signal_number)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # signals go to main only
        return _dispatch(args)
    previous = {number: signal.signal(number, _raise_stopped) for number in STOP_SIGNALS}
    try:
        return _dispatch(args)
    except (KeyboardInterrupt, _Stopped) as stop:  # before or after the log was set up
        print(f"ppir: {_stopped_by(stop)}", file=sys.stderr)
        return _stop_status(stop)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _stopped_by(stop: BaseException) -> str:
    if isinstance(stop, _Stopped):
        return f"stopped by {signal.Signals(stop.signal_number).name}"
    return "interrupted"


def _stop_status(stop: BaseException) -> int:
    return 128 + stop.signal_number if isinstance(stop, _Stopped) else EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    # serve and dealer log as the party they are (the lines operators and local mode read)
    program = {"serve": "ppir fixed party", "dealer": "ppir dealer"}.get(
        args.command, f"ppir {args.command}"
    )
    commands = {
        "register": _register,
        "demo": _demo,
        "bench": _bench,
        "serve": _serve,
        "dealer": _dealer,
        "pki": _pki,
    }
    with warnings.catch_warnings(), ExitStack() as logs:
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        # The result's one error line stays a print: it is the command's answer, like its
        # summary on stdout; what it says on the way goes through the log.
        try:
            logs.enter_context(
                command_logs(
                    program, verbose=args.verbose, quiet=args.quiet, log_file=_log_file(args)
                )
            )
            return commands[args.command](args)
        except InputError as error:
            print(f"ppir: error: {error}", file=sys.stderr)
            return EXIT_INPUT_ERROR
        except PeerError as error:
            print(f"ppir: error: {error}", file=sys.stderr)
            return EXIT_PEER_ERROR
        except (KeyboardInterrupt, _Stopped) as stop:  # everything started has been stopped
            _LOG.warning("%s", _stopped_by(stop))
            return _stop_status(stop)


def _log_file(args: argparse.Namespace) -> str | None:
    """``--log-file``, refused if it cannot be appended to."""
    path = args.log_file
    if path is not None:
        try:
            with open(path, "a", encoding="utf-8"):
                pass
        except OSError as error:
            raise InputError(f"--log-file '{path}' cannot be written: {error.strerror}") from None
    return path


def _show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    _LOG.warning("%s", message)


def _register(args: argparse.Namespace) -> int:
    _check_outputs(args)
    if (args.fixed is None) == (args.peer is None):
        raise InputError(
            "give either --fixed (local mode) or --peer (remote fixed party)"
            + (", not both" if args.fixed is not None else "")
        )
    if args.dealer is not None and args.peer is None:
        raise InputError("--dealer goes with --peer; local mode starts its own dealer")
    if args.fixed_mask is not None and args.peer is not None:
        raise InputError(
            "--fixed-mask goes with --fixed (local mode); a remote fixed party serves with "
            "its own mask ('ppir serve --fixed-mask' on its machine)"
        )
    if args.peer is not None:
        result, moving = _run_with_peer(args)
    else:
        result, moving = _run(args.fixed, args.moving, args)
    _write_outputs(result, moving, args.output_transform, args.output_warped, args.report)
    _summary(result, args.output_transform)
    return 0


def _run(fixed: Any, moving: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    from ppir_itk.image import check_large_enough
    from ppir_itk.registration import register
    from ppir_itk.wrapping.images import as_image_grid

    limits = _image_limits(args)
    fixed_grid = as_image_grid(fixed, name=f"fixed image '{fixed}'", limits=limits)
    moving_grid = as_image_grid(moving, name=f"moving image '{moving}'", limits=limits)
    options = _registration_options(args, fixed_grid.dimension)
    check_large_enough(
        fixed_grid.geometry,
        name=f"fixed image '{fixed}'",
        shrink_factor=max(options.shrink_factors),
    )
    check_large_enough(moving_grid.geometry, name=f"moving image '{moving}'")
    progress = _Progress(args, options)
    try:
        result = register(
            fixed_grid,
            moving_grid,
            options,
            transport="in-process" if args.in_process else "process",
            observers=progress.observers(),
        )
    finally:
        progress.close()
    return result, moving_grid


def _registration_options(
    args: argparse.Namespace, dimension: int, *, bench: bool = False
) -> RegistrationOptions:
    """The options from the arguments, refused here if wrong, before a fixed party starts;
    ``bench``: without those its rows set."""
    per_run: dict[str, Any] = (
        {"backend": "clear"}  # the rows set it; clear computes every metric
        if bench
        else dict(
            backend=args.backend,
            backend_parameters=_backend_parameters(args.backend_parameter),
            sampling=args.sampling,
            reveal_gms_indices=args.reveal_gms_indices,
            deadline=args.deadline,
        )
    )
    masks: dict[str, Any] = (
        {}
        if bench
        else {
            "fixed_mask": _mask_path("--fixed-mask", getattr(args, "fixed_mask", None)),
            "moving_mask": _mask_path("--moving-mask", args.moving_mask),
        }
    )
    options = RegistrationOptions(
        transform=args.transform,
        metric=args.metric,
        histogram_bins=args.histogram_bins,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        grid_spacing=args.grid_spacing,
        refine_grid=args.refine_grid,
        bending_energy_weight=args.bending_weight,
        bulk_transform=_bulk_transform(args, dimension),
        sampling_fraction=args.sampling_fraction,
        seed=args.seed,
        shrink_factors=args.shrink_factors,
        smoothing_sigmas=args.smoothing_sigmas,
        initializer=args.initializer,
        iterations=args.iterations,
        threads=args.threads,
        **per_run,
        **masks,
    )
    options.check_dimension(dimension)
    if not bench:
        _refuse_test_only_provider(options, in_process=getattr(args, "in_process", False))
    return options


def _mask_path(flag: str, path: str | None) -> str | None:
    """A mask's path, refused here if it is not a file (register() reads and checks it)."""
    if path is not None and not Path(path).is_file():
        raise InputError(
            f"{flag} '{path}' " + ("is not a file" if Path(path).exists() else "does not exist")
        )
    return path


def _backend_parameters(items: Sequence[str]) -> dict[str, str]:
    parameters = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise InputError(f"--backend-parameter '{item}' is not KEY=VALUE")
        parameters[key] = value
    return parameters


def _bulk_transform(args: argparse.Namespace, dimension: int) -> LinearTransform | None:
    """The linear transform of ``--initial-transform``, read and checked."""
    from ppir_itk.wrapping.transforms import read_transform

    if args.initial_transform is None:
        return None
    if transform_kind(args.transform).linear:
        raise InputError("--initial-transform goes with --transform bspline")
    path = Path(args.initial_transform)
    if not path.is_file():
        raise InputError(
            f"--initial-transform '{path}' "
            + ("is not a file" if path.exists() else "does not exist")
        )
    try:
        bulk = read_transform(path)
    except (OSError, ValueError) as error:
        raise InputError(f"--initial-transform '{path}': {str(error).rstrip('.')}") from None
    if not isinstance(bulk, LinearTransform):
        raise InputError(
            f"--initial-transform '{path}' holds a B-spline; the B-spline is "
            "composed with a linear transform only"
        )
    if bulk.dimension != dimension:
        raise InputError(
            f"--initial-transform '{path}' is {bulk.dimension}-D but the images are {dimension}-D"
        )
    return bulk


def _refuse_test_only_provider(options: RegistrationOptions, *, in_process: bool) -> None:
    """spdz's trusted-first-party provider, outside one process (before a dealer starts)."""
    from ppir_itk.backends.spdz import TFP_REFUSED, provider_of

    if (
        options.backend == "spdz"
        and provider_of(dict(options.backend_parameters)) == "tfp"
        and not in_process
    ):
        raise InputError(TFP_REFUSED)


def _run_with_peer(args: argparse.Namespace) -> tuple[Any, Any]:
    """The moving party alone: the fixed party is 'ppir serve' at --peer."""
    from ppir_itk.compose import connect
    from ppir_itk.image import check_large_enough
    from ppir_itk.registration import register_with
    from ppir_itk.wrapping.images import as_image_grid

    _address("--peer", args.peer)
    if args.dealer is not None:
        _address("--dealer", args.dealer)
    moving_name = f"moving image '{args.moving}'"
    moving_grid = as_image_grid(args.moving, name=moving_name, limits=_image_limits(args))
    check_large_enough(moving_grid.geometry, name=moving_name)
    options = _registration_options(args, moving_grid.dimension)
    session = connect(
        args.peer,
        _tls(args),
        deadline=options.deadline,
        dealer=args.dealer,
    )
    progress = _Progress(args, options)
    try:
        return register_with(
            session, moving_grid, options, observers=progress.observers()
        ), moving_grid
    finally:
        progress.close()


def _serve(args: argparse.Namespace) -> int:
    from ppir_itk.backends import check_backend_name
    from ppir_itk.compose import ledger_path, serve
    from ppir_itk.image import check_large_enough
    from ppir_itk.masks import as_mask
    from ppir_itk.wrapping.images import as_image_grid

    _address("--listen", args.listen)
    if args.max_sessions < 1 or args.budget < 1 or args.deadline <= 0 or args.session_limit <= 0:
        raise InputError(
            "--max-sessions, --budget, --deadline and --session-limit must be positive"
        )
    fractions = (
        args.grant_measurements,
        args.max_measurements_per_evaluation,
        args.max_measurements_per_level,
    )
    if not all(fraction > 0 for fraction in fractions):
        raise InputError(
            "--grant-measurements, --max-measurements-per-evaluation and "
            "--max-measurements-per-level must be positive fractions (inf: no cap)"
        )
    if not args.min_control_spacing >= 0:
        raise InputError(f"--min-control-spacing {args.min_control_spacing:g} must be 0 or more")
    if not (0 <= args.joint_term_noise < math.inf):
        raise InputError(f"--joint-term-noise {args.joint_term_noise:g} must be 0 or more, finite")
    if args.max_message_bytes < 1:
        raise InputError(f"--max-message-bytes {args.max_message_bytes} must be at least 1")
    backends = tuple(check_backend_name(name) for name in args.backends)
    metrics = tuple(dict.fromkeys(check_metric(name) for name in args.metrics))
    if args.dealer is not None:
        _address("--dealer", args.dealer)
    elif "spdz" in backends:
        raise InputError("backend 'spdz' needs --dealer HOST:PORT (the dealer this party trusts)")
    limits = _image_limits(args)
    tls = _tls(args)
    fixed_name = f"fixed image '{args.fixed}'"
    fixed = as_image_grid(args.fixed, name=fixed_name, limits=limits)
    check_large_enough(fixed.geometry, name=fixed_name)
    fixed_mask = None
    if args.fixed_mask is not None:
        fixed_mask = as_mask(
            _mask_path("--fixed-mask", args.fixed_mask),
            name=f"fixed mask '{args.fixed_mask}'",
            dimension=fixed.dimension,
        )
    serve(
        fixed,
        args.listen,
        tls,
        backends=backends,
        metrics=metrics,
        evaluation_budget=args.budget,
        measurement_grant=args.grant_measurements,
        max_measurements_per_evaluation=args.max_measurements_per_evaluation,
        max_measurements_per_level=args.max_measurements_per_level,
        min_control_spacing=args.min_control_spacing,
        joint_term_noise=args.joint_term_noise,
        ledger=ledger_path(args.fixed, args.ledger),
        max_sessions=args.max_sessions,
        deadline=args.deadline,
        session_limit=args.session_limit,
        dealer=args.dealer,
        ready_file=_ready_file(args.ready_file),
        local_mode_folder=args.local_mode_folder,
        max_message_bytes=args.max_message_bytes,
        fixed_mask=fixed_mask,
    )
    return 0


def _ready_file(path: str | None) -> str | None:
    if path is not None:
        _check_folder_of("--ready-file", path)
    return path


def _dealer(args: argparse.Namespace) -> int:
    from ppir_itk.compose import serve_dealer

    _address("--listen", args.listen)
    if args.max_sessions < 1 or args.deadline <= 0 or args.session_limit <= 0:
        raise InputError("--max-sessions, --deadline and --session-limit must be positive")
    caps = (
        args.max_message_bytes,
        args.max_request_values,
        args.max_pending,
        args.max_pending_bytes,
    )
    if min(caps) < 1:
        raise InputError(
            "--max-message-bytes, --max-request-values, --max-pending and "
            "--max-pending-bytes must be at least 1"
        )
    serve_dealer(
        args.listen,
        _tls(args),
        max_sessions=args.max_sessions,
        deadline=args.deadline,
        session_limit=args.session_limit,
        ready_file=_ready_file(args.ready_file),
        local_mode_folder=args.local_mode_folder,
        max_message_bytes=args.max_message_bytes,
        max_request_values=args.max_request_values,
        max_pending=args.max_pending,
        max_pending_bytes=args.max_pending_bytes,
    )
    return 0


def _pki(args: argparse.Namespace) -> int:
    from ppir_itk.protocol.tls import CA_FOLDER, ROLES, init_pki

    if args.days < 1:
        raise InputError(f"--days {args.days} must be at least 1")
    if Path(args.directory).exists() and not Path(args.directory).is_dir():
        raise InputError(f"pki init directory '{args.directory}' is a file, not a directory")
    folder = init_pki(args.directory, days=args.days)
    print(
        f"CA written to {folder / CA_FOLDER} (it stays with whoever issues certificates); "
        f"one bundle per site, copy each to its site only: "
        + ", ".join(str(folder / role) for role in ROLES)
    )
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse bad output paths before any work is done."""
    # A B-spline after --initial-transform is written as a composite, which .mat cannot hold.
    composite = args.initial_transform is not None and not transform_kind(args.transform).linear
    check_transform_path(
        args.output_transform,
        composite=composite,
        name=f"--output-transform '{args.output_transform}'",
    )
    if args.output_warped is not None and not args.output_warped.endswith(IMAGE_OUTPUT_SUFFIXES):
        raise InputError(
            f"--output-warped '{args.output_warped}' must end in one of "
            f"{', '.join(IMAGE_OUTPUT_SUFFIXES)}"
        )
    for option, path in (
        ("--output-transform", args.output_transform),
        ("--output-warped", args.output_warped),
        ("--report", args.report),
    ):
        if path is not None and Path(path).is_dir():
            raise InputError(f"{option} '{path}' is a directory; give a file name")
        if path is not None:
            _check_folder_of(option, path)


def _check_folder_of(option: str, path: str) -> None:
    """Refuse a file to be written whose folder does not exist, naming the option."""
    if not Path(path).absolute().parent.is_dir():
        raise InputError(f"{option} '{path}': directory '{Path(path).parent}' does not exist")


def _write_outputs(
    result: Any,
    moving: Any,
    transform_path: str | None,
    warped_path: str | None,
    report_path: str | None,
) -> None:
    from ppir_itk.wrapping.images import write_atomically, write_image
    from ppir_itk.wrapping.transforms import write_transform

    if transform_path:
        write_transform(result.transform, transform_path)
    if warped_path:
        write_image(result.resample(moving), warped_path)
    if report_path:
        text = json.dumps(result.report(), indent=2)
        write_atomically(lambda tmp: Path(tmp).write_text(text), report_path)


def _summary(result: Any, transform_path: str | None) -> None:
    moving, fixed = result.parties["moving"], result.parties["fixed"]
    print(
        f"backend {result.backend}, protocol {result.protocol} ({result.scheme}; "
        f"{'private' if result.private else 'NOT private'}), "
        f"two parties over {result.transport}; moving party sent "
        f"{moving['bytes_sent'] / 1e6:.2f} MB, fixed party {fixed['bytes_sent'] / 1e6:.2f} MB"
    )
    if "dealer" in result.parties:
        print(f"dealer sent {result.parties['dealer']['bytes_sent'] / 1e6:.2f} MB to the parties")
    for party, lines in result.learned.items():
        for line in lines or ["nothing"]:
            print(f"{party} party received in the clear: {line}")
    if result.fixed_mask:
        counts = " ".join(str(level.points_inside_fixed_mask) for level in result.levels)
        print(
            "fixed mask (the fixed party's): points inside it and valid at each level's last "
            f"evaluation, which the moving party learned: {counts}"
        )
    if result.moving_mask:
        print("moving mask: used at every level")
    print(
        f"{result.transform.itk_name}: {result.iterations} iterations over "
        f"{len(result.levels)} levels, final metric {result.final_metric:.6g}, "
        f"{result.seconds:.2f} s"
    )
    import numpy as np

    parameters = result.transform.parameters
    if parameters.size > 12:  # a B-spline: thousands of coefficients say little here
        print(
            f"parameters: {parameters.size} control-point coefficients, largest "
            f"{np.abs(parameters).max():.4g} mm"
        )
    else:
        print("parameters: " + " ".join(f"{p:.6g}" for p in parameters))
    if transform_path:
        print(f"transform written to {transform_path}")


def _bench(args: argparse.Namespace) -> int:
    from ppir_itk.bench import SOLUTIONS, BenchSettings, run_bench, write_outputs
    from ppir_itk.wrapping.images import as_image_grid

    if (args.fixed is None) != (args.moving is None):
        raise InputError("give both --fixed and --moving, or neither (the demo pair)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}' is a file, not a directory")
    with resources.as_file(resources.files("ppir_itk") / "data") as folder:
        fixed_path = args.fixed or str(folder / "demo_fixed.mha")
        moving_path = args.moving or str(folder / "demo_moving.mha")
        limits = _image_limits(args)
        fixed = as_image_grid(fixed_path, name=f"fixed image '{fixed_path}'", limits=limits)
        moving = as_image_grid(moving_path, name=f"moving image '{moving_path}'", limits=limits)
    if fixed.dimension != moving.dimension:
        raise InputError(
            f"the fixed image is {fixed.dimension}-D and the moving image is "
            f"{moving.dimension}-D; both must have the same dimension"
        )
    settings = BenchSettings(
        repeats=args.repeats,
        time_cap=args.time_cap,
        solutions=args.backends or SOLUTIONS,
        samplings=args.sampling,
        registration=_registration_options(args, fixed.dimension, bench=True),
    )
    results = run_bench(fixed, moving, settings, say=_LOG.info)
    images = {
        role: {
            "path": str(path),
            "size": list(grid.geometry.size),
            "spacing": list(grid.geometry.spacing),
        }
        for role, path, grid in (("fixed", fixed_path, fixed), ("moving", moving_path, moving))
    }
    out.mkdir(parents=True, exist_ok=True)
    written = write_outputs(results, settings, fixed, moving, images, out)
    print((out / "table.md").read_text(encoding="utf-8"))
    print(f"{len(written)} files written to {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from ppir_itk.evaluation import displacement_rmse
    from ppir_itk.wrapping.transforms import read_transform

    if args.output_dir and not Path(args.output_dir).is_dir():
        raise InputError(f"--output-dir '{args.output_dir}' is not a directory")
    data = resources.files("ppir_itk") / "data"
    with resources.as_file(data) as folder:
        fixed, moving = folder / "demo_fixed.mha", folder / "demo_moving.mha"
        truth = read_transform(folder / "demo_truth.tfm")
        print("ppir demo: affine registration of a 2-D head phantom and an affinely moved copy")
        options = _parser().parse_args(
            [
                "register",
                "--fixed",
                str(fixed),
                "--moving",
                str(moving),
                "--output-transform",
                "x.tfm",
            ]
        )
        options.backend = args.backend
        options.threads = args.threads
        options.in_process = False
        options.quiet, options.progress_interval = args.quiet, args.progress_interval
        result, moving_grid = _run(fixed, moving, options)
    _summary(result, None)
    error = displacement_rmse(result.transform, truth, result.fixed_geometry)
    print(
        f"displacement RMSE against the known transform: {error:.4f} mm "
        f"(pixel spacing {np.min(result.fixed_geometry.spacing):g} mm)"
    )
    if args.output_dir:
        out = Path(args.output_dir)
        _write_outputs(
            result,
            moving_grid,
            str(out / "demo_transform.tfm"),
            str(out / "demo_warped.nii.gz"),
            str(out / "demo_report.json"),
        )
        print(f"outputs written to {out}")
    return 0


class _Progress:
    """A registration's progress on stderr, unless ``--quiet``.

    On a terminal, a tqdm bar per level. Elsewhere (a batch job, a service, a pipe) log
    lines: one as each level starts, and one every ``--progress-interval`` seconds from a
    timer thread (the level, iteration, metric and time so far), so that a long iteration
    or a level's set-up still shows the run is alive; with ``--verbose`` one per iteration
    too (debug).
    """

    def __init__(self, args: argparse.Namespace, options: RegistrationOptions) -> None:
        if not args.progress_interval > 0:
            raise InputError(f"--progress-interval {args.progress_interval:g} must be positive")
        self.mode = None if args.quiet else "bar" if sys.stderr.isatty() else "log"
        self.interval = args.progress_interval
        self.levels = len(options.shrink_factors)
        self.start = time.monotonic()
        self.bar: Any = None
        self.state = ""  # what the last line said, less the time
        self._said = self.start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def observers(self) -> dict[str, Any]:
        if self.mode is None:
            return {}
        return {"MultiResolutionIterationEvent": self._level, "IterationEvent": self._iteration}

    def _level(self, method: Any) -> None:
        level, limit = method.GetCurrentLevel(), method.optimizer.NumberOfIterations
        if self.mode == "bar":
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(
                total=limit,
                desc=f"level {level + 1}/{self.levels}",
                unit="it",
                leave=True,
                file=sys.stderr,
            )
            return
        self._say(f"level {level + 1}/{self.levels} started, at most {limit} iterations")
        self.state = f"level {level + 1}/{self.levels}, iteration 0/{limit}"
        if self._timer is None:
            self._timer = threading.Thread(target=self._beat, name="ppir-progress", daemon=True)
            self._timer.start()

    def _iteration(self, method: Any) -> None:
        metric = method.GetMetricValue()
        if self.mode == "bar":
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(metric=f"{metric:.4g}")
            return
        self.state = (
            f"level {method.GetCurrentLevel() + 1}/{self.levels}, iteration "
            f"{method.GetOptimizerIteration()}/{method.optimizer.NumberOfIterations}, "
            f"metric {metric:.6g}"
        )
        _LOG.debug("%s, %.1f s", self.state, time.monotonic() - self.start)

    def _beat(self) -> None:
        while not self._stop.wait(max(0.0, self._said + self.interval - time.monotonic())):
            if time.monotonic() >= self._said + self.interval:
                self._say(self.state)

    def _say(self, state: str) -> None:
        with self._lock:
            self._said = time.monotonic()
            _LOG.info("%s, %.1f s", state, self._said - self.start)

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


if __name__ == "__main__":
    sys.exit(main())
