# cython: language_level=3
"""Python bindings of the C kernels in ``src/`` (specification: docs/kernels.md).

Every function checks dtype, shape, contiguity and writability of its arrays
and raises ``ValueError`` with a sentence naming the offending argument; the
C call itself runs without the GIL, so callers may split a point list into
``[start, stop)`` chunks and run them on threads.
"""

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t

from _ppir_c cimport (
    PPIR_BAD_DIMENSION,
    PPIR_BAD_INDEX,
    PPIR_BAD_RANGE,
    PPIR_BAD_SIZE,
    PPIR_NULL_POINTER,
    PPIR_OK,
    ppir_affine_gram,
    ppir_affine_moments,
    ppir_bspline_displacement,
    ppir_bspline_hessian,
    ppir_bspline_scatter,
    ppir_bspline_scatter_ring,
    ppir_central_gradient_f32,
    ppir_central_gradient_f64,
    ppir_index,
    ppir_status,
    ppir_warp_f32,
    ppir_warp_f64,
)

cnp.import_array()

__all__ = ["affine_gram", "affine_moments", "bspline_displacement", "bspline_hessian",
           "bspline_scatter", "central_gradient", "warp"]

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_INT64 = np.dtype(np.int64)
_UINT8 = np.dtype(np.uint8)
_INT64_MAX = 2**63 - 1

_STATUS_MESSAGES = {
    PPIR_BAD_DIMENSION: "the dimension must be 2 or 3",
    PPIR_BAD_INDEX: "an entry of indices[start:stop] lies outside [0, prod(fixed_size))",
    PPIR_BAD_RANGE: "start and stop must satisfy 0 <= start <= stop <= number of points",
    PPIR_BAD_SIZE: "every size must be >= 1 and the number of grid points must fit in int64",
    PPIR_NULL_POINTER: "a required array is missing",
}


cdef int _raise_for_status(ppir_status status, str kernel) except -1:
    if status == PPIR_OK:
        return 0
    message = _STATUS_MESSAGES.get(status, f"unknown status {<int>status}")
    raise ValueError(f"{kernel}: {message}.")


cdef object _array(object a, str name, tuple dtypes, object shape, bint writeable=False):
    """Return a after checking its type, dtype, shape, contiguity (and writability)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(a).__name__}.")
    if a.dtype not in dtypes:
        wanted = " or ".join(str(t) for t in dtypes)
        raise ValueError(f"{name} must have dtype {wanted} (native byte order), got {a.dtype}.")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}.")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous.")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} must be writeable.")
    return a


cdef inline void *_ptr(object a):
    """Data pointer of a checked ndarray."""
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef int _check_dimension(int d, str what) except -1:
    if d != 2 and d != 3:
        raise ValueError(f"{what} must be 2-D or 3-D, got {d}-D.")
    return 0


cdef bint _may_overlap(object a, object b):
    """np.may_share_memory's bounds test, for the C-contiguous arrays ``_array`` passed (a
    fraction of its microsecond: a kernel call checks up to 15 pairs)."""
    cdef char *a_start = <char *>_ptr(a)
    cdef char *b_start = <char *>_ptr(b)
    cdef Py_ssize_t a_bytes = cnp.PyArray_NBYTES(<cnp.ndarray>a)
    cdef Py_ssize_t b_bytes = cnp.PyArray_NBYTES(<cnp.ndarray>b)
    return (a_bytes > 0 and b_bytes > 0 and a_start < b_start + b_bytes
            and b_start < a_start + a_bytes)


cdef int _check_disjoint(outputs, inputs) except -1:
    """Raise if an output array may overlap an input or another output."""
    cdef Py_ssize_t i, j
    for i in range(len(outputs)):
        out_name, out = outputs[i]
        for j in range(i + 1, len(outputs)):
            other_name, other = outputs[j]
            if _may_overlap(out, other):
                raise ValueError(f"{out_name} and {other_name} must not overlap.")
        for in_name, inp in inputs:
            if inp is not None and _may_overlap(out, inp):
                raise ValueError(f"{out_name} must not overlap {in_name}.")
    return 0


cdef Py_ssize_t _grid_count(object size, str name) except -1:
    """Number of points of a grid of ITK-order `size`, checking every size >= 1."""
    count = 1
    for s in size.tolist():
        if s < 1:
            raise ValueError(f"every entry of {name} must be >= 1, got {size.tolist()}.")
        count *= s
    if count > _INT64_MAX:
        raise ValueError(f"the grid of {name} = {size.tolist()} has too many points.")
    return count


cdef Py_ssize_t _point_count(object fixed_size, object indices) except -1:
    """Length n of the point list (whole grid when indices is None)."""
    cdef Py_ssize_t count = _grid_count(fixed_size, "fixed_size")
    if indices is None:
        return count
    return indices.shape[0]


cdef int _check_range(Py_ssize_t start, Py_ssize_t stop, Py_ssize_t n) except -1:
    if not (0 <= start <= stop <= n):
        raise ValueError(
            f"start and stop must satisfy 0 <= start <= stop <= {n} (the number of points), "
            f"got start={start}, stop={stop}."
        )
    return 0


cdef int _fixed_dimension(object fixed_size) except -1:
    """Dimension d = len(fixed_size), checked to be 2 or 3."""
    if not isinstance(fixed_size, np.ndarray):
        raise ValueError(f"fixed_size must be a numpy.ndarray, got {type(fixed_size).__name__}.")
    if fixed_size.ndim != 1:
        raise ValueError(f"fixed_size must be 1-D, got {fixed_size.ndim}-D.")
    _check_dimension(fixed_size.shape[0], "the fixed grid (len(fixed_size))")
    return fixed_size.shape[0]


cdef object _fixed_grid(int d, fixed_size, fixed_index_to_physical, fixed_origin, indices,
                        Py_ssize_t start, Py_ssize_t stop):
    """Check the fixed grid arguments; return (size, A, origin, indices, n)."""
    size, indices, n = _point_list(d, fixed_size, indices, start, stop)
    A = _array(fixed_index_to_physical, "fixed_index_to_physical", (_FLOAT64,), (d, d))
    origin = _array(fixed_origin, "fixed_origin", (_FLOAT64,), (d,))
    return size, A, origin, indices, n


cdef object _point_list(int d, fixed_size, indices, Py_ssize_t start, Py_ssize_t stop):
    """Check a fixed grid's point list; return (size, indices, n)."""
    size = _array(fixed_size, "fixed_size", (_INT64,), (d,))
    if indices is not None:
        indices = _array(indices, "indices", (_INT64,), None)
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got {indices.ndim}-D.")
    n = _point_count(size, indices)
    _check_range(start, stop, n)
    return size, indices, n


