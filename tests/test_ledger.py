"""The fixed party's measurement policy and its ledger (issue 14: the fixed party decides).

Each joint-term evaluation reveals ``sums_per_evaluation`` linear measurements of J
(8 for an affine in 2-D). The tests below hold the policy to what it promises: the
grant per client identity holds across sessions and across a restart of a real
``ppir serve`` (the same SQLite file), another certificate of the same CA has its own
count, a too-fine B-spline grid is refused at ``SelectPoints`` before any product,
the default affine registration of a 256 x 256 phantom fits the default grant, and
an explicit grant raises the cap and says in the log what it gives away.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FIVE_EVALUATIONS, known_pair, ppir_serve

import ppir_itk
from ppir_itk.compose import LEDGER_SUFFIX, in_process_session
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.ledger import Ledger, image_fingerprint
from ppir_itk.phantoms import head_phantom
from ppir_itk.policy import DEFAULT_JOINT_TERM_NOISE, FixedPolicy
from ppir_itk.protocol.tls import CA_FOLDER, CERTIFICATE, TLS, issue_certificate
from ppir_itk.protocol.transport import certificate_fingerprint
from ppir_itk.registration import register_with
from ppir_itk.wrapping.images import write_image

AFFINE = [1.02, 0.03, -0.02, 0.98, 1.5, -1.0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    folder = ppir_itk.init_pki(tmp_path_factory.mktemp("pki"))
    issue_certificate(folder / CA_FOLDER, "moving-party", bundle=folder / "another-moving-party")
    return folder


@pytest.fixture(scope="module")
def small_pair() -> tuple[ppir_itk.ImageGrid, ppir_itk.ImageGrid]:
    """64 x 64: the default grant is 64 measurements, 8 affine evaluations."""
    fixed = head_phantom((64, 64))
    return fixed, known_pair(fixed, "affine", AFFINE)[0]


def _logged(log: Path, text: str, timeout: float = 20.0) -> str:
    """The log once ``text`` is in it (a session's last line follows its last answer)."""
    end = time.monotonic() + timeout
    while text not in log.read_text() and time.monotonic() < end:
        time.sleep(0.05)
    return log.read_text()


def _connect(address: str, pki: Path, stem: str = "moving-party"):
    return ppir_itk.connect(address, TLS.for_role(pki, stem), deadline=20)


def _identity(pki: Path, stem: str) -> str:
    return certificate_fingerprint((pki / stem / CERTIFICATE).read_bytes())


def test_the_grant_holds_across_sessions_and_a_restart_ofppir_serve(pki, small_pair, tmp_path):
    fixed, moving = small_pair
    write_image(fixed, tmp_path / "fixed.nrrd")
    ledger, log = tmp_path / "grants.sqlite", tmp_path / "serve.log"
    serve = (pki, tmp_path / "fixed.nrrd", log, "--ledger", str(ledger))
    with ppir_serve(*serve) as address:
        first = register_with(_connect(address, pki), moving, **FIVE_EVALUATIONS)
        assert first.measurements == {
            "this_session": 40,
            "held": 40,
            "cap": 64,
            "fraction_of_cap": 40 / 64,
            "joint_term_noise": DEFAULT_JOINT_TERM_NOISE,
        }
        # The second session gets the 24 measurements left (3 evaluations), then the sentence.
        with pytest.raises(ppir_itk.PeerError) as refused:
            register_with(_connect(address, pki), moving, **FIVE_EVALUATIONS)
        _logged(log, "24 linear measurements of the fixed image this session")
    assert (
        "one evaluation would reveal 8 linear measurements of the fixed image, and 0 of "
        "the 64 this fixed party grants this client (all its sessions together) are left "
        "(its operator grants more: ppir serve --grant-measurements)"
    ) in str(refused.value)
    # Restarted on the same ledger: nothing is left, so the first level is refused at once.
    with ppir_serve(*serve) as address:
        with pytest.raises(ppir_itk.PeerError, match="and 0 of the 64 this fixed party grants"):
            register_with(_connect(address, pki), moving, **FIVE_EVALUATIONS)
        # Each session's last line: what its client holds (sessions 2 and 3: all of it).
        said = _logged(log, "0 linear measurements of the fixed image this session, 64 of")
    held = Ledger(ledger).used(_identity(pki, "moving-party"), image_fingerprint(fixed))
    assert held == 64
    client = re.escape(f"moving-party (sha256:{_identity(pki, 'moving-party')[:16]})")
    assert re.search(
        rf"session 1 closed: {client}, backend he \(packed\), 5 evaluations, 40 linear "
        r"measurements of the fixed image this session, 40 of its 64 in all \(62\.5% of its cap\)",
        said,
    )
    assert re.search(
        rf"session 2 aborted: {client}, backend he \(packed\), \d evaluations, 24 linear "
        r"measurements of the fixed image this session, 64 of its 64 in all \(100\.0% of its cap\)",
        said,
    )


def test_each_level_s_grid_has_its_own_cap_across_sessions_and_restarts(pki, small_pair, tmp_path):
    """Per-level cap 1/64 (the grant lifted): 64 measurements of the 64 x 64 grid, 16 of
    the 32 x 32 one, each counted over every session of the client in the ledger."""
    fixed, moving = small_pair
    write_image(fixed, tmp_path / "fixed.nrrd")
    limits = ("--grant-measurements", "inf", "--max-measurements-per-level", str(1 / 64))
    serve = (pki, tmp_path / "fixed.nrrd", tmp_path / "serve.log", "--ledger", str(tmp_path / "l"))
    with ppir_serve(*serve, *limits) as address:
        first = register_with(_connect(address, pki), moving, **FIVE_EVALUATIONS)
    assert first.measurements["held"] == 40
    coarse = {**FIVE_EVALUATIONS, "shrink_factors": [2]}
    fine_refusal = (
        "one evaluation would reveal 8 linear measurements of the fixed image, and 0 of the "
        "64 this fixed party grants this client of level 0's 64x64 grid (all its sessions "
        "together) are left (its operator grants more: ppir serve --max-measurements-per-level)"
    )
    with ppir_serve(*serve, *limits) as address:  # restarted on the same ledger
        # The 32 x 32 grid is counted on its own: 2 evaluations, then its cap.
        with pytest.raises(
            ppir_itk.PeerError,
            match="0 of the 16 this fixed party grants this client of level 0's 32x32 grid",
        ):
            register_with(_connect(address, pki), moving, **coarse)
        # The 64 x 64 grid has 24 left of its 64: 3 evaluations, then the sentence.
        with pytest.raises(ppir_itk.PeerError) as refused:
            register_with(_connect(address, pki), moving, **FIVE_EVALUATIONS)
        # A new session on the spent grid is refused before any product.
        with pytest.raises(ppir_itk.PeerError, match="and 0 of the 64"):
            register_with(_connect(address, pki), moving, **FIVE_EVALUATIONS)
    assert fine_refusal in str(refused.value)
    ledger = Ledger(tmp_path / "l")
    identity = _identity(pki, "moving-party")
    assert ledger.used(identity, image_fingerprint(fixed), "64x64") == 64
    assert ledger.used(identity, image_fingerprint(fixed), "32x32") == 16
    assert ledger.used(identity, image_fingerprint(fixed)) == 80


def test_another_certificate_of_the_same_ca_has_its_own_count(pki, small_pair, tmp_path):
    fixed, moving = small_pair
    lines: list[str] = []
    server = FixedPartyServer(
        fixed,
        "127.0.0.1:0",
        TLS.for_role(pki, "fixed-party"),
        ledger=Ledger(tmp_path / "grants.sqlite"),
        log=lines.append,
        deadline=20,
    ).start()
    try:
        register_with(_connect(server.address, pki), moving, **FIVE_EVALUATIONS)
        with pytest.raises(ppir_itk.PeerError, match="grants this client"):
            register_with(_connect(server.address, pki), moving, **FIVE_EVALUATIONS)
        # Also called moving-party, but another certificate: a fresh count of its own.
        other = register_with(
            _connect(server.address, pki, "another-moving-party"), moving, **FIVE_EVALUATIONS
        )
    finally:
        server.stop(grace=None)
    assert other.measurements["held"] == 40
    assert _identity(pki, "moving-party") != _identity(pki, "another-moving-party")


def test_a_one_pixel_bspline_grid_is_refused_at_select_points():
    fixed = head_phantom((128, 128))
    moving, _ = known_pair(fixed, "translation", [1.0, -0.5])
    session = in_process_session(fixed, FixedPolicy(backends=("he",)))
    with pytest.raises(ppir_itk.PeerError) as refused:
        register_with(
            session,
            moving,
            backend="he",
            transform="bspline",
            grid_spacing=1.0,
            shrink_factors=[1],
            smoothing_sigmas=[0.0],
        )
    assert (
        "a control grid spaced 1 level pixels asks finer detail of the fixed image than "
        "this fixed party allows (at least 8 level pixels at level 0; its operator sets "
        "it: ppir serve --min-control-spacing)"
    ) in str(refused.value)
    assert session.serving.backend_side.evaluations == 0  # refused before any product
    assert session.serving.measurements == 0


def test_a_grid_with_more_sums_per_evaluation_than_allowed_is_refused_at_select_points():
    fixed = head_phantom((16, 16))
    moving, _ = known_pair(fixed, "translation", [1.0, -0.5])
    session = in_process_session(fixed, FixedPolicy(backends=("he",)))
    with pytest.raises(ppir_itk.PeerError) as refused:  # 8-px grid: 5 x 5 points, 52 sums
        register_with(
            session,
            moving,
            backend="he",
            transform="bspline",
            grid_spacing=8.0,
            shrink_factors=[1],
            smoothing_sigmas=[0.0],
        )
    assert (
        "one evaluation would reveal 52 linear measurements of the fixed image, and this "
        "fixed party allows 32 per evaluation at level 0 (0.125 of its 256 points; its "
        "operator sets it: ppir serve --max-measurements-per-evaluation)"
    ) in str(refused.value)
    assert session.serving.backend_side.evaluations == 0


def test_paper_v2_is_charged_the_partial_sums_it_reveals_and_refused_by_default(small_pair):
    """paper-v2's moving party decrypts slot-wise partial sums of S_2 J_2 (J_2 itself where a
    column half fits one ciphertext): 8 columns x 2,048 points of a 64 x 64 image's second
    half, not the map's 8 sums; the default policy refuses them before they are sent."""
    fixed, moving = small_pair
    session = in_process_session(fixed, FixedPolicy(backends=("he",)))
    with pytest.raises(ppir_itk.PeerError) as refused:
        register_with(
            session, moving, **FIVE_EVALUATIONS, backend_parameters={"protocol": "paper-v2"}
        )
    assert (
        "one evaluation would reveal 16384 linear measurements of the fixed image, and this "
        "fixed party allows 512 per evaluation at level 0"
    ) in str(refused.value)
    assert session.serving.measurements == 0


def test_the_default_affine_registration_of_a_256_phantom_fits_the_default_grant(pki, tmp_path):
    """256 x 256: the default grant is 1,024 measurements; the default affine registration
    (3 levels) uses 232 of them (29 evaluations of 8)."""
    fixed = head_phantom((256, 256))
    moving, truth = known_pair(fixed, "affine", [1.02, 0.03, -0.02, 0.98, 2.0, -1.5])
    write_image(fixed, tmp_path / "fixed.nrrd")
    log = tmp_path / "serve.log"
    with ppir_serve(pki, tmp_path / "fixed.nrrd", log) as address:  # the default policy
        result = register_with(_connect(address, pki), moving, backend="he")
        said = _logged(log, " in all (")
    used = result.measurements
    assert used["cap"] == 1024 and 0 < used["held"] <= 0.3 * 1024
    assert used["fraction_of_cap"] == used["held"] / 1024
    assert result.report()["fixed_image_measurements"] == used
    assert f"{used['held']} of its 1024 in all ({used['held'] / 1024:.1%} of its cap)" in said
    assert (tmp_path / f"fixed.nrrd{LEDGER_SUFFIX}").is_file()  # the default ledger, beside it
    assert displacement_rmse(result.transform, truth, fixed.geometry) < 0.1


def test_a_grant_raises_the_cap_and_logs_what_it_gives_away(pki, small_pair, tmp_path):
    fixed, moving = small_pair
    write_image(fixed, tmp_path / "fixed.nrrd")
    log = tmp_path / "serve.log"
    with ppir_serve(pki, tmp_path / "fixed.nrrd", log, "--grant-measurements", "0.05") as address:
        for _ in range(2):  # 80 measurements: past the default's 64
            result = register_with(_connect(address, pki), moving, **FIVE_EVALUATIONS)
    assert result.measurements["held"] == 80 and result.measurements["cap"] == 204
    assert (
        "measurement grant 0.05: a malicious moving party could recover up to 204 exact "
        "values of J (4.98% of its voxels; one-hot weights make each linear measurement "
        "one exact value)"
    ) in log.read_text()


def test_concurrent_charges_never_spend_the_same_remainder(tmp_path):
    """Eight threads, each on its own connection to one file (as eight servers would be),
    charge 1 at a time against a cap of 200: exactly 200 are granted."""
    ledgers = [Ledger(tmp_path / "grants.sqlite") for _ in range(8)]
    granted: list[bool] = []

    def charge(ledger: Ledger) -> None:
        for _ in range(50):
            granted.append(ledger.charge("client", "image", 1, 200).granted)

    threads = [threading.Thread(target=charge, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 200 and len(granted) == 400
    assert ledgers[0].used("client", "image") == 200
    assert ledgers[1].used("client", "other image") == 0


def test_the_image_fingerprint_covers_geometry_and_pixels():
    fixed = head_phantom((32, 32))
    moved = ppir_itk.ImageGrid(fixed.array, spacing=(1.0, 1.01))
    changed = ppir_itk.ImageGrid(
        np.where(np.arange(fixed.array.size).reshape(fixed.array.shape) == 0, 1.0, fixed.array),
        fixed.geometry.spacing,
    )
    prints = {image_fingerprint(image) for image in (fixed, moved, changed)}
    assert len(prints) == 3
