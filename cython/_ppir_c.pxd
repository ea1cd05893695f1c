# Declarations of the C kernels in src/, mirroring the headers.  This is the
# only place that declares C symbols; _kernels.pyx cimports from here.

from libc.stdint cimport int64_t, uint8_t


cdef extern from "ppir_common.h" nogil:
    ctypedef int64_t ppir_index

    ctypedef enum ppir_status:
        PPIR_OK
        PPIR_BAD_DIMENSION
        PPIR_BAD_INDEX
        PPIR_BAD_RANGE
        PPIR_BAD_SIZE
        PPIR_NULL_POINTER

    int PPIR_MAX_DIM


cdef extern from "ppir_gradient.h" nogil:
    ppir_status ppir_central_gradient_f32(int d, const ppir_index *size, const float *image,
                                          double *out)
    ppir_status ppir_central_gradient_f64(int d, const ppir_index *size, const double *image,
                                          double *out)


cdef extern from "ppir_warp.h" nogil:
    ppir_status ppir_warp_f32(int d, const ppir_index *moving_size, const float *moving,
                              const double *moving_gradient,
                              const double *moving_physical_to_index,
                              const double *moving_origin, const ppir_index *fixed_size,
                              const double *fixed_index_to_physical, const double *fixed_origin,
                              const double *matrix, const double *offset,
                              const double *displacement, const ppir_index *indices,
                              ppir_index n_indices, ppir_index start,
                              ppir_index stop, double *out_values, double *out_gradient,
                              uint8_t *out_valid, ppir_index *out_n_valid)
    ppir_status ppir_warp_f64(int d, const ppir_index *moving_size, const double *moving,
                              const double *moving_gradient,
                              const double *moving_physical_to_index,
                              const double *moving_origin, const ppir_index *fixed_size,
                              const double *fixed_index_to_physical, const double *fixed_origin,
                              const double *matrix, const double *offset,
                              const double *displacement, const ppir_index *indices,
                              ppir_index n_indices, ppir_index start,
                              ppir_index stop, double *out_values, double *out_gradient,
                              uint8_t *out_valid, ppir_index *out_n_valid)


cdef extern from "ppir_affine.h" nogil:
    ppir_status ppir_affine_gram(int d, const ppir_index *fixed_size,
                                 const double *fixed_index_to_physical,
                                 const double *fixed_origin, const double *reference,
                                 const ppir_index *indices, ppir_index n_indices,
                                 ppir_index start, ppir_index stop, const double *gradient,
                                 double *out)
    ppir_status ppir_affine_moments(int d, const ppir_index *fixed_size,
                                    const double *fixed_index_to_physical,
                                    const double *fixed_origin, const double *reference,
                                    const ppir_index *indices, ppir_index n_indices,
                                    ppir_index start, ppir_index stop, const double *field,
                                    const double *weights, double *out)


cdef extern from "ppir_bspline.h" nogil:
    ppir_status ppir_bspline_displacement(int d, const ppir_index *fixed_size,
                                          const ppir_index *indices, ppir_index n_indices,
                                          ppir_index start, ppir_index stop,
                                          const ppir_index *control_size,
                                          const double *point_to_control,
                                          const double *control_offset,
                                          const double *coefficients, double *out)
    ppir_status ppir_bspline_scatter(int d, const ppir_index *fixed_size,
                                     const ppir_index *indices, ppir_index n_indices,
                                     ppir_index start, ppir_index stop,
                                     const ppir_index *control_size,
                                     const double *point_to_control,
                                     const double *control_offset, int m, int weight_bits,
                                     const double *values, double *out)
    ppir_status ppir_bspline_scatter_ring(int d, const ppir_index *fixed_size,
                                          const ppir_index *indices, ppir_index n_indices,
                                          ppir_index start, ppir_index stop,
                                          const ppir_index *control_size,
                                          const double *point_to_control,
                                          const double *control_offset, int m,
                                          int weight_bits, const int64_t *values, int64_t *out)
    ppir_status ppir_bspline_hessian(int d, const ppir_index *fixed_size,
                                     const ppir_index *indices, ppir_index n_indices,
                                     ppir_index start, ppir_index stop,
                                     const ppir_index *control_size,
                                     const double *point_to_control,
                                     const double *control_offset, const double *gradient,
                                     double *out)


