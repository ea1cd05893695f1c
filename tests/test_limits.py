"""What the fixed party's operator caps: joint-term evaluations and a session's length."""

from __future__ import annotations

import time

import pytest
from conftest import known_pair

import ppir_itk
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import PROTOCOL_VERSION
from ppir_itk.registration import register_with


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return ppir_itk.init_pki(tmp_path_factory.mktemp("pki"))


def _server(pki, image, **options) -> FixedPartyServer:
    log: list[str] = []
    server = FixedPartyServer(
        image, "127.0.0.1:0", ppir_itk.TLS.for_role(pki, "fixed-party"), log=log.append, **options
    ).start()
    server.lines = log
    return server


def _connect(server, pki, deadline: float = 10.0):
    return ppir_itk.connect(
        server.address, ppir_itk.TLS.for_role(pki, "moving-party"), deadline=deadline
    )


def test_a_moving_party_past_the_evaluation_budget_is_stopped_and_the_next_one_served(
    pki, phantom_2d
):
    moving, _ = known_pair(phantom_2d, "rigid", [0.05, 2.0, -1.0])
    server = _server(
        pki, phantom_2d, policy=ppir_itk.FixedPolicy(backends=("he",), evaluation_budget=6)
    )
    options = dict(
        backend="he",
        transform="rigid",
        shrink_factors=[2, 1],
        smoothing_sigmas=[1.0, 0.0],
        relative_value_tolerance=0.0,
        minimum_step_length=0.0,
    )
    try:
        with pytest.raises(ppir_itk.PeerError) as error:
            register_with(_connect(server, pki), moving, iterations=10, **options)
        assert "used up the fixed party's budget of 6 joint-term evaluations per session" in str(
            error.value
        ) and "ppir serve --budget" in str(error.value)
        # Within the budget: 2 levels of 2 iterations are 6 evaluations.
        result = register_with(_connect(server, pki), moving, iterations=2, **options)
        assert result.iterations == 4
        assert "8 sums per evaluation" in result.learned["moving"][0]
        assert "48 in total" in result.learned["moving"][0]  # 6 evaluations
    finally:
        server.stop(grace=None)


def test_a_live_but_endless_session_ends_at_the_session_limit(pki, phantom_2d):
    """Heartbeats keep an idle moving party alive past the deadline; the limit still ends
    its session, and frees the slot for the next one."""
    server = _server(
        pki,
        phantom_2d,
        policy=ppir_itk.FixedPolicy(backends=("clear",)),
        deadline=1.5,
        session_limit=3.0,
    )
    hello = pb.Hello(
        protocol_version=PROTOCOL_VERSION,
        backend="clear",
        metric="meansquares",
        levels=[pb.Level(shrink_factor=1)],
        sampling="none",
    )
    try:
        session = _connect(server, pki, deadline=1.5)  # heartbeats every 0.5 s
        session.start(hello)
        started = time.monotonic()
        time.sleep(5.0)  # idle, yet alive: its channel sends heartbeats
        with pytest.raises(ppir_itk.PeerError, match="limit of 3 s"):
            session.request(pb.Envelope(open_level=pb.OpenLevel(level=0)), "level_opened")
        ended = [line for line in server.lines if "passed the fixed party's limit" in line]
        assert ended and time.monotonic() - started < 10
        next_session = _connect(server, pki)
        next_session.start(hello)
        next_session.close()
    finally:
        server.stop(grace=None)
