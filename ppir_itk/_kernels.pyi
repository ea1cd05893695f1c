"""Type stub of ppir_itk._kernels: the C kernels of src/ (spec: docs/kernels.md).

Conventions shared by every kernel:

- Arrays are NumPy C-contiguous arrays in NumPy axis order (``[z, y, x]`` in
  3-D); geometry is in ITK order (``size[0]`` is x).  A grid point's flat
  index is ``x + size[0] * (y + size[1] * z)``, as in ``array.ravel()``.
- A grid is ``size`` (int64, d), ``index_to_physical`` (float64, d x d,
  ``direction @ diag(spacing)``) and ``origin`` (float64, d):
  ``p = origin + index_to_physical @ idx``.
- A point list is the whole fixed grid (``indices=None``, n = prod(size)) or
  an int64 array of n flat indices.  Kernels work on positions
  ``[start, stop)`` and write per-point outputs at those positions only;
  reductions return the chunk's partial sums.
- Dtypes are exact: ``moving``/``image`` may be float32 or float64, sizes and
  indices are int64, ``out_valid`` is uint8, everything else float64 (native
  byte order).  Wrong dtype, shape, dimension (only 2-D and 3-D), contiguity,
  a read-only or overlapping output, a bad ``[start, stop)`` or an index
  outside the grid raise ``ValueError``.
- Every kernel releases the GIL while it computes.
"""

import numpy as np
import numpy.typing as npt

FloatImage = npt.NDArray[np.float32] | npt.NDArray[np.float64]
Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]
UInt8 = npt.NDArray[np.uint8]
UInt64 = npt.NDArray[np.uint64]

Control = tuple[Int64, Float64, Float64]  # (control_size, point_to_control, control_offset)

__all__ = [
    "affine_gram",
    "affine_moments",
    "bspline_displacement",
    "bspline_hessian",
    "bspline_scatter",
    "central_gradient",
    "warp",
    "ring128_add",
    "ring128_beaver",
    "ring128_multiply",
    "ring128_negate",
    "ring128_shift_right",
    "ring128_subtract",
    "ring128_truncate",
    "ring_column_dots",
    "ring_gram",
    "ring_left",
    "ring_window_gram",
    "ring_window_left",
    "ring_window_subtract",
]

def central_gradient(image: FloatImage, out: Float64) -> None:
    """Index-space gradient of a 2-D or 3-D image, written to ``out``.

    ``out`` has shape ``image.shape + (d,)``; ``out[..., k]`` is the derivative
    along ITK axis k (NumPy axis d-1-k), per unit index: ``(f[i+1] - f[i-1]) / 2``
    inside, ``f[1] - f[0]`` and ``f[n-1] - f[n-2]`` at the borders, 0 along an
    axis of size 1.
    """

def warp(
    moving: FloatImage,
    moving_gradient: Float64,
    moving_physical_to_index: Float64,
    moving_origin: Float64,
    fixed_size: Int64,
    fixed_index_to_physical: Float64,
    fixed_origin: Float64,
    matrix: Float64,
    offset: Float64,
    indices: Int64 | None,
    start: int,
    stop: int,
    out_values: Float64,
    out_gradient: Float64,
    out_valid: UInt8,
    displacement: Float64 | None = None,
) -> int:
    """Resample the moving image and its gradient at mapped fixed-grid points.

    For each position in ``[start, stop)`` with fixed point x:
    ``y = matrix @ x + offset`` and ``u = P @ (y - moving_origin)`` (ITK order,
    ``P = moving_physical_to_index``).  The point is valid iff
    ``-0.5 <= u_k < size_k - 0.5`` for every k (ITK's ``IsInsideBuffer``, u clamped
    onto the border to interpolate) (``size = moving.shape[::-1]``); then
    ``out_values`` gets the (bi/tri)linear interpolation of ``moving`` at u and
    ``out_gradient`` the physical gradient ``P.T @ interp(moving_gradient, u)``,
    and ``out_valid`` 1.  Invalid points get 0, 0, 0.

    Shapes: ``moving_gradient`` ``moving.shape + (d,)`` (index-space, as from
    :func:`central_gradient`); ``out_values`` (n,), ``out_gradient`` (n, d),
    ``out_valid`` (n,), n the length of the point list.

    Returns the number of valid points in ``[start, stop)``.
    """