cdef struct _GridPointers:
    # A fixed grid and its point list, as the C kernels take them.
    const ppir_index *size
    const double *index_to_physical
    const double *origin
    const ppir_index *indices
    ppir_index n_indices


cdef _GridPointers _grid_pointers(size, A, o_f, idx, Py_ssize_t n):
    """Pointers into the arrays of ``_fixed_grid`` (which the caller keeps alive); the
    B-spline kernels pass no geometry (``A``, ``o_f`` None): their map is the control's."""
    cdef _GridPointers grid
    grid.size = <const ppir_index *>_ptr(size)
    grid.index_to_physical = NULL
    grid.origin = NULL
    if A is not None:
        grid.index_to_physical = <const double *>_ptr(A)
        grid.origin = <const double *>_ptr(o_f)
    grid.indices = NULL
    grid.n_indices = 0
    if idx is not None:
        grid.indices = <const ppir_index *>_ptr(idx)
        grid.n_indices = n
    return grid


def central_gradient(image, out):
    """Index-space gradient of a 2-D/3-D float32/float64 image into ``out``.

    ``out`` is float64 of shape ``image.shape + (d,)``; ``out[..., k]`` is the
    derivative along ITK axis k (NumPy axis d-1-k): central differences inside,
    one-sided at the borders, 0 along an axis of size 1.
    """
    img = _array(image, "image", (_FLOAT32, _FLOAT64), None)
    cdef int d = img.ndim
    _check_dimension(d, "image")
    if img.size == 0:
        raise ValueError(f"image must not be empty, got shape {img.shape}.")
    o = _array(out, "out", (_FLOAT64,), img.shape + (d,), writeable=True)
    _check_disjoint((("out", o),), (("image", img),))
    cdef int64_t size[3]
    cdef int k
    for k in range(d):
        size[k] = img.shape[d - 1 - k]
    cdef bint single = img.dtype == _FLOAT32
    cdef void *src = _ptr(img)
    cdef double *dst = <double *>_ptr(o)
    cdef ppir_status status
    with nogil:
        if single:
            status = ppir_central_gradient_f32(d, size, <const float *>src, dst)
        else:
            status = ppir_central_gradient_f64(d, size, <const double *>src, dst)
    _raise_for_status(status, "central_gradient")


def warp(moving, moving_gradient, moving_physical_to_index, moving_origin, fixed_size,
         fixed_index_to_physical, fixed_origin, matrix, offset, indices, Py_ssize_t start,
         Py_ssize_t stop, out_values, out_gradient, out_valid, displacement=None):
    """Linearly resample ``moving`` and its gradient at mapped fixed points.

    For positions ``[start, stop)`` of the point list:
    ``y = matrix @ (x + displacement[pos]) + offset`` (no displacement when None),
    ``u = moving_physical_to_index @ (y - moving_origin)``; valid iff
    ``-0.5 <= u_k < size_k - 0.5`` (ITK's ``IsInsideBuffer``; u is clamped onto the
    border to interpolate).  Writes the interpolated value, the physical
    gradient ``P.T @ interp(moving_gradient, u)`` and 1 (0, 0, 0 if invalid)
    and returns the number of valid points.  See docs/kernels.md.
    """
    mov = _array(moving, "moving", (_FLOAT32, _FLOAT64), None)
    cdef int d = mov.ndim
    _check_dimension(d, "moving")
    if mov.size == 0:
        raise ValueError(f"moving must not be empty, got shape {mov.shape}.")
    mgrad = _array(moving_gradient, "moving_gradient", (_FLOAT64,),
                                    mov.shape + (d,))
    P = _array(moving_physical_to_index, "moving_physical_to_index",
                                (_FLOAT64,), (d, d))
    o_m = _array(moving_origin, "moving_origin", (_FLOAT64,), (d,))
    M = _array(matrix, "matrix", (_FLOAT64,), (d, d))
    t = _array(offset, "offset", (_FLOAT64,), (d,))
    size, A, o_f, idx, n = _fixed_grid(d, fixed_size, fixed_index_to_physical, fixed_origin,
                                       indices, start, stop)
    values = _array(out_values, "out_values", (_FLOAT64,), (n,), True)
    grad = _array(out_gradient, "out_gradient", (_FLOAT64,), (n, d), True)
    valid = _array(out_valid, "out_valid", (_UINT8,), (n,), True)
    shift = None
    if displacement is not None:
        shift = _array(displacement, "displacement", (_FLOAT64,), (n, d))
    _check_disjoint(
        (("out_values", values), ("out_gradient", grad), ("out_valid", valid)),
        (("moving", mov), ("moving_gradient", mgrad), ("indices", idx),
         ("displacement", shift)),
    )

    cdef int64_t msize[3]
    cdef int k
    for k in range(d):
        msize[k] = mov.shape[d - 1 - k]
    cdef bint single = mov.dtype == _FLOAT32
    cdef const void *mov_p = _ptr(mov)
    cdef const double *mgrad_p = <const double *>_ptr(mgrad)
    cdef const double *P_p = <const double *>_ptr(P)
    cdef const double *o_m_p = <const double *>_ptr(o_m)
    cdef _GridPointers grid = _grid_pointers(size, A, o_f, idx, n)
    cdef const double *M_p = <const double *>_ptr(M)
    cdef const double *t_p = <const double *>_ptr(t)
    cdef const double *shift_p = NULL
    if shift is not None:
        shift_p = <const double *>_ptr(shift)
    cdef double *values_p = <double *>_ptr(values)
    cdef double *grad_p = <double *>_ptr(grad)
    cdef uint8_t *valid_p = <uint8_t *>_ptr(valid)
    cdef ppir_index n_valid = 0
    cdef ppir_status status
    with nogil:
        if single:
            status = ppir_warp_f32(d, msize, <const float *>mov_p, mgrad_p, P_p, o_m_p,
                                   grid.size, grid.index_to_physical, grid.origin, M_p, t_p,
                                   shift_p, grid.indices, grid.n_indices, start, stop, values_p,
                                   grad_p, valid_p, &n_valid)
        else:
            status = ppir_warp_f64(d, msize, <const double *>mov_p, mgrad_p, P_p, o_m_p,
                                   grid.size, grid.index_to_physical, grid.origin, M_p, t_p,
                                   shift_p, grid.indices, grid.n_indices, start, stop, values_p,
                                   grad_p, valid_p, &n_valid)
    _raise_for_status(status, "warp")
    return n_valid


