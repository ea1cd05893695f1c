/*
 * ppir_bspline.h - cubic B-spline free-form deformation (ITK's BSplineTransform,
 * order 3) on the points of a fixed grid: displacement, the transpose map
 * (point values -> control points) and the Gauss-Newton Hessian blocks.
 *
 * The control grid is given by its size (control points per axis, ITK order,
 * each >= 4) and by the affine map from a fixed-grid index to a continuous
 * control-grid index:
 *
 *   u = control_offset + point_to_control @ idx
 *
 * A point is inside iff 1 <= u_k <= control_size[k] - 2 for every k (ITK's
 * valid region for order 3, its upper edge included); it then has 4^d control
 * points c = base + s, s in {0..3}^d, base_k = floor(u_k) - 1 (on the upper
 * edge base_k = control_size[k] - 4), with weights prod_k beta3(t_k, s_k).
 * Points outside have no control points: zero displacement and no weight.
 * Control point c has flat index c_0 + control_size[0] * (c_1 + ...).
 *
 * Common arguments are those of ppir_affine.h (d, fixed_size, indices,
 * n_indices, start, stop).  Outputs are overwritten over [start, stop) for
 * per-point arrays and in full for per-control-point sums.
 */
#ifndef PPIR_BSPLINE_H
#define PPIR_BSPLINE_H

#include "ppir_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Neighbour offsets between two control points sharing a point: 7 per axis. */
#define PPIR_BSPLINE_REACH 7

/*
 * out (n x d) = displacement sum_c w_c coefficients[k * M + c] at each point,
 * M = prod(control_size); coefficients are ITK's parameters (d x M).
 */
ppir_status ppir_bspline_displacement(int d, const ppir_index *fixed_size,
                                      const ppir_index *indices, ppir_index n_indices,
                                      ppir_index start, ppir_index stop,
                                      const ppir_index *control_size,
                                      const double *point_to_control,
                                      const double *control_offset, const double *coefficients,
                                      double *out);

/*
 * out (M x m) = sum over positions of w_c(x) values[pos * m + j]: the
 * transpose of the B-spline basis applied to m per-point fields.  With
 * weight_bits in [1, 20] the weights are those of ppir_bspline_scatter_ring
 * (divided by 2^(d weight_bits)), so that a party's own sums match a shared
 * computation's; 0 keeps them exact (else PPIR_BAD_RANGE).
 */
ppir_status ppir_bspline_scatter(int d, const ppir_index *fixed_size, const ppir_index *indices,
                                 ppir_index n_indices, ppir_index start, ppir_index stop,
                                 const ppir_index *control_size, const double *point_to_control,
                                 const double *control_offset, int m, int weight_bits,
                                 const double *values, double *out);

/*
 * The same over the ring Z_2^64: out (M x m) = sum of q_c(x) values[pos * m + j]
 * mod 2^64, with the fixed-point weight q_c(x) = prod_k round(beta3 2^weight_bits)
 * (weight_bits in [1, 20]; else PPIR_BAD_RANGE).  Exact, wrapping arithmetic.
 */
ppir_status ppir_bspline_scatter_ring(int d, const ppir_index *fixed_size,
                                      const ppir_index *indices, ppir_index n_indices,
                                      ppir_index start, ppir_index stop,
                                      const ppir_index *control_size,
                                      const double *point_to_control,
                                      const double *control_offset, int m, int weight_bits,
                                      const int64_t *values, int64_t *out);

/*
 * out (M x R x d(d+1)/2, R = 7^d) = sum over positions of w_c w_c' g g^T with
 * c' = c + o, o in {-3..3}^d at offset index (o_0 + 3) + 7 (o_1 + 3) + 49 (o_2 + 3):
 * the blocks of S^T S for S[x, (c, k)] = g_k(x) w_c(x).  gradient is n x d.
 * g g^T is symmetric, so each block holds its upper triangle (k <= l), row by
 * row: (0,0) (0,1) (1,1) in 2-D, (0,0) (0,1) (0,2) (1,1) (1,2) (2,2) in 3-D.
 * S^T S is symmetric, so only offsets with o_0 + 4 o_1 + 16 o_2 >= 0 are
 * accumulated (the others are left 0): the block at (c + o, -o) is the
 * transpose of the block at (c, o).
 */
ppir_status ppir_bspline_hessian(int d, const ppir_index *fixed_size, const ppir_index *indices,
                                 ppir_index n_indices, ppir_index start, ppir_index stop,
                                 const ppir_index *control_size, const double *point_to_control,
                                 const double *control_offset, const double *gradient,
                                 double *out);

#ifdef __cplusplus
}
#endif

#endif /* PPIR_BSPLINE_H */
