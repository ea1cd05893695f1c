/*
 * ppir_bspline.c - cubic B-spline support of fixed-grid points, and the three
 * reductions built on it (ppir_bspline.h).
 */
#include "ppir_bspline.h"

#include <math.h>
#include <stddef.h>

#include "ppir_points.inc"

/* Control points per point, at most (4^3). */
#define PPIR_SUPPORT_MAX 64

/* One point's control points: flat indices, weights, and the position
 * s = s_0 + 4 s_1 + 16 s_2 of each within the 4^d block. */
typedef struct ppir_support_ {
    int count; /* 4^d, or 0 outside the valid region */
    ppir_index flat[PPIR_SUPPORT_MAX];
    double weight[PPIR_SUPPORT_MAX];
    double axis[PPIR_MAX_DIM][4]; /* per-axis weights */
} ppir_support_;

/* Per-axis cubic B-spline weights at continuous control index u; 0 outside
 * [1, size - 2] (and for NaN). */
static inline int ppir_axis_(double u, ppir_index size, ppir_index *base, double *w)
{
    const double hi = (double)(size - 2);
    double f;
    if (!(u >= 1.0 && u <= hi)) {
        return 0;
    }
    f = floor(u);
    if (f > hi - 1.0) {
        f = hi - 1.0; /* the upper edge: t = 1 on the last cell, the same value */
    }
    {
        const double t = u - f, s = 1.0 - t, t2 = t * t, t3 = t2 * t;
        w[0] = s * s * s / 6.0;
        w[1] = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0;
        w[2] = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0;
        w[3] = t3 / 6.0;
    }
    *base = (ppir_index)f - 1;
    return 1;
}

/* Support of the point at continuous control index u. */
static void ppir_support_at_(int d, const ppir_index *csize, const double *u, ppir_support_ *sp)
{
    ppir_index base[PPIR_MAX_DIM];
    sp->count = 0;
    for (int k = 0; k < d; ++k) {
        if (!ppir_axis_(u[k], csize[k], &base[k], sp->axis[k])) {
            return;
        }
    }
    if (d == 2) {
        int s = 0;
        for (int s1 = 0; s1 < 4; ++s1) {
            for (int s0 = 0; s0 < 4; ++s0, ++s) {
                sp->flat[s] = (base[0] + s0) + csize[0] * (base[1] + s1);
                sp->weight[s] = sp->axis[0][s0] * sp->axis[1][s1];
            }
        }
        sp->count = 16;
    } else {
        int s = 0;
        for (int s2 = 0; s2 < 4; ++s2) {
            for (int s1 = 0; s1 < 4; ++s1) {
                const double w12 = sp->axis[1][s1] * sp->axis[2][s2];
                for (int s0 = 0; s0 < 4; ++s0, ++s) {
                    sp->flat[s] = (base[0] + s0) +
                                  csize[0] * ((base[1] + s1) + csize[1] * (base[2] + s2));
                    sp->weight[s] = sp->axis[0][s0] * w12;
                }
            }
        }
        sp->count = 64;
    }
}

/* The fixed-point weights of ppir_bspline_scatter_ring: per axis
 * q = round(beta3 2^bits), weight = prod_k q_k.  As integers in q_int, and as the
 * doubles they stand for (q / 2^(d bits)) in sp->weight. */
static void ppir_round_weights_(int d, int bits, ppir_support_ *sp)
{
    const double unit = ldexp(1.0, -d * bits);
    for (int k = 0; k < d; ++k) {
        for (int s = 0; s < 4; ++s) {
            sp->axis[k][s] = (double)llround(ldexp(sp->axis[k][s], bits));
        }
    }
    for (int a = 0; a < sp->count; ++a) {
        double w = sp->axis[0][a & 3] * sp->axis[1][(a >> 2) & 3];
        if (d == 3) {
            w *= sp->axis[2][a >> 4];
        }
        sp->weight[a] = w * unit;
    }
}

/* Walks [start, stop) of a point list and yields each point's support. */
typedef struct ppir_walk_ {
    int d;
    ppir_cursor_ cur;
    const double *B, *b;
    const ppir_index *csize;
} ppir_walk_;

static inline void ppir_walk_next_(ppir_walk_ *w, ppir_index pos, ppir_support_ *sp)
{
    double u[PPIR_MAX_DIM];
    ppir_index i0, i1, i2;
    if (w->d == 2) {
        ppir_cursor_next2_(&w->cur, pos, &i0, &i1);
        ppir_map2_(w->B, w->b, i0, i1, u);
    } else {
        ppir_cursor_next3_(&w->cur, pos, &i0, &i1, &i2);
        ppir_map3_(w->B, w->b, i0, i1, i2, u);
    }
    ppir_support_at_(w->d, w->csize, u, sp);
}

