"""The protocol tables are the truth: the docs come from them, and every run sends only
what they list and reports only what they name."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import known_pair

import ppir_itk
from ppir_itk.backends import BACKENDS, protocol_tables
from ppir_itk.compose import spawn_fixed_party
from ppir_itk.dealer_client import DEALER_TABLE
from ppir_itk.disclosure import SESSION, Disclosure, ProtocolTable, Received, markdown, rewrite
from ppir_itk.phantoms import head_phantom
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import tapped
from ppir_itk.registration import register_with
from ppir_itk.roles import FIXED_PARTY, MOVING_PARTY

PAGE = Path(__file__).resolve().parent.parent / "docs" / "privacy.md"

# name -> (backend, parameters, options): every protocol, linear and B-spline, GMS revealed
RUNS = {
    "clear": ("clear", {}, {}),
    "he packed": ("he", {}, {}),
    "he packed b-spline": ("he", {}, dict(transform="bspline", grid_spacing=8.0)),
    "paper-v1": ("he", {"protocol": "paper-v1"}, {}),
    "paper-v2": ("he", {"protocol": "paper-v2"}, {}),
    "spdz": (
        "spdz",
        {},
        dict(sampling="gms", reveal_gms_indices=True, sampling_fraction=0.5, initializer="moments"),
    ),
    "spdz b-spline": ("spdz", {}, dict(transform="bspline", grid_spacing=8.0)),
}


def test_the_privacy_page_shows_the_tables_of_the_code():
    if not PAGE.exists():
        pytest.skip("the tests run outside the source tree")
    expected = rewrite(PAGE, markdown(protocol_tables()))
    assert PAGE.read_text() == expected, (
        "docs/privacy.md's tables differ from the code: run python scripts/privacy_tables.py"
    )


def test_every_backend_has_one_table_for_both_halves():
    for protocols in BACKENDS.values():
        for moving_half, fixed_half in protocols.values():
            assert moving_half.table is fixed_half.table
            assert isinstance(moving_half.table, ProtocolTable)


def _senders(frames: list[tuple[str, str, bytes]]) -> set[tuple[str, str, str]]:
    """(session, message, sender) of every message the moving party sent or received."""
    seen = set()
    for direction, peer, data in frames:
        frame = pb.Frame.FromString(data)
        if frame.WhichOneof("kind") != "envelope":
            continue
        envelope = frame.envelope
        kind = envelope.WhichOneof("body")
        session = "dealer" if peer.startswith("dealer") else "fixed party"
        peer_role = "dealer" if session == "dealer" else FIXED_PARTY
        sender = MOVING_PARTY if direction == "sent" else peer_role
        if kind == "backend":
            seen.add(("backend", envelope.backend.WhichOneof("body"), sender))
        else:
            seen.add((session, kind, sender))
    return seen


@pytest.mark.parametrize("name", RUNS)
def test_a_run_sends_only_what_its_table_lists_and_reports_only_what_it_names(name):
    """Over two real processes: every message the moving party sends or receives is a row
    of its tables with that sender, and each reported line is one of their disclosures."""
    backend, parameters, options = RUNS[name]
    fixed = head_phantom((40, 36))
    moving, _ = known_pair(fixed, "affine", [1.02, 0.01, -0.02, 0.99, 1.0, -0.5])
    frames: list[tuple[str, str, bytes]] = []
    with (
        spawn_fixed_party(fixed, backends=(backend,)) as process,
        tapped(lambda direction, peer, data: frames.append((direction, peer, data))),
    ):
        session = ppir_itk.connect(
            process.address, process.client_tls, dealer=process.dealer_address
        )
        result = register_with(
            session,
            moving,
            backend=backend,
            backend_parameters=parameters,
            **{
                "transform": "affine",
                "shrink_factors": [2, 1],
                "smoothing_sigmas": [1.0, 0.0],
                "iterations": 3,
                **options,
            },
        )
    table = BACKENDS[backend][parameters.get("protocol", next(iter(BACKENDS[backend])))][0].table
    for session_name, kind, sender in _senders(frames):
        listed = {"backend": table, "fixed party": SESSION, "dealer": DEALER_TABLE}[session_name]
        rows = [m for m in listed.messages if m.name == kind and m.sender == sender]
        assert rows, f"{kind} from the {sender} is not in the table '{listed.title}'"
    for party, receiver in (("moving", MOVING_PARTY), ("fixed", FIXED_PARTY)):
        named = [
            d.what for d in (*table.disclosures, *SESSION.disclosures) if d.receiver == receiver
        ]
        for line in result.learned[party] + result.masked[party]:
            assert any(line.startswith(what) for what in named), line
    for party, receiver in (("moving", MOVING_PARTY), ("fixed", FIXED_PARTY)):
        if any(d.masked and d.receiver == receiver for d in table.disclosures):
            assert result.masked[party], f"the {party} party's masked values are not reported"


def test_a_disclosure_no_table_names_cannot_be_reported():
    table = ProtocolTable(
        "t", (), (Disclosure("sums", MOVING_PARTY, "sums", "sums", "evaluation"),)
    )
    received = Received(MOVING_PARTY, [table])
    received.add("sums", 8, detail="affine-basis moments")
    received.add("sums", 8, detail="affine-basis moments")
    assert received.lines() == ["sums: 8 sums per evaluation, 16 in total (affine-basis moments)"]
    with pytest.raises(KeyError, match="no table names a disclosure 'pixels'"):
        received.add("pixels", 1)
    with pytest.raises(KeyError):
        Received(FIXED_PARTY, [table]).add("sums", 1)  # named to the other party only
