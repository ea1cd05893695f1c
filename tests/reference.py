"""NumPy reference implementations of the C kernels (docs/kernels.md).

Plain vectorised NumPy, written to be obviously correct rather than fast.
They are the oracle of tests/test_kernels.py.  Unlike the kernels they
*return* their results; per-point outputs cover positions ``[start, stop)`` of the point list only.
``mattes_mutual_information`` (the oracle of tests/test_parzen.py) loops over the
samples as ITK's Mattes metric does, apart from ppir_itk/parzen.py's vectorised code.

Conventions: arrays in NumPy axis order, geometry in ITK order (``size[0]``
is the fastest axis); ``p = origin + index_to_physical @ idx``.
"""

import itertools
import math

import numpy as np


def central_gradient(image):
    """Index-space gradient of ``image``, shape ``image.shape + (d,)``.

    ``out[..., k]`` is the derivative along ITK axis k (NumPy axis d-1-k):
    ``(f[i+1] - f[i-1]) / 2`` inside, one-sided at the borders, 0 along an
    axis of size 1.
    """
    f = np.asarray(image, dtype=np.float64)
    d = f.ndim
    out = np.zeros(f.shape + (d,))
    for k in range(d):
        axis = d - 1 - k
        if f.shape[axis] == 1:
            continue
        fa = np.moveaxis(f, axis, 0)
        ga = np.empty_like(fa)
        ga[1:-1] = (fa[2:] - fa[:-2]) / 2
        ga[0] = fa[1] - fa[0]
        ga[-1] = fa[-1] - fa[-2]
        out[..., k] = np.moveaxis(ga, 0, axis)
    return out


def point_list(fixed_size, indices, start, stop):
    """Flat indices of positions ``[start, stop)`` of a point list."""
    if indices is None:
        return np.arange(start, stop, dtype=np.int64)
    return np.asarray(indices, dtype=np.int64)[start:stop]


def grid_indices(fixed_size, flat):
    """ITK-order grid indices (shape (len(flat), d)) of flat indices."""
    numpy_shape = tuple(int(s) for s in fixed_size[::-1])
    numpy_order = np.unravel_index(flat, numpy_shape)
    return np.stack(numpy_order[::-1], axis=1)


def physical_points(fixed_size, fixed_index_to_physical, fixed_origin, indices, start, stop):
    """Physical points (ITK order, shape (stop - start, d)) of a point list."""
    idx = grid_indices(fixed_size, point_list(fixed_size, indices, start, stop))
    return fixed_origin + idx @ np.asarray(fixed_index_to_physical).T


def affine_basis(points, reference):
    """phi(x) = (x - c, 1) for each point, shape (n, d + 1)."""
    return np.hstack([points - reference, np.ones((len(points), 1))])


def linear_interpolate(moving, moving_gradient, u):
    """(Bi/tri)linear interpolation at continuous indices u (ITK order, all inside).

    Returns (values (n,), index-space gradients (n, d)).
    """
    d = moving.ndim
    size = np.array(moving.shape[::-1])
    lower = np.floor(u).astype(np.int64)
    upper = np.minimum(lower + 1, size - 1)  # u on the upper border: clamp
    frac = u - lower
    image = moving.astype(np.float64)
    values = np.zeros(len(u))
    gradients = np.zeros((len(u), d))
    for corner in itertools.product((False, True), repeat=d):
        corner = np.array(corner)
        idx = np.where(corner, upper, lower)  # ITK order
        weight = np.prod(np.where(corner, frac, 1.0 - frac), axis=1)
        numpy_index = tuple(idx[:, ::-1].T)
        values += weight * image[numpy_index]
        gradients += weight[:, None] * moving_gradient[numpy_index]
    return values, gradients


def warp(
    moving,
    moving_gradient,
    moving_physical_to_index,
    moving_origin,
    fixed_size,
    fixed_index_to_physical,
    fixed_origin,
    matrix,
    offset,
    indices,
    start,
    stop,
):
    """Reference of ``warp``: returns (values, gradient, valid, n_valid) for [start, stop)."""
    d = moving.ndim
    P = np.asarray(moving_physical_to_index)
    x = physical_points(fixed_size, fixed_index_to_physical, fixed_origin, indices, start, stop)
    y = x @ np.asarray(matrix).T + offset
    u = (y - moving_origin) @ P.T
    size = np.array(moving.shape[::-1])
    # ITK's IsInsideBuffer: half a pixel beyond the border centres, sampled on the border.
    valid = np.all((u >= -0.5) & (u < size - 0.5), axis=1)
    u = np.clip(u, 0, size - 1)

    values = np.zeros(len(x))
    gradient = np.zeros((len(x), d))
    v, g = linear_interpolate(moving, moving_gradient, u[valid])
    values[valid] = v
    gradient[valid] = g @ P  # row-wise P^T @ g
    return values, gradient, valid.astype(np.uint8), int(valid.sum())