def affine_gram(fixed_size, fixed_index_to_physical, fixed_origin, reference, indices,
                Py_ssize_t start, Py_ssize_t stop, gradient, out):
    """Overwrite ``out`` (m x m, m = d(d+1)) with sum of v v^T over ``[start, stop)``.

    ``v[k*(d+1) + j] = gradient[pos, k] * phi_j(x)``, ``phi(x) = (x - reference, 1)``.
    Points with an all-zero gradient are skipped; ``out`` is exactly symmetric.
    """
    cdef int d = _fixed_dimension(fixed_size)
    size, A, o_f, idx, n = _fixed_grid(d, fixed_size, fixed_index_to_physical, fixed_origin,
                                       indices, start, stop)
    c = _array(reference, "reference", (_FLOAT64,), (d,))
    g = _array(gradient, "gradient", (_FLOAT64,), (n, d))
    cdef int m = d * (d + 1)
    o = _array(out, "out", (_FLOAT64,), (m, m), True)
    _check_disjoint((("out", o),), (("gradient", g), ("indices", idx)))

    cdef _GridPointers grid = _grid_pointers(size, A, o_f, idx, n)
    cdef const double *c_p = <const double *>_ptr(c)
    cdef const double *g_p = <const double *>_ptr(g)
    cdef double *o_p = <double *>_ptr(o)
    cdef ppir_status status
    with nogil:
        status = ppir_affine_gram(d, grid.size, grid.index_to_physical, grid.origin, c_p,
                                  grid.indices, grid.n_indices, start, stop, g_p, o_p)
    _raise_for_status(status, "affine_gram")


def affine_moments(fixed_size, fixed_index_to_physical, fixed_origin, reference, indices,
                   Py_ssize_t start, Py_ssize_t stop, field, weights, out):
    """Overwrite ``out`` (d x (d+1)) with sum of field[pos, k] w[pos] phi_j(x).

    Sums over positions ``[start, stop)``; ``w = 1`` when ``weights`` is None;
    ``phi(x) = (x - reference, 1)``.
    """
    cdef int d = _fixed_dimension(fixed_size)
    size, A, o_f, idx, n = _fixed_grid(d, fixed_size, fixed_index_to_physical, fixed_origin,
                                       indices, start, stop)
    c = _array(reference, "reference", (_FLOAT64,), (d,))
    f = _array(field, "field", (_FLOAT64,), (n, d))
    w = None
    if weights is not None:
        w = _array(weights, "weights", (_FLOAT64,), (n,))
    o = _array(out, "out", (_FLOAT64,), (d, d + 1), True)
    _check_disjoint((("out", o),), (("field", f), ("weights", w), ("indices", idx)))

    cdef _GridPointers grid = _grid_pointers(size, A, o_f, idx, n)
    cdef const double *c_p = <const double *>_ptr(c)
    cdef const double *f_p = <const double *>_ptr(f)
    cdef const double *w_p = NULL
    if w is not None:
        w_p = <const double *>_ptr(w)
    cdef double *o_p = <double *>_ptr(o)
    cdef ppir_status status
    with nogil:
        status = ppir_affine_moments(d, grid.size, grid.index_to_physical, grid.origin, c_p,
                                     grid.indices, grid.n_indices, start, stop, f_p, w_p, o_p)
    _raise_for_status(status, "affine_moments")


cdef struct _Control:
    # A B-spline control grid as the C kernels take it.
    const ppir_index *size
    const double *point_to_control
    const double *offset
    Py_ssize_t count


cdef object _control_arrays(int d, control):
    """Check ``control = (control_size, point_to_control, control_offset)``."""
    size = _array(control[0], "control_size", (_INT64,), (d,))
    if any(s < 4 for s in size.tolist()):
        raise ValueError(f"a control grid needs >= 4 points per axis, got {size.tolist()}.")
    matrix = _array(control[1], "point_to_control", (_FLOAT64,), (d, d))
    offset = _array(control[2], "control_offset", (_FLOAT64,), (d,))
    return size, matrix, offset


