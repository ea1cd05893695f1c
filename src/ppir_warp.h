/*
 * ppir_warp.h - resample one moving image (and its gradient) at the
 * affinely mapped points of a fixed grid.
 */
#ifndef PPIR_WARP_H
#define PPIR_WARP_H

#include "ppir_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * For each position pos in [start, stop) of the fixed point list, with x the
 * physical point of grid index idx:
 *
 *   x = fixed_origin + fixed_index_to_physical @ idx
 *   y = matrix @ (x + displacement[pos]) + offset
 *   u = moving_physical_to_index @ (y - moving_origin)     (continuous index)
 *
 * The point is valid iff -0.5 <= u_k < moving_size[k] - 0.5 for every k (ITK's
 * IsInsideBuffer; u is clamped onto [0, moving_size[k] - 1] to interpolate).  A valid
 * point gets the (bi/tri)linear interpolation I(u) of the moving image and
 * the physical gradient P^T @ interp(moving_gradient, u); an invalid point
 * gets 0, 0 and valid 0.  The composition x -> u is folded into one affine
 * map evaluated per point from its grid index (chunking never changes it).
 *
 *   d                        : 2 or 3 (else PPIR_BAD_DIMENSION)
 *   moving_size              : d sizes, ITK order (reversed NumPy shape), >= 1
 *   moving                   : prod(moving_size) samples, NumPy order
 *   moving_gradient          : prod(moving_size) * d, index-space gradient,
 *                              [i * d + k] = d/d(index axis k)
 *   moving_physical_to_index : d x d row-major (P)
 *   moving_origin            : d
 *   fixed_size               : d sizes, ITK order, >= 1
 *   fixed_index_to_physical  : d x d row-major (direction @ diag(spacing))
 *   fixed_origin             : d
 *   matrix, offset           : d x d row-major, d
 *   displacement             : NULL (none) or n * d doubles, a per-point shift
 *                              applied before the matrix (a B-spline's D(x))
 *   indices                  : NULL (whole fixed grid, n = prod(fixed_size))
 *                              or n_indices flat indices in [0, prod(fixed_size))
 *   n_indices                : length of indices (ignored when NULL)
 *   start, stop              : 0 <= start <= stop <= n (else PPIR_BAD_RANGE)
 *   out_values               : n doubles, written at [start, stop)
 *   out_gradient             : n * d doubles, written at [start, stop)
 *   out_valid                : n bytes (0/1), written at [start, stop)
 *   out_n_valid              : number of valid points in [start, stop)
 *
 * Outputs must not overlap the inputs.  Nothing is written unless PPIR_OK
 * is returned (indices are checked before any output is touched).
 */
ppir_status ppir_warp_f32(int d, const ppir_index *moving_size, const float *moving,
                          const double *moving_gradient, const double *moving_physical_to_index,
                          const double *moving_origin, const ppir_index *fixed_size,
                          const double *fixed_index_to_physical, const double *fixed_origin,
                          const double *matrix, const double *offset,
                          const double *displacement, const ppir_index *indices,
                          ppir_index n_indices, ppir_index start, ppir_index stop,
                          double *out_values, double *out_gradient, uint8_t *out_valid,
                          ppir_index *out_n_valid);

ppir_status ppir_warp_f64(int d, const ppir_index *moving_size, const double *moving,
                          const double *moving_gradient, const double *moving_physical_to_index,
                          const double *moving_origin, const ppir_index *fixed_size,
                          const double *fixed_index_to_physical, const double *fixed_origin,
                          const double *matrix, const double *offset,
                          const double *displacement, const ppir_index *indices,
                          ppir_index n_indices, ppir_index start, ppir_index stop,
                          double *out_values, double *out_gradient, uint8_t *out_valid,
                          ppir_index *out_n_valid);

#ifdef __cplusplus
}
#endif

#endif /* PPIR_WARP_H */