def affine_gram(
    fixed_size: Int64,
    fixed_index_to_physical: Float64,
    fixed_origin: Float64,
    reference: Float64,
    indices: Int64 | None,
    start: int,
    stop: int,
    gradient: Float64,
    out: Float64,
) -> None:
    """Gram matrix of the gradient over the affine basis, written to ``out``.

    ``out`` (m x m, m = d (d + 1)) is overwritten with the sum over positions
    ``[start, stop)`` of ``v v^T``, ``v[k*(d+1) + j] = gradient[pos, k] * phi_j(x)``,
    ``phi(x) = (x - reference, 1)``.  ``gradient`` has shape (n, d).  Points
    with an all-zero gradient contribute nothing; ``out`` is exactly symmetric.
    """

def affine_moments(
    fixed_size: Int64,
    fixed_index_to_physical: Float64,
    fixed_origin: Float64,
    reference: Float64,
    indices: Int64 | None,
    start: int,
    stop: int,
    field: Float64,
    weights: Float64 | None,
    out: Float64,
) -> None:
    """Moments of a field over the affine basis, written to ``out``.

    ``out`` (d x (d + 1)) is overwritten with
    ``out[k, j] = sum field[pos, k] * w[pos] * phi_j(x)`` over positions
    ``[start, stop)``, ``phi(x) = (x - reference, 1)``; ``field`` has shape
    (n, d), ``weights`` shape (n,) or None (w = 1).
    """

def bspline_displacement(
    fixed_size: Int64,
    indices: Int64 | None,
    start: int,
    stop: int,
    control: Control,
    coefficients: Float64,
    out: Float64,
) -> None:
    """Cubic B-spline displacement (n x d) at positions ``[start, stop)``.

    ``control`` maps a fixed-grid index to the continuous control index
    ``u = control_offset + point_to_control @ idx``; a point is inside iff
    ``1 <= u_k <= control_size[k] - 2`` (else displacement 0). ``coefficients``
    are ITK's parameters, shape (d, prod(control_size)).
    """

def bspline_scatter(
    fixed_size: Int64,
    indices: Int64 | None,
    start: int,
    stop: int,
    control: Control,
    values: Float64 | Int64,
    out: Float64 | Int64,
    weight_bits: int = 0,
) -> None:
    """``out (M x m) = sum_x w_c(x) values[x]``: the transposed B-spline basis.

    float64 values: exact weights, or (``weight_bits`` > 0) weights rounded to
    ``prod_k round(beta3 2^bits) / 2^(d bits)``. int64 values: the same sums over
    the ring Z_2^64 with the integer weights (``weight_bits`` in [1, 20]).
    """

def bspline_hessian(
    fixed_size: Int64,
    indices: Int64 | None,
    start: int,
    stop: int,
    control: Control,
    gradient: Float64,
    out: Float64,
) -> None:
    """Blocks of ``S^T S``, ``S[x, (k, c)] = gradient_k(x) w_c(x)``: ``out`` has shape
    (M, 7^d, d (d + 1) / 2), each block's upper triangle (k <= l) row by row (g g^T is
    symmetric); block ``[c, o]`` couples c with c + offset, offset in {-3..3}^d,
    ``o = (o_0 + 3) + 7 (o_1 + 3) + 49 (o_2 + 3)``. Only offsets with
    ``o_0 + 4 o_1 + 16 o_2 >= 0`` are filled: the others are those blocks transposed.
    """

# -- Mattes mutual information's per-sample arithmetic (src/ppir_parzen.c): whole arrays
# in one call, outputs made by the binding.

__all__ += [
    "parzen_entropy_difference",
    "parzen_joint_histogram",
    "parzen_log_ratio",
    "parzen_sample_weights",
    "parzen_windows",
]

def parzen_windows(
    values: Float64,
    valid: UInt8,
    count: int,
    minimum: float,
    maximum: float,
    bin_size: float,
    normalized_minimum: float,
) -> tuple[Int64, Float64, Float64, UInt8, int, float]:
    """The cubic B-spline windows of n moving values over ``count`` (5 to 256) bins of
    ``[minimum, maximum]``: ``(first_bin, weights, derivatives, inside, n_inside,
    negative_entropy)``.

    A value is inside when ``valid`` and in the range; then ``term = value / bin_size -
    normalized_minimum``, ``first_bin = clip(floor(term), 2, count - 3) - 1`` (n,),
    ``weights[i, k] = beta3(first + k - term)``, ``derivatives[i, k] = -beta3'(first + k -
    term) / bin_size`` ((n, 4) each); the others get first bin 1 and rows of zeros.
    ``inside`` (n,) says which and ``n_inside`` counts them; ``negative_entropy`` is
    ``sum_j p_m(j) log p_m(j)`` over the bins where the moving marginal ``p_m`` (the
    inside weights' sum per bin over ``n_inside``) exceeds DBL_EPSILON.
    """

