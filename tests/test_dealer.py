"""The dealer: Beaver triples over Z_2^64, shares to each party, over mutual TLS."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ppir_itk
from ppir_itk.dealer import DealerClient, TriplePool, beaver_triples
from ppir_itk.protocol.messages import ProtocolError
from ppir_itk.protocol.transport import DealerServer


def _open(shares_0, shares_1):
    """Reconstruct a, b, c from both parties' shares (uint64 arithmetic wraps mod 2^64)."""
    return [x.view(np.uint64) + y.view(np.uint64) for x, y in zip(shares_0, shares_1, strict=True)]


def test_triples_reconstruct_and_shares_hide_them():
    first, second = beaver_triples(10000, np.random.default_rng(1))
    a, b, c = _open(first, second)
    np.testing.assert_array_equal(a * b, c)
    # A share alone is uniform: about half of the top bits set, and never the secret itself.
    for share, secret in zip(first, (a, b, c), strict=True):
        top = (share.view(np.uint64) >> np.uint64(63)).mean()
        assert 0.47 < top < 0.53
        assert not np.any(share.view(np.uint64) == secret)


def test_pool_pairs_the_parties_and_refuses_misuse():
    pool = TriplePool(seed=0)
    token = os.urandom(16)
    moving = pool.take(token, 0, sequence=0, count=5)
    with pytest.raises(ProtocolError, match="already taken"):
        pool.take(token, 0, sequence=0, count=5)
    with pytest.raises(ProtocolError, match="has 5 triples"):
        pool.take(token, 1, sequence=0, count=6)
    fixed = pool.take(token, 1, sequence=0, count=5)
    a, b, c = _open(moving, fixed)
    np.testing.assert_array_equal(a * b, c)
    with pytest.raises(ProtocolError, match="1 to"):
        pool.take(token, 0, sequence=1, count=0)


@pytest.fixture
def dealer(tmp_path):
    pki = ppir_itk.init_pki(tmp_path / "pki")
    lines: list[str] = []
    server = DealerServer("127.0.0.1:0", ppir_itk.TLS.for_role(pki, "dealer"), deadline=5,
                          log=lines.append).start()
    server.pki, server.lines = pki, lines
    yield server
    server.stop(grace=None)


def test_both_parties_get_matching_shares_over_the_wire(dealer):
    token = os.urandom(32)
    clients = [DealerClient(dealer.address, ppir_itk.TLS.for_role(dealer.pki, role), token)
               for role in ("moving-party", "fixed-party")]
    assert [client.party for client in clients] == [0, 1]
    for sequence, count in ((0, 1000), (1, 70000)):  # the second batch travels in chunks
        shares = [client.triples(sequence, count) for client in clients]
        a, b, c = _open(*shares)
        np.testing.assert_array_equal(a * b, c)
    for client in clients:
        client.close()
    assert dealer.pool.triples_dealt == 71000


def test_only_the_two_parties_from_the_ca_are_served(dealer, tmp_path):
    with pytest.raises(ppir_itk.PeerError):
        DealerClient(dealer.address, ppir_itk.TLS.for_role(dealer.pki, "dealer"), os.urandom(16),
                     deadline=5)
    other = ppir_itk.init_pki(tmp_path / "other", ca_name="another CA")
    with pytest.raises(ppir_itk.PeerError):
        DealerClient(dealer.address, ppir_itk.TLS.for_role(other, "moving-party"),
                     os.urandom(16), deadline=5)
    assert not [line for line in dealer.lines if "opened" in line]


def test_ppir_dealer_command_listens(tmp_path):
    pki = ppir_itk.init_pki(tmp_path / "pki")
    process = subprocess.Popen([sys.executable, "-m", "ppir_itk.cli", "dealer", "--listen",
                                "127.0.0.1:0", "--tls-dir", str(pki)],
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = process.stderr.readline()
        assert "ppir dealer: listening on 127.0.0.1:" in line
        address = line.rsplit(" ", 1)[1].strip()
        client = DealerClient(address, ppir_itk.TLS.for_role(pki, "moving-party"), os.urandom(16))
        assert client.triples(0, 10)[0].shape == (10,)
        client.close()
    finally:
        process.terminate()
        process.wait()
