"""One spdz Mattes evaluation's cost: seconds per party, bytes each way, round trips.

    python benchmarks/spdz_mattes.py [--sizes 6500 100000] [--bins 32] [--evaluations 3]
        [--modes in-process tls]

For each n: a fixed image of n pixels (50 x 130 for 6,500, 250 x 400 for 100,000) whose
pixels are random bins in [0, B) (the fixed party's session hands them to the fixed side as
J until it computes the bins itself), random Parzen fields on the moving side (4 weights
summing to 1, derivatives, a 2-D gradient), the affine basis, one level of every point.

- ``in-process``: ``in_process_session`` (fixed party and dealer in this process); the
  fixed party's seconds are its ``handle`` calls, timed here;
- ``tls``: ``ppir serve`` and ``ppir dealer`` as child processes (local mode's
  ``spawn_fixed_party``), over gRPC with mutual TLS on loopback; the fixed party's
  seconds are its busy time for the level (``Closed.levels``: its evaluations and the
  level's ``F``), shared out over the evaluations.

Printed per evaluation (the mean of ``--evaluations`` after a first one, which asks
the dealer's first batch without a prefetch): the moving party's wall time, the fixed
party's seconds, payload bytes moving -> fixed and fixed -> moving (the moving party's
session counters), round trips, and the protocol's floor (the ring elements it must move,
8 bytes per Z_2^64 element and 16 per Z_2^128 one) with measured / floor:

- moving -> fixed: ``8 (3 B n + 2 d n + B^2) + 32 P (B^2 + B)``;
- fixed -> moving: ``8 (n + d n + 2 B^2) + 16 (1 + d outputs) + 32 P (B^2 + B)``;

with ``P = ring128.LOG_PRODUCTS + 1`` Beaver products per histogram cell (each opens
``x - a`` and ``y - b``: 2 x 16 bytes each way).
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

import numpy as np

import ppir_itk
from ppir_itk import ring128
from ppir_itk.backends.base import ParzenFields
from ppir_itk.backends.spdz_mattes import SPDZMattesFixedSide
from ppir_itk.compose import spawn_fixed_party
from ppir_itk.image import ImageGrid
from ppir_itk.metric_kinds import MetricSettings
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.parallel import set_number_of_threads
from ppir_itk.policy import FixedPolicy
from ppir_itk.pyramid import LevelSchedule

SHAPES = {6500: (50, 130), 100000: (250, 400)}


def fixed_image(count: int, bins: int) -> ImageGrid:
    shape = SHAPES.get(count, (count // 100, 100))
    rng = np.random.default_rng(1)
    return ImageGrid(rng.integers(0, bins, shape).astype(np.float64))


def fields(count: int, bins: int, seed: int) -> ParzenFields:
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.05, 1.0, (count, 4))
    weights /= weights.sum(axis=1, keepdims=True)
    derivatives = rng.normal(size=(count, 4))
    derivatives -= derivatives.mean(axis=1, keepdims=True)
    valid = np.ones(count, dtype=np.uint8)
    gradient = rng.normal(size=(count, 2))
    return ParzenFields(rng.integers(0, bins - 3, count), weights, derivatives, valid, gradient)


def floor_bytes(count: int, bins: int, dimension: int, outputs: int) -> tuple[int, int]:
    products = (ring128.LOG_PRODUCTS + 1) * (bins * bins + bins)
    moving = 8 * (3 * bins * count + 2 * dimension * count + bins * bins) + 32 * products
    fixed = (
        8 * (count + dimension * count + 2 * bins * bins)
        + 16 * (1 + dimension * outputs)
        + 32 * products
    )
    return moving, fixed


def run(mode: str, count: int, bins: int, evaluations: int) -> dict:
    fixed_seconds = [0.0]
    with ExitStack() as stack:
        if mode == "in-process":
            handle = SPDZMattesFixedSide.handle

            def timed(self, message):
                start = time.perf_counter()
                try:
                    return handle(self, message)
                finally:
                    fixed_seconds[0] += time.perf_counter() - start

            SPDZMattesFixedSide.handle = timed  # type: ignore[method-assign]
            stack.callback(setattr, SPDZMattesFixedSide, "handle", handle)
            session = ppir_itk.in_process_session(
                fixed_image(count, bins), FixedPolicy.holding_both_images(("spdz",))
            )
        else:
            child = stack.enter_context(
                spawn_fixed_party(fixed_image(count, bins), backends=("spdz",))
            )
            session = ppir_itk.connect(child.address, child.client_tls, dealer=child.dealer_address)
        party = MovingPartySession(session, "spdz", metric=MetricSettings("mattes", bins))
        party.start(LevelSchedule.from_lists([1], [0.0]), None)
        level = party.begin_level(0)()
        points = party.select_points(level)
        party.histogram_term(fields(count, bins, 0))  # the first batch: no prefetch yet
        fixed_seconds[0] = 0.0
        before = session.counters()
        start = time.perf_counter()
        for seed in range(1, evaluations + 1):
            party.histogram_term(fields(count, bins, seed))
        wall = (time.perf_counter() - start) / evaluations
        after = session.counters()
        round_trips = party.backend.round_trips
        closed = party.close()
        if mode == "tls":  # its busy time for the level, over its 1 + evaluations
            fixed_seconds[0] = closed.levels[-1].seconds * evaluations / (1 + evaluations)
    sent = (after.payload_bytes_sent - before.payload_bytes_sent) / evaluations
    received = (after.payload_bytes_received - before.payload_bytes_received) / evaluations
    floor = floor_bytes(count, bins, 2, points.linear_map.outputs)
    return {
        "moving s": wall,
        "fixed s": fixed_seconds[0] / evaluations,
        "sent": sent,
        "received": received,
        "floor": floor,
        "round trips": round_trips,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6500, 100000])
    parser.add_argument("--bins", type=int, default=32)
    parser.add_argument("--evaluations", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["in-process", "tls"])
    args = parser.parse_args()
    set_number_of_threads(1)
    print(
        f"{'mode':>10} {'n':>7} {'moving s':>9} {'fixed s':>8} {'MB m->f':>8} {'floor':>7} "
        f"{'x':>5} {'MB f->m':>8} {'floor':>7} {'x':>5} {'trips':>5}"
    )
    for mode in args.modes:
        for count in args.sizes:
            r = run(mode, count, args.bins, args.evaluations)
            (floor_sent, floor_received) = r["floor"]
            print(
                f"{mode:>10} {count:>7} {r['moving s']:>9.2f} {r['fixed s']:>8.2f} "
                f"{r['sent'] / 1e6:>8.2f} {floor_sent / 1e6:>7.2f} {r['sent'] / floor_sent:>5.2f} "
                f"{r['received'] / 1e6:>8.2f} {floor_received / 1e6:>7.2f} "
                f"{r['received'] / floor_received:>5.2f} {r['round trips']:>5}",
                flush=True,
            )


if __name__ == "__main__":
    main()
