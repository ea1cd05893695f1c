"""Traffic audit: is a party's image findable in what the other party received?

A :class:`TrafficRecorder` (installed with :func:`recording`) keeps every
frame the channels of this process send and receive
(:func:`ppir_itk.protocol.channel.tapped`). The moving party's process sees a
whole session: what it sends is exactly what the fixed party (or the dealer)
receives, and what it receives is exactly what they sent it.

:func:`audit` then looks for one party's image (a :class:`Secret`) in a list
of serialised envelopes, in two ways:

1. **Raw bytes.** Every 8-byte window of the image's pixels, at every byte
   offset, as stored and as float32 and float64 (and of the party's level
   images as float64, the form its backend computes with), is searched for
   at every byte offset of every envelope (arrays, ``values``, blobs, chunk
   boundaries removed). Windows with fewer than four non-zero bytes are left
   out: background pixels and exactly representable values such as 0.5 are
   also the encodings of public zeros, counts and exponents, so finding them
   proves nothing.
2. **Correlation.** Every numeric payload of an envelope (each ``Array``
   decoded by its dtype, each repeated number field such as ``values``) of
   length ``L >= n`` is compared with each of the secret's images of ``n``
   pixels (in the grid's linear order, x fastest), as the image could be
   laid out in it: the ``L // n`` consecutive blocks of ``n`` values (the
   first ``n`` values; the rows of a ``(k, n)`` array), the ``s`` interleaved
   vectors of stride ``s`` for every ``2 <= s <= min(L // n, 16)`` (``s`` vectors
   packed slot by slot: the packed CKKS protocol interleaves ``d (d + 1) + 2 <= 14``),
   and, for arrays of two or more dimensions, the first ``n`` values of every
   line along every axis. The largest absolute Pearson correlation must stay
   below :data:`CORRELATION_LIMIT`.

``bytes`` fields (``blob``: serialised keys and ciphertexts; dealer seeds) are
searched byte by byte only. Read as int64 words they are not noise but the
serialisation's structure (zstd blocks of RNS coefficients below 2^40 or
2^60): TenSEAL's ciphertexts correlate at up to 0.08 with images they have
nothing to do with (the fixed image shifted or transposed), so a Pearson limit
on them would measure the format, not the image.

For uniformly masked payloads the correlation is noise with standard
deviation ``1 / sqrt(n)``: an image of ``n >= 16384`` pixels puts the limit
at 6.4 standard deviations, so even 10^5 views leave a false alarm with
probability below 10^-4. Smaller images make the limit meaningless.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import tapped
from ppir_itk.protocol.messages import Reassembler, array_from_pb, body

CORRELATION_LIMIT = 0.05
MAX_STRIDE = 16
WINDOW = 8
MIN_NONZERO_BYTES = 4
_HASH_BITS = 22
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: mixes all 64 bits


class TrafficRecorder:
    """The frames this process's channels sent and received, in order, with their peer."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, str, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, direction: str, peer: str, frame: bytes) -> None:
        with self._lock:  # the tap is called from the channels' reader and writer threads
            self.frames.append((direction, peer, frame))

    def _matching(self, direction: str, peer: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(p, f) for d, p, f in self.frames if d == direction and p.startswith(peer)]

    def byte_count(self, direction: str, peer: str = "") -> int:
        """Payload bytes (serialised frames, heartbeats included) in ``direction`` with the
        peers whose name starts with ``peer``: what the channels' counters count."""
        return sum(len(frame) for _, frame in self._matching(direction, peer))

    def envelopes(self, direction: str, peer: str = "") -> list[bytes]:
        """The serialised envelopes in ``direction`` with peers named ``peer...``, chunked
        ones reassembled (heartbeats carry none)."""
        reassemblers: dict[str, Reassembler] = {}
        envelopes = []
        for name, data in self._matching(direction, peer):
            frame = pb.Frame.FromString(data)
            kind = frame.WhichOneof("kind")
            if kind == "heartbeat":
                continue
            if kind == "envelope":
                envelopes.append(frame.envelope.SerializeToString())
                continue
            whole = reassemblers.setdefault(name, Reassembler()).push(frame)
            if whole is not None:
                envelopes.append(whole.SerializeToString())
        return envelopes


