"""The frames a channel hands gRPC: protobuf's own encoding, made from one serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import FRAME_BYTES, Reassembler, array_to_pb, to_frames


def _protobufs_frames(envelope: pb.Envelope) -> list[bytes]:
    """The frames as protobuf itself serialises them (the encoding to_frames writes)."""
    data = envelope.SerializeToString()
    if len(data) <= FRAME_BYTES:
        return [pb.Frame(envelope=envelope).SerializeToString()]
    return [
        pb.Frame(
            chunk=pb.Chunk(
                total_size=len(data),
                data=data[start : start + FRAME_BYTES],
                last=start + FRAME_BYTES >= len(data),
            )
        ).SerializeToString()
        for start in range(0, len(data), FRAME_BYTES)
    ]


def _backend(values: int) -> pb.BackendMessage:
    rng = np.random.default_rng(values)
    shares = [array_to_pb(rng.integers(0, 2**63, values, dtype=np.int64)) for _ in range(2)]
    return pb.BackendMessage(spdz_mattes_step=pb.SpdzMattesStep(shares=shares))


# Sizes around one frame and its chunks: the envelope's few bytes of key and length decide
# whether a message just fits, and where the first chunk ends.
@pytest.mark.parametrize("values", [0, 1, 65_530, 65_536, 131_060, 131_072, 200_000, 400_001])
def test_frames_are_protobufs_own_encoding(values):
    backend = _backend(values)
    envelope = pb.Envelope(backend=backend)
    expected = _protobufs_frames(envelope)
    assert list(to_frames(backend)) == expected  # a backend message, as its envelope
    assert list(to_frames(envelope)) == expected
    reassembler = Reassembler()
    received = [reassembler.push(pb.Frame.FromString(frame)) for frame in expected]
    assert received[:-1] == [None] * (len(expected) - 1)
    assert received[-1] == envelope


def test_an_envelope_of_another_kind_is_framed_as_it_is():
    envelope = pb.Envelope(abort=pb.Abort(reason="x" * (3 * FRAME_BYTES)))
    assert list(to_frames(envelope)) == _protobufs_frames(envelope)
