"""What a process holds, read from ``/proc`` (Linux): memory, descriptors, threads, children.

The tests of hostile load, memory caps and process lifecycle measure servers and local
children from outside, as an operator's tools would.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def status_bytes(pid: int, field: str) -> int:
    """``field`` of /proc/PID/status (``VmRSS`` now, ``VmHWM`` the peak), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def settled_descriptors(pid: int) -> int:
    """The descriptor count once it has not changed for a second (a session's connection
    is closed a moment after the session)."""
    count, since = descriptors(pid), time.monotonic()
    while time.monotonic() - since < 1.0:
        time.sleep(0.1)
        if (now := descriptors(pid)) != count:
            count, since = now, time.monotonic()
    return count


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