@contextmanager
def recording() -> Iterator[TrafficRecorder]:
    """Record every frame of this process's channels while the context is open."""
    recorder = TrafficRecorder()
    with tapped(recorder):
        yield recorder


@dataclass(frozen=True)
class _WindowSet:
    sorted_windows: np.ndarray  # as uint64 words, repeats kept (searchsorted does not mind)
    table: np.ndarray  # hash buckets holding at least one window: a cheap first filter


@dataclass(frozen=True)
class Secret:
    """One party's image as the audit looks for it.

    ``windows``: the 8-byte windows that must not appear in any message;
    ``images``: name -> flattened values, each compared with every payload at
    least as long.
    """

    name: str
    windows: _WindowSet
    images: dict[str, np.ndarray]

    @classmethod
    def of(cls, name: str, stored: np.ndarray, derived: dict[str, np.ndarray]) -> Secret:
        """``stored``: the pixels as the party holds them; ``derived``: the images it computes
        from them (level images, warped copies), by name. Raw windows come from the stored
        pixels (as stored, float32, float64 and, for whole values in 0..255, uint8, as masks and
        8-bit images travel) and from the derived images as float64."""
        buffers = [
            stored.tobytes(),
            stored.astype(np.float32).tobytes(),
            stored.astype(np.float64).tobytes(),
        ]
        if np.array_equal(stored, np.clip(np.round(stored), 0, 255)):  # a mask, 8-bit pixels
            buffers.append(stored.astype(np.uint8).tobytes())
        buffers += [np.asarray(image, np.float64).tobytes() for image in derived.values()]
        images = {name: stored.ravel().astype(np.float64)}
        for label, image in derived.items():
            values = np.asarray(image, np.float64).ravel()
            if not any(np.array_equal(values, kept) for kept in images.values()):
                images[label] = values
        return cls(name, _windows(list(dict.fromkeys(buffers))), images)


@dataclass
class AuditReport:
    """What :func:`audit` found of one secret in one direction's envelopes."""

    secret: str
    messages: int
    window_hits: list[str] = field(default_factory=list)
    max_correlation: float = 0.0
    where: str = "no payload was long enough"
    views: int = 0

    @property
    def passed(self) -> bool:
        return not self.window_hits and self.max_correlation < CORRELATION_LIMIT

    def __str__(self) -> str:
        windows = (
            f"{len(self.window_hits)} window hit(s), first: {self.window_hits[0]}"
            if self.window_hits
            else "no window of its pixels"
        )
        return (
            f"{self.secret}: {windows}; max |r| = {self.max_correlation:.4f} "
            f"({self.where}) over {self.views} views of {self.messages} messages"
        )


def audit(envelopes: Sequence[bytes], secret: Secret) -> AuditReport:
    """Search ``envelopes`` (serialised) for ``secret`` (see the module docstring)."""
    report = AuditReport(secret.name, len(envelopes))
    targets = {label: _standardised(values) for label, values in secret.images.items()}
    for index, data in enumerate(envelopes):
        envelope = pb.Envelope.FromString(data)
        label = _describe(envelope)
        for offset in _window_hits(data, secret.windows):
            report.window_hits.append(f"message {index} ({label}) at byte {offset}")
        for path, values, shape in _numeric_payloads(envelope):
            for image, target in targets.items():
                n = target.size
                if values.size < n:
                    continue
                for view, correlations in _correlations(values, shape, target):
                    report.views += correlations.size
                    best = int(np.argmax(np.abs(correlations)))
                    if abs(correlations[best]) > report.max_correlation:
                        report.max_correlation = float(abs(correlations[best]))
                        report.where = (
                            f"message {index} ({label}) {path}, {view} #{best}, "
                            f"against {image} (n={n})"
                        )
    return report


