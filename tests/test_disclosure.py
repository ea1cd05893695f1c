"""The protocol tables are the truth: the docs come from them, and every run sends only
what they list and reports only what they name."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import known_pair

import ppir_itk
from ppir_itk.backends import BACKENDS, protocol_tables
from ppir_itk.dealer import DealerSession
from ppir_itk.dealer_client import DEALER_TABLE
from ppir_itk.disclosure import SESSION, Disclosure, ProtocolTable, Received, markdown, rewrite
from ppir_itk.phantoms import head_phantom
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.session import LocalSession
from ppir_itk.registration import register_with
from ppir_itk.roles import DEALER, FIXED, FIXED_PARTY, MOVING, MOVING_PARTY

PARTY_ROLES = {MOVING: MOVING_PARTY, FIXED: FIXED_PARTY}  # a dealer session's client
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


def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, pb.Envelope]]:
    """(session, sender, envelope) of every envelope of every in-process session from now on:
    the moving party's with the fixed party and with the dealer, the fixed party's with the
    dealer, both ways."""
    seen: list[tuple[str, str, pb.Envelope]] = []
    send = LocalSession._send

    def recording(self: LocalSession, envelope: pb.Envelope) -> None:
        send(self, envelope)
        if isinstance(self.serving, DealerSession):
            session, client, server = "dealer", PARTY_ROLES[self.serving.party], DEALER
        else:
            session, client, server = "fixed party", MOVING_PARTY, FIXED_PARTY
        seen.extend([(session, client, envelope), (session, server, self._reply)])

    monkeypatch.setattr(LocalSession, "_send", recording)
    return seen


@pytest.mark.parametrize("name", RUNS)
def test_a_run_sends_only_what_its_table_lists_and_reports_only_what_it_names(name, monkeypatch):
    """Every message of a run, the dealer's sessions included, is a row of its tables with
    that sender, and each reported line is one of their disclosures."""
    backend, parameters, options = RUNS[name]
    fixed = head_phantom((40, 36))
    moving, _ = known_pair(fixed, "affine", [1.02, 0.01, -0.02, 0.99, 1.0, -0.5])
    envelopes = _recorded(monkeypatch)
    result = register_with(
        ppir_itk.in_process_session(fixed),
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
    assert {session for session, _, _ in envelopes} == (
        {"fixed party", "dealer"} if backend == "spdz" else {"fixed party"}
    )
    for session, sender, envelope in envelopes:
        kind = envelope.WhichOneof("body")
        listed = SESSION if session == "fixed party" else DEALER_TABLE
        if kind == "backend":
            kind, listed = envelope.backend.WhichOneof("body"), table
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
