"""The dealer: masks and Beaver triples over Z_2^64, each party's part, over mutual TLS."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ppir_itk
from ppir_itk.dealer import DealerServer, TriplePool
from ppir_itk.dealer_client import mask_values, moving_triples, open_dealer
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError, array_from_pb
from ppir_itk.randomness import expand
from ppir_itk.roles import FIXED, MOVING

ROWS = [0, 0, 0, 1]  # three rows on the first mask row, one on the second (as spdz in 2-D)


def _assert_uniform(values: np.ndarray) -> None:
    """About half of the top bits set, as for uniform ring elements."""
    assert 0.47 < (values.view(np.uint64) >> np.uint64(63)).mean() < 0.53


def _assert_triple(mask: np.ndarray, moving: tuple, fixed_c: np.ndarray) -> None:
    a, c_moving = (x.view(np.uint64) for x in moving)
    np.testing.assert_array_equal(
        a * mask.view(np.uint64)[ROWS], c_moving + fixed_c.view(np.uint64)
    )


def test_expand_is_a_deterministic_uniform_stream():
    seed = os.urandom(32)
    np.testing.assert_array_equal(expand(seed, 1000), expand(seed, 2000)[:1000])
    _assert_uniform(expand(seed, 20000))
    assert not np.array_equal(expand(seed, 100), expand(os.urandom(32), 100))
    with pytest.raises(ProtocolError, match="32 bytes"):
        expand(b"short", 10)


def test_masks_and_triples_reconstruct_and_each_part_is_uniform():
    pool, token, count = TriplePool(), os.urandom(16), 5000
    masks = pool.masks(token, FIXED, pb.MaskRequest(sequence=0, rows=2, count=count))
    mask = mask_values(masks.seed, 2, count)
    request = pb.TripleRequest(sequence=0, count=count, mask_sequence=0, mask_rows=ROWS)
    moving = moving_triples(pool.triples(token, MOVING, request).seed, len(ROWS), count)
    fixed_c = array_from_pb(pool.triples(token, FIXED, request).c)
    _assert_triple(mask, moving, fixed_c)
    for part in (mask, *moving, fixed_c):
        _assert_uniform(part)


def test_pool_refuses_misuse():
    pool, token = TriplePool(), os.urandom(16)
    with pytest.raises(ProtocolError, match="fixed party only"):
        pool.masks(token, MOVING, pb.MaskRequest(sequence=0, rows=2, count=5))
    with pytest.raises(ProtocolError, match="does not hold"):
        pool.triples(
            token, MOVING, pb.TripleRequest(sequence=0, count=5, mask_sequence=0, mask_rows=[0])
        )
    pool.masks(token, FIXED, pb.MaskRequest(sequence=0, rows=2, count=5))
    with pytest.raises(ProtocolError, match="already dealt"):
        pool.masks(token, FIXED, pb.MaskRequest(sequence=0, rows=2, count=5))
    request = pb.TripleRequest(sequence=0, count=5, mask_sequence=0, mask_rows=[0, 1])
    pool.triples(token, MOVING, request)
    with pytest.raises(ProtocolError, match="already taken"):
        pool.triples(token, MOVING, request)
    with pytest.raises(ProtocolError, match="asked differently"):
        pool.triples(
            token, FIXED, pb.TripleRequest(sequence=0, count=5, mask_sequence=0, mask_rows=[1, 1])
        )
    with pytest.raises(ProtocolError, match="rows"):
        pool.masks(token, FIXED, pb.MaskRequest(sequence=1, rows=0, count=5))
    # a mask is a seed on the wire: what the dealer can hold bounds it, not the request limit
    with pytest.raises(ProtocolError, match="cannot keep"):
        pool.masks(token, FIXED, pb.MaskRequest(sequence=1, rows=2, count=1 << 30))
    with pytest.raises(ProtocolError, match="at most 33554432 values"):
        pool.triples(
            token, MOVING, pb.TripleRequest(sequence=1, count=1 << 24, mask_rows=[0, 0, 1])
        )
    with pytest.raises(ProtocolError, match="columns 3 to 6 of mask 0"):
        pool.triples(
            token,
            MOVING,
            pb.TripleRequest(sequence=1, count=3, mask_sequence=0, mask_rows=[0], mask_start=3),
        )


def test_triples_on_column_chunks_of_a_mask_reconstruct():
    # a level streams its triples in column chunks: each chunk's c is a b[rows, chunk]
    pool, token, count = TriplePool(), os.urandom(16), 5000
    masks = pool.masks(token, FIXED, pb.MaskRequest(sequence=0, rows=2, count=count))
    mask = mask_values(masks.seed, 2, count)
    for sequence, (start, stop) in enumerate([(0, 2048), (2048, 4096), (4096, 5000)]):
        request = pb.TripleRequest(
            sequence=sequence,
            count=stop - start,
            mask_sequence=0,
            mask_rows=ROWS,
            mask_start=start,
        )
        moving = moving_triples(pool.triples(token, MOVING, request).seed, len(ROWS), stop - start)
        fixed_c = array_from_pb(pool.triples(token, FIXED, request).c)
        _assert_triple(mask[:, start:stop], moving, fixed_c)


@pytest.fixture
def dealer(tmp_path):
    pki = ppir_itk.init_pki(tmp_path / "pki")
    lines: list[str] = []
    server = DealerServer(
        "127.0.0.1:0", ppir_itk.TLS.for_role(pki, "dealer"), deadline=5, log=lines.append
    ).start()
    server.pki, server.lines = pki, lines
    yield server
    server.stop(grace=None)


def test_both_parties_get_matching_parts_over_the_wire(dealer):
    token = os.urandom(32)
    moving, fixed = (
        open_dealer(dealer.address, ppir_itk.TLS.for_role(dealer.pki, role), token)
        for role in ("moving-party", "fixed-party")
    )
    assert (moving.party, fixed.party) == (MOVING, FIXED)
    for level, count in ((0, 1000), (1, 70000)):  # the second level's c travels in chunks
        mask = fixed.masks(level, 2, count)
        for sequence in (2 * level, 2 * level + 1):
            moving_part = moving.post_triples(sequence, count, level, ROWS)
            fixed_part = fixed.post_triples(sequence, count, level, ROWS)
            _assert_triple(mask, moving_part(), fixed_part()[1])
    moving.close()
    fixed.close()
    assert dealer.pool.values_dealt == 2 * (1000 + 70000) + 2 * len(ROWS) * (1000 + 70000)


def test_only_the_two_parties_from_the_ca_are_served(dealer, tmp_path):
    with pytest.raises(ppir_itk.PeerError):
        open_dealer(
            dealer.address, ppir_itk.TLS.for_role(dealer.pki, "dealer"), os.urandom(16), deadline=5
        )
    other = ppir_itk.init_pki(tmp_path / "other", ca_name="another CA")
    with pytest.raises(ppir_itk.PeerError):
        open_dealer(
            dealer.address, ppir_itk.TLS.for_role(other, "moving-party"), os.urandom(16), deadline=5
        )
    assert not [line for line in dealer.lines if "opened" in line]


def test_ppir_dealer_command_listens(tmp_path):
    pki = ppir_itk.init_pki(tmp_path / "pki")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ppir_itk.cli",
            "dealer",
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            str(pki / "dealer"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        line = process.stderr.readline()
        assert "ppir dealer: listening on 127.0.0.1:" in line
        address = line.rsplit(" ", 1)[1].strip()
        client = open_dealer(address, ppir_itk.TLS.for_role(pki, "fixed-party"), os.urandom(16))
        assert client.masks(0, 2, 10).shape == (2, 10)
        client.close()
    finally:
        process.terminate()
        process.wait()
