"""Attacks on the fixed image J, played with the project's own moving-party client.

The joint term is a set of linear measurements of J whose weights the moving party
builds from its own data (docs/privacy.md). These attacks measure what that lets it
recover, each through a :class:`~ppir_itk.moving_party.MovingPartySession` that sends
fields of its choosing (:class:`~ppir_itk.backends.base.MovingFields`) to whatever
fixed party ``connect()`` reaches (``ppir serve`` through :func:`ppir_itk.connect`, or
:func:`ppir_itk.in_process_session`):

- :func:`recover_by_fine_grid` (attack 1): a B-spline control grid of 1-px spacing
  and one evaluation; a sparse least-squares solve returns J;
- :class:`RecordingMovingParty` and :func:`reconstruct_from_view` (attack 2): an
  honest moving party records its fields and the joint terms it received, then
  reconstructs J by regularised least squares (Tikhonov, total variation, a prior);
- :func:`recover_by_one_hot` (attack 3): one-hot "gradients", warped image and valid
  mask read ``d (d + 1) + 2`` pixels exactly per affine evaluation (the last as J^2, its
    sign the one nearer its neighbours') (``d K + 2`` with a
  control grid), session after session.

An attack stops cleanly when the fixed party refuses or ends a session
(:class:`~ppir_itk.protocol.channel.PeerError`) and reports what it got
(:class:`AttackResult`): the fixed party's policy quotes these numbers.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppir_itk.backends.base import JointTerm, MovingFields
from ppir_itk.bspline import BSplineTransform, control_map
from ppir_itk.fixed_point import PLAIN_MODULUS, RING, encode, exponent
from ppir_itk.image import GridGeometry
from ppir_itk.moving_party import MovingPartySession
from ppir_itk.points import PointSet
from ppir_itk.protocol.channel import PeerError
from ppir_itk.protocol.session import Session
from ppir_itk.pyramid import LevelSchedule

# The ring each private backend computes in: J's fixed-point bits follow from it.
MODULI = {"spdz": RING, "he": PLAIN_MODULUS}
# One level, unsmoothed and full size: the attacks want J itself, not a blurred level.
FULL_RESOLUTION = LevelSchedule.from_lists([1], [0.0])


@dataclass
class AttackResult:
    """What an attack recovered of J on the fixed grid, and what it cost.

    ``estimate`` has NumPy's shape of the fixed grid (x fastest in memory); ``read``
    marks the pixels the attack read exactly (attack 3), the rest it interpolated.
    """

    attack: str
    backend: str
    geometry: GridGeometry | None  # None: the fixed party refused the first session
    estimate: np.ndarray
    evaluations: int
    sessions: int
    seconds: float
    #: Fixed-point bits of J in the backend's sums (None: ``clear``, J is sent as floats).
    j_bits: int | None
    read: np.ndarray | None = None
    #: Why the attack stopped early: the fixed party's sentence (None: it ran to the end).
    stopped: str | None = None

    def quantised(self, values: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """``values`` at the fixed-point precision the backend reveals J with
        (the fixed party's own exponent rule on ``reference``, J)."""
        if self.j_bits is None:
            return np.asarray(values, dtype=np.float64)
        e_j = exponent(float(np.abs(reference).max(initial=0.0)), self.j_bits)
        return encode(np.asarray(values, dtype=np.float64), e_j)

    def exact_fraction(self, j: np.ndarray) -> float:
        """The fraction of J's pixels the estimate gives exactly (at the revealed precision)."""
        j = np.asarray(j, dtype=np.float64)
        same = self.quantised(self._like(j), j) == self.quantised(j, j)
        return float(np.mean(same))

    def psnr(self, j: np.ndarray) -> float:
        """Peak signal-to-noise ratio of the estimate against J (dB; J's range as peak)."""
        return psnr(self._like(j), j)

    def correlation(self, j: np.ndarray) -> float:
        """Pearson correlation of the estimate with J (0 when it recovered nothing)."""
        estimate = self._like(j)
        return 0.0 if not estimate.any() else correlation(estimate, j)

    def _like(self, j: np.ndarray) -> np.ndarray:
        """The estimate in J's shape: zeros if the fixed party refused the first session."""
        if self.estimate.size == 0:
            return np.zeros(np.shape(j))
        return self.estimate.reshape(np.shape(j))


def psnr(estimate: np.ndarray, j: np.ndarray) -> float:
    """PSNR in dB of ``estimate`` against ``j``, with J's range as the peak."""
    j = np.asarray(j, dtype=np.float64)
    error = np.mean((np.asarray(estimate, dtype=np.float64).reshape(j.shape) - j) ** 2)
    peak = float(j.max() - j.min())
    return math.inf if error == 0 else 10.0 * math.log10(peak**2 / error)


def correlation(estimate: np.ndarray, j: np.ndarray) -> float:
    """Pearson correlation of two images."""
    return float(np.corrcoef(np.ravel(estimate), np.ravel(j))[0, 1])


# -- the adversary's session ------------------------------------------------------------
Connect = Callable[[], Session]


class _Sessions:
    """Opens session after session with the fixed party, one full-size level each, with a
    chosen control grid (spacing in pixels; None: the affine basis)."""

    def __init__(
        self,
        connect: Connect,
        backend: str,
        parameters: dict[str, str] | None,
        grid_spacing: float | None,
    ) -> None:
        self.connect, self.backend, self.parameters = connect, backend, parameters
        self.grid_spacing = grid_spacing
        self.sessions = 0
        self.evaluations = 0
        self.current: MovingPartySession | None = None
        self.geometry: GridGeometry | None = None  # the fixed grid, once a session said it

    def open(self) -> PointSet:
        """A new session's point set (raises PeerError when the fixed party refuses)."""
        self.close()
        self.current = MovingPartySession(self.connect(), self.backend, self.parameters)
        self.sessions += 1
        self.geometry = self.current.start(FULL_RESOLUTION, None)
        level = self.current.begin_level(0)()
        control = None
        if self.grid_spacing is not None:
            spacing = self.grid_spacing * np.asarray(level.spacing, dtype=np.float64)
            control = BSplineTransform.over(level, spacing).control_grid
        return self.current.select_points(level, control_grid=control)

    def joint_term(self, fields: MovingFields) -> JointTerm:
        assert self.current is not None, "open() comes before joint_term()"
        joint = self.current.joint_term(fields)
        self.evaluations += 1
        return joint

    def close(self) -> None:
        if self.current is None:
            return
        try:
            self.current.close()
        except PeerError:
            pass  # the fixed party ended the session itself (its budget): nothing to close
        self.current = None


def _fields(
    points: PointSet,
    gradient: np.ndarray,
    warped: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> MovingFields:
    n = points.size
    d = points.geometry.dimension
    coefficients = np.eye(d * (d + 1)) if points.control is None else np.zeros((0, 0))
    return MovingFields(
        gradient=gradient,
        warped=np.zeros(n) if warped is None else warped,
        valid=np.zeros(n, dtype=np.uint8) if valid is None else valid,
        coefficients=coefficients,
    )


def _j_bits(backend: str, points: PointSet) -> int | None:
    modulus = MODULI.get(backend)
    return None if modulus is None else points.linear_map.budget(modulus).j_bits


def bspline_matrix(points: PointSet, axis_weight_bits: int = 0) -> Any:
    """The B-spline basis of the points' control grid as a sparse (n, K) matrix, with the
    weights the backends use (``prod_k round(beta3 2^bits) / 2^bits`` when
    ``axis_weight_bits`` > 0): ``moments[k] = B^T (g_k J)``. All grid points (no indices)."""
    import scipy.sparse as sparse

    geometry, control = points.geometry, points.control
    assert control is not None, "a B-spline basis needs the points' control grid"
    size, matrix, offset = control_map(control, geometry)
    d = geometry.dimension
    index = geometry.flat_to_index(np.arange(geometry.number_of_points))
    u = index @ matrix.T + offset
    floor = np.minimum(np.floor(u), size - 3)  # the kernels' rule (src/ppir_bspline.c)
    t = u - floor
    base = floor.astype(np.int64) - 1
    weights = (
        np.stack(
            [(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=-1
        )
        / 6.0
    )
    if axis_weight_bits > 0:  # llround: halves away from zero (the weights are >= 0)
        scale = 2.0**axis_weight_bits
        weights = np.floor(weights * scale + 0.5) / scale
    strides = np.cumprod((1,) + tuple(int(s) for s in size[:-1]))
    rows, columns, values = [], [], []
    for shift in np.ndindex(*(4,) * d):
        corner = base + np.asarray(shift)
        inside = np.all((corner >= 0) & (corner < size), axis=1)
        rows.append(np.flatnonzero(inside))
        columns.append(corner[inside] @ strides)
        values.append(np.prod(weights[inside][:, np.arange(d), list(shift)], axis=1))
    return sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
        shape=(geometry.number_of_points, control.number_of_points),
    )


# -- attack 1: a fine B-spline grid -------------------------------------------------------
def recover_by_fine_grid(
    connect: Connect,
    *,
    backend: str = "he",
    parameters: dict[str, str] | None = None,
    grid_spacing: float = 1.0,
) -> AttackResult:
    """J from one evaluation on a control grid of ``grid_spacing`` pixels (attack 1).

    The moving party sends a gradient of 1 along axis 0 everywhere, so the moments of
    that axis are ``B^T J``: with a 1-px grid, more equations (K) than pixels (n), and
    the B-spline's symbol bounded away from zero, a least-squares solve returns J.
    """
    start = time.perf_counter()
    sessions = _Sessions(connect, backend, parameters, grid_spacing)
    stopped, estimate, points = None, None, None
    try:
        points = sessions.open()
        n, d = points.size, points.geometry.dimension
        gradient = np.zeros((n, d))
        gradient[:, 0] = 1.0
        joint = sessions.joint_term(_fields(points, gradient))
        basis = bspline_matrix(points, joint.basis_weight_bits)
        assert joint.moments is not None, "a private backend's joint term has moments"
        estimate = least_squares(basis.T, joint.moments[0])
    except PeerError as error:
        stopped = str(error)
    finally:
        sessions.close()
    return _result("fine grid", backend, sessions, points, estimate, start, stopped)


def least_squares(matrix: Any, measured: np.ndarray) -> np.ndarray:
    """``argmin ||M x - b||`` for a sparse M of full column rank, by the normal equations
    (sparse and banded here: a direct solve is exact to rounding, an iterative one is not)."""
    from scipy.sparse.linalg import spsolve

    matrix = matrix.tocsc()
    return spsolve((matrix.T @ matrix).tocsc(), matrix.T @ measured)


def _result(
    attack: str,
    backend: str,
    sessions: _Sessions,
    points: PointSet | None,
    estimate: np.ndarray | None,
    start: float,
    stopped: str | None,
    read: np.ndarray | None = None,
) -> AttackResult:
    geometry = sessions.geometry
    shape = (0,) if geometry is None else tuple(reversed(geometry.size))
    flat = np.zeros(math.prod(shape)) if estimate is None else estimate
    return AttackResult(
        attack=attack,
        backend=backend,
        geometry=geometry,
        estimate=flat.reshape(shape),
        evaluations=sessions.evaluations,
        sessions=sessions.sessions,
        seconds=time.perf_counter() - start,
        j_bits=None if points is None else _j_bits(backend, points),
        read=None if read is None else read.reshape(shape),
        stopped=stopped,
    )


# -- attack 3: malicious chosen weights ----------------------------------------------------
def recover_by_one_hot(
    connect: Connect,
    *,
    backend: str = "he",
    parameters: dict[str, str] | None = None,
    grid_spacing: int | None = None,
    max_sessions: int = 64,
    max_evaluations: int | None = None,
) -> AttackResult:
    """J's pixels read exactly through one-hot fields, session after session (attack 3).

    Affine basis (``grid_spacing`` None): each gradient row is one-hot on d + 1 affinely
    independent pixels, separated by solving with the public basis; the warped image is
    one-hot on one more (``I_w . J``) and the valid mask on another (``sum m J^2``, J
    taken >= 0): ``d (d + 1) + 2`` pixels per evaluation. A control grid of
    ``grid_spacing`` pixels: each gradient row is one-hot on a residue class of the
    pixels mod the spacing, which its K moments separate (a full convolution with the
    B-spline weights). When the fixed party ends a session, the next one is opened;
    the attack stops when it refuses, after ``max_sessions`` or ``max_evaluations``,
    or when every pixel is read. The pixels not read are interpolated.
    """
    start = time.perf_counter()
    sessions = _Sessions(connect, backend, parameters, grid_spacing)
    stopped, points, values, read = None, None, None, None
    try:
        while sessions.sessions < max_sessions:
            try:
                points = sessions.open()
            except PeerError as error:
                stopped = str(error)
                break
            if values is None or read is None:
                values = np.zeros(points.size)
                read = np.zeros(points.size, dtype=bool)
                unsigned = np.zeros(points.size, dtype=bool)  # read as J^2: sign to settle
                plan = _one_hot_plan(points, grid_spacing)
            before = sessions.evaluations
            try:
                while plan and (max_evaluations is None or sessions.evaluations < max_evaluations):
                    _read_one_hot(sessions, points, *plan[0], values, read, unsigned)
                    plan.popleft()
            except PeerError as error:
                stopped = str(error)
            if (
                not plan
                or sessions.evaluations == before
                or (max_evaluations is not None and sessions.evaluations >= max_evaluations)
            ):
                break
    finally:  # whatever ends the attack, no session is left open
        sessions.close()
    if values is not None and not plan:
        stopped = None  # every pixel read: the last session's end did not stop the attack
    estimate = None
    if values is not None and read is not None and points is not None:
        estimate = _interpolate(
            points.geometry, _signed(points.geometry, values, read, unsigned), read
        )
    return _result(
        "one-hot" if grid_spacing is None else f"one-hot, {grid_spacing}-px grid",
        backend,
        sessions,
        points,
        estimate,
        start,
        stopped,
        read,
    )


# One evaluation's one-hot pixels: per gradient row, then I_w's and the valid mask's.
OneHot = tuple[list[np.ndarray], int | None, int | None]


def _one_hot_plan(points: PointSet, grid_spacing: int | None) -> deque[OneHot]:
    geometry = points.geometry
    d, n = geometry.dimension, points.size
    if grid_spacing is not None:
        index = geometry.flat_to_index(np.arange(n))
        residue = (index % grid_spacing) @ (grid_spacing ** np.arange(d))
        classes = [np.flatnonzero(residue == r) for r in range(grid_spacing**d)]
        return deque(
            ([*classes[first : first + d]], None, None) for first in range(0, len(classes), d)
        )
    weights = _affine_weights(points)
    # Any order: a random one keeps d + 1 consecutive pixels off a common line (plane).
    queue = deque(np.random.default_rng(0).permutation(n).tolist())
    plan: deque[OneHot] = deque()
    taken: list[int] = []
    while queue:
        rows = []
        for _ in range(d):
            row: list[int] = []
            while len(row) < d + 1:
                candidate = queue.popleft() if queue else taken[len(row)]  # reread: known
                trial = weights[row + [candidate]]
                if np.linalg.matrix_rank(trial, tol=1e-6) == len(row) + 1:
                    row.append(candidate)
                elif queue:
                    queue.append(candidate)  # on the others' line: later, with other pixels
                else:
                    row.append(
                        next(
                            p
                            for p in taken
                            if np.linalg.matrix_rank(weights[row + [p]], tol=1e-6) == len(row) + 1
                        )
                    )
            taken.extend(p for p in row if p not in taken[-(d + 1) * d :])
            rows.append(np.array(row))
        warped = queue.popleft() if queue else None
        valid = queue.popleft() if queue else None
        plan.append((rows, warped, valid))
    return plan


def _affine_weights(points: PointSet) -> np.ndarray:
    """The affine basis as the backends weight it: ``(q(phi) / 2^e_phi, 1)``, (n, d + 1)."""
    basis = points.linear_map
    return basis.dense_weights() / 2.0**basis.column_bits


def _read_one_hot(
    sessions: _Sessions,
    points: PointSet,
    rows: list[np.ndarray],
    warped_pixel: int | None,
    valid_pixel: int | None,
    values: np.ndarray,
    read: np.ndarray,
    unsigned: np.ndarray,
) -> None:
    n, d = points.size, points.geometry.dimension
    gradient = np.zeros((n, d))
    for k, row in enumerate(rows):
        gradient[row, k] = 1.0
    warped = np.zeros(n)
    valid = np.zeros(n, dtype=np.uint8)
    if warped_pixel is not None:
        warped[warped_pixel] = 1.0
    if valid_pixel is not None:
        valid[valid_pixel] = 1
    joint = sessions.joint_term(_fields(points, gradient, warped, valid))
    assert joint.moments is not None, "a private backend's joint term has moments"
    if points.control is None:
        weights = _affine_weights(points)
        for k, row in enumerate(rows):
            values[row] = np.linalg.solve(weights[row].T, joint.moments[k])
    else:
        basis = bspline_matrix(points, joint.basis_weight_bits)
        for k, row in enumerate(rows):
            values[row] = least_squares(basis[row].T, joint.moments[k])
    for row in rows:
        read[row] = True
    if warped_pixel is not None:
        values[warped_pixel], read[warped_pixel] = joint.warped_dot_fixed, True
    if valid_pixel is not None:
        values[valid_pixel] = math.sqrt(max(joint.fixed_squared, 0.0))
        read[valid_pixel] = unsigned[valid_pixel] = True


def _signed(
    geometry: GridGeometry, values: np.ndarray, read: np.ndarray, unsigned: np.ndarray
) -> np.ndarray:
    """The pixels read as J^2 given the sign nearer their neighbours' (a background
    pixel may be slightly negative)."""
    if not unsigned.any():
        return values
    guess = _interpolate(geometry, values, read & ~unsigned)
    flip = unsigned & (np.abs(guess + values) < np.abs(guess - values))
    return np.where(flip, -values, values)


def _interpolate(geometry: GridGeometry, values: np.ndarray, read: np.ndarray) -> np.ndarray:
    """The pixels not read, linearly from those read (nearest outside their hull)."""
    if read.all() or not read.any():
        return values
    from scipy.interpolate import griddata

    index = geometry.flat_to_index(np.arange(values.size)).astype(np.float64)
    known, unknown = index[read], index[~read]
    out = values.copy()
    linear = griddata(known, values[read], unknown, method="linear")
    nearest = griddata(known, values[read], unknown[np.isnan(linear)], method="nearest")
    linear[np.isnan(linear)] = nearest
    out[~read] = linear
    return out


# -- attack 2: an honest-but-curious moving party ------------------------------------------
@dataclass(frozen=True)
class Observation:
    """One evaluation as the moving party saw it: its own fields and what it received."""

    points: PointSet
    fields: MovingFields
    joint: JointTerm


class RecordingMovingParty(MovingPartySession):
    """An honest moving party that keeps its view: every evaluation's fields and joint term.

    Use it as the metric's session
    (``PrivateMeanSquaresImageToImageMetric(RecordingMovingParty(session, "he"))``);
    :func:`reconstruct_from_view` then attacks :attr:`view`.
    """

    def __init__(
        self, session: Session, backend: str = "he", parameters: dict[str, str] | None = None
    ) -> None:
        super().__init__(session, backend, parameters)
        self.view: list[Observation] = []

    def joint_term(self, fields: MovingFields) -> JointTerm:
        joint = super().joint_term(fields)
        assert self.points is not None, "select_points() comes before joint_term()"
        self.view.append(Observation(self.points, fields, joint))
        return joint


class ViewOperator:
    """The linear measurements of J in a recorded view, on the full-size level's grid.

    ``A x`` stacks, per evaluation, the moments ``W^T (g_k x)`` (W the points' public
    basis) and ``I_w . x``; ``b`` what the moving party received. The sums of J^2 are not
    linear in J and are left out, as are coarser levels' evaluations; ``warped_dot``
    False leaves the ``I_w . J`` sums out too (their row is then zero).

    Each row is divided by the scale of a fixed party's noise on it
    (``FixedPolicy.joint_term_noise``: one voxel's most, the largest ``|g|`` times the
    largest basis weight for every moment of an evaluation, the largest ``|I_w|`` for
    ``I_w . J``), so least squares weighs every sum by its precision, and a sum over the
    whole image does not drown the local moments.
    """

    def __init__(
        self, view: list[Observation], geometry: GridGeometry, *, warped_dot: bool = True
    ) -> None:
        import scipy.sparse as sparse

        kept = [o for o in view if o.points.geometry == geometry]
        if not kept:
            raise ValueError("the view has no evaluation on the fixed grid")
        self.geometry = geometry
        self.size = geometry.number_of_points
        self.blocks = []  # (basis (n, outputs), gradients (n, d), warped (n,), moments, dot)
        bases: dict[int, tuple[Any, float]] = {}  # per point set: basis, its largest weight
        for observation in kept:
            points = observation.points
            key = id(points)
            if key not in bases:
                if points.control is None:
                    basis = sparse.csr_matrix(_affine_weights(PointSet(geometry, None)))
                else:
                    basis = bspline_matrix(PointSet(geometry, None, points.control))
                bases[key] = basis, float(abs(basis).max())
            basis, largest_weight = bases[key]
            gradient = self._on_grid(points, observation.fields.gradient)
            warped = self._on_grid(points, observation.fields.warped) * float(warped_dot)
            # The noise's scale: one voxel's most, the same for every moment of an
            # evaluation (the largest |g| times the largest basis weight), and |I_w|'s most.
            largest = np.full(gradient.shape[1] * basis.shape[1] + 1, 0.0)
            largest[:-1] = np.abs(gradient).max(initial=0.0) * largest_weight
            largest[-1] = np.abs(warped).max(initial=0.0)
            scale = np.divide(1.0, largest, out=np.zeros_like(largest), where=largest > 0)
            self.blocks.append((basis, gradient, warped, scale))
        self.measured = np.concatenate(
            [
                np.append(_moments(o).ravel(), o.joint.warped_dot_fixed * float(warped_dot))
                * block[3]
                for o, block in zip(kept, self.blocks, strict=True)
            ]
        )

    def _on_grid(self, points: PointSet, values: np.ndarray) -> np.ndarray:
        if points.indices is None:
            return np.asarray(values, dtype=np.float64)
        out = np.zeros((self.size,) + values.shape[1:])
        out[points.indices] = values
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                np.append((basis.T @ (gradient * x[:, None])).T.ravel(), warped @ x) * scale
                for basis, gradient, warped, scale in self.blocks
            ]
        )

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        out = np.zeros(self.size)
        offset = 0
        for basis, gradient, warped, scale in self.blocks:
            count = gradient.shape[1] * basis.shape[1]
            scaled = y[offset : offset + count + 1] * scale
            moments = scaled[:count].reshape(gradient.shape[1], basis.shape[1])
            out += np.sum(gradient * (basis @ moments.T), axis=1) + warped * scaled[count]
            offset += count + 1
        return out

    @functools.cached_property
    def norm_squared(self) -> float:
        """``||A||^2`` by 20 power iterations (scales the regularisers; computed once)."""
        x = np.ones(self.size) / math.sqrt(self.size)
        value = 1.0
        for _ in range(20):
            x = self.adjoint(self.forward(x))
            value = float(np.linalg.norm(x))
            x /= value
        return value


def _gradient(x: np.ndarray) -> np.ndarray:
    """Forward differences per axis (Neumann boundary), stacked on axis 0."""
    return np.stack([np.diff(x, axis=a, append=np.take(x, [-1], axis=a)) for a in range(x.ndim)])


def _divergence(p: np.ndarray) -> np.ndarray:
    """The negative adjoint of :func:`_gradient`."""
    out = np.zeros(p.shape[1:])
    for a in range(p.shape[0]):
        component = np.moveaxis(p[a], a, 0)
        div = np.concatenate([component[:1], component[1:-1] - component[:-2], -component[-2:-1]])
        out += np.moveaxis(div, 0, a)
    return out


def tikhonov(
    operator: ViewOperator, weight: float, prior: np.ndarray | None = None, *, iterations: int = 100
) -> np.ndarray:
    """``argmin ||A x - b||^2 + weight ||A||^2 R(x)`` by conjugate gradients, with
    ``R = ||grad x||^2`` (no prior) or ``||x - prior||^2``."""
    from scipy.sparse.linalg import LinearOperator, cg

    shape = tuple(reversed(operator.geometry.size))
    scale = weight * operator.norm_squared

    def regulariser(x: np.ndarray) -> np.ndarray:
        if prior is not None:
            return x
        return -_divergence(_gradient(x.reshape(shape))).ravel()

    n = operator.size
    normal = LinearOperator(
        (n, n), matvec=lambda x: operator.adjoint(operator.forward(x)) + scale * regulariser(x)
    )
    right = operator.adjoint(operator.measured)
    start = np.zeros(n)
    if prior is not None:
        right = right + scale * np.ravel(prior)
        start = np.ravel(prior).astype(np.float64)
    return cg(normal, right, x0=start, maxiter=iterations)[0].reshape(shape)


def total_variation(operator: ViewOperator, weight: float, *, iterations: int = 300) -> np.ndarray:
    """``argmin ||A x - b||^2 / (2 ||A||^2) + weight c TV(x)`` (isotropic TV, c the RMS
    intensity of ``A^T b / ||A||^2``), by Chambolle and Pock's primal-dual iteration."""
    shape = tuple(reversed(operator.geometry.size))
    norm = math.sqrt(operator.norm_squared)
    measured = operator.measured / norm
    # TV is in intensity units, the data term in their square: scale the weight by the
    # RMS intensity the data point to (A^T b / ||A||^2), so one weight fits any image.
    intensity = float(np.linalg.norm(operator.adjoint(operator.measured)))
    weight *= intensity / (operator.norm_squared * math.sqrt(operator.size))
    step = 1.0 / math.sqrt(1.0 + 4.0 * len(shape))  # ||(A / ||A||, grad)||^2 <= 1 + 4 d
    x = np.zeros(shape)
    x_bar = x.copy()
    y = np.zeros_like(measured)
    z = np.zeros((len(shape), *shape))
    for _ in range(iterations):
        y = (y + step * (operator.forward(x_bar.ravel()) / norm - measured)) / (1.0 + step)
        z += step * _gradient(x_bar)
        z /= np.maximum(1.0, np.sqrt(np.sum(z**2, axis=0)) / weight)
        previous = x
        x = x - step * (operator.adjoint(y).reshape(shape) / norm - _divergence(z))
        x_bar = 2.0 * x - previous
    return x


@dataclass(frozen=True)
class Reconstruction:
    """Attack 2's best estimate per method, and the scores against J."""

    method: str
    weight: float
    estimate: np.ndarray
    psnr: float
    correlation: float


def reconstruct_from_view(
    view: list[Observation],
    geometry: GridGeometry,
    j: np.ndarray,
    *,
    prior: np.ndarray | None = None,
    warped_dot: bool = True,
    weights: Sequence[float] = (1e-6, 1e-4, 1e-2, 1.0),
    tv_weights: Sequence[float] = (1e-2, 1e-1, 1.0),
    iterations: int = 100,
    tv_iterations: int = 300,
) -> list[Reconstruction]:
    """Attack 2 on a recorded view: per method, the best weight's estimate scored against
    J (an oracle choice of the regularisation weight, the attacker's best case).

    Methods: Tikhonov with a smoothness term, total variation, and (with ``prior``, the
    moving party's own registered image on the fixed grid) Tikhonov towards the prior,
    with the prior alone as the baseline. ``warped_dot`` False: the moments alone.
    """
    operator = ViewOperator(view, geometry, warped_dot=warped_dot)
    j = np.asarray(j, dtype=np.float64).reshape(tuple(reversed(geometry.size)))
    candidates: dict[str, list[tuple[float, np.ndarray]]] = {
        "tikhonov": [(w, tikhonov(operator, w, iterations=iterations)) for w in weights],
        "total variation": [
            (w, total_variation(operator, w, iterations=tv_iterations)) for w in tv_weights
        ],
    }
    if prior is not None:
        prior = np.asarray(prior, dtype=np.float64).reshape(j.shape)
        candidates["prior alone"] = [(0.0, prior)]
        candidates["towards the prior"] = [
            (w, tikhonov(operator, w, prior, iterations=iterations)) for w in weights
        ]
    out = []
    for method, estimates in candidates.items():
        if not estimates:  # the caller asked for no weight of this method
            continue
        weight, estimate = max(estimates, key=lambda c: psnr(c[1], j))
        out.append(
            Reconstruction(method, weight, estimate, psnr(estimate, j), correlation(estimate, j))
        )
    return out


def _moments(observation: Observation) -> np.ndarray:
    """An observation's moments (a private backend's joint term always has them)."""
    assert observation.joint.moments is not None, "a private backend's joint term has moments"
    return observation.joint.moments