def affine_gram(
    fixed_size, fixed_index_to_physical, fixed_origin, reference, indices, start, stop, gradient
):
    """Reference of ``affine_gram``: sum over [start, stop) of v v^T."""
    x = physical_points(fixed_size, fixed_index_to_physical, fixed_origin, indices, start, stop)
    phi = affine_basis(x, reference)
    g = np.asarray(gradient)[start:stop]
    d = g.shape[1]
    v = (g[:, :, None] * phi[:, None, :]).reshape(len(x), d * (d + 1))  # v[k*(d+1)+j]
    return v.T @ v


def affine_moments(
    fixed_size,
    fixed_index_to_physical,
    fixed_origin,
    reference,
    indices,
    start,
    stop,
    field,
    weights,
):
    """Reference of ``affine_moments``: out[k, j] = sum field[., k] w[.] phi_j."""
    x = physical_points(fixed_size, fixed_index_to_physical, fixed_origin, indices, start, stop)
    phi = affine_basis(x, reference)
    f = np.asarray(field)[start:stop]
    if weights is not None:
        f = f * np.asarray(weights)[start:stop, None]
    return f.T @ phi


def bspline_support(fixed_size, indices, start, stop, control, weight_bits=0):
    """Each point's 4^d control points: flat indices and weights, shapes (n, 4^d).

    ``control = (control_size, point_to_control, control_offset)``: the
    continuous control index is ``u = offset + point_to_control @ idx``. A point
    is inside iff ``1 <= u_k <= size_k - 2`` (outside: weight 0, index 0). With
    ``weight_bits`` the per-axis weights are ``round(beta3 2^bits) / 2^bits``.
    """
    size, matrix, offset = (np.asarray(a) for a in control)
    d = len(size)
    idx = grid_indices(fixed_size, point_list(fixed_size, indices, start, stop)).astype(float)
    # u = offset + matrix @ idx, added in the kernels' order (ppir_points.inc), so that
    # rounding ties of the fixed-point weights break the same way.
    u = np.empty_like(idx)
    for k in range(d):
        u[:, k] = offset[k] + matrix[k, 1] * idx[:, 1]
        if d == 3:
            u[:, k] += matrix[k, 2] * idx[:, 2]
        u[:, k] += matrix[k, 0] * idx[:, 0]
    inside = np.all((u >= 1) & (u <= size - 2), axis=1)
    floor = np.minimum(np.floor(u), size - 3)
    t = u - floor
    base = floor.astype(np.int64) - 1
    # The same operations in the same order as the kernel: fixed-point weights round
    # exact ties (e.g. 4.5 / 2^9 at t = 0.375) the same way.
    s, t2 = 1.0 - t, t * t
    t3 = t2 * t
    axis_weights = np.stack(
        [
            s * s * s / 6.0,
            (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
            (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
            t3 / 6.0,
        ],
        axis=-1,
    )
    if weight_bits:  # half away from zero, as C's llround (weights are >= 0)
        axis_weights = np.floor(axis_weights * 2.0**weight_bits + 0.5) / 2.0**weight_bits
    flat, weight = [], []
    for shift in itertools.product(range(4), repeat=d):
        s = np.array(shift[::-1])  # s[0] varies fastest, as the kernels order the support
        c = np.clip(base + s, 0, size - 1)
        flat.append(sum(c[:, k] * int(np.prod(size[:k])) for k in range(d)))
        weight.append(np.prod([axis_weights[:, k, s[k]] for k in range(d)], axis=0))
    flat, weight = np.stack(flat, axis=1), np.stack(weight, axis=1)
    weight[~inside] = 0.0
    return flat, weight


def bspline_displacement(fixed_size, indices, start, stop, control, coefficients):
    """D(x) (n x d) from ITK-ordered coefficients (d x M)."""
    flat, weight = bspline_support(fixed_size, indices, start, stop, control)
    return np.stack([(weight * c[flat]).sum(axis=1) for c in coefficients], axis=1)


def bspline_scatter(fixed_size, indices, start, stop, control, values, weight_bits=0):
    """out (M x m) = sum_x w_c(x) values[x]."""
    flat, weight = bspline_support(fixed_size, indices, start, stop, control, weight_bits)
    count = int(np.prod(control[0]))
    out = np.zeros((count, values.shape[1]))
    for j in range(values.shape[1]):
        np.add.at(out[:, j], flat.ravel(), (weight * values[start:stop, j, None]).ravel())
    return out


def bspline_hessian(fixed_size, indices, start, stop, control, gradient):
    """Dense S^T S, S[x, (k, c)] = gradient_k(x) w_c(x), in ITK parameter order."""
    flat, weight = bspline_support(fixed_size, indices, start, stop, control)
    count = int(np.prod(control[0]))
    basis = np.zeros((stop - start, count))
    np.add.at(
        basis, (np.repeat(np.arange(stop - start), flat.shape[1]), flat.ravel()), weight.ravel()
    )
    s = np.concatenate(
        [gradient[start:stop, k, None] * basis for k in range(gradient.shape[1])], axis=1
    )
    return s.T @ s


# ------------------------------------------------- ITK's Mattes mutual information


def _cubic_bspline(u):
    """ITK's BSplineKernelFunction<3>."""
    a = abs(u)
    if a < 1.0:
        return (4.0 - 6.0 * a * a + 3.0 * a * a * a) / 6.0
    if a < 2.0:
        return (8.0 - 12.0 * a + 6.0 * a * a - a * a * a) / 6.0
    return 0.0


def _cubic_bspline_derivative(u):
    """ITK's BSplineDerivativeKernelFunction<3>, branch by branch."""
    if 0.0 <= u < 1.0:
        return -2.0 * u + 1.5 * u * u
    if -1.0 < u < 0.0:
        return -2.0 * u - 1.5 * u * u
    if 1.0 <= u < 2.0:
        return -2.0 + 2.0 * u - 0.5 * u * u
    if -2.0 < u <= -1.0:
        return 2.0 + 2.0 * u + 0.5 * u * u
    return 0.0


def mattes_mutual_information(
    fixed_values, moving_values, moving_gradients, jacobians, valid, bins, fixed_range, moving_range
):
    """ITK's MattesMutualInformationImageToImageMetricv4, one sample at a time.

    ``fixed_range``/``moving_range`` are each image's (min, max); per sample i: its
    fixed and moving values, the moving gradient g_i (d,), the transform's Jacobian
    J_i (d, p) and whether it maps inside the moving image. Returns (value,
    derivative, number of valid points) as ITK's GetValue, GetDerivative and
    GetNumberOfValidPoints (a global transform).
    """
    padding = 2
    fixed_bin_size = (fixed_range[1] - fixed_range[0]) / (bins - 2 * padding)
    fixed_normalized_min = fixed_range[0] / fixed_bin_size - padding
    moving_bin_size = (moving_range[1] - moving_range[0]) / (bins - 2 * padding)
    moving_normalized_min = moving_range[0] / moving_bin_size - padding
    parameters = jacobians.shape[2]

    joint = np.zeros((bins, bins))
    joint_derivative = np.zeros((bins, bins, parameters))
    fixed_count = np.zeros(bins)
    n_valid = 0
    for i in range(len(fixed_values)):
        moving = float(moving_values[i])
        if not valid[i] or moving < moving_range[0] or moving > moving_range[1]:
            continue
        fixed_term = float(fixed_values[i]) / fixed_bin_size - fixed_normalized_min
        fixed_bin = min(max(int(fixed_term), 2), bins - 3)  # C++'s static_cast truncates
        moving_term = moving / moving_bin_size - moving_normalized_min
        centre = min(max(int(moving_term), 2), bins - 3)
        fixed_count[fixed_bin] += 1
        gradient_times_jacobian = moving_gradients[i] @ jacobians[i]
        for moving_bin in range(centre - 1, centre + 3):
            argument = moving_bin - moving_term
            joint[fixed_bin, moving_bin] += _cubic_bspline(argument)
            joint_derivative[fixed_bin, moving_bin] += gradient_times_jacobian * (
                _cubic_bspline_derivative(argument)
            )
        n_valid += 1

    joint /= joint.sum()
    moving_marginal = joint.sum(axis=0)
    fixed_marginal = fixed_count / fixed_count.sum()
    joint_derivative *= -1.0 / (moving_bin_size * n_valid)
    close_to_zero = np.finfo(np.float64).eps
    total = 0.0
    derivative = np.zeros(parameters)
    for f in range(bins):
        for m in range(bins):
            if not (joint[f, m] > close_to_zero and moving_marginal[m] > close_to_zero):
                continue
            ratio = math.log(joint[f, m] / moving_marginal[m])
            if fixed_marginal[f] > close_to_zero:
                total += joint[f, m] * (ratio - math.log(fixed_marginal[f]))
            derivative += joint_derivative[f, m] * ratio
    return -total, derivative, n_valid


# --- Z_2^64 matrix products and Z_2^128 words (src/ppir_ring.c): NumPy's uint64 wraps ---


def window_matrix(bins, first, weights):
    """The bins x count matrix with ``weights[p, k]`` at row ``first[p] + k`` of column p."""
    count, width = weights.shape
    out = np.zeros((bins, count), dtype=np.uint64)
    for k in range(width):
        out[first + k, np.arange(count)] = weights[:, k]
    return out


def ring_gram(a, b):
    return a @ b.T


def ring_left(left, right):
    return left @ right


def ring_window_gram(dense, bins, first, weights):
    return dense @ window_matrix(bins, first, weights).T


def ring_window_left(left, first, weights):
    return left @ window_matrix(left.shape[1], first, weights)


def ring_window_subtract(first, weights, dense):
    return window_matrix(dense.shape[0], first, weights) - dense


def ring_column_dots(x, y):
    return (x * y).sum(axis=0, dtype=np.uint64)


_LOW32 = np.uint64(0xFFFFFFFF)


def _ring128_words(low, high):
    out = np.empty((*np.shape(low), 2), dtype=np.uint64)
    out[..., 0], out[..., 1] = low, high
    return out


def ring128_add(x, y):
    with np.errstate(over="ignore"):
        low = x[..., 0] + y[..., 0]
        return _ring128_words(low, x[..., 1] + y[..., 1] + (low < x[..., 0]).astype(np.uint64))


def ring128_negate(x):
    with np.errstate(over="ignore"):
        low = ~x[..., 0] + np.uint64(1)
        return _ring128_words(low, ~x[..., 1] + (low == 0).astype(np.uint64))


def ring128_subtract(x, y):
    return ring128_add(x, ring128_negate(y))


def ring128_multiply(x, y):
    """From 32-bit halves: the 128-bit product of the low words, plus the cross terms."""
    x0, y0 = x[..., 0], y[..., 0]
    a0, a1, b0, b1 = x0 & _LOW32, x0 >> np.uint64(32), y0 & _LOW32, y0 >> np.uint64(32)
    with np.errstate(over="ignore"):
        low_low, low_high, high_low = a0 * b0, a0 * b1, a1 * b0
        middle = (low_low >> np.uint64(32)) + (low_high & _LOW32) + (high_low & _LOW32)
        high = a1 * b1 + (low_high >> np.uint64(32)) + (high_low >> np.uint64(32))
        high = high + (middle >> np.uint64(32)) + x0 * y[..., 1] + x[..., 1] * y0
    return _ring128_words((middle << np.uint64(32)) | (low_low & _LOW32), high)


def ring128_shift_right(x, bits):
    low, high = x[..., 0], x[..., 1]
    if bits == 0:
        return x.copy()
    if bits >= 64:
        return _ring128_words(high >> np.uint64(bits - 64), np.zeros_like(high))
    return _ring128_words(
        (low >> np.uint64(bits)) | (high << np.uint64(64 - bits)), high >> np.uint64(bits)
    )


def ring128_truncate(x, bits, party):
    if party == 0:
        return ring128_shift_right(x, bits)
    return ring128_negate(ring128_shift_right(ring128_negate(x), bits))


def ring128_beaver(e, f, a, b, c, party):
    out = ring128_add(ring128_add(c, ring128_multiply(e, b)), ring128_multiply(f, a))
    return ring128_add(out, ring128_multiply(e, f)) if party == 0 else out
