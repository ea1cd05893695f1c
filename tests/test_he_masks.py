"""The fixed mask on the he backend: the packed protocol's masked sums against a NumPy
reference of their definitions (backends/base.py), their noise and accounting, the traffic
audit for the mask, and the paper's protocols' refusal."""

from __future__ import annotations

import numpy as np
import pytest
from audit import Secret, audit, recording

import ppir_itk
from ppir_itk.backends.base import MovingFields
from ppir_itk.backends.he_paper import PaperV1FixedSide
from ppir_itk.bspline import BSplineTransform
from ppir_itk.errors import InputError
from ppir_itk.fixed_party import FixedPartyServer, FixedPartySession
from ppir_itk.fixed_point import PLAIN_MODULUS, SUM_BITS, masked_budget
from ppir_itk.image import ImageGrid
from ppir_itk.masks import inside
from ppir_itk.metric_kinds import CORRELATION, MEAN_SQUARES, MetricSettings
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.phantoms import head_phantom
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.channel import Counters, PeerError
from ppir_itk.protocol.endpoint import Endpoint
from ppir_itk.protocol.messages import PROTOCOL_VERSION
from ppir_itk.protocol.session import LocalSession
from ppir_itk.pyramid import LevelSchedule

# The fixed point's J (fewer than 20 bits on these small levels) bounds the sums' precision.
TOLERANCE = 1e-4


def _mask(fixed: ImageGrid) -> ImageGrid:
    """A mask on the fixed grid that leaves out a third of its pixels, scattered."""
    index = np.indices(fixed.array.shape)
    pattern = sum((axis + 1) * i for axis, i in enumerate(index)) % 3 != 0
    geometry = fixed.geometry
    return ImageGrid(pattern.astype(np.uint8), geometry.spacing, geometry.origin)


def _party(session, metric: str, protocol: str = "packed") -> MovingPartySession:
    party = MovingPartySession(session, "he", {"protocol": protocol}, metric=MetricSettings(metric))
    party.start(LevelSchedule.from_lists([1], [0.0]), None)
    return party


def _masked_session(fixed: ImageGrid, policy: FixedPolicy | None = None) -> FixedPartySession:
    policy = policy or FixedPolicy.holding_both_images(("he",))
    return FixedPartySession(fixed, policy, fixed_mask=_mask(fixed))


def _masked_level(
    fixed: ImageGrid, metric: str, policy: FixedPolicy | None = None, spacing: float | None = None
):
    """A masked session's party and its one full-resolution level's points (on a control
    grid of ``spacing`` pixels, if given)."""
    party = _party(LocalSession(_masked_session(fixed, policy)), metric)
    level = party.begin_level(0)()
    control = None
    if spacing is not None:
        control = BSplineTransform.over(level, spacing * np.asarray(level.spacing)).control_grid
    return party, party.select_points(level, control_grid=control)


def _fields(points, seed: int = 3) -> MovingFields:
    """Made-up moving fields with a tenth of the points outside the moving image."""
    rng = np.random.default_rng(seed)
    n, d = points.size, points.geometry.dimension
    valid = (rng.random(n) > 0.1).astype(np.uint8)
    return MovingFields(
        gradient=rng.normal(size=(n, d)) * valid[:, None],
        warped=rng.random(n) * valid,
        valid=valid,
        coefficients=None,
    )


def _reference(
    fixed: ImageGrid, points, fields: MovingFields, metric: str, weight_bits: int = 0
) -> dict:
    """base.py's definitions, in floats: J's sums over M J, and the MaskedSums (a
    B-spline's moments with the fixed-point weights the backend used)."""
    geometry = points.geometry
    physical = geometry.physical_points(geometry.flat_to_index(np.arange(points.size)))
    mask = inside(_mask(fixed), physical).astype(np.float64)
    J = fixed.array.ravel().astype(np.float64) * mask  # the level is the image (one level)
    g, w = fields.gradient, fields.warped

    def moments(weights: np.ndarray) -> np.ndarray:
        return points.linear_map.moments(g, weights, weight_bits)

    m = fields.valid.astype(np.float64)
    sums = {
        "moments": moments(J),
        "warped_dot_fixed": w @ J,
        "fixed_squared": m @ (J * J),
        "count": m @ mask,
        "warped_squared": (w * w) @ mask,
        "warped_moments": moments(w * mask),
    }
    if metric == CORRELATION:
        sums |= {
            "fixed_sum": m @ J,
            "warped_sum": w @ mask,
            "gradient_moments": moments(m * mask),
        }
    return sums


