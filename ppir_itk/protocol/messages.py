"""Typed messages on the wire: numpy arrays and geometry in, framing with size limits.

Everything that crosses between the parties is a ``ppir.v4.Envelope``
(``ppir.proto``). This module converts arrays and geometry to and from their
protobuf form and cuts envelopes into frames:

- an envelope that fits in one frame travels as ``Frame(envelope=...)``;
- a larger one travels as ``Chunk`` frames; the first declares the total size,
  which the receiver checks against its limit *before* allocating anything.

Arrays are rebuilt with ``numpy.frombuffer`` from a whitelist of dtypes after
checking that the byte count matches the declared shape: nothing received is
executed or unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, TypeAlias

import numpy as np

from ppir_itk.image import GridGeometry
from ppir_itk.protocol import ppir_pb2 as pb

PROTOCOL_VERSION = 4  # Hello's and DealerHello's version; also ppir.proto's package, ppir.v4
SERVICE_PACKAGE = f"ppir.v{PROTOCOL_VERSION}"  # the gRPC services' package
FIXED_PARTY_SERVICE = f"{SERVICE_PACKAGE}.FixedParty"
DEALER_SERVICE = f"{SERVICE_PACKAGE}.Dealer"
FRAME_BYTES = 1 << 20  # payload per gRPC message
MAX_GRPC_MESSAGE = FRAME_BYTES + (64 << 10)  # gRPC refuses anything larger before parsing it
DEFAULT_MAX_ENVELOPE = 2 << 30  # a whole message (e.g. a 3-D level image in clear)
# What a serving party accepts from its client by default (--max-message-bytes). The
# largest message a moving party sends is one evaluation's products: 40 bytes per fixed
# voxel for spdz in 3-D (84 MB for a 128^3 volume), 12.6 for paper-v1, a constant 0.67 MB
# for he packed, and 360 for paper-v2 (20 MB for the 2-D brain pair; beyond about 700k
# voxels it needs more, and the default policy refuses paper-v2 anyway), measured with
# benchmarks/largest_messages.py. The dealer is only ever sent small requests.
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
DEALER_MAX_MESSAGE_BYTES = FRAME_BYTES  # one frame: no chunked message is accepted
# What the dealer holds (ppir dealer --max-request-values, --max-pending,
# --max-pending-bytes). A 3-D level of 128^3 points asks 5 x 2^21 values per triple
# request and holds 2 x 2^21 per mask: 80 and 32 MiB. A token holds two masks (a third
# while the next level's is dealt) and about one batch (the parties ask in step): some
# 260 MiB, so 1 GiB holds four such registrations at once (the dealer's 8 sessions). A
# mask is a seed on the wire, so only what the dealer holds bounds its size; a level of
# 11.85 M points holds 190 MB of mask and asks triples in chunks (SPDZ_CHUNK_VALUES).
DEALER_MAX_REQUEST_VALUES = 1 << 25  # ring elements per triple request
# spdz streams a level in column chunks of at most this many ring elements per message
# and per triple request (128 MiB): half the dealer's request limit and of what a fixed
# party accepts by default, so that no image size meets either.
SPDZ_CHUNK_VALUES = 1 << 24
DEALER_MAX_PENDING = 8  # batches one party may be ahead of the other, per token
DEALER_MAX_PENDING_BYTES = 1 << 30  # masks and batches held for all tokens together
DTYPES = {"float64": np.float64, "float32": np.float32, "int64": np.int64, "uint8": np.uint8}


class ProtocolError(Exception):
    """The peer sent something that does not fit the protocol (one sentence)."""


def _wire_fields(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    name = array.dtype.name
    if name not in DTYPES:
        raise TypeError(f"arrays of dtype {name} are not sent on the wire")
    return {"dtype": name, "shape": list(array.shape), "data": array.tobytes()}


def array_to_pb(array: np.ndarray) -> pb.Array:
    return pb.Array(**_wire_fields(array))


def add_array(arrays: Any, array: np.ndarray) -> None:
    """Append ``array`` to a message's repeated ``Array`` field, built in place: its bytes
    are copied in once, where a ``pb.Array`` made first (:func:`array_to_pb`) is copied
    again into each message that encloses it (some 5x the time for 50 MB)."""
    arrays.add(**_wire_fields(array))


def array_from_pb(message: pb.Array, *, max_elements: int | None = None) -> np.ndarray:
    """The array a peer sent, checked against its declared dtype and shape."""
    dtype = DTYPES.get(message.dtype)
    if dtype is None:
        raise ProtocolError(f"an array has the unknown dtype '{message.dtype[:20]}'")
    shape = tuple(int(s) for s in message.shape)
    itemsize = np.dtype(dtype).itemsize
    # Exact products (an int64 one wraps round to a small count); numpy refuses dimensions
    # spanning more bytes than it addresses even when another dimension is 0.
    if (
        any(s < 0 for s in shape)
        or len(shape) > 4
        or math.prod(max(s, 1) for s in shape) * itemsize >= 1 << 63
    ):
        raise ProtocolError(f"an array has the impossible shape {shape[:5]}")  # one short line
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise ProtocolError(f"an array has {count} elements; at most {max_elements} fit here")
    if len(message.data) != count * itemsize:
        raise ProtocolError(
            f"an array declares shape {shape} of {message.dtype} but carries "
            f"{len(message.data)} bytes"
        )
    return np.frombuffer(message.data, dtype=dtype).reshape(shape)


def geometry_to_pb(geometry: GridGeometry) -> pb.Geometry:
    return pb.Geometry(
        size=list(geometry.size),
        spacing=list(geometry.spacing),
        origin=list(geometry.origin),
        direction=list(geometry.direction),
    )


def geometry_from_pb(message: pb.Geometry) -> GridGeometry:
    try:
        return GridGeometry(
            size=tuple(int(s) for s in message.size),
            spacing=tuple(float(s) for s in message.spacing),
            origin=tuple(float(o) for o in message.origin),
            direction=tuple(float(v) for v in message.direction),
        )
    except ValueError as error:
        raise ProtocolError(f"the peer's grid geometry is invalid: {error}") from None


def body(envelope: pb.Envelope) -> str:
    """The name of the message an envelope holds (``"hello"``, ``"backend"``, ...)."""
    return envelope.WhichOneof("body") or "nothing"


#: What a party sends: an envelope, or a backend message that travels as ``Envelope(backend=)``.
Outgoing: TypeAlias = pb.Envelope | pb.BackendMessage

_LENGTH_DELIMITED = 2  # protobuf's wire type of bytes and embedded messages
_VARINT = 0
_FRAME_ENVELOPE = pb.Frame.DESCRIPTOR.fields_by_name["envelope"].number
_FRAME_CHUNK = pb.Frame.DESCRIPTOR.fields_by_name["chunk"].number
_ENVELOPE_BACKEND = pb.Envelope.DESCRIPTOR.fields_by_name["backend"].number
_CHUNK_TOTAL_SIZE = pb.Chunk.DESCRIPTOR.fields_by_name["total_size"].number
_CHUNK_DATA = pb.Chunk.DESCRIPTOR.fields_by_name["data"].number
_CHUNK_LAST = pb.Chunk.DESCRIPTOR.fields_by_name["last"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _delimited(number: int, length: int) -> bytes:
    """The key and length that open field ``number`` of ``length`` bytes (a message or bytes)."""
    return _key(number, _LENGTH_DELIMITED) + _varint(length)


def to_frames(message: Outgoing) -> Iterator[bytes]:
    """The serialised frames that carry ``message`` (a backend message: as the envelope
    ``Envelope(backend=message)``), each as gRPC sends it.

    The envelope is serialised once and its bytes are cut into frames: protobuf's wire
    format of a message is its fields' keys, lengths and bytes one after the other, so a
    frame is its field's key and length before the bytes it carries (what
    ``Frame.SerializeToString`` writes; ``tests/test_messages.py`` checks it). A backend
    message is never copied into an envelope first: megabytes of shares would be copied
    twice more, and serialised twice (``ByteSize`` serialises too).
    """
    body = message.SerializeToString()
    head = b""
    if isinstance(message, pb.BackendMessage):
        head = _delimited(_ENVELOPE_BACKEND, len(body))
    size = len(head) + len(body)
    if size <= FRAME_BYTES:
        yield b"".join((_delimited(_FRAME_ENVELOPE, size), head, body))
        return
    view = memoryview(body)
    for start in range(0, size, FRAME_BYTES):
        stop = min(start + FRAME_BYTES, size)
        data: list[bytes | memoryview] = [head[start:stop]] if start < len(head) else []
        data.append(view[max(start - len(head), 0) : stop - len(head)])
        total = _key(_CHUNK_TOTAL_SIZE, _VARINT) + _varint(size)
        last = _key(_CHUNK_LAST, _VARINT) + b"\x01" if stop == size else b""
        chunk_length = len(total) + len(_delimited(_CHUNK_DATA, stop - start)) + stop - start
        chunk_length += len(last)
        yield b"".join(
            (
                _delimited(_FRAME_CHUNK, chunk_length),
                total,
                _delimited(_CHUNK_DATA, stop - start),
                *data,
                last,
            )
        )


class MessageTooLarge(ProtocolError):
    """A chunked message declared more bytes than the receiver accepts."""


class Reassembler:
    """Turns incoming frames back into envelopes, enforcing the size limit.

    A chunked message's parts are kept as received and joined once, when the last one
    arrives (growing one buffer would reallocate, and hold up to twice the bytes, as it
    goes); :meth:`release` drops a message cut off half way. ``option`` names the setting
    that raises ``max_envelope``, for the refusal's sentence.
    """

    def __init__(self, max_envelope: int = DEFAULT_MAX_ENVELOPE, option: str | None = None) -> None:
        self.max_envelope = max_envelope
        self.option = option
        self._parts: list[bytes] | None = None
        self._received = 0
        self._expected = 0

    @property
    def held(self) -> int:
        """Bytes kept of an unfinished chunked message."""
        return self._received

    def release(self) -> None:
        """Drop the parts of an unfinished message (its sender is gone)."""
        self._parts, self._received, self._expected = None, 0, 0

    def push(self, frame: pb.Frame) -> pb.Envelope | None:
        """Add a frame; returns the envelope once it is complete."""
        kind = frame.WhichOneof("kind")
        if kind == "envelope":
            if self._parts is not None:
                raise ProtocolError("a message arrived in the middle of a chunked message")
            return frame.envelope
        if kind != "chunk":
            raise ProtocolError("an empty frame arrived")
        chunk = frame.chunk
        if self._parts is None:
            if chunk.total_size > self.max_envelope:
                raise MessageTooLarge(
                    f"a message of {chunk.total_size} bytes exceeds the limit of "
                    f"{self.max_envelope} bytes"
                    + (f" ({self.option} raises it)" if self.option else "")
                )
            self._parts, self._received, self._expected = [], 0, chunk.total_size
        elif chunk.total_size != self._expected:
            raise ProtocolError("the chunks of a message disagree on its size")
        if self._received + len(chunk.data) > self._expected:
            raise ProtocolError("a chunked message is longer than it declared")
        self._parts.append(chunk.data)
        self._received += len(chunk.data)
        if not chunk.last:
            return None
        parts, received, expected = self._parts, self._received, self._expected
        self.release()
        if received != expected:
            raise ProtocolError("a chunked message is shorter than it declared")
        data = b"".join(parts)
        del parts  # the parts go before the envelope is parsed: one copy at a time
        envelope = pb.Envelope()
        try:
            envelope.ParseFromString(data)
        except Exception:  # protobuf's DecodeError and friends
            raise ProtocolError("a chunked message is not a valid protocol message") from None
        return envelope
