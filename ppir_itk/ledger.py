"""The fixed party's ledger: linear measurements of its image granted to each client, on disk.

Each joint-term evaluation gives the moving party a few linear measurements of
the fixed image J (``FixedSide.measurements_per_evaluation``; docs/privacy.md). A
malicious moving party chooses their weights, so what it can recover is bounded
by how many it holds *in all*, over every session and level: the ledger counts
them per (client identity, fixed image fingerprint) in an SQLite file, and
:meth:`Ledger.charge` commits each evaluation's count before the answer that
reveals it leaves the fixed party. A restart, a crash between two answers or two
sessions at once therefore cannot hand out a measurement that is not counted.

- The client identity is the SHA-256 fingerprint of its certificate
  (:func:`ppir_itk.protocol.transport.certificate_fingerprint`), not its common
  name: every moving party a CA certifies is called ``moving-party``.
- The image fingerprint is the SHA-256 of its geometry and pixel bytes
  (:func:`image_fingerprint`): another image starts its own count.
- A level is named by its grid's size (``"64x64"``): the measurements of one level's
  grid are counted too, against the policy's per-level cap, in the same transaction.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from dataclasses import dataclass

import numpy as np

from ppir_itk.errors import InputError
from ppir_itk.image import ImageGrid

IN_MEMORY = ":memory:"  # a ledger for one server's lifetime (tests, servers built by hand)
# Seconds a charge waits for another process holding the file's write lock (SQLite's
# busy timeout): far longer than any one charge takes.
LOCK_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS granted (
    client TEXT NOT NULL,
    image TEXT NOT NULL,
    measurements INTEGER NOT NULL,
    PRIMARY KEY (client, image)
);
CREATE TABLE IF NOT EXISTS granted_per_level (
    client TEXT NOT NULL,
    image TEXT NOT NULL,
    level TEXT NOT NULL,
    measurements INTEGER NOT NULL,
    PRIMARY KEY (client, image, level)
);
"""


def image_fingerprint(image: ImageGrid) -> str:
    """SHA-256 (hex) of the image's geometry and pixel bytes (its dtype and shape included)."""
    digest = hashlib.sha256()
    geometry = image.geometry
    digest.update(np.asarray(geometry.size, dtype="<i8").tobytes())
    for values in (geometry.spacing, geometry.origin, geometry.direction):
        digest.update(np.asarray(values, dtype="<f8").tobytes())
    array = np.ascontiguousarray(image.array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Charge:
    """The outcome of :meth:`Ledger.charge`: whether it was granted, and the count after it."""

    granted: bool
    used: int  # measurements the client holds of this image (after the charge, if granted)
    level_used: int = 0  # of the level's grid (after the charge, if granted)
    refused_by: str | None = None  # "grant" or "level": the cap that refused it


class Ledger:
    """Measurements granted per (client, image), in an SQLite file (or in memory).

    Every charge is its own write transaction (``BEGIN IMMEDIATE``), so sessions on
    threads of one server, or servers in several processes sharing the file, never
    both spend the same remainder.
    """

    def __init__(self, path: str | os.PathLike = IN_MEMORY) -> None:
        self.path = str(path)
        # One connection shared by the server's session threads, behind a lock; other
        # processes are kept apart by SQLite's own file locks.
        self._lock = threading.Lock()
        try:
            self._connection = sqlite3.connect(
                self.path, timeout=LOCK_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._connection.executescript(_SCHEMA)
        except sqlite3.Error as error:  # a missing folder, no write permission, not SQLite
            raise InputError(f"cannot open the ledger '{self.path}': {error}") from None

    def used(self, client: str, image: str, level: str | None = None) -> int:
        """Measurements of ``image`` (of its ``level``'s grid) granted to ``client`` so far."""
        with self._lock:
            return self._used(client, image, level)

    def charge(
        self,
        client: str,
        image: str,
        count: int,
        cap: float,
        level: tuple[str, float] | None = None,
    ) -> Charge:
        """Grant ``count`` more measurements if the total stays within ``cap`` and, with
        ``level`` (its name and cap), the level's count within its cap, committed before
        this returns; otherwise grant nothing."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                used = self._used(client, image)
                level_used = 0 if level is None else self._used(client, image, level[0])
                refused_by = (
                    "grant"
                    if used + count > cap
                    else "level"
                    if level is not None and level_used + count > level[1]
                    else None
                )
                if refused_by is not None:
                    self._connection.execute("ROLLBACK")
                    return Charge(False, used, level_used, refused_by)
                self._connection.execute(
                    "INSERT INTO granted (client, image, measurements) VALUES (?, ?, ?) "
                    "ON CONFLICT (client, image) DO UPDATE SET measurements = measurements + ?",
                    (client, image, count, count),
                )
                if level is not None:
                    self._connection.execute(
                        "INSERT INTO granted_per_level (client, image, level, measurements) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (client, image, level) "
                        "DO UPDATE SET measurements = measurements + ?",
                        (client, image, level[0], count, count),
                    )
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            return Charge(True, used + count, level_used + count)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def _used(self, client: str, image: str, level: str | None = None) -> int:
        if level is None:
            row = self._connection.execute(
                "SELECT measurements FROM granted WHERE client = ? AND image = ?", (client, image)
            ).fetchone()
        else:
            row = self._connection.execute(
                "SELECT measurements FROM granted_per_level "
                "WHERE client = ? AND image = ? AND level = ?",
                (client, image, level),
            ).fetchone()
        return 0 if row is None else int(row[0])
