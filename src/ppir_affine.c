/*
 * ppir_affine.c - Gram matrix and moments over the affine basis.
 */
#include "ppir_affine.h"

#include <stddef.h>

#include "ppir_points.inc"

/* Largest m = d * (d + 1). */
#define PPIR_GRAM_MAX (PPIR_MAX_DIM * (PPIR_MAX_DIM + 1))
/* Unordered pairs (a <= b) of d gradient components and of d + 1 basis
 * functions, at most. */
#define PPIR_GPAIRS_MAX (PPIR_MAX_DIM * (PPIR_MAX_DIM + 1) / 2)
#define PPIR_FPAIRS_MAX ((PPIR_MAX_DIM + 1) * (PPIR_MAX_DIM + 2) / 2)
/* Points buffered before their products are summed. */
#define PPIR_GRAM_BLOCK 32

/* Position of the pair (a, b), a <= b, in the row-major list of unordered
 * pairs of n items. */
static int ppir_pair_(int a, int b, int n)
{
    if (a > b) {
        const int t = a;
        a = b;
        b = t;
    }
    return a * n - a * (a - 1) / 2 + (b - a);
}

/* Checks the common arguments and sets q = fixed_origin - reference, so that
 * (phi_1..phi_d) = q + A @ idx. */
static ppir_status ppir_affine_prepare_(int d, const ppir_index *fixed_size, const double *A,
                                        const double *o_f, const double *c,
                                        const ppir_index *indices, ppir_index n_indices,
                                        ppir_index start, ppir_index stop, const double *field,
                                        const double *out, double *q)
{
    ppir_status status;
    if (d != 2 && d != 3) {
        return PPIR_BAD_DIMENSION;
    }
    if (fixed_size == NULL || A == NULL || o_f == NULL || c == NULL || field == NULL ||
        out == NULL) {
        return PPIR_NULL_POINTER;
    }
    status = ppir_check_points_(d, fixed_size, indices, n_indices, start, stop);
    if (status != PPIR_OK) {
        return status;
    }
    for (int k = 0; k < d; ++k) {
        q[k] = o_f[k] - c[k];
    }
    return PPIR_OK;
}

/* phi (D + 1 entries) of the point at position pos; advances the cursor. */
static inline void ppir_affine_phi_(const int D, ppir_cursor_ *cur, ppir_index pos,
                                    const double *A, const double *q, double *phi)
{
    if (D == 2) {
        ppir_index i0, i1;
        ppir_cursor_next2_(cur, pos, &i0, &i1);
        ppir_map2_(A, q, i0, i1, phi);
    } else {
        ppir_index i0, i1, i2;
        ppir_cursor_next3_(cur, pos, &i0, &i1, &i2);
        ppir_map3_(A, q, i0, i1, i2, phi);
    }
    phi[D] = 1.0;
}

/* S[r * NF + s] += sum over the nb buffered points of G[p][r] * F[p][s]. */
static inline void ppir_gram_flush_(const int D, int nb,
                                    const double (*restrict G)[PPIR_GPAIRS_MAX],
                                    const double (*restrict F)[PPIR_FPAIRS_MAX],
                                    double *restrict S)
{
    const int NG = D * (D + 1) / 2, NF = (D + 1) * (D + 2) / 2;
    for (int r = 0; r < NG; ++r) {
        double acc[PPIR_FPAIRS_MAX];
        for (int s = 0; s < NF; ++s) {
            acc[s] = 0.0;
        }
        for (int p = 0; p < nb; ++p) {
            const double gr = G[p][r];
            for (int s = 0; s < NF; ++s) {
                acc[s] += gr * F[p][s];
            }
        }
        for (int s = 0; s < NF; ++s) {
            S[r * NF + s] += acc[s];
        }
    }
}

/*
 * v v^T = (g g^T) kron (phi phi^T), so the Gram matrix only has
 * NG * NF distinct entries
 *   S[(k, l)][(i, j)] = sum g_k g_l phi_i phi_j,   k <= l, i <= j,
 * (6 x 10 in 3-D instead of the 78 of the upper triangle).  Points are
 * buffered in blocks so the sums run in registers.  D is a constant after
 * inlining, so every loop has a fixed trip count.
 */
