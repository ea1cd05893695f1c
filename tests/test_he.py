"""The homomorphic-encryption backend: parameters, ciphertexts, agreement with Clear, leakage."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import known_pair, register_in_process

import ppir_itk
from ppir_itk.backends.he import HEContext, he_settings
from ppir_itk.cli import main
from ppir_itk.errors import InputError
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.fixed_party import FixedPartySession
from ppir_itk.phantoms import head_phantom
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import Counters
from ppir_itk.protocol.endpoint import Endpoint
from ppir_itk.protocol.messages import PROTOCOL_VERSION, ProtocolError
from ppir_itk.protocol.session import LocalSession


@pytest.mark.parametrize(
    ("parameters", "says"),
    [
        ({"poly_modulus_degree": "4096"}, "poly_modulus_degree=4096 is refused"),
        ({"poly_modulus_degree": "2048"}, "poly_modulus_degree=2048 is refused"),
        ({"security_bits": "80"}, "security_bits=80 is refused"),
        ({"poly_modulus_degree": "lots"}, "whole numbers"),
    ],
)
def test_weaker_parameters_are_refused_with_a_sentence(parameters, says):
    with pytest.raises(InputError, match=says):
        he_settings(parameters)


def test_the_fixed_party_refuses_weak_parameters_too(phantom_2d):
    endpoint = Endpoint(FixedPartySession(phantom_2d), Counters)
    reply = endpoint.answer(
        pb.Envelope(
            hello=pb.Hello(
                protocol_version=PROTOCOL_VERSION,
                backend="he",
                metric="meansquares",
                levels=[pb.Level(shrink_factor=1)],
                sampling="none",
                backend_parameters={"poly_modulus_degree": "4096"},
            )
        )
    )
    assert reply.WhichOneof("body") == "abort"
    assert "poly_modulus_degree=4096 is refused" in reply.abort.reason


def test_command_line_refuses_weak_parameters(tmp_path, capsys, phantom_2d):
    from ppir_itk.wrapping.images import write_image

    write_image(phantom_2d, tmp_path / "f.mha")
    status = main(
        [
            "register",
            "--quiet",
            "--in-process",
            "--fixed",
            str(tmp_path / "f.mha"),
            "--moving",
            str(tmp_path / "f.mha"),
            "--output-transform",
            str(tmp_path / "t.tfm"),
            "--backend-parameter",
            "poly_modulus_degree=4096",
        ]
    )
    assert status == 2
    assert "poly_modulus_degree=4096 is refused" in capsys.readouterr().err
    assert not (tmp_path / "t.tfm").exists()


def test_ciphertexts_round_trip_exactly_and_garbage_is_refused():
    he = HEContext(8192, 128)
    seal = he.seal
    keys = seal.KeyGenerator(he.context)
    public = seal.PublicKey()
    keys.create_public_key(public)
    values = np.random.default_rng(0).integers(-(2**40), 2**40, he.slots)
    ciphertext = seal.Ciphertext()
    seal.Encryptor(he.context, public).encrypt(he.encode(values), ciphertext)
    back = he.from_bytes("Ciphertext", he.to_bytes(ciphertext))
    plain = seal.Plaintext()
    seal.Decryptor(he.context, keys.secret_key()).decrypt(back, plain)
    np.testing.assert_array_equal(np.array(he.encoder.decode_int64(plain)), values)
    with pytest.raises(ProtocolError, match="invalid"):
        he.from_bytes("Ciphertext", b"\x5e\xa1" + bytes(200))


@pytest.mark.parametrize("dimension", [2, 3])
def test_packed_protocol_lands_on_the_clear_result(dimension):
    if dimension == 2:
        fixed = head_phantom((64, 60), spacing=(1.1, 0.9))
        parameters = [1.04, 0.05, -0.04, 0.97, 2.0, -1.0]
    else:
        fixed = head_phantom((24, 28, 26), spacing=(1.0, 1.1, 1.2))
        parameters = [1.03, 0.02, 0.0, -0.02, 0.98, 0.01, 0.0, 0.01, 1.0, 1.0, -1.0, 0.5]
    moving, truth = known_pair(fixed, "affine", parameters)
    options = dict(shrink_factors=[2, 1], smoothing_sigmas=[1.0, 0.0])
    clear = register_in_process(fixed, moving, **options)
    private = register_in_process(fixed, moving, backend="he", **options)
    voxel = min(fixed.geometry.spacing)
    assert displacement_rmse(private.transform, clear.transform, fixed.geometry) < 0.01 * voxel
    assert displacement_rmse(private.transform, truth, fixed.geometry) < 0.1 * voxel
    assert private.private and private.learned["fixed"] == []


class _RecordingSession(LocalSession):
    """An in-process session that keeps every envelope the fixed party receives and every
    reply it sends."""

    def __init__(self, fixed) -> None:
        super().__init__(FixedPartySession(fixed, ppir_itk.FixedPolicy(backends=("he",))))
        self.received: list[pb.Envelope] = []
        self.replies: list[pb.Envelope] = []

    def _send(self, envelope: pb.Envelope) -> None:
        self.received.append(envelope)
        super()._send(envelope)

    def _receive(self, expected: str) -> pb.Envelope:
        reply = super()._receive(expected)
        self.replies.append(reply)
        return reply

    def backend_messages(self, kind: str, replies: bool = False) -> list:
        """The bodies of the backend messages of type ``kind`` (the oneof field's name)."""
        return [
            getattr(e.backend, kind)
            for e in (self.replies if replies else self.received)
            if e.WhichOneof("body") == "backend" and e.backend.WhichOneof("body") == kind
        ]


def test_the_fixed_party_receives_only_ciphertexts_and_requests():
    from ppir_itk.registration import register_with

    fixed = head_phantom((40, 36))
    moving, _ = known_pair(fixed, "rigid", [0.05, 1.0, -0.5])
    session = _RecordingSession(fixed)
    register_with(
        session, moving, backend="he", transform="rigid", shrink_factors=[1], smoothing_sigmas=[0.0]
    )
    he = HEContext(*he_settings({}))  # the default parameters, as the session used
    sums = session.backend_messages("he_masked_products")
    assert sums, "no joint-term evaluation reached the fixed party"
    for envelope in session.received:
        kind = envelope.WhichOneof("body")
        assert kind in {"hello", "open_level", "select_points", "backend", "close"}
        if kind == "backend" and not envelope.backend.HasField("he_masked_products"):
            assert envelope.backend.ByteSize() == 2  # an empty request
    for message in sums:
        (part,) = message.ciphertexts
        he.from_bytes("Ciphertext", part)  # one valid SEAL ciphertext, nothing else


def _metric(backend, session, moving):
    """A metric on one full-resolution level (every point) of the session's fixed image."""
    from ppir_itk.pyramid import Level, LevelSchedule

    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(backend, session=session)
    metric.SetMovingImage(moving)
    metric.SetTransform(ppir_itk.make_transform("affine", 2))
    metric.moving_party.start(LevelSchedule.from_lists([1], [0.0]), ppir_itk.NoSampling())
    metric.initialize_level(0, Level(1, 0.0), ppir_itk.NoSampling())
    return metric


def _evaluation(backend, fixed, moving):
    return _metric(backend, ppir_itk.in_process_session(fixed), moving).evaluate()


def _decrypt_as_the_fixed_party(
    session: _RecordingSession, message: pb.BackendMessage, count: int
) -> list[np.ndarray]:
    """The slots of each ciphertext in ``message``, decrypted with the fixed party's key."""
    side = session.serving.backend_side
    he = side.he
    decryptor = he.seal.Decryptor(he.context, side._secret_key)
    slots = []
    for data in message.ciphertexts[:count]:
        plain = he.seal.Plaintext()
        decryptor.decrypt(he.from_bytes("Ciphertext", data), plain)
        slots.append(np.array(he.encoder.decode_uint64(plain), dtype=np.uint64))
    return slots


def test_what_the_fixed_party_decrypts_is_masked_afresh_and_the_sums_come_out_exact():
    """Two evaluations of identical fields. Unmasked, the accumulated products would be
    the same twice, and 0 in every slot where all the fixed party's level rows are 0 (the
    band of J = 0); masked uniformly mod t they are neither (a slot is 0 with probability
    1/t, about 2^-60). The moving party still removes the masks exactly."""
    fixed = head_phantom((40, 36))
    fixed.array[12:28] = 0.0  # with the background, slots whose unmasked product is 0
    moving, _ = known_pair(fixed, "rigid", [0.05, 1.0, -0.5])
    session = _RecordingSession(fixed)
    metric = _metric("he", session, moving)
    first, second = metric.evaluate(), metric.evaluate()
    (level,) = session.backend_messages("he_level", replies=True)
    level_rows = _decrypt_as_the_fixed_party(session, level, len(level.ciphertexts))
    zero_product = np.all([row == 0 for row in level_rows], axis=0)
    assert zero_product.sum() > 100
    sums = session.backend_messages("he_masked_products")
    assert len(sums) == 2
    slots = [_decrypt_as_the_fixed_party(session, message, 1)[0] for message in sums]
    for decrypted in slots:
        assert np.all(decrypted[zero_product] != 0), "an unmasked product reached the fixed party"
    assert np.mean(slots[0] != slots[1]) > 0.99, "the masks were not drawn afresh"
    # The masks come off exactly: the same exact sums twice, and the clear backend's result.
    assert first.value == second.value
    np.testing.assert_array_equal(first.gradient, second.gradient)
    clear = _evaluation("clear", fixed, moving)
    np.testing.assert_allclose(first.value, clear.value, rtol=1e-5)  # fixed-point J
    np.testing.assert_allclose(
        first.gradient, clear.gradient, rtol=0, atol=1e-4 * np.abs(clear.gradient).max()
    )


def test_rows_of_points_outside_the_moving_image_are_skipped_exactly():
    """Points that map outside the moving image give all-zero plaintext rows."""
    fixed = head_phantom((64, 64))
    # The first 20 rows of the fixed grid (more than one ciphertext row) map outside.
    moving = ppir_itk.ImageGrid(fixed.array, origin=(0.0, 20.0))
    clear, private = _evaluation("clear", fixed, moving), _evaluation("he", fixed, moving)
    assert private.number_of_valid_points == clear.number_of_valid_points < 64 * 44 + 1
    np.testing.assert_allclose(private.value, clear.value, rtol=1e-5)  # fixed-point J
    np.testing.assert_allclose(
        private.gradient, clear.gradient, rtol=0, atol=1e-4 * np.abs(clear.gradient).max()
    )


@pytest.mark.parametrize(
    "sampling",
    [
        ppir_itk.URS(0.3, seed=2),
        ppir_itk.GMS(0.3, seed=2),
        ppir_itk.GMS(0.3, seed=2, reveal_indices=True),
    ],
    ids=["urs", "gms-hidden", "gms-revealed"],
)
def test_sampled_private_registration_follows_the_clear_one(sampling):
    fixed = head_phantom((56, 52))
    moving, _ = known_pair(fixed, "rigid", [0.05, 1.0, -0.5])
    options = dict(transform="rigid", shrink_factors=[1], smoothing_sigmas=[0.0], sampling=sampling)
    clear = register_in_process(fixed, moving, **options)
    private = register_in_process(fixed, moving, backend="he", **options)
    assert displacement_rmse(private.transform, clear.transform, fixed.geometry) < 0.01
    revealed = [line for line in private.learned["fixed"] if "GMS" in line]
    assert bool(revealed) == sampling.reveals_indices


@pytest.mark.parametrize("protocol", ["paper-v1", "paper-v2"])
def test_the_paper_protocols_follow_clear_and_report_what_they_reveal(protocol):
    fixed = head_phantom((40, 36))
    moving, _ = known_pair(fixed, "rigid", [0.05, 1.0, -0.5])
    options = dict(transform="rigid", shrink_factors=[1], smoothing_sigmas=[0.0])
    clear = register_in_process(fixed, moving, **options)
    paper = register_in_process(
        fixed, moving, backend="he", backend_parameters={"protocol": protocol}, **options
    )
    assert displacement_rmse(paper.transform, clear.transform, fixed.geometry) < 1e-3
    (fixed_learned,) = paper.learned["fixed"]
    assert fixed_learned.startswith(f"{protocol}: ")
    if protocol == "paper-v1":
        assert "R = S^T J" in fixed_learned and "5 numbers per evaluation" in fixed_learned
    else:  # v2: each party decrypts slot-wise partial sums of the other's data
        assert any("partial sums of S_2 * J_2" in line for line in paper.learned["moving"])


def test_unknown_protocols_are_refused():
    with pytest.raises(InputError, match="no protocol 'paper-v9'"):
        register_in_process(
            head_phantom((20, 20)),
            head_phantom((20, 20)),
            backend="he",
            backend_parameters={"protocol": "paper-v9"},
        )


def test_paper_v2_sums_columns_longer_than_one_ciphertext():
    # Halves of 4,600 points span two ciphertexts of N/2 = 4,096 slots each.
    fixed = head_phantom((100, 92))
    moving, _ = known_pair(fixed, "rigid", [0.02, 0.5, -0.5])
    options = dict(transform="rigid", shrink_factors=[1], smoothing_sigmas=[0.0], iterations=2)
    clear = register_in_process(fixed, moving, **options)
    paper = register_in_process(
        fixed, moving, backend="he", backend_parameters={"protocol": "paper-v2"}, **options
    )
    assert paper.iterations == clear.iterations == 2
    assert displacement_rmse(paper.transform, clear.transform, fixed.geometry) < 1e-3


def test_the_level_upload_is_seeded_half_a_public_key_ciphertext():
    """The fixed party encrypts its level under its secret key: each ciphertext travels
    seeded (SEAL keeps the uniform half as its PRNG seed), under 0.6 of the bytes of the
    public-key ciphertext of the same plaintext, and the moving party's load of it decrypts."""
    from ppir_itk.backends.he import HEPackedFixedSide
    from ppir_itk.points import PointSet
    from ppir_itk.policy import FixedPolicy

    fixed = head_phantom((20, 18))
    side = HEPackedFixedSide({}, FixedPolicy.holding_both_images(("he",)))
    side.on_points(fixed.array.ravel().astype(np.float64), PointSet(fixed.geometry, None))
    he, seal = side.he, side.he.seal
    public = seal.Ciphertext()
    seal.Encryptor(he.context, side._public_key).encrypt(he.encode(np.ones(4)), public)
    full = len(he.to_bytes(public))
    assert side._level_blobs and all(len(blob) < 0.6 * full for blob in side._level_blobs)
    plain = seal.Plaintext()
    side._decryptor.decrypt(he.from_bytes("Ciphertext", side._level_blobs[0]), plain)
    assert np.any(np.array(he.encoder.decode_uint64(plain)) != 0)