cdef extern from "ppir_parzen.h" nogil:
    ppir_status ppir_parzen_windows(ppir_index n, const double *values, const uint8_t *valid,
                                    int count, double minimum, double maximum, double bin_size,
                                    double normalized_minimum, ppir_index *first_bin,
                                    double *weights, double *derivatives, uint8_t *inside,
                                    ppir_index *n_inside, double *negative_entropy)
    ppir_status ppir_parzen_joint_histogram(ppir_index n, int count,
                                            const ppir_index *fixed_bin,
                                            const ppir_index *first_bin, const double *weights,
                                            const uint8_t *valid, double *histogram)
    ppir_status ppir_parzen_log_ratio(int count, const double *histogram, double *ratio,
                                      double *total)
    ppir_status ppir_parzen_entropy_difference(int count, const double *fractions,
                                               double *scratch, double *out)
    ppir_status ppir_parzen_sample_weights(ppir_index n, int count, const double *ratio,
                                           const ppir_index *fixed_bin,
                                           const ppir_index *first_bin,
                                           const double *derivatives, double *s)
from libc.stdint cimport uint64_t

cdef extern from "ppir_ring.h" nogil:
    ppir_status ppir_ring_gram(ppir_index rows_a, ppir_index rows_b, ppir_index count,
                               const uint64_t *a, const uint64_t *b, uint64_t *out)
    ppir_status ppir_ring_left(ppir_index rows, ppir_index inner, ppir_index count,
                               const uint64_t *left, const uint64_t *right, uint64_t *out)
    ppir_status ppir_ring_window_gram(ppir_index rows, ppir_index bins, ppir_index count,
                                      ppir_index width, const uint64_t *dense,
                                      const ppir_index *first, const uint64_t *weights,
                                      uint64_t *out)
    ppir_status ppir_ring_window_left(ppir_index rows, ppir_index bins, ppir_index count,
                                      ppir_index width, const uint64_t *left,
                                      const ppir_index *first, const uint64_t *weights,
                                      uint64_t *out)
    ppir_status ppir_ring_column_dots(ppir_index rows, ppir_index count, const uint64_t *x,
                                      const uint64_t *y, uint64_t *out)
    ppir_status ppir_ring_window_subtract(ppir_index bins, ppir_index count, ppir_index width,
                                          const ppir_index *first, const uint64_t *weights,
                                          const uint64_t *dense, uint64_t *out)
    ppir_status ppir_ring128_add(ppir_index n, const uint64_t *x, const uint64_t *y,
                                 uint64_t *out)
    ppir_status ppir_ring128_subtract(ppir_index n, const uint64_t *x, const uint64_t *y,
                                      uint64_t *out)
    ppir_status ppir_ring128_negate(ppir_index n, const uint64_t *x, uint64_t *out)
    ppir_status ppir_ring128_multiply(ppir_index n, const uint64_t *x, const uint64_t *y,
                                      uint64_t *out)
    ppir_status ppir_ring128_shift_right(ppir_index n, int bits, const uint64_t *x,
                                         uint64_t *out)
    ppir_status ppir_ring128_truncate(ppir_index n, int bits, int party, const uint64_t *x,
                                      uint64_t *out)
    ppir_status ppir_ring128_beaver(ppir_index n, int party, const uint64_t *e,
                                    const uint64_t *f, const uint64_t *a, const uint64_t *b,
                                    const uint64_t *c, uint64_t *out)

cdef extern from "ppir_bfv.h" nogil:
    ppir_status ppir_bfv_add_scaled(ppir_index n, ppir_index count, const uint64_t *plain,
                                    uint64_t t, uint64_t q_mod_t, const uint64_t *primes,
                                    const uint64_t *delta, uint64_t *c0)