cdef object _bspline_inputs(int d, fixed_size, indices, Py_ssize_t start, Py_ssize_t stop,
                            control):
    """Check a B-spline kernel's point list and control grid; return
    (size, indices, n, control arrays)."""
    size, idx, n = _point_list(d, fixed_size, indices, start, stop)
    return size, idx, n, _control_arrays(d, control)


cdef _Control _control_pointers(arrays):
    """Pointers into ``_control_arrays``'s arrays (which the caller keeps alive)."""
    size, matrix, offset = arrays
    cdef _Control c
    c.size = <const ppir_index *>_ptr(size)
    c.point_to_control = <const double *>_ptr(matrix)
    c.offset = <const double *>_ptr(offset)
    c.count = _grid_count(size, "control_size")
    return c


def bspline_displacement(fixed_size, indices, Py_ssize_t start, Py_ssize_t stop, control,
                         coefficients, out):
    """Overwrite ``out[start:stop]`` (n x d) with the B-spline displacement at each point.

    ``control`` is ``(control_size, point_to_control, control_offset)``;
    ``coefficients`` are ITK's parameters, shape (d, M).
    """
    cdef int d = _fixed_dimension(fixed_size)
    size, idx, n, arrays = _bspline_inputs(d, fixed_size, indices, start, stop, control)
    cdef _Control c = _control_pointers(arrays)
    coef = _array(coefficients, "coefficients", (_FLOAT64,), (d, c.count))
    o = _array(out, "out", (_FLOAT64,), (n, d), True)
    _check_disjoint((("out", o),), (("coefficients", coef), ("indices", idx)))
    cdef _GridPointers grid = _grid_pointers(size, None, None, idx, n)
    cdef const double *coef_p = <const double *>_ptr(coef)
    cdef double *o_p = <double *>_ptr(o)
    cdef ppir_status status
    with nogil:
        status = ppir_bspline_displacement(d, grid.size, grid.indices, grid.n_indices, start,
                                           stop, c.size, c.point_to_control, c.offset, coef_p,
                                           o_p)
    _raise_for_status(status, "bspline_displacement")


def bspline_scatter(fixed_size, indices, Py_ssize_t start, Py_ssize_t stop, control, values,
                    out, int weight_bits=0):
    """Overwrite ``out`` (M x m) with sum over ``[start, stop)`` of w_c(x) values[pos, j].

    float64 ``values``: ``weight_bits`` > 0 rounds the weights to the ring's
    fixed point (0: exact).  int64 ``values``: the sums over the ring Z_2^64
    (wrapping), with integer weights ``prod_k round(beta3 2^weight_bits)``,
    ``weight_bits`` in [1, 20].
    """
    cdef int d = _fixed_dimension(fixed_size)
    size, idx, n, arrays = _bspline_inputs(d, fixed_size, indices, start, stop, control)
    cdef _Control c = _control_pointers(arrays)
    v = _array(values, "values", (_FLOAT64, _INT64), None)
    cdef bint ring = v.dtype == _INT64
    if not (1 if ring else 0) <= weight_bits <= 20:
        raise ValueError(f"weight_bits must be in [{1 if ring else 0}, 20] for {v.dtype} "
                         f"values, got {weight_bits}.")
    if v.ndim != 2 or v.shape[0] != n:
        raise ValueError(f"values must have shape ({n}, m), got {v.shape}.")
    cdef int m = v.shape[1]
    o = _array(out, "out", (v.dtype,), (c.count, m), True)
    _check_disjoint((("out", o),), (("values", v), ("indices", idx)))
    cdef _GridPointers grid = _grid_pointers(size, None, None, idx, n)
    cdef const void *v_p = _ptr(v)
    cdef void *o_p = _ptr(o)
    cdef ppir_status status
    with nogil:
        if ring:
            status = ppir_bspline_scatter_ring(d, grid.size, grid.indices, grid.n_indices,
                                               start, stop, c.size, c.point_to_control,
                                               c.offset, m, weight_bits,
                                               <const int64_t *>v_p, <int64_t *>o_p)
        else:
            status = ppir_bspline_scatter(d, grid.size, grid.indices, grid.n_indices, start,
                                          stop, c.size, c.point_to_control, c.offset, m,
                                          weight_bits, <const double *>v_p, <double *>o_p)
    _raise_for_status(status, "bspline_scatter")