def _computed(term, metric: str) -> dict:
    masked = term.masked
    sums = {
        "moments": term.moments,
        "warped_dot_fixed": term.warped_dot_fixed,
        "fixed_squared": term.fixed_squared,
        "count": masked.count,
        "warped_squared": masked.warped_squared,
        "warped_moments": masked.warped_moments,
    }
    if metric == CORRELATION:
        sums |= {
            "fixed_sum": term.fixed_sum,
            "warped_sum": masked.warped_sum,
            "gradient_moments": masked.gradient_moments,
        }
    return sums


@pytest.mark.parametrize(
    ("shape", "metric", "spacing"),
    [
        ((20, 18), MEAN_SQUARES, None),
        ((20, 18), CORRELATION, None),
        ((10, 9, 8), MEAN_SQUARES, None),
        ((20, 18), CORRELATION, 6.0),
    ],
    ids=["2-D meansquares", "2-D correlation", "3-D meansquares", "2-D B-spline correlation"],
)
def test_the_masked_joint_term_matches_its_definitions(shape, metric, spacing):
    fixed = head_phantom(shape)
    party, points = _masked_level(fixed, metric, spacing=spacing)
    assert party.backend.fixed_masked
    assert points.linear_map.few_outputs == (spacing is None)  # both layouts
    fields = _fields(points)
    term = party.backend.joint_term(fields)
    expected = _reference(fixed, points, fields, metric, term.basis_weight_bits)
    computed = _computed(term, metric)
    assert computed.keys() == expected.keys()
    assert term.masked.count == expected["count"]  # an exact integer
    assert expected["count"] < 0.75 * points.size  # the mask dropped points
    for name, value in expected.items():
        scale = np.abs(value).max()
        np.testing.assert_allclose(
            computed[name], value, rtol=0, atol=TOLERANCE * scale, err_msg=name
        )
    if metric == MEAN_SQUARES:
        assert term.masked.warped_sum is None and term.masked.gradient_moments is None
    party.close()


@pytest.mark.parametrize("spacing", [None, 6.0], ids=["affine basis", "B-spline basis"])
def test_the_masked_sums_are_noised_counted_and_reported(spacing):
    """With the fixed party's noise each masked sum changes from one evaluation of the same
    fields to the next (the count's noise, of deviation 16 points, repeats one value five
    times with probability below 10^-6); every sum is charged to the policy and named in
    the report."""
    fixed = head_phantom((20, 18))
    policy = FixedPolicy.holding_both_images(("he",), joint_term_noise=16.0)
    party, points = _masked_level(fixed, CORRELATION, policy, spacing)
    fields = _fields(points)
    evaluations = 5
    terms = [party.backend.joint_term(fields).masked for _ in range(evaluations)]
    for name in ("count", "warped_squared", "warped_sum"):
        assert len({getattr(term, name) for term in terms}) > 1, name
    for name in ("warped_moments", "gradient_moments"):
        assert np.all(getattr(terms[0], name) != getattr(terms[1], name)), name
    d, outputs = 2, points.linear_map.outputs
    unmasked, masked = d * outputs + 3, (d * outputs + 2) + (d * outputs + 1)
    assert party.session.serving.backend_side.sums_per_evaluation(points) == unmasked + masked
    closed = party.close()
    assert closed.measurements == evaluations * (unmasked + masked)
    (line,) = [line for line in party.backend.learned() if "the sums a fixed mask adds" in line]
    assert str(evaluations * masked) in line


def test_no_window_of_the_mask_reaches_the_moving_party(tmp_path):
    """The fixed party's server over mutual TLS, with its mask: one masked evaluation on
    16384 points (the audit's correlation limit means something); neither the mask nor J
    is found in what the moving party received."""
    fixed = head_phantom((128, 128))
    mask = _mask(fixed)
    pki = ppir_itk.init_pki(tmp_path / "pki")
    server = FixedPartyServer(
        fixed,
        "127.0.0.1:0",
        ppir_itk.TLS.for_role(pki, "fixed-party"),
        policy=FixedPolicy(backends=("he",)),
        fixed_mask=mask,
        deadline=60,
    ).start()
    try:
        session = ppir_itk.connect(server.address, ppir_itk.TLS.for_role(pki, "moving-party"))
        with recording() as recorder:
            party = _party(session, MEAN_SQUARES)
            points = party.select_points(party.begin_level(0)())
            term = party.backend.joint_term(_fields(points))
            party.close()
    finally:
        server.stop(grace=None)
    assert term.masked is not None and points.size == mask.array.size
    received = recorder.envelopes("received")
    # Only ciphertexts are image-sized (no payload to correlate with): the bytes are searched.
    assert sum(map(len, received)) > 8 * mask.array.size
    for secret in (
        Secret.of("M", mask.array, {"M as float": mask.array.astype(np.float64)}),
        Secret.of("J", fixed.array, {}),
    ):
        report = audit(received, secret)
        assert report.passed, str(report)


