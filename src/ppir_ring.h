/*
 * ppir_ring.h - matrix products over the ring Z_2^64 (wrapping uint64), for the
 * spdz Mattes protocol's shares and the dealer's products.
 *
 * Matrices are row-major.  Every sum wraps mod 2^64, so its value does not depend
 * on the order of the terms (the blocking below is free to reorder them).
 * A "window" matrix is a rows x count matrix that is zero outside rows
 * first[p] .. first[p] + width - 1 of column p, given compactly as first
 * (count) and its nonzero entries weights (count x width, weights[p * width + k]
 * on row first[p] + k): the moving party's Parzen weights and derivatives.
 *
 * Sizes must be >= 1 (else PPIR_BAD_SIZE); a window must satisfy
 * 1 <= width <= bins and 0 <= first[p] <= bins - width (else PPIR_BAD_INDEX).
 * Outputs are overwritten and must not overlap the inputs.
 */
#ifndef PPIR_RING_H
#define PPIR_RING_H

#include "ppir_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out (rows_a x rows_b) = a b^T: out[i, j] = sum_p a[i, p] b[j, p]; a is
 * rows_a x count, b is rows_b x count. */
ppir_status ppir_ring_gram(ppir_index rows_a, ppir_index rows_b, ppir_index count,
                           const uint64_t *a, const uint64_t *b, uint64_t *out);

/* out (rows x count) = left right: out[i, p] = sum_j left[i, j] right[j, p]; left
 * is rows x inner, right is inner x count. */
ppir_status ppir_ring_left(ppir_index rows, ppir_index inner, ppir_index count,
                           const uint64_t *left, const uint64_t *right, uint64_t *out);

/* out (rows x bins) = dense W^T for the window matrix W (bins x count): out[i, j] =
 * sum_p dense[i, p] W[j, p]; dense is rows x count.  4 B n products at width 4,
 * where the dense product takes B^2 n. */
ppir_status ppir_ring_window_gram(ppir_index rows, ppir_index bins, ppir_index count,
                                  ppir_index width, const uint64_t *dense,
                                  const ppir_index *first, const uint64_t *weights,
                                  uint64_t *out);

/* out (rows x count) = left W for the window matrix W (bins x count): out[i, p] =
 * sum_k left[i, first[p] + k] weights[p, k]; left is rows x bins. */
ppir_status ppir_ring_window_left(ppir_index rows, ppir_index bins, ppir_index count,
                                  ppir_index width, const uint64_t *left,
                                  const ppir_index *first, const uint64_t *weights,
                                  uint64_t *out);

/* out (count) = the column sums of x . y (rows x count each): out[p] = sum_i x[i, p] y[i, p]. */
ppir_status ppir_ring_column_dots(ppir_index rows, ppir_index count, const uint64_t *x,
                                  const uint64_t *y, uint64_t *out);

/* out (bins x count) = W - dense for the window matrix W (bins x count). */
ppir_status ppir_ring_window_subtract(ppir_index bins, ppir_index count, ppir_index width,
                                      const ppir_index *first, const uint64_t *weights,
                                      const uint64_t *dense, uint64_t *out);

/*
 * Z_2^128, elementwise over n elements, each two words (low, high): arrays of 2 n
 * uint64, as ppir_itk.ring128 holds them.  out may not overlap the inputs.
 */
ppir_status ppir_ring128_add(ppir_index n, const uint64_t *x, const uint64_t *y, uint64_t *out);
ppir_status ppir_ring128_subtract(ppir_index n, const uint64_t *x, const uint64_t *y,
                                  uint64_t *out);
ppir_status ppir_ring128_negate(ppir_index n, const uint64_t *x, uint64_t *out);
ppir_status ppir_ring128_multiply(ppir_index n, const uint64_t *x, const uint64_t *y,
                                  uint64_t *out);
/* floor(x / 2^bits) of x read in [0, 2^128), 0 <= bits < 128 (else PPIR_BAD_SIZE). */
ppir_status ppir_ring128_shift_right(ppir_index n, int bits, const uint64_t *x, uint64_t *out);
/* SecureML's local truncation of a share by 0 <= bits < 128: party 0 shifts x right,
 * party 1 (any other value of party) computes -((-x) >> bits). */
ppir_status ppir_ring128_truncate(ppir_index n, int bits, int party, const uint64_t *x,
                                  uint64_t *out);
/* A party's share of Beaver's product from the opened e = x - a and f = y - b and its
 * shares of the triple: out = c + e b + f a, plus e f for party 0. */
ppir_status ppir_ring128_beaver(ppir_index n, int party, const uint64_t *e, const uint64_t *f,
                                const uint64_t *a, const uint64_t *b, const uint64_t *c,
                                uint64_t *out);

#ifdef __cplusplus
}
#endif

#endif /* PPIR_RING_H */
