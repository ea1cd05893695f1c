"""The spdz backend: CrypTen shares, a dealer, and traffic only over the runtime's mutual TLS."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import known_pair, register_in_process

import ppir_itk
from ppir_itk.backends.crypten_compat import CONVERTER, acting_as, load_crypten
from ppir_itk.backends.spdz_shares import MailboxCommunicator
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.fixed_party import FixedPartyServer
from ppir_itk.fixed_point import RING
from ppir_itk.protocol import ppir_pb2 as pb
from ppir_itk.protocol.messages import ProtocolError
from ppir_itk.roles import FIXED, MOVING

AFFINE = [1.03, 0.04, -0.05, 0.98, 1.5, -2.0]
CRYPTO_PRECISION = 1e-3  # voxel: fixed-point with >= 14 bits per factor, exact ring sums
SAMPLED = 0.05  # voxel, the bound for URS: few points make a rougher cost to follow


def _close_to_clear(fixed, moving, **options):
    clear = register_in_process(fixed, moving, **options)
    private = register_in_process(fixed, moving, **{**options, "backend": "spdz"})
    return displacement_rmse(private.transform, clear.transform, fixed.geometry), private


# -- installation: CrypTen 0.4.1 on current PyTorch -------------------------------------
def test_crypten_imports_with_the_converter_stand_in():
    crypten = load_crypten()
    assert crypten.__version__ == "0.4.1"
    with pytest.raises(NotImplementedError, match="not available"):
        sys.modules[CONVERTER].from_onnx(None)
    assert torch.__version__.startswith("2.13.0") and not torch.cuda.is_available()


def test_a_missing_crypten_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "crypten", None)
    with pytest.raises(ppir_itk.InputError, match="pip install --no-deps crypten==0.4.1"):
        load_crypten()


# -- CrypTen's communicator interface over session messages ------------------------------
def _pair(fixed_step) -> tuple[MailboxCommunicator, MailboxCommunicator]:
    """Two communicators wired as the session wires them: the moving party's flush runs
    ``fixed_step`` (the fixed party's side of the step) on its outbox and reads the answer."""
    fixed = MailboxCommunicator(FIXED)

    def flush() -> None:
        request, answer = pb.SpdzIteration(), pb.SpdzSums()
        moving.take_outbox(request.shares)
        fixed.fill_inbox(request.shares, max_elements=100)
        with acting_as(fixed):
            fixed_step()
        fixed.take_outbox(answer.shares)
        moving.fill_inbox(answer.shares, max_elements=100)

    moving = MailboxCommunicator(MOVING, flush)
    return moving, fixed


def test_the_communicator_implements_crypten_s_interface():
    from crypten.communicator import Communicator

    assert issubclass(MailboxCommunicator, Communicator)
    for name in (
        "get_world_size",
        "get_rank",
        "get_name",
        "send",
        "recv",
        "all_reduce",
        "reduce",
        "send_obj",
        "recv_obj",
        "broadcast_obj",
    ):
        assert getattr(MailboxCommunicator, name) is not getattr(Communicator, name), name
    with pytest.raises(NotImplementedError, match="unpickled"):
        MailboxCommunicator(MOVING).recv_obj(FIXED)


def test_crypten_shares_open_through_the_mailboxes():
    from crypten.mpc.primitives import ArithmeticSharedTensor as Shared

    secret = torch.arange(12, dtype=torch.int64).reshape(3, 4) * (1 << 40)
    mask = torch.randint(-(1 << 62), 1 << 62, (3, 4))
    opened: dict[str, torch.Tensor] = {}

    def fixed_step() -> None:  # the fixed party's share is secret - mask
        share = Shared.from_shares(secret - mask, precision=0)
        opened["fixed"] = share.reveal()  # all_reduce: both learn it
        assert share.reveal(dst=MOVING) is None  # reduce: only the moving party

    moving, fixed = _pair(fixed_step)
    with acting_as(moving):
        share = Shared.from_shares(mask.clone(), precision=0)
        opened["moving"] = share.reveal()
        opened["moving only"] = share.reveal(dst=MOVING)
    for value in opened.values():
        assert torch.equal(value, secret)
    assert not moving.inbox and not fixed.inbox


def test_a_share_of_the_wrong_shape_is_refused():
    receiver, empty, message = MailboxCommunicator(FIXED), pb.SpdzIteration(), pb.SpdzIteration()
    MailboxCommunicator(MOVING).take_outbox(empty.shares)
    receiver.fill_inbox(empty.shares, max_elements=10)
    with pytest.raises(ProtocolError, match="lacks a share"):
        receiver.recv(torch.empty(3, dtype=torch.int64))
    sender = MailboxCommunicator(MOVING)
    sender.send(torch.zeros(4, dtype=torch.int64), FIXED)
    sender.take_outbox(message.shares)
    receiver.fill_inbox(message.shares, max_elements=10)
    with pytest.raises(ProtocolError, match="shape"):
        receiver.recv(torch.empty(3, dtype=torch.int64))


def test_fixed_point_bits_keep_every_sum_in_the_ring():
    from ppir_itk.bspline import BSplineTransform, points_per_control_point
    from ppir_itk.image import GridGeometry
    from ppir_itk.points import PointSet

    for size in ((64, 64), (256, 222), (128, 128, 128)):
        d = len(size)
        grid = GridGeometry(
            size=size, spacing=(1.0,) * d, origin=(0.0,) * d, direction=tuple(np.eye(d).ravel())
        )
        n = grid.number_of_points
        linear = PointSet(grid, None).linear_map.budget(RING)
        # n * |q(J)| * |q(g)| * |q(phi)| < 2^63, and the same for I_w and J^2
        assert np.log2(n) + (linear.j_bits - 1) + (linear.g_bits - 1) + 11 < 63
        assert np.log2(n) + (linear.j_bits - 1) + (linear.w_bits - 1) < 63
        control = BSplineTransform.over(grid, 4.0).control_grid
        bspline_map = PointSet(grid, None, control).linear_map
        bspline = bspline_map.budget(RING)
        support = points_per_control_point(control, grid)
        assert support < n
        weight_bits = int(bspline_map.column_bits[0])
        assert np.log2(support) + (bspline.j_bits - 1) + (bspline.g_bits - 1) + weight_bits < 63
        assert np.log2(n) + 2 * (bspline.j_bits - 1) < 63
        assert np.log2(n) + (bspline.j_bits - 1) + (bspline.w_bits - 1) < 63
        assert min(linear.j_bits, linear.g_bits, bspline.j_bits, bspline.g_bits) >= 11


# -- the backend equals Clear to crypto precision ---------------------------------------
@pytest.mark.parametrize(
    "kind, parameters, sampling",
    [
        ("affine", AFFINE, "none"),
        ("rigid", [0.05, 1.5, -2.0], "urs"),
        ("similarity", [1.02, 0.04, 1.0, -1.0], "gms"),
        ("translation", [1.5, -2.0], "none"),
    ],
)
def test_2d_matches_clear(phantom_2d, kind, parameters, sampling):
    moving, _ = known_pair(phantom_2d, kind, parameters)
    rmse, result = _close_to_clear(
        phantom_2d, moving, transform=kind, sampling=sampling, sampling_fraction=0.2
    )
    assert rmse < (CRYPTO_PRECISION if sampling == "none" else SAMPLED)
    assert result.private and result.backend == "spdz"
    assert "dealer" in result.parties


def test_3d_matches_clear(phantom_3d):
    moving, _ = known_pair(phantom_3d, "rigid", [0.03, -0.02, 0.04, 1.0, -1.5, 0.5])
    rmse, _ = _close_to_clear(
        phantom_3d, moving, transform="rigid", shrink_factors=[2, 1], smoothing_sigmas=[1.0, 0.0]
    )
    assert rmse < CRYPTO_PRECISION


# -- three processes: moving party, fixed party, dealer; mutual TLS on every port -------
def test_two_processes_and_a_dealer_match_clear_and_report_every_party(phantom_2d):
    moving, _ = known_pair(phantom_2d, "affine", AFFINE)
    clear = register_in_process(phantom_2d, moving)
    result = ppir_itk.register(phantom_2d, moving, backend="spdz")
    assert (
        displacement_rmse(result.transform, clear.transform, phantom_2d.geometry) < CRYPTO_PRECISION
    )
    report = result.report()
    assert report["transport"] == "grpc+mtls"
    for party in ("moving", "fixed", "dealer"):
        assert report["parties"][party]["wire_bytes_sent"] > 0
        assert report["parties"][party]["seconds"] > 0
    n = result.levels[-1].points
    # One joint-term evaluation moves (d + 2) n ring elements from the moving party only.
    per_iteration = result.levels[-1].parties["moving"]["per_iteration"]["bytes_sent"]
    assert 4 * n * 8 < per_iteration < 2 * 3 * n * 8
    assert report["learned_in_the_clear"]["fixed"] == []
    assert "8 sums per evaluation" in report["learned_in_the_clear"]["moving"][0]


# -- streaming: every level-sized transfer in bounded chunks -----------------------------
def test_a_level_streamed_in_small_chunks_gives_the_same_transform(phantom_2d):
    # 1024 ring elements per message and per triple request: the finest level (8448 points)
    # opens F in 17 chunks and each iteration's E in 33, each its own exchange, on triples
    # asked per chunk; the ring sums are exact, so the transform is the same to the bit.
    moving, _ = known_pair(phantom_2d, "affine", AFFINE)
    whole = ppir_itk.register(phantom_2d, moving, backend="spdz")
    chunked = ppir_itk.register(
        phantom_2d, moving, backend="spdz", backend_parameters={"chunk_values": "1024"}
    )
    np.testing.assert_array_equal(chunked.transform.parameters, whole.transform.parameters)
    finest = [run.levels[-1].parties["moving"]["per_iteration"] for run in (whole, chunked)]
    n = phantom_2d.array.size
    assert finest[0]["messages_sent"] < 2 < 4 * n / 1024 <= finest[1]["messages_sent"]
    assert 0.99 < finest[1]["bytes_sent"] / finest[0]["bytes_sent"] < 1.2


def test_a_chunk_size_out_of_range_is_refused(phantom_2d):
    with pytest.raises(ppir_itk.InputError, match="chunk_values '12' is not a whole number"):
        ppir_itk.register(
            phantom_2d, phantom_2d, backend="spdz", backend_parameters={"chunk_values": "12"}
        )


# -- the trusted-first-party provider: single process only -------------------------------
def test_trusted_first_party_runs_in_one_process(phantom_2d):
    moving, _ = known_pair(phantom_2d, "affine", AFFINE)
    rmse, _ = _close_to_clear(
        phantom_2d,
        moving,
        backend_parameters={"provider": "tfp"},
        shrink_factors=[2, 1],
        smoothing_sigmas=[1.0, 0.0],
    )
    assert rmse < CRYPTO_PRECISION


def test_trusted_first_party_is_refused_outside_one_process(phantom_2d, tmp_path):
    moving, _ = known_pair(phantom_2d, "affine", AFFINE)
    with pytest.raises(ppir_itk.InputError, match="single-process"):
        ppir_itk.register(
            phantom_2d, moving, backend="spdz", backend_parameters={"provider": "tfp"}
        )
    # A fixed party's server refuses it whatever the moving party claims.
    pki = ppir_itk.init_pki(tmp_path / "pki")
    policy = ppir_itk.FixedPolicy(backends=("spdz",), dealer=lambda token: None)
    server = FixedPartyServer(
        phantom_2d,
        "127.0.0.1:0",
        ppir_itk.TLS.for_role(pki, "fixed-party"),
        policy=policy,
        deadline=5,
    ).start()
    try:
        session = ppir_itk.connect(server.address, ppir_itk.TLS.for_role(pki, "moving-party"))
        session.single_process = True  # a moving party lying about where the fixed party is
        session.deal_as_first_party = lambda: lambda token: None
        with pytest.raises(ppir_itk.PeerError, match="single-process"):
            ppir_itk.register_with(
                session, moving, backend="spdz", backend_parameters={"provider": "tfp"}
            )
    finally:
        server.stop(grace=None)