/* Checks the common arguments; M = number of control points. */
static ppir_status ppir_bspline_prepare_(int d, const ppir_index *fixed_size,
                                         const ppir_index *indices, ppir_index n_indices,
                                         ppir_index start, ppir_index stop,
                                         const ppir_index *csize, const double *B,
                                         const double *b, const void *in, const void *out,
                                         ppir_walk_ *walk, ppir_index *M)
{
    ppir_status status;
    if (d != 2 && d != 3) {
        return PPIR_BAD_DIMENSION;
    }
    if (fixed_size == NULL || csize == NULL || B == NULL || b == NULL || in == NULL ||
        out == NULL) {
        return PPIR_NULL_POINTER;
    }
    for (int k = 0; k < d; ++k) {
        if (csize[k] < 4) {
            return PPIR_BAD_SIZE;
        }
    }
    status = ppir_grid_count_(d, csize, M);
    if (status != PPIR_OK) {
        return status;
    }
    status = ppir_check_points_(d, fixed_size, indices, n_indices, start, stop);
    if (status != PPIR_OK) {
        return status;
    }
    walk->d = d;
    walk->B = B;
    walk->b = b;
    walk->csize = csize;
    ppir_cursor_init_(&walk->cur, d, fixed_size, indices, start);
    return PPIR_OK;
}

ppir_status ppir_bspline_displacement(int d, const ppir_index *fixed_size,
                                      const ppir_index *indices, ppir_index n_indices,
                                      ppir_index start, ppir_index stop,
                                      const ppir_index *control_size,
                                      const double *point_to_control,
                                      const double *control_offset, const double *coefficients,
                                      double *out)
{
    ppir_walk_ walk;
    ppir_support_ sp;
    ppir_index M;
    const ppir_status status = ppir_bspline_prepare_(
        d, fixed_size, indices, n_indices, start, stop, control_size, point_to_control,
        control_offset, coefficients, out, &walk, &M);
    if (status != PPIR_OK) {
        return status;
    }
    for (ppir_index pos = start; pos < stop; ++pos) {
        double *o = out + pos * d;
        ppir_walk_next_(&walk, pos, &sp);
        for (int k = 0; k < d; ++k) {
            const double *coef = coefficients + k * M;
            double s = 0.0;
            for (int a = 0; a < sp.count; ++a) {
                s += sp.weight[a] * coef[sp.flat[a]];
            }
            o[k] = s;
        }
    }
    return PPIR_OK;
}

ppir_status ppir_bspline_scatter(int d, const ppir_index *fixed_size, const ppir_index *indices,
                                 ppir_index n_indices, ppir_index start, ppir_index stop,
                                 const ppir_index *control_size, const double *point_to_control,
                                 const double *control_offset, int m, int weight_bits,
                                 const double *values, double *out)
{
    ppir_walk_ walk;
    ppir_support_ sp;
    ppir_index M;
    const ppir_status status = ppir_bspline_prepare_(
        d, fixed_size, indices, n_indices, start, stop, control_size, point_to_control,
        control_offset, values, out, &walk, &M);
    if (status != PPIR_OK) {
        return status;
    }
    if (m < 1 || weight_bits < 0 || weight_bits > 20) {
        return PPIR_BAD_RANGE;
    }
    for (ppir_index i = 0; i < M * m; ++i) {
        out[i] = 0.0;
    }
    for (ppir_index pos = start; pos < stop; ++pos) {
        const double *v = values + pos * m;
        ppir_walk_next_(&walk, pos, &sp);
        if (weight_bits > 0 && sp.count > 0) {
            ppir_round_weights_(d, weight_bits, &sp);
        }
        for (int a = 0; a < sp.count; ++a) {
            double *o = out + sp.flat[a] * m;
            for (int j = 0; j < m; ++j) {
                o[j] += sp.weight[a] * v[j];
            }
        }
    }
    return PPIR_OK;
}

