/*
 * ppir_affine.h - reductions over the affine basis of a fixed grid.
 *
 * With c a public reference point, the affine basis at physical point x is
 *   phi(x) = (x_1 - c_1, ..., x_d - c_d, 1),
 * x = fixed_origin + fixed_index_to_physical @ idx for grid index idx.
 */
#ifndef PPIR_AFFINE_H
#define PPIR_AFFINE_H

#include "ppir_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Common arguments:
 *   d                       : 2 or 3 (else PPIR_BAD_DIMENSION)
 *   fixed_size              : d sizes, ITK order, >= 1
 *   fixed_index_to_physical : d x d row-major
 *   fixed_origin, reference : d
 *   indices                 : NULL (whole grid, n = prod(fixed_size)) or
 *                             n_indices flat indices in [0, prod(fixed_size))
 *   n_indices               : length of indices (ignored when NULL)
 *   start, stop             : 0 <= start <= stop <= n (else PPIR_BAD_RANGE)
 * Per-point arrays are indexed by position in the point list; sums run over
 * positions [start, stop) in order.
 */

/*
 * out (m x m, m = d * (d + 1), row-major) = sum over positions of v v^T with
 * v[k * (d + 1) + j] = gradient[pos * d + k] * phi_j(x).  gradient has n * d
 * entries.  Points whose gradient is all zero are skipped.  The upper
 * triangle is accumulated and mirrored, so out is exactly symmetric.
 */
ppir_status ppir_affine_gram(int d, const ppir_index *fixed_size,
                             const double *fixed_index_to_physical, const double *fixed_origin,
                             const double *reference, const ppir_index *indices,
                             ppir_index n_indices, ppir_index start, ppir_index stop,
                             const double *gradient, double *out);

/*
 * out (d x (d + 1), row-major) = sum over positions of
 * field[pos * d + k] * w[pos] * phi_j(x); weights may be NULL (w = 1).
 */
ppir_status ppir_affine_moments(int d, const ppir_index *fixed_size,
                                const double *fixed_index_to_physical, const double *fixed_origin,
                                const double *reference, const ppir_index *indices,
                                ppir_index n_indices, ppir_index start, ppir_index stop,
                                const double *field, const double *weights, double *out);

#ifdef __cplusplus
}
#endif

#endif /* PPIR_AFFINE_H */