def parzen_joint_histogram(
    fixed_bin: Int64, first_bin: Int64, weights: Float64, valid: UInt8, count: int
) -> Float64:
    """(count, count) ``histogram[fixed_bin[i], first_bin[i] + k] += weights[i, k]`` over
    the valid samples; a valid sample's bin outside the histogram raises ``ValueError``."""

def parzen_log_ratio(histogram: Float64) -> tuple[Float64, float]:
    """``(ratio, total)``: ITK's PRatio ``log(p / p_m)`` of a square histogram, ``p =
    histogram / total`` and ``p_m`` its column sums, where both exceed DBL_EPSILON (else
    0; all 0 when ``total``, the histogram's sum, is below DBL_EPSILON)."""

def parzen_entropy_difference(fractions: Float64) -> float:
    """``sum x log x - sum r log r`` over a square array's entries x and row sums r, each
    over the entries above DBL_EPSILON."""

def parzen_sample_weights(
    ratio: Float64, fixed_bin: Int64, first_bin: Int64, derivatives: Float64
) -> Float64:
    """``s[i] = sum_k ratio[fixed_bin[i], first_bin[i] + k] * derivatives[i, k]`` (n,); a
    bin outside ``ratio`` raises ``ValueError``."""

# Z_2^64 matrix products (uint64, wrapping) and Z_2^128 words ((..., 2) uint64, low word
# first): src/ppir_ring.c. Outputs are overwritten and may not overlap an input.

def ring_gram(a: UInt64, b: UInt64, out: UInt64) -> None:
    """``out (rows_a x rows_b) = a b^T`` over Z_2^64; a and b have the same columns."""

def ring_left(left: UInt64, right: UInt64, out: UInt64) -> None:
    """``out (rows x count) = left right`` over Z_2^64."""

def ring_window_gram(dense: UInt64, bins: int, first: Int64, weights: UInt64, out: UInt64) -> None:
    """``out (rows x bins) = dense W^T`` over Z_2^64 for the window matrix W (bins x count),
    ``W[first[p] + k, p] = weights[p, k]`` and zero elsewhere (``0 <= first[p] <= bins -
    width``, weights count x width): width products per entry of ``dense``."""

def ring_window_left(left: UInt64, first: Int64, weights: UInt64, out: UInt64) -> None:
    """``out (rows x count) = left W`` over Z_2^64 for the window matrix W (bins x count,
    bins = left's columns): ``out[i, p] = sum_k left[i, first[p] + k] weights[p, k]``."""

def ring_column_dots(x: UInt64, y: UInt64, out: UInt64) -> None:
    """``out (count) = sum_i x[i, p] y[i, p]`` over Z_2^64, x and y (rows x count)."""

def ring_window_subtract(first: Int64, weights: UInt64, dense: UInt64, out: UInt64) -> None:
    """``out (bins x count) = W - dense`` over Z_2^64, W the window matrix (bins = dense's
    rows)."""

def ring128_add(x: UInt64, y: UInt64, out: UInt64) -> None:
    """``out = x + y`` over Z_2^128 (x, y, out of one shape (..., 2))."""

def ring128_subtract(x: UInt64, y: UInt64, out: UInt64) -> None:
    """``out = x - y`` over Z_2^128."""

def ring128_multiply(x: UInt64, y: UInt64, out: UInt64) -> None:
    """``out = x y`` over Z_2^128."""

def ring128_negate(x: UInt64, out: UInt64) -> None:
    """``out = -x`` over Z_2^128."""

def ring128_shift_right(x: UInt64, bits: int, out: UInt64) -> None:
    """``out = floor(x / 2^bits)``, x read in ``[0, 2^128)``, ``0 <= bits < 128``."""

def ring128_truncate(x: UInt64, bits: int, party: int, out: UInt64) -> None:
    """SecureML's local truncation of a share by ``bits``: party 0 ``x >> bits``, party 1
    ``-((-x) >> bits)``."""

def ring128_beaver(
    e: UInt64, f: UInt64, a: UInt64, b: UInt64, c: UInt64, party: int, out: UInt64
) -> None:
    """A party's share of Beaver's product: ``out = c + e b + f a`` (``+ e f`` for party 0),
    e and f opened, a, b, c its shares of the triple."""

# -- BFV's plaintext scaling (src/ppir_bfv.c)

__all__ += ["bfv_add_scaled"]

def bfv_add_scaled(
    plain: UInt64, t: int, q_mod_t: int, primes: UInt64, delta: UInt64, c0: UInt64
) -> None:
    """In place, ``c0[j, k] += round(q plain[k] / t) mod primes[j]`` (ties up), ``q`` the
    primes' product given as ``q mod t`` and ``delta[j] = floor(q / t) mod primes[j]``."""