ppir_status ppir_bspline_scatter_ring(int d, const ppir_index *fixed_size,
                                      const ppir_index *indices, ppir_index n_indices,
                                      ppir_index start, ppir_index stop,
                                      const ppir_index *control_size,
                                      const double *point_to_control,
                                      const double *control_offset, int m, int weight_bits,
                                      const int64_t *values, int64_t *out)
{
    ppir_walk_ walk;
    ppir_support_ sp;
    ppir_index M;
    uint64_t *acc = (uint64_t *)out;
    const ppir_status status = ppir_bspline_prepare_(
        d, fixed_size, indices, n_indices, start, stop, control_size, point_to_control,
        control_offset, values, out, &walk, &M);
    if (status != PPIR_OK) {
        return status;
    }
    if (m < 1 || weight_bits < 1 || weight_bits > 20) {
        return PPIR_BAD_RANGE;
    }
    for (ppir_index i = 0; i < M * m; ++i) {
        acc[i] = 0;
    }
    for (ppir_index pos = start; pos < stop; ++pos) {
        const int64_t *v = values + pos * m;
        ppir_walk_next_(&walk, pos, &sp);
        if (sp.count == 0) {
            continue;
        }
        ppir_round_weights_(d, weight_bits, &sp); /* sp.axis now holds the integers q */
        for (int a = 0; a < sp.count; ++a) {
            uint64_t w = (uint64_t)sp.axis[0][a & 3] * (uint64_t)sp.axis[1][(a >> 2) & 3];
            uint64_t *o = acc + sp.flat[a] * m;
            if (d == 3) {
                w *= (uint64_t)sp.axis[2][a >> 4];
            }
            for (int j = 0; j < m; ++j) {
                o[j] += w * (uint64_t)v[j]; /* wraps: the ring Z_2^64 */
            }
        }
    }
    return PPIR_OK;
}

ppir_status ppir_bspline_hessian(int d, const ppir_index *fixed_size, const ppir_index *indices,
                                 ppir_index n_indices, ppir_index start, ppir_index stop,
                                 const ppir_index *control_size, const double *point_to_control,
                                 const double *control_offset, const double *gradient,
                                 double *out)
{
    ppir_walk_ walk;
    ppir_support_ sp;
    ppir_index M;
    int R = (d == 2) ? PPIR_BSPLINE_REACH * PPIR_BSPLINE_REACH
                     : PPIR_BSPLINE_REACH * PPIR_BSPLINE_REACH * PPIR_BSPLINE_REACH;
    int offset_index[PPIR_SUPPORT_MAX][PPIR_SUPPORT_MAX]; /* 16 KiB of stack */
    const ppir_status status = ppir_bspline_prepare_(
        d, fixed_size, indices, n_indices, start, stop, control_size, point_to_control,
        control_offset, gradient, out, &walk, &M);
    const int K = (d == 2) ? 16 : 64, pairs = d * (d + 1) / 2;
    if (status != PPIR_OK) {
        return status;
    }
    /* Offset of support position b from a, as an index into the 7^d neighbours
     * (a pure function of a and b; filled the same way by every call). */
    for (int a = 0; a < K; ++a) {
        for (int bb = 0; bb < K; ++bb) {
            offset_index[a][bb] = ((bb & 3) - (a & 3) + 3) +
                                         PPIR_BSPLINE_REACH * (((bb >> 2) & 3) - ((a >> 2) & 3) + 3) +
                                         PPIR_BSPLINE_REACH * PPIR_BSPLINE_REACH *
                                             ((bb >> 4) - (a >> 4) + 3) * (d == 3);
        }
    }
    for (ppir_index i = 0; i < M * R * pairs; ++i) {
        out[i] = 0.0;
    }
    for (ppir_index pos = start; pos < stop; ++pos) {
        const double *g = gradient + pos * d;
        double G[PPIR_MAX_DIM * (PPIR_MAX_DIM + 1) / 2];
        int any = 0, e = 0;
        ppir_walk_next_(&walk, pos, &sp);
        if (sp.count == 0) {
            continue;
        }
        /* g g^T is symmetric: its upper triangle, row by row (l >= k). */
        for (int k = 0; k < d; ++k) {
            any |= (g[k] != 0.0);
            for (int l = k; l < d; ++l) {
                G[e++] = g[k] * g[l];
            }
        }
        if (!any) {
            continue;
        }
        /* S^T S is symmetric: each pair of support points once (bb >= a); the block of
         * the pair the other way round is the transpose, added when assembling. */
        for (int a = 0; a < K; ++a) {
            double *row = out + sp.flat[a] * R * pairs;
            const int *offsets = offset_index[a];
            for (int bb = a; bb < K; ++bb) {
                const double w = sp.weight[a] * sp.weight[bb];
                double *block = row + offsets[bb] * pairs;
                for (int p = 0; p < pairs; ++p) {
                    block[p] += w * G[p];
                }
            }
        }
    }
    return PPIR_OK;
}
