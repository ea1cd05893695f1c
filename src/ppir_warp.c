/*
 * ppir_warp.c - linear resampling of a moving image and its gradient.
 *
 * The type-independent part (validation, folding the geometry into one
 * affine map) is here; the per-type bodies live in ppir_warp_body.inc and
 * are instantiated below for float and double moving images.
 */
#include "ppir_warp.h"

#include <stddef.h>

#include "ppir_points.inc"

#define PPIR_CAT_(a, b) a##b
#define PPIR_CAT(a, b) PPIR_CAT_(a, b)
#define PPIR_FN(name) PPIR_CAT(name, PPIR_SUFFIX)

/* Everything a warp loop needs besides the arrays. */
typedef struct ppir_warp_geom_ {
    double B[PPIR_MAX_DIM * PPIR_MAX_DIM]; /* u = B @ idx + b */
    double b[PPIR_MAX_DIM];
    double PM[PPIR_MAX_DIM * PPIR_MAX_DIM]; /* u += PM @ displacement */
    double P[PPIR_MAX_DIM * PPIR_MAX_DIM]; /* moving physical -> index */
    double hi[PPIR_MAX_DIM];               /* moving_size - 1 */
    ppir_index n[PPIR_MAX_DIM];            /* moving_size */
} ppir_warp_geom_;

/* u clamped onto [0, hi]: the half pixel outside the border samples the border. */
static inline double ppir_clamp_(double u, double hi)
{
    return u < 0.0 ? 0.0 : (u > hi ? hi : u);
}

/* Checks the arguments and folds the geometry:
 *   B = P @ matrix @ A,  b = P @ (matrix @ o_f + offset - o_m). */
static ppir_status ppir_warp_prepare_(
    int d, const ppir_index *moving_size, const void *moving, const double *moving_gradient,
    const double *P, const double *o_m, const ppir_index *fixed_size, const double *A,
    const double *o_f, const double *M, const double *t, const ppir_index *indices,
    ppir_index n_indices, ppir_index start, ppir_index stop, const double *out_values,
    const double *out_gradient, const uint8_t *out_valid, ppir_warp_geom_ *g)
{
    ppir_status status;
    ppir_index count;
    double MA[PPIR_MAX_DIM * PPIR_MAX_DIM];
    double y0[PPIR_MAX_DIM];

    if (d != 2 && d != 3) {
        return PPIR_BAD_DIMENSION;
    }
    if (moving_size == NULL || moving == NULL || moving_gradient == NULL || P == NULL ||
        o_m == NULL || fixed_size == NULL || A == NULL || o_f == NULL || M == NULL ||
        t == NULL || out_values == NULL || out_gradient == NULL || out_valid == NULL) {
        return PPIR_NULL_POINTER;
    }
    status = ppir_grid_count_(d, moving_size, &count);
    if (status != PPIR_OK) {
        return status;
    }
    status = ppir_check_points_(d, fixed_size, indices, n_indices, start, stop);
    if (status != PPIR_OK) {
        return status;
    }

    for (int i = 0; i < d; ++i) {
        for (int j = 0; j < d; ++j) {
            double s = 0.0;
            for (int k = 0; k < d; ++k) {
                s += M[i * d + k] * A[k * d + j];
            }
            MA[i * d + j] = s;
        }
        {
            double s = 0.0;
            for (int k = 0; k < d; ++k) {
                s += M[i * d + k] * o_f[k];
            }
            y0[i] = (s + t[i]) - o_m[i];
        }
    }
    for (int i = 0; i < d; ++i) {
        for (int j = 0; j < d; ++j) {
            double s = 0.0;
            for (int k = 0; k < d; ++k) {
                s += P[i * d + k] * MA[k * d + j];
            }
            g->B[i * d + j] = s;
            g->P[i * d + j] = P[i * d + j];
            s = 0.0;
            for (int k = 0; k < d; ++k) {
                s += P[i * d + k] * M[k * d + j];
            }
            g->PM[i * d + j] = s;
        }
        {
            double s = 0.0;
            for (int k = 0; k < d; ++k) {
                s += P[i * d + k] * y0[k];
            }
            g->b[i] = s;
        }
        g->n[i] = moving_size[i];
        g->hi[i] = (double)(moving_size[i] - 1);
    }
    return PPIR_OK;
}

#define PPIR_T float
#define PPIR_SUFFIX f32
#include "ppir_warp_body.inc"
#undef PPIR_T
#undef PPIR_SUFFIX

#define PPIR_T double
#define PPIR_SUFFIX f64
#include "ppir_warp_body.inc"
#undef PPIR_T
#undef PPIR_SUFFIX
