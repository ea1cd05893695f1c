"""Run a GIL-free kernel over fixed-size chunks of a point list on a thread pool.

Chunks have a fixed size that does not depend on the thread count, and
partial sums are added in chunk order. A registration is therefore
bit-identical for any ``threads`` setting, not only for a repeated one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ppir_itk.errors import InputError

CHUNK = 1 << 15

_threads = max(1, os.cpu_count() or 1)
_pool: ThreadPoolExecutor | None = None


def set_number_of_threads(threads: int | None) -> None:
    """Threads used by the kernels (``None``: one per core)."""
    global _threads, _pool
    threads = max(1, os.cpu_count() or 1) if threads is None else int(threads)
    if threads < 1:
        raise InputError(f"the number of threads must be at least 1, not {threads}")
    if threads != _threads and _pool is not None:
        _pool.shutdown()
        _pool = None
    _threads = threads


def get_number_of_threads() -> int:
    return _threads


def _ranges(n: int) -> list[tuple[int, int]]:
    return [(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK)]


def for_chunks(task: Callable[[int, int], object], n: int) -> list:
    """Call ``task(start, stop)`` for every chunk of ``range(n)``; results in chunk order."""
    global _pool
    ranges = _ranges(n)
    if _threads == 1 or len(ranges) == 1:
        return [task(start, stop) for start, stop in ranges]
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads, thread_name_prefix="ppir-kernel")
    return list(_pool.map(lambda r: task(*r), ranges))


def sum_chunks(task: Callable[[int, int, np.ndarray], None], n: int, shape: tuple) -> np.ndarray:
    """Sum ``task(start, stop, out)``'s partial results over chunks, in chunk order."""

    def run(start: int, stop: int) -> np.ndarray:
        out = np.zeros(shape)
        task(start, stop, out)
        return out

    total = np.zeros(shape)
    for partial in for_chunks(run, n):
        total += partial
    return total