static inline void ppir_gram_d_(const int D, const ppir_index *fixed_size, const double *A,
                                const double *q, const ppir_index *indices, ppir_index start,
                                ppir_index stop, const double *restrict gradient,
                                double *restrict S)
{
    const int E = D + 1;
    double G[PPIR_GRAM_BLOCK][PPIR_GPAIRS_MAX];
    double F[PPIR_GRAM_BLOCK][PPIR_FPAIRS_MAX];
    int nb = 0;
    ppir_cursor_ cur;
    ppir_cursor_init_(&cur, D, fixed_size, indices, start);
    for (int t = 0; t < PPIR_GPAIRS_MAX * PPIR_FPAIRS_MAX; ++t) {
        S[t] = 0.0;
    }
    for (ppir_index pos = start; pos < stop; ++pos) {
        const double *g = gradient + D * pos;
        double phi[PPIR_MAX_DIM + 1];
        int all_zero = 1;
        ppir_affine_phi_(D, &cur, pos, A, q, phi);
        for (int k = 0; k < D; ++k) {
            all_zero &= (g[k] == 0.0);
        }
        if (all_zero) {
            continue;
        }
        {
            int t = 0;
            for (int k = 0; k < D; ++k) {
                for (int l = k; l < D; ++l) {
                    G[nb][t++] = g[k] * g[l];
                }
            }
            t = 0;
            for (int i = 0; i < E; ++i) {
                for (int j = i; j < E; ++j) {
                    F[nb][t++] = phi[i] * phi[j];
                }
            }
        }
        if (++nb == PPIR_GRAM_BLOCK) {
            ppir_gram_flush_(D, nb, (const double (*)[PPIR_GPAIRS_MAX])G,
                             (const double (*)[PPIR_FPAIRS_MAX])F, S);
            nb = 0;
        }
    }
    if (nb > 0) {
        ppir_gram_flush_(D, nb, (const double (*)[PPIR_GPAIRS_MAX])G,
                         (const double (*)[PPIR_FPAIRS_MAX])F, S);
    }
}

ppir_status ppir_affine_gram(int d, const ppir_index *fixed_size,
                             const double *fixed_index_to_physical, const double *fixed_origin,
                             const double *reference, const ppir_index *indices,
                             ppir_index n_indices, ppir_index start, ppir_index stop,
                             const double *gradient, double *out)
{
    double q[PPIR_MAX_DIM];
    double S[PPIR_GPAIRS_MAX * PPIR_FPAIRS_MAX];
    const ppir_status status =
        ppir_affine_prepare_(d, fixed_size, fixed_index_to_physical, fixed_origin, reference,
                             indices, n_indices, start, stop, gradient, out, q);
    if (status != PPIR_OK) {
        return status;
    }
    if (d == 2) {
        ppir_gram_d_(2, fixed_size, fixed_index_to_physical, q, indices, start, stop, gradient,
                     S);
    } else {
        ppir_gram_d_(3, fixed_size, fixed_index_to_physical, q, indices, start, stop, gradient,
                     S);
    }
    {
        /* out[k * E + i][l * E + j] = S[(k, l)][(i, j)]; every entry of the
         * upper triangle is mirrored from the same sum, so out is exactly
         * symmetric. */
        const int E = d + 1, m = d * (d + 1), NF = E * (E + 1) / 2;
        for (int a = 0; a < m; ++a) {
            for (int b = a; b < m; ++b) {
                const int r = ppir_pair_(a / E, b / E, d), s = ppir_pair_(a % E, b % E, E);
                out[a * m + b] = S[r * NF + s];
                out[b * m + a] = S[r * NF + s];
            }
        }
    }
    return PPIR_OK;
}

/* out[k * (D + 1) + j] = sum field[pos, k] * w[pos] * phi_j. */
static inline void ppir_moments_d_(const int D, const ppir_index *fixed_size, const double *A,
                                   const double *q, const ppir_index *indices, ppir_index start,
                                   ppir_index stop, const double *restrict field,
                                   const double *restrict weights, double *restrict out)
{
    double acc[PPIR_GRAM_MAX];
    ppir_cursor_ cur;
    ppir_cursor_init_(&cur, D, fixed_size, indices, start);
    for (int t = 0; t < D * (D + 1); ++t) {
        acc[t] = 0.0;
    }
    for (ppir_index pos = start; pos < stop; ++pos) {
        double phi[PPIR_MAX_DIM + 1];
        double s[PPIR_MAX_DIM];
        ppir_affine_phi_(D, &cur, pos, A, q, phi);
        for (int k = 0; k < D; ++k) {
            s[k] = (weights != NULL) ? field[D * pos + k] * weights[pos] : field[D * pos + k];
        }
        for (int k = 0; k < D; ++k) {
            for (int j = 0; j <= D; ++j) {
                acc[k * (D + 1) + j] += s[k] * phi[j];
            }
        }
    }
    for (int t = 0; t < D * (D + 1); ++t) {
        out[t] = acc[t];
    }
}

ppir_status ppir_affine_moments(int d, const ppir_index *fixed_size,
                                const double *fixed_index_to_physical, const double *fixed_origin,
                                const double *reference, const ppir_index *indices,
                                ppir_index n_indices, ppir_index start, ppir_index stop,
                                const double *field, const double *weights, double *out)
{
    double q[PPIR_MAX_DIM];
    const ppir_status status =
        ppir_affine_prepare_(d, fixed_size, fixed_index_to_physical, fixed_origin, reference,
                             indices, n_indices, start, stop, field, out, q);
    if (status != PPIR_OK) {
        return status;
    }
    if (d == 2) {
        ppir_moments_d_(2, fixed_size, fixed_index_to_physical, q, indices, start, stop, field,
                        weights, out);
    } else {
        ppir_moments_d_(3, fixed_size, fixed_index_to_physical, q, indices, start, stop, field,
                        weights, out);
    }
    return PPIR_OK;
}