def bspline_hessian(fixed_size, indices, Py_ssize_t start, Py_ssize_t stop, control, gradient,
                    out):
    """Overwrite ``out`` (M, 7^d, d (d + 1) / 2) with the blocks of S^T S,
    S[x, (c, k)] = g_k w_c, each block's upper triangle (k <= l) row by row.

    Block ``[c, o]`` couples control point c with c + offset o, o in {-3..3}^d,
    ``o = (o_0 + 3) + 7 (o_1 + 3) + 49 (o_2 + 3)``; only offsets with
    ``o_0 + 4 o_1 + 16 o_2 >= 0`` are filled (the others: those blocks transposed).
    """
    cdef int d = _fixed_dimension(fixed_size)
    size, idx, n, arrays = _bspline_inputs(d, fixed_size, indices, start, stop, control)
    cdef _Control c = _control_pointers(arrays)
    g = _array(gradient, "gradient", (_FLOAT64,), (n, d))
    o = _array(out, "out", (_FLOAT64,), (c.count, 7 ** d, d * (d + 1) // 2), True)
    _check_disjoint((("out", o),), (("gradient", g), ("indices", idx)))
    cdef _GridPointers grid = _grid_pointers(size, None, None, idx, n)
    cdef const double *g_p = <const double *>_ptr(g)
    cdef double *o_p = <double *>_ptr(o)
    cdef ppir_status status
    with nogil:
        status = ppir_bspline_hessian(d, grid.size, grid.indices, grid.n_indices, start, stop,
                                      c.size, c.point_to_control, c.offset, g_p, o_p)
    _raise_for_status(status, "bspline_hessian")


# -- Mattes mutual information's per-sample arithmetic (src/ppir_parzen.c) -------------
# Whole arrays in one call (no [start, stop) chunks: a few microseconds per thousand
# samples); each binding makes its outputs, so none can overlap an input.

from _ppir_c cimport (
    ppir_parzen_entropy_difference,
    ppir_parzen_joint_histogram,
    ppir_parzen_log_ratio,
    ppir_parzen_sample_weights,
    ppir_parzen_windows,
)

__all__ += ["parzen_entropy_difference", "parzen_joint_histogram", "parzen_log_ratio",
            "parzen_sample_weights", "parzen_windows"]


cdef int _check_bins(int count) except -1:
    if not 5 <= count <= 256:
        raise ValueError(f"count must be a number of bins from 5 to 256, got {count}.")
    return 0


cdef Py_ssize_t _samples(object a, str name, object dtype) except -1:
    """The length of a checked 1-D array of samples."""
    _array(a, name, (dtype,), None)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {a.ndim}-D.")
    return a.shape[0]


cdef int _square_bins(object a, str name) except -1:
    """The number of bins of a checked (B, B) float64 array, B from 5 to 256."""
    _array(a, name, (_FLOAT64,), None)
    cdef int count = a.shape[0] if a.ndim == 2 else 0
    if a.shape != (count, count):
        raise ValueError(f"{name} must be square, got shape {a.shape}.")
    _check_bins(count)
    return count


cdef int _raise_for_bins(ppir_status status, str kernel, int count) except -1:
    if status == PPIR_BAD_INDEX:
        raise ValueError(f"{kernel}: a fixed bin lies outside [0, {count}) or a window's first "
                         f"bin outside [0, {count - 4}].")
    return _raise_for_status(status, kernel)


def parzen_windows(values, valid, int count, double minimum, double maximum, double bin_size,
                   double normalized_minimum):
    """The cubic B-spline windows of n moving values over ``count`` bins of
    ``[minimum, maximum]``: ``(first_bin, weights, derivatives, inside, n_inside,
    negative_entropy)``.

    A value is inside when ``valid`` and in the range; ``term = value / bin_size -
    normalized_minimum``, ``first_bin = clip(floor(term), 2, count - 3) - 1`` (int64, n),
    ``weights[i, k] = beta3(first + k - term)`` and ``derivatives[i, k] = -beta3'(first + k
    - term) / bin_size`` ((n, 4) each); the others get first bin 1 and rows of zeros.
    ``inside`` (uint8, n) says which and ``n_inside`` counts them; ``negative_entropy`` is
    ``sum_j p_m(j) log p_m(j)`` over the bins where the moving marginal ``p_m`` (the inside
    weights' sum per bin over ``n_inside``) exceeds DBL_EPSILON.
    """
    cdef Py_ssize_t n = _samples(values, "values", _FLOAT64)
    _array(valid, "valid", (_UINT8,), (n,))
    _check_bins(count)
    if not bin_size > 0:
        raise ValueError(f"bin_size must be > 0, got {bin_size}.")
    first = np.empty(n, dtype=_INT64)
    weights = np.empty((n, 4))
    derivatives = np.empty((n, 4))
    inside = np.empty(n, dtype=_UINT8)
    cdef const double *values_p = <const double *>_ptr(values)
    cdef const uint8_t *valid_p = <const uint8_t *>_ptr(valid)
    cdef ppir_index *first_p = <ppir_index *>_ptr(first)
    cdef double *weights_p = <double *>_ptr(weights)
    cdef double *derivatives_p = <double *>_ptr(derivatives)
    cdef uint8_t *inside_p = <uint8_t *>_ptr(inside)
    cdef ppir_index n_inside = 0
    cdef double negative_entropy = 0.0
    cdef ppir_status status
    with nogil:
        status = ppir_parzen_windows(n, values_p, valid_p, count, minimum, maximum, bin_size,
                                     normalized_minimum, first_p, weights_p, derivatives_p,
                                     inside_p, &n_inside, &negative_entropy)
    _raise_for_status(status, "parzen_windows")
    return first, weights, derivatives, inside, n_inside, negative_entropy


def parzen_joint_histogram(fixed_bin, first_bin, weights, valid, int count):
    """The (count, count) sums of the valid samples' window weights, rows the fixed bins:
    ``histogram[fixed_bin[i], first_bin[i] + k] += weights[i, k]``."""
    cdef Py_ssize_t n = _samples(fixed_bin, "fixed_bin", _INT64)
    _array(first_bin, "first_bin", (_INT64,), (n,))
    _array(weights, "weights", (_FLOAT64,), (n, 4))
    _array(valid, "valid", (_UINT8,), (n,))
    _check_bins(count)
    histogram = np.empty((count, count))
    cdef const ppir_index *fixed_p = <const ppir_index *>_ptr(fixed_bin)
    cdef const ppir_index *first_p = <const ppir_index *>_ptr(first_bin)
    cdef const double *weights_p = <const double *>_ptr(weights)
    cdef const uint8_t *valid_p = <const uint8_t *>_ptr(valid)
    cdef double *histogram_p = <double *>_ptr(histogram)
    cdef ppir_status status
    with nogil:
        status = ppir_parzen_joint_histogram(n, count, fixed_p, first_p, weights_p, valid_p,
                                             histogram_p)
    _raise_for_bins(status, "parzen_joint_histogram", count)
    return histogram


def parzen_log_ratio(histogram):
    """ITK's PRatio of a (B, B) histogram and the histogram's sum: ``(ratio, total)``;
    ``ratio = log(p / p_m)`` where p and its column sum p_m exceed DBL_EPSILON, else 0
    (all 0 when the total is below DBL_EPSILON)."""
    cdef int count = _square_bins(histogram, "histogram")
    ratio = np.empty((count, count))
    cdef const double *histogram_p = <const double *>_ptr(histogram)
    cdef double *ratio_p = <double *>_ptr(ratio)
    cdef double total = 0.0
    cdef ppir_status status
    with nogil:
        status = ppir_parzen_log_ratio(count, histogram_p, ratio_p, &total)
    _raise_for_status(status, "parzen_log_ratio")
    return ratio, total


def parzen_entropy_difference(fractions):
    """``sum x log x - sum r log r`` over a (B, B) array's entries x and row sums r above
    DBL_EPSILON."""
    cdef int count = _square_bins(fractions, "fractions")
    scratch = np.empty(count * count)
    cdef const double *fractions_p = <const double *>_ptr(fractions)
    cdef double *scratch_p = <double *>_ptr(scratch)
    cdef double out = 0.0
    cdef ppir_status status
    with nogil:
        status = ppir_parzen_entropy_difference(count, fractions_p, scratch_p, &out)
    _raise_for_status(status, "parzen_entropy_difference")
    return out


def parzen_sample_weights(ratio, fixed_bin, first_bin, derivatives):
    """``s[i] = sum_k ratio[fixed_bin[i], first_bin[i] + k] * derivatives[i, k]``, (n,)."""
    cdef int count = _square_bins(ratio, "ratio")
    cdef Py_ssize_t n = _samples(fixed_bin, "fixed_bin", _INT64)
    _array(first_bin, "first_bin", (_INT64,), (n,))
    _array(derivatives, "derivatives", (_FLOAT64,), (n, 4))
    s = np.empty(n)
    cdef const double *ratio_p = <const double *>_ptr(ratio)
    cdef const ppir_index *fixed_p = <const ppir_index *>_ptr(fixed_bin)
    cdef const ppir_index *first_p = <const ppir_index *>_ptr(first_bin)
    cdef const double *derivatives_p = <const double *>_ptr(derivatives)
    cdef double *s_p = <double *>_ptr(s)
    cdef ppir_status status
    with nogil:
        status = ppir_parzen_sample_weights(n, count, ratio_p, fixed_p, first_p, derivatives_p,
                                            s_p)
    _raise_for_bins(status, "parzen_sample_weights", count)
    return s
# --- Z_2^64 matrix products (src/ppir_ring.c): the spdz Mattes shares and the dealer's ---

from libc.stdint cimport uint64_t

from _ppir_c cimport (
    ppir_ring128_add,
    ppir_ring128_beaver,
    ppir_ring128_multiply,
    ppir_ring128_negate,
    ppir_ring128_shift_right,
    ppir_ring128_subtract,
    ppir_ring128_truncate,
    ppir_ring_column_dots,
    ppir_ring_gram,
    ppir_ring_left,
    ppir_ring_window_gram,
    ppir_ring_window_left,
    ppir_ring_window_subtract,
)

__all__ += ["ring128_add", "ring128_beaver", "ring128_multiply", "ring128_negate",
            "ring128_shift_right", "ring128_subtract", "ring128_truncate", "ring_column_dots",
            "ring_gram", "ring_left", "ring_window_gram", "ring_window_left",
            "ring_window_subtract"]

_UINT64 = np.dtype(np.uint64)


cdef tuple _matrix(object a, str name):
    """A checked 2-D uint64 matrix and its shape."""
    _array(a, name, (_UINT64,), None)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {a.ndim}-D.")
    return a.shape[0], a.shape[1]


cdef int _window(object first, object weights, Py_ssize_t bins, Py_ssize_t count) except -1:
    """Check the window matrix's first rows (count) and weights (count x width)."""
    _array(first, "first", (_INT64,), (count,))
    _array(weights, "weights", (_UINT64,), None)
    if weights.ndim != 2 or weights.shape[0] != count or not 1 <= weights.shape[1] <= bins:
        raise ValueError(f"weights must have shape ({count}, width), 1 <= width <= {bins}, "
                         f"got {weights.shape}.")
    if count and (first.min() < 0 or first.max() > bins - weights.shape[1]):
        raise ValueError(f"every entry of first must lie in [0, {bins - weights.shape[1]}] "
                         f"(bins - width).")
    return 0


def ring_gram(a, b, out):
    """Overwrite ``out`` (rows_a x rows_b) with ``a b^T`` over Z_2^64 (uint64, wrapping)."""
    rows_a, count = _matrix(a, "a")
    rows_b, count_b = _matrix(b, "b")
    if count_b != count:
        raise ValueError(f"b must have {count} columns like a, got {count_b}.")
    _array(out, "out", (_UINT64,), (rows_a, rows_b), True)
    _check_disjoint((("out", out),), (("a", a), ("b", b)))
    cdef const uint64_t *a_p = <const uint64_t *>_ptr(a)
    cdef const uint64_t *b_p = <const uint64_t *>_ptr(b)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_index ra = rows_a, rb = rows_b, n = count
    cdef ppir_status status
    with nogil:
        status = ppir_ring_gram(ra, rb, n, a_p, b_p, o_p)
    _raise_for_status(status, "ring_gram")


def ring_left(left, right, out):
    """Overwrite ``out`` (rows x count) with ``left right`` over Z_2^64 (uint64, wrapping)."""
    rows, inner = _matrix(left, "left")
    inner_r, count = _matrix(right, "right")
    if inner_r != inner:
        raise ValueError(f"right must have {inner} rows (left's columns), got {inner_r}.")
    _array(out, "out", (_UINT64,), (rows, count), True)
    _check_disjoint((("out", out),), (("left", left), ("right", right)))
    cdef const uint64_t *l_p = <const uint64_t *>_ptr(left)
    cdef const uint64_t *r_p = <const uint64_t *>_ptr(right)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_index r = rows, k = inner, n = count
    cdef ppir_status status
    with nogil:
        status = ppir_ring_left(r, k, n, l_p, r_p, o_p)
    _raise_for_status(status, "ring_left")


def ring_window_gram(dense, Py_ssize_t bins, first, weights, out):
    """Overwrite ``out`` (rows x bins) with ``dense W^T`` over Z_2^64, W (bins x count) the
    window matrix ``W[first[p] + k, p] = weights[p, k]`` (zero elsewhere)."""
    rows, count = _matrix(dense, "dense")
    _window(first, weights, bins, count)
    _array(out, "out", (_UINT64,), (rows, bins), True)
    _check_disjoint((("out", out),), (("dense", dense), ("first", first), ("weights", weights)))
    cdef const uint64_t *d_p = <const uint64_t *>_ptr(dense)
    cdef const ppir_index *f_p = <const ppir_index *>_ptr(first)
    cdef const uint64_t *w_p = <const uint64_t *>_ptr(weights)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_index r = rows, b = bins, n = count, width = weights.shape[1]
    cdef ppir_status status
    with nogil:
        status = ppir_ring_window_gram(r, b, n, width, d_p, f_p, w_p, o_p)
    _raise_for_status(status, "ring_window_gram")


def ring_window_left(left, first, weights, out):
    """Overwrite ``out`` (rows x count) with ``left W`` over Z_2^64, W (bins x count) the
    window matrix ``W[first[p] + k, p] = weights[p, k]``, bins = left's columns."""
    rows, bins = _matrix(left, "left")
    count = first.shape[0] if isinstance(first, np.ndarray) and first.ndim == 1 else -1
    _window(first, weights, bins, count)
    _array(out, "out", (_UINT64,), (rows, count), True)
    _check_disjoint((("out", out),), (("left", left), ("first", first), ("weights", weights)))
    cdef const uint64_t *l_p = <const uint64_t *>_ptr(left)
    cdef const ppir_index *f_p = <const ppir_index *>_ptr(first)
    cdef const uint64_t *w_p = <const uint64_t *>_ptr(weights)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_index r = rows, b = bins, n = count, width = weights.shape[1]
    cdef ppir_status status
    with nogil:
        status = ppir_ring_window_left(r, b, n, width, l_p, f_p, w_p, o_p)
    _raise_for_status(status, "ring_window_left")



def ring_column_dots(x, y, out):
    """Overwrite ``out`` (count) with the column sums of ``x . y`` (rows x count) over
    Z_2^64: ``out[p] = sum_i x[i, p] y[i, p]``."""
    rows, count = _matrix(x, "x")
    _array(y, "y", (_UINT64,), (rows, count))
    _array(out, "out", (_UINT64,), (count,), True)
    _check_disjoint((("out", out),), (("x", x), ("y", y)))
    cdef const uint64_t *x_p = <const uint64_t *>_ptr(x)
    cdef const uint64_t *y_p = <const uint64_t *>_ptr(y)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_index r = rows, n = count
    cdef ppir_status status
    with nogil:
        status = ppir_ring_column_dots(r, n, x_p, y_p, o_p)
    _raise_for_status(status, "ring_column_dots")


def ring_window_subtract(first, weights, dense, out):
    """Overwrite ``out`` (bins x count) with ``W - dense`` over Z_2^64, W the window matrix
    ``W[first[p] + k, p] = weights[p, k]``, bins = dense's rows."""
    bins, count = _matrix(dense, "dense")
    _window(first, weights, bins, count)
    _array(out, "out", (_UINT64,), (bins, count), True)
    _check_disjoint((("out", out),), (("dense", dense), ("first", first), ("weights", weights)))
    cdef const ppir_index *f_p = <const ppir_index *>_ptr(first)
    cdef const uint64_t *w_p = <const uint64_t *>_ptr(weights)
    cdef const uint64_t *d_p = <const uint64_t *>_ptr(dense)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_index b = bins, n = count, width = weights.shape[1]
    cdef ppir_status status
    with nogil:
        status = ppir_ring_window_subtract(b, n, width, f_p, w_p, d_p, o_p)
    _raise_for_status(status, "ring_window_subtract")


cdef Py_ssize_t _ring128(object x, str name, object out) except -1:
    """The element count of a checked (..., 2) uint64 array x and of out (its shape)."""
    _array(x, name, (_UINT64,), None)
    if x.ndim == 0 or x.shape[x.ndim - 1] != 2:
        raise ValueError(f"{name} must have shape (..., 2) (low and high words), got {x.shape}.")
    _array(out, "out", (_UINT64,), x.shape, True)
    if np.may_share_memory(out, x):
        raise ValueError(f"out must not overlap {name}.")
    return x.size // 2


ctypedef ppir_status (*_Ring128Binary)(ppir_index n, const uint64_t *x, const uint64_t *y,
                                       uint64_t *out) noexcept nogil


cdef _ring128_binary(_Ring128Binary kernel, str name, x, y, out):
    """Check x, y and out ((..., 2) uint64, one shape) and run ``kernel`` on them."""
    cdef ppir_index n = _ring128(x, "x", out)
    _array(y, "y", (_UINT64,), x.shape)
    if np.may_share_memory(out, y):
        raise ValueError("out must not overlap y.")
    cdef const uint64_t *x_p = <const uint64_t *>_ptr(x)
    cdef const uint64_t *y_p = <const uint64_t *>_ptr(y)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_status status
    with nogil:
        status = kernel(n, x_p, y_p, o_p)
    _raise_for_status(status, name)


def ring128_add(x, y, out):
    """Overwrite ``out`` with ``x + y`` over Z_2^128 ((..., 2) uint64 words, low first)."""
    _ring128_binary(ppir_ring128_add, "ring128_add", x, y, out)


def ring128_subtract(x, y, out):
    """Overwrite ``out`` with ``x - y`` over Z_2^128."""
    _ring128_binary(ppir_ring128_subtract, "ring128_subtract", x, y, out)


def ring128_multiply(x, y, out):
    """Overwrite ``out`` with ``x y`` over Z_2^128."""
    _ring128_binary(ppir_ring128_multiply, "ring128_multiply", x, y, out)


def ring128_negate(x, out):
    """Overwrite ``out`` with ``-x`` over Z_2^128."""
    cdef ppir_index n = _ring128(x, "x", out)
    cdef const uint64_t *x_p = <const uint64_t *>_ptr(x)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_status status
    with nogil:
        status = ppir_ring128_negate(n, x_p, o_p)
    _raise_for_status(status, "ring128_negate")


def ring128_shift_right(x, int bits, out):
    """Overwrite ``out`` with ``floor(x / 2^bits)``, x read in [0, 2^128), 0 <= bits < 128."""
    cdef ppir_index n = _ring128(x, "x", out)
    if not 0 <= bits < 128:
        raise ValueError(f"bits must be in [0, 128), got {bits}.")
    cdef const uint64_t *x_p = <const uint64_t *>_ptr(x)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_status status
    with nogil:
        status = ppir_ring128_shift_right(n, bits, x_p, o_p)
    _raise_for_status(status, "ring128_shift_right")


def ring128_truncate(x, int bits, int party, out):
    """Overwrite ``out`` with SecureML's local truncation of the share x by ``bits`` (party
    0: ``x >> bits``; party 1: ``-((-x) >> bits)``), 0 <= bits < 128."""
    cdef ppir_index n = _ring128(x, "x", out)
    if not 0 <= bits < 128:
        raise ValueError(f"bits must be in [0, 128), got {bits}.")
    if party not in (0, 1):
        raise ValueError(f"party must be 0 or 1, got {party}.")
    cdef const uint64_t *x_p = <const uint64_t *>_ptr(x)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_status status
    with nogil:
        status = ppir_ring128_truncate(n, bits, party, x_p, o_p)
    _raise_for_status(status, "ring128_truncate")


def ring128_beaver(e, f, a, b, c, int party, out):
    """Overwrite ``out`` with a party's share of Beaver's product over Z_2^128: ``c + e b +
    f a``, plus ``e f`` for party 0 (e, f opened; a, b, c its triple shares)."""
    cdef ppir_index n = _ring128(e, "e", out)
    if party not in (0, 1):
        raise ValueError(f"party must be 0 or 1, got {party}.")
    for name, operand in (("f", f), ("a", a), ("b", b), ("c", c)):
        _array(operand, name, (_UINT64,), e.shape)
        if np.may_share_memory(out, operand):
            raise ValueError(f"out must not overlap {name}.")
    cdef const uint64_t *e_p = <const uint64_t *>_ptr(e)
    cdef const uint64_t *f_p = <const uint64_t *>_ptr(f)
    cdef const uint64_t *a_p = <const uint64_t *>_ptr(a)
    cdef const uint64_t *b_p = <const uint64_t *>_ptr(b)
    cdef const uint64_t *c_p = <const uint64_t *>_ptr(c)
    cdef uint64_t *o_p = <uint64_t *>_ptr(out)
    cdef ppir_status status
    with nogil:
        status = ppir_ring128_beaver(n, party, e_p, f_p, a_p, b_p, c_p, o_p)
    _raise_for_status(status, "ring128_beaver")


# -- BFV ---------------------------------------------------------------------------------

from _ppir_c cimport ppir_bfv_add_scaled

__all__ += ["bfv_add_scaled"]

_BFV_LIMIT = 1 << 62


def bfv_add_scaled(plain, uint64_t t, uint64_t q_mod_t, primes, delta, c0):
    """Add ``round(q plain / t)`` to ``c0`` (count x n, uint64) in place, row j modulo
    ``primes[j]``: ``q`` the primes' product, given as ``q_mod_t`` and ``delta[j] =
    floor(q / t) mod primes[j]``; plain (n) holds a plaintext's coefficients below t."""
    _array(plain, "plain", (_UINT64,), None)
    if plain.ndim != 1:
        raise ValueError(f"plain must be 1-D, got {plain.ndim}-D.")
    cdef ppir_index n = plain.shape[0]
    _array(primes, "primes", (_UINT64,), None)
    if primes.ndim != 1:
        raise ValueError(f"primes must be 1-D, got {primes.ndim}-D.")
    cdef ppir_index count = primes.shape[0]
    _array(delta, "delta", (_UINT64,), (count,))
    _array(c0, "c0", (_UINT64,), (count, n), True)
    _check_disjoint((("c0", c0),), (("plain", plain), ("primes", primes), ("delta", delta)))
    if not 2 <= t < _BFV_LIMIT or q_mod_t >= t:
        raise ValueError(f"t must be in [2, 2^62) and q_mod_t below it, got {t} and {q_mod_t}.")
    if count and (primes.max() >= _BFV_LIMIT or (delta >= primes).any()):
        raise ValueError("primes must be below 2^62 and delta below its prime.")
    if n and (plain.max() >= t or (c0 >= primes[:, None]).any()):
        raise ValueError("plain must be below t and c0 below its row's prime.")
    cdef const uint64_t *plain_p = <const uint64_t *>_ptr(plain)
    cdef const uint64_t *primes_p = <const uint64_t *>_ptr(primes)
    cdef const uint64_t *delta_p = <const uint64_t *>_ptr(delta)
    cdef uint64_t *c0_p = <uint64_t *>_ptr(c0)
    cdef ppir_status status
    with nogil:
        status = ppir_bfv_add_scaled(n, count, plain_p, t, q_mod_t, primes_p, delta_p, c0_p)
    _raise_for_status(status, "bfv_add_scaled")