@pytest.mark.parametrize("protocol", ["paper-v1", "paper-v2"])
def test_the_paper_protocols_are_refused_with_a_fixed_mask(protocol):
    fixed = head_phantom((20, 18))
    reply = Endpoint(_masked_session(fixed), Counters).answer(
        pb.Envelope(
            hello=pb.Hello(
                protocol_version=PROTOCOL_VERSION,
                backend="he",
                metric=MEAN_SQUARES,
                levels=[pb.Level(shrink_factor=1)],
                sampling="none",
                backend_parameters={"protocol": protocol},
            )
        )
    )
    assert reply.WhichOneof("body") == "abort"
    # The backends that can are listed from the registry: he (packed, its default) first.
    assert reply.abort.reason.startswith(
        f"this fixed party restricts the metric to its mask, and backend 'he' (protocol "
        f"{protocol}) does not compute metric 'meansquares' within a fixed mask: register "
        "with backend he"
    )
    with pytest.raises(PeerError, match=f"protocol {protocol}.*register with backend he"):
        _party(LocalSession(_masked_session(fixed)), MEAN_SQUARES, protocol)


def test_the_moving_party_refuses_a_mask_its_protocol_cannot_compute(monkeypatch):
    """A fixed party that would serve paper-v1 with a mask (here: made to): the moving
    party's own check refuses, with the sentence naming the protocol and the backend
    that can."""
    monkeypatch.setattr(PaperV1FixedSide, "fixed_mask_metrics", (MEAN_SQUARES,))
    with pytest.raises(InputError) as refused:
        _party(LocalSession(_masked_session(head_phantom((20, 18)))), MEAN_SQUARES, "paper-v1")
    assert str(refused.value).startswith(
        "the fixed party restricts the metric to its mask, and backend 'he' (protocol "
        "paper-v1) does not compute metric 'meansquares' within a fixed mask: register with "
        "backend he"
    )


@pytest.mark.parametrize(
    ("points", "weight_bits", "support"),
    [
        (3, 12, None),
        (4096, 12, None),
        (2147483648, 12, None),
        (8448, 20, 289),
        (64000, 21, 4913),
        (1 << 36, 8, 64),  # the totals over all n bind
    ],
)
def test_the_masked_sums_are_exact_at_the_budgets_extremes(points, weight_bits, support):
    """Every factor at its largest: a masked moment over one output's points and a total
    over all n stay below 2^(SUM_BITS - 1) (room for the noise below t / 2)."""
    bits = masked_budget(PLAIN_MODULUS, points, weight_bits, support)
    outputs = points if support is None else support
    # |q| <= 2^(b - 1), M <= 1
    assert outputs * ((1 << weight_bits) - 1) * (1 << (bits.product_bits - 1)) < 1 << (SUM_BITS - 1)
    assert points * (1 << (bits.squared_bits - 1)) < 1 << (SUM_BITS - 1)
    assert min(bits.product_bits, bits.squared_bits) >= 8


def test_too_many_points_for_exact_masked_sums_are_refused():
    with pytest.raises(InputError, match="too many for exact masked sums"):
        masked_budget(PLAIN_MODULUS, 1 << 40, 12)


def test_the_policy_counts_the_masked_sums_before_any_product():
    """A per-evaluation cap that 8 sums fit and 16 do not (2-D affine mean squares, its
    masked sums included): the masked session is refused when the points are agreed."""
    fixed = head_phantom((20, 18))
    policy = FixedPolicy.holding_both_images(("he",), max_measurements_per_evaluation=12 / 360)
    with pytest.raises(PeerError, match="one evaluation would reveal 16 linear measurements"):
        _masked_level(fixed, MEAN_SQUARES, policy)
