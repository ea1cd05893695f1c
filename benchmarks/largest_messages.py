"""The largest message the moving party sends the fixed party, per backend, in real runs.

    python benchmarks/largest_messages.py [--fixed F --moving M] [--size 64] [--backends ...]

With ``--fixed``/``--moving`` (e.g. ``../shared/data/brain-affine-pair``'s template.png
and moving.png) it registers that pair (affine, levels 8 4 2 1); otherwise a generated
3-D head phantom of ``--size``^3 and a moved copy (affine, levels 4 2 1). Each backend
runs through the two-party runtime (the fixed party in its own process) while a tap
records every envelope this process sends; it prints the largest one to the fixed party
(which is what ``ppir serve --max-message-bytes`` must admit), its kind, and the number
of fixed-image voxels, so that the bytes per voxel can be read off.
"""

from __future__ import annotations

import argparse
import warnings

import ppir_itk
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import tapped
from ppir_itk.protocol.messages import Reassembler, body
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.images import as_image_grid

RUNS = {
    "clear-gms": ("clear", {}, dict(sampling="gms", reveal_gms_indices=True)),
    "he": ("he", {}, {}),
    "paper-v1": ("he", {"protocol": "paper-v1"}, {}),
    "paper-v2": ("he", {"protocol": "paper-v2"}, {}),
    "spdz": ("spdz", {}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixed")
    parser.add_argument("--moving")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=list(RUNS))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.fixed:
        fixed = as_image_grid(args.fixed, name="fixed")
        moving = as_image_grid(args.moving, name="moving")
        schedule = dict(shrink_factors=[8, 4, 2, 1], smoothing_sigmas=[4, 2, 1, 0])
    else:
        fixed = head_phantom((args.size,) * 3)
        truth = make_transform("affine", 3)
        truth.center = fixed.geometry.center()
        truth.parameters = [1.03, 0.02, 0.0, -0.02, 0.98, 0.01, 0.0, 0.01, 1.0, 1.5, -1.0, 0.5]
        moving = moved_copy(fixed, truth)
        schedule = dict(shrink_factors=[4, 2, 1], smoothing_sigmas=[2, 1, 0])
    voxels = fixed.geometry.number_of_points
    for name in args.backends:
        backend, parameters, extra = RUNS[name]
        largest = LargestSent()
        with tapped(largest):
            ppir_itk.register(
                fixed,
                moving,
                transform="affine",
                backend=backend,
                backend_parameters=parameters,
                iterations=3,
                deadline=600,
                **schedule,
                **extra,
            )
        print(
            f"{name}: largest message to the fixed party {largest.size} bytes "
            f"({largest.kind}); {voxels} voxels, {largest.size / voxels:.1f} bytes per voxel",
            flush=True,
        )


class LargestSent:
    """A tap (:func:`tapped`): the largest envelope this process sends the fixed party."""

    def __init__(self) -> None:
        self.size, self.kind = 0, ""
        self._reassembler = Reassembler()  # one session at a time: its frames come in order

    def __call__(self, direction: str, peer: str, data: bytes) -> None:
        if direction != "sent" or not peer.startswith("fixed party"):
            return
        frame = pb.Frame.FromString(data)
        if frame.WhichOneof("kind") == "heartbeat":
            return
        envelope = self._reassembler.push(frame)
        if envelope is not None and envelope.ByteSize() > self.size:
            self.size, self.kind = envelope.ByteSize(), _kind(envelope)


def _kind(envelope: pb.Envelope) -> str:
    if body(envelope) == "backend":
        return envelope.backend.WhichOneof("body") or "backend"
    return body(envelope)


if __name__ == "__main__":
    main()
