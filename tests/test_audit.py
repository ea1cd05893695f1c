"""Traffic audit: neither party's image can be found in what the other party received.

Each backend registers a real pair through the two-party runtime (the fixed
party, and the dealer for spdz, as separate processes) while this process
records every frame (``audit.recording``); ``audit.audit`` then searches the
moving party's received envelopes for the fixed image J and its sent
envelopes for the moving image I (see ``tests/audit.py`` for what is compared).
The clear backend must fail for J, which shows that the audit can fail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import test_spdz_mattes as mattes
from audit import CORRELATION_LIMIT, Secret, audit, recording
from conftest import known_pair

import ppir_itk
from ppir_itk.compose import local_dealer
from ppir_itk.dealer import TriplePool
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.image import ImageGrid
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import array_to_pb
from ppir_itk.pyramid import Level, fixed_level_image, moving_level_image
from ppir_itk.registration import resample
from ppir_itk.roles import FIXED_PARTY, MOVING_PARTY
from ppir_itk.transforms import make_transform

LEVELS = (Level(2, 1.0), Level(1, 0.0))
RUNS = {
    "clear": ("clear", None),
    "he packed": ("he", {"protocol": "packed"}),
    "he paper-v1": ("he", {"protocol": "paper-v1"}),
    "he paper-v2": ("he", {"protocol": "paper-v2"}),
    "spdz": ("spdz", None),
}


@pytest.fixture(scope="module")
def mri_pair() -> tuple[ImageGrid, ImageGrid, object]:
    """A real MRI slice as J, and I = J moved by a known affine transform.

    matplotlib's sample ``s1045.ima`` (256 x 256, uint16) is the one real image at
    hand large enough for the audit's correlation limit: the coarse level still has
    16384 pixels (nibabel's volumes have at most a few thousand per slice). It is
    scaled to [0, 1] and stored as float32, the fixed party's file type.
    """
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("s1045.ima.gz") as file:
        pixels = np.frombuffer(file.read(), dtype="<u2").reshape(256, 256)
    fixed = ImageGrid((pixels / pixels.max()).astype(np.float32), spacing=(0.9, 0.9))
    moving, truth = known_pair(fixed, "affine", [1.05, 0.05, -0.04, 0.97, 3.0, -2.0])
    return fixed, moving, truth


@pytest.fixture(scope="module")
def secrets(mri_pair) -> dict[str, Secret]:
    """J with the fixed party's level images; I with the moving party's level images and
    I warped onto the fixed party's level grids, by the identity (the first iterate) and by
    the true transform (where the iterates go): the values the metric works with."""
    fixed, moving, truth = mri_pair
    fixed_levels = [fixed_level_image(fixed, level) for level in LEVELS]
    moving_derived = {}
    for index, (level, grid) in enumerate(zip(LEVELS, fixed_levels, strict=True)):
        smoothed = moving_level_image(moving, level)
        moving_derived[f"I level {index}"] = smoothed.array
        for name, transform in (("identity", make_transform("affine", 2)), ("truth", truth)):
            moving_derived[f"I level {index} warped by the {name}"] = resample(
                smoothed, transform, grid.geometry
            ).array
    return {
        "J": Secret.of(
            "J",
            fixed.array,
            {f"J level {index}": grid.array for index, grid in enumerate(fixed_levels)},
        ),
        "I": Secret.of("I", moving.array, moving_derived),
    }


@pytest.fixture(scope="module")
def traffic(mri_pair):
    """``traffic(run)``: (result, recorder) of one registration per backend, run once."""
    fixed, moving, _ = mri_pair
    done = {}

    def run(name: str):
        if name not in done:
            backend, parameters = RUNS[name]
            with recording() as recorder:
                result = ppir_itk.register(
                    fixed,
                    moving,
                    backend=backend,
                    backend_parameters=parameters,
                    transform="affine",
                    sampling="none",
                    shrink_factors=[2, 1],
                    smoothing_sigmas=[1.0, 0.0],
                    iterations=3,
                )
            done[name] = result, recorder
        return done[name]

    return run


def audit_both_ways(traffic, secrets, name):
    """J in everything the moving party received; I in everything it sent (to the fixed
    party and, for spdz, to the dealer)."""
    _, recorder = traffic(name)
    return (
        audit(recorder.envelopes("received"), secrets["J"]),
        audit(recorder.envelopes("sent"), secrets["I"]),
    )


@pytest.mark.parametrize("name", ["he packed", "spdz"])
def test_private_defaults_pass_the_audit_both_ways(traffic, secrets, name):
    """he packed sends image-sized data only inside ciphertexts (searched byte by byte);
    spdz sends masked openings, compared value by value too."""
    fixed_image, moving_image = audit_both_ways(traffic, secrets, name)
    assert fixed_image.passed, str(fixed_image)
    assert moving_image.passed, str(moving_image)
    if name == "spdz":  # its openings F (J's side) and E (I's side) are image-sized arrays
        assert fixed_image.views and moving_image.views


@pytest.mark.slow
@pytest.mark.parametrize("name", ["he paper-v1", "he paper-v2"])
def test_paper_protocols_pass_the_traffic_audit(traffic, secrets, name):
    """Their documented leaks are out of a traffic audit's sight: paper-v1's fixed party
    decrypts |theta| + 2 sums per iteration (far shorter than an image), paper-v2's
    parties decrypt slot-wise partial sums (S_1 * J_1 for the fixed party, S_2 * J_2 for
    the moving party) from ciphertexts under their own keys, and at this size each slot
    sums several products. Like he packed, they send image-sized data only inside
    ciphertexts, searched byte by byte: what crosses the wire shows neither image."""
    fixed_image, moving_image = audit_both_ways(traffic, secrets, name)
    assert fixed_image.passed, str(fixed_image)
    assert moving_image.passed, str(moving_image)


def test_clear_fails_the_audit_for_the_fixed_image(traffic, secrets):
    """The clear backend sends J's level images as float64: their bytes and their values
    are in the traffic. The moving party sends nothing derived from I."""
    fixed_image, moving_image = audit_both_ways(traffic, secrets, "clear")
    assert not fixed_image.passed
    assert fixed_image.window_hits, str(fixed_image)
    assert fixed_image.max_correlation > 0.99, str(fixed_image)
    assert moving_image.passed, str(moving_image)


@pytest.mark.parametrize("name", ["clear", "he packed", "spdz"])
def test_recorder_sees_every_byte(traffic, name):
    """The recorded frames add up to the moving party's payload counters, and to what the
    fixed party (another process) counted it received and sent: nothing bypasses the tap."""
    result, recorder = traffic(name)
    moving, fixed = result.parties["moving"], result.parties["fixed"]
    # This run's fixed party, the one that answered: another test's session still open in
    # this process may send its heartbeats to its own fixed party meanwhile.
    (own,) = {peer for way, peer, _ in recorder.frames if way == "received" and "fixed" in peer}
    sent = recorder.byte_count("sent", own)
    received = recorder.byte_count("received", own)
    assert (sent, received) == (moving["payload_bytes_sent"], moving["payload_bytes_received"])
    # The fixed party's figures are taken when Close arrives, before it sends Closed.
    last = recorder.envelopes("received", own)[-1]
    closed = pb.Envelope.FromString(last).closed
    assert sent == fixed["payload_bytes_received"]
    assert (
        received - pb.Frame(envelope=pb.Envelope(closed=closed)).ByteSize()
        == fixed["payload_bytes_sent"]
    )
    peers = {peer.split(" at ")[0] for _, peer, _ in recorder.frames}
    assert peers == ({"fixed party", "dealer"} if name == "spdz" else {"fixed party"})
    if name == "spdz":  # the dealer's figures are the sum of both parties' sessions with it
        dealer = result.parties["dealer"]
        assert recorder.byte_count("received", "dealer") == (
            dealer["payload_bytes_sent"] - closed.dealer.payload_bytes_received
        )
        assert recorder.byte_count("sent", "dealer") == (
            dealer["payload_bytes_received"] - closed.dealer.payload_bytes_sent
        )


# -- the audit itself, on made-up traffic ------------------------------------------------------
@pytest.fixture(scope="module")
def made_up_secret() -> tuple[np.ndarray, Secret]:
    image = np.random.default_rng(5).random((128, 128)).astype(np.float32)
    return image, Secret.of("made-up image", image, {})


def made_up(*, blob: bytes | None = None, values: Any = None, arrays: Any = None) -> list[bytes]:
    """Made-up traffic carrying ``blob`` as a ciphertext, ``values`` as a list of doubles (a
    centre of mass) and ``arrays`` as shares: the three kinds of payload a party sends."""
    envelopes = []
    if blob is not None:
        envelopes.append(
            pb.Envelope(
                backend=pb.BackendMessage(
                    he_masked_products=pb.HeMaskedProducts(ciphertexts=[blob])
                )
            )
        )
    if values is not None:
        envelopes.append(pb.Envelope(center_of_mass=pb.CenterOfMass(center=values)))
    if arrays is not None:
        envelopes.append(
            pb.Envelope(backend=pb.BackendMessage(spdz_iteration=pb.SpdzIteration(shares=arrays)))
        )
    return [envelope.SerializeToString() for envelope in envelopes]


def test_audit_finds_raw_pixels_at_any_byte_offset(made_up_secret):
    image, secret = made_up_secret
    rng = np.random.default_rng(6)
    piece = image.ravel()[1000:1003].tobytes()[1:]  # 11 bytes from inside three pixels
    blob = rng.bytes(501) + piece + rng.bytes(500)
    report = audit(made_up(blob=blob), secret)
    assert report.window_hits and not report.passed, str(report)
    as_float64 = image.ravel()[:4].astype(np.float64)
    assert not audit(made_up(values=as_float64), secret).passed


def test_audit_finds_fixed_point_values_interleaved_with_others(made_up_secret):
    """No byte of q(J) equals J's, but three vectors packed slot by slot still correlate."""
    image, secret = made_up_secret
    rng = np.random.default_rng(7)
    fixed_point = np.round(image.ravel().astype(np.float64) * 2.0**20).astype(np.int64)
    others = rng.integers(-(2**62), 2**62, size=(2, fixed_point.size))
    packed = np.column_stack([others[0], fixed_point, others[1]])
    report = audit(made_up(arrays=[array_to_pb(packed)]), secret)
    assert not report.window_hits
    assert report.max_correlation > 0.99 and "stride 3" in report.where, str(report)


def test_audit_passes_uniformly_masked_values(made_up_secret):
    image, secret = made_up_secret
    rng = np.random.default_rng(8)
    fixed_point = np.round(image.ravel().astype(np.float64) * 2.0**20).astype(np.int64)
    masked = fixed_point.view(np.uint64) - rng.integers(
        0, 2**64 - 1, size=(4, image.size), dtype=np.uint64, endpoint=True
    )
    report = audit(
        made_up(arrays=[array_to_pb(masked.view(np.int64))], blob=rng.bytes(8 * image.size)), secret
    )
    assert report.passed and report.views > 10, str(report)
    assert report.max_correlation < CORRELATION_LIMIT


# -- spdz, metric mattes ----------------------------------------------------------------
def test_spdz_mattes_over_mutual_tls_passes_the_audit_both_ways(tmp_path):
    """The Mattes halves (tests/test_spdz_mattes.py) with the fixed party's server over
    mutual TLS: the bins in everything the moving party received, its Parzen fields in
    everything it sent; every Mattes message appears."""
    size = 128  # 16384 points: the audit's correlation limit means something
    fixed = mattes._bins_image(size, seed=7)
    pki = ppir_itk.init_pki(tmp_path / "pki")
    pool = TriplePool()
    policy = FixedPolicy(backends=("spdz",), dealer=local_dealer(pool, FIXED_PARTY))
    server = FixedPartyServer(
        fixed, "127.0.0.1:0", ppir_itk.TLS.for_role(pki, "fixed-party"), policy=policy, deadline=30
    ).start()
    try:
        session = ppir_itk.connect(server.address, ppir_itk.TLS.for_role(pki, "moving-party"))
        session.dealer = local_dealer(pool, MOVING_PARTY)
        with recording() as recorder:
            party, points = mattes._party(session)
            fields = mattes._fields(points.size, seed=11)
            term = party.histogram_term(fields)
            party.close()
    finally:
        server.stop(grace=None)
    kinds = {
        pb.Envelope.FromString(e).backend.WhichOneof("body")
        for e in recorder.envelopes("sent") + recorder.envelopes("received")
        if pb.Envelope.FromString(e).WhichOneof("body") == "backend"
    }
    assert kinds == {m.name for m in party.backend.table.messages}
    fixed_image = Secret.of("J", fixed.array, {})
    moving_image = Secret.of(
        "I",
        fields.weights[:, 0].copy(),
        {"derivatives": fields.derivatives[:, 0], "gradient": fields.gradient[:, 0]},
    )
    received = audit(recorder.envelopes("received"), fixed_image)
    sent = audit(recorder.envelopes("sent"), moving_image)
    assert received.passed, str(received)
    assert sent.passed, str(sent)
    assert received.views and sent.views
    entropy, _ = mattes._reference(mattes._fixed_bins(fixed), fields, points, 0)
    assert abs(term.entropy_difference - entropy) < mattes.Q_TOLERANCE
