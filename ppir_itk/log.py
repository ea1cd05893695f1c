"""Logs: the library's loggers, and the handlers the ``ppir`` command puts on them.

Every module logs to its own logger under ``ppir_itk`` (``logging.getLogger(__name__)``:
``ppir_itk.fixed_party``'s session lines, ``ppir_itk.cli``'s progress and warnings ...).
The package adds no handler but a ``NullHandler`` (``ppir_itk/__init__.py``), so a
Python caller routes the records with its own handlers. :func:`command_logs` is the
command line's set-up: one line per record on stderr (and in ``--log-file``), each with
an ISO 8601 timestamp in UTC, the level and the program::

    2026-12-02T03:12:45.031+00:00 INFO ppir fixed party: listening on 127.0.0.1:50051
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

PACKAGE = "ppir_itk"


class _Formatter(logging.Formatter):
    """``TIMESTAMP LEVEL PROGRAM: MESSAGE``, the timestamp ISO 8601 in UTC to the millisecond."""

    def __init__(self, program: str) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s " + program.replace("%", "%%") + ": %(message)s"
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        return moment.isoformat(timespec="milliseconds")


@contextmanager
def command_logs(
    program: str,
    *,
    verbose: bool = False,
    quiet: bool = False,
    log_file: str | os.PathLike | None = None,
) -> Iterator[None]:
    """The package's records on stderr, and appended to ``log_file``, while the block runs.

    stderr shows INFO and above (``verbose``: DEBUG too; ``quiet``: warnings and errors
    only); the file takes INFO and above (DEBUG with ``verbose``) whatever ``quiet`` says,
    so that a quiet service still keeps its log. Raises ``OSError`` if the file cannot be
    opened for appending.
    """
    detail = logging.DEBUG if verbose else logging.INFO
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(logging.WARNING if quiet else detail)
    handlers: list[logging.Handler] = [terminal]
    if log_file is not None:
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.setLevel(detail)
        handlers.append(file)
    logger = logging.getLogger(PACKAGE)
    level = logger.level
    logger.setLevel(min(handler.level for handler in handlers))
    for handler in handlers:
        handler.setFormatter(_Formatter(program))
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)