# -- raw bytes ----------------------------------------------------------------------------------
def _words(data: bytes, start: int) -> np.ndarray:
    """The 8-byte little-endian words of ``data`` starting at offsets start, start + 8, ..."""
    return np.frombuffer(data, dtype="<u8", offset=start, count=(len(data) - start) // WINDOW)


def _hash(words: np.ndarray) -> np.ndarray:
    return ((words * _HASH_MULTIPLIER) >> np.uint64(64 - _HASH_BITS)).astype(np.intp)


def _windows(buffers: Sequence[bytes]) -> _WindowSet:
    """Every informative 8-byte window of ``buffers``, at every byte offset."""
    found = []
    for buffer in buffers:
        for start in range(min(WINDOW, len(buffer))):
            words = _words(buffer, start)
            nonzero = (words.view(np.uint8).reshape(-1, WINDOW) != 0).sum(axis=1)
            found.append(words[nonzero >= MIN_NONZERO_BYTES])
    windows = np.sort(np.concatenate(found)) if found else np.zeros(0, np.uint64)
    table = np.zeros(1 << _HASH_BITS, dtype=bool)
    table[_hash(windows)] = True
    return _WindowSet(windows, table)


def _window_hits(data: bytes, windows: _WindowSet) -> list[int]:
    """Byte offsets in ``data`` where one of ``windows`` starts."""
    if windows.sorted_windows.size == 0:
        return []
    hits: list[int] = []
    for start in range(min(WINDOW, len(data))):
        words = _words(data, start)
        candidates = np.flatnonzero(windows.table[_hash(words)])
        if candidates.size:
            where = np.searchsorted(windows.sorted_windows, words[candidates])
            where = np.minimum(where, windows.sorted_windows.size - 1)
            exact = candidates[windows.sorted_windows[where] == words[candidates]]
            hits.extend(int(start + WINDOW * i) for i in exact)
    return sorted(hits)


# -- numeric payloads ---------------------------------------------------------------------------
def _describe(envelope: pb.Envelope) -> str:
    kind = body(envelope)
    return f"backend:{envelope.backend.WhichOneof('body')}" if kind == "backend" else kind


def _numeric_payloads(message: Any, path: str = "") -> Iterator[tuple[str, np.ndarray, tuple]]:
    """(field path, values as float64, shape) of every numeric payload in ``message``:
    arrays and repeated numbers (bytes are opaque: see the module docstring)."""
    for descriptor, value in message.ListFields():
        name = f"{path}.{descriptor.name}" if path else descriptor.name
        items = list(value) if descriptor.is_repeated else [value]
        if descriptor.message_type is not None:
            if descriptor.message_type.GetOptions().map_entry:
                continue  # string maps (backend parameters)
            for position, item in enumerate(items):
                where = f"{name}[{position}]" if descriptor.is_repeated else name
                if descriptor.message_type is pb.Array.DESCRIPTOR:
                    array = array_from_pb(item)
                    yield where, array.astype(np.float64).ravel(), array.shape
                else:
                    yield from _numeric_payloads(item, where)
        elif descriptor.is_repeated and descriptor.cpp_type not in (
            descriptor.CPPTYPE_STRING,
            descriptor.CPPTYPE_BOOL,
        ):
            values = np.asarray(items, dtype=np.float64)
            yield name, values, values.shape


def _standardised(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean()
    return centred / np.linalg.norm(centred)


def _correlations(
    values: np.ndarray, shape: tuple, target: np.ndarray
) -> Iterator[tuple[str, np.ndarray]]:
    """Pearson correlations of ``target`` (standardised, n values) with the views of one
    payload ``values`` (flattened, L >= n) that could hold an image of n pixels."""
    n = target.size
    flat = np.where(np.isfinite(values), values, 0.0)
    blocks = flat.size // n
    yield "block", _pearson(flat[: blocks * n].reshape(blocks, n).T, target)
    for stride in range(2, min(blocks, MAX_STRIDE) + 1):
        yield f"stride {stride}", _pearson(flat[: stride * n].reshape(n, stride), target)
    if len(shape) >= 2:
        array = flat.reshape(shape)
        for axis, length in enumerate(shape):
            if length >= n:
                lines = np.moveaxis(array, axis, -1).reshape(-1, length)[:, :n]
                yield f"lines along axis {axis}", _pearson(lines.T, target)


def _pearson(columns: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Correlation of each column of ``columns`` (n x k) with ``target`` (standardised)."""
    centred = columns - columns.mean(axis=0)
    numerator = target @ centred
    spread = np.sqrt(np.einsum("ij,ij->j", centred, centred))
    return np.divide(numerator, spread, out=np.zeros_like(numerator), where=spread > 0)
