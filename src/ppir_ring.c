/*
 * ppir_ring.c - matrix products over Z_2^64 (see ppir_ring.h).
 *
 * The dense products work on column chunks of PPIR_RING_CHUNK points, so that
 * the rows of both operands touched by one chunk stay in cache, and on 4 x 2
 * (gram) or 4-row (left) register blocks, so that each loaded word serves
 * several products.
 */
#include "ppir_ring.h"

#include <stddef.h>

#define PPIR_RING_CHUNK 256

static ppir_index ppir_min_(ppir_index a, ppir_index b) { return a < b ? a : b; }

static ppir_status ppir_window_check_(ppir_index rows, ppir_index bins, ppir_index count,
                                      ppir_index width, const void *matrix,
                                      const ppir_index *first, const uint64_t *weights,
                                      const uint64_t *out)
{
    if (matrix == NULL || first == NULL || weights == NULL || out == NULL) {
        return PPIR_NULL_POINTER;
    }
    if (rows < 1 || bins < 1 || count < 1 || width < 1) {
        return PPIR_BAD_SIZE;
    }
    if (width > bins) {
        return PPIR_BAD_INDEX;
    }
    for (ppir_index p = 0; p < count; ++p) {
        if (first[p] < 0 || first[p] > bins - width) {
            return PPIR_BAD_INDEX;
        }
    }
    return PPIR_OK;
}

ppir_status ppir_ring_gram(ppir_index rows_a, ppir_index rows_b, ppir_index count,
                           const uint64_t *a, const uint64_t *b, uint64_t *out)
{
    if (a == NULL || b == NULL || out == NULL) {
        return PPIR_NULL_POINTER;
    }
    if (rows_a < 1 || rows_b < 1 || count < 1) {
        return PPIR_BAD_SIZE;
    }
    for (ppir_index k = 0; k < rows_a * rows_b; ++k) {
        out[k] = 0;
    }
    for (ppir_index p0 = 0; p0 < count; p0 += PPIR_RING_CHUNK) {
        const ppir_index len = ppir_min_(PPIR_RING_CHUNK, count - p0);
        for (ppir_index i = 0; i < rows_a; i += 4) {
            const ppir_index ni = ppir_min_(4, rows_a - i);
            for (ppir_index j = 0; j < rows_b; j += 2) {
                const ppir_index nj = ppir_min_(2, rows_b - j);
                if (ni == 4 && nj == 2) {
                    const uint64_t *a0 = a + i * count + p0, *a1 = a0 + count;
                    const uint64_t *a2 = a1 + count, *a3 = a2 + count;
                    const uint64_t *b0 = b + j * count + p0, *b1 = b0 + count;
                    uint64_t s00 = 0, s01 = 0, s10 = 0, s11 = 0;
                    uint64_t s20 = 0, s21 = 0, s30 = 0, s31 = 0;
                    for (ppir_index p = 0; p < len; ++p) {
                        const uint64_t x0 = b0[p], x1 = b1[p];
                        s00 += a0[p] * x0;
                        s01 += a0[p] * x1;
                        s10 += a1[p] * x0;
                        s11 += a1[p] * x1;
                        s20 += a2[p] * x0;
                        s21 += a2[p] * x1;
                        s30 += a3[p] * x0;
                        s31 += a3[p] * x1;
                    }
                    uint64_t *o = out + i * rows_b + j;
                    o[0] += s00;
                    o[1] += s01;
                    o[rows_b] += s10;
                    o[rows_b + 1] += s11;
                    o[2 * rows_b] += s20;
                    o[2 * rows_b + 1] += s21;
                    o[3 * rows_b] += s30;
                    o[3 * rows_b + 1] += s31;
                    continue;
                }
                for (ppir_index ii = i; ii < i + ni; ++ii) {
                    for (ppir_index jj = j; jj < j + nj; ++jj) {
                        const uint64_t *x = a + ii * count + p0, *y = b + jj * count + p0;
                        uint64_t s = 0;
                        for (ppir_index p = 0; p < len; ++p) {
                            s += x[p] * y[p];
                        }
                        out[ii * rows_b + jj] += s;
                    }
                }
            }
        }
    }
    return PPIR_OK;
}

ppir_status ppir_ring_left(ppir_index rows, ppir_index inner, ppir_index count,
                           const uint64_t *left, const uint64_t *right, uint64_t *out)
{
    if (left == NULL || right == NULL || out == NULL) {
        return PPIR_NULL_POINTER;
    }
    if (rows < 1 || inner < 1 || count < 1) {
        return PPIR_BAD_SIZE;
    }
    for (ppir_index p0 = 0; p0 < count; p0 += PPIR_RING_CHUNK) {
        const ppir_index len = ppir_min_(PPIR_RING_CHUNK, count - p0);
        for (ppir_index i = 0; i < rows; i += 4) {
            const ppir_index ni = ppir_min_(4, rows - i);
            uint64_t *o[4];
            const uint64_t *l[4];
            for (ppir_index r = 0; r < 4; ++r) {
                /* rows past the end repeat the last one's pointers: written twice, same value */
                const ppir_index row = i + ppir_min_(r, ni - 1);
                o[r] = out + row * count + p0;
                l[r] = left + row * inner;
            }
            for (ppir_index p = 0; p < len; ++p) {
                o[0][p] = o[1][p] = o[2][p] = o[3][p] = 0;
            }
            for (ppir_index j = 0; j < inner; ++j) {
                const uint64_t *y = right + j * count + p0;
                const uint64_t w0 = l[0][j], w1 = l[1][j], w2 = l[2][j], w3 = l[3][j];
                uint64_t *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3];
                if (ni == 4) {
                    for (ppir_index p = 0; p < len; ++p) {
                        const uint64_t x = y[p];
                        o0[p] += w0 * x;
                        o1[p] += w1 * x;
                        o2[p] += w2 * x;
                        o3[p] += w3 * x;
                    }
                    continue;
                }
                for (ppir_index r = 0; r < ni; ++r) {
                    const uint64_t w = l[r][j];
                    for (ppir_index p = 0; p < len; ++p) {
                        o[r][p] += w * y[p];
                    }
                }
            }
        }
    }
    return PPIR_OK;
}

ppir_status ppir_ring_window_gram(ppir_index rows, ppir_index bins, ppir_index count,
                                  ppir_index width, const uint64_t *dense,
                                  const ppir_index *first, const uint64_t *weights,
                                  uint64_t *out)
{
    const ppir_status status =
        ppir_window_check_(rows, bins, count, width, dense, first, weights, out);
    if (status != PPIR_OK) {
        return status;
    }
    for (ppir_index i = 0; i < rows; ++i) {
        const uint64_t *x = dense + i * count;
        uint64_t *o = out + i * bins;
        for (ppir_index j = 0; j < bins; ++j) {
            o[j] = 0;
        }
        for (ppir_index p = 0; p < count; ++p) {
            const uint64_t v = x[p];
            const uint64_t *w = weights + p * width;
            uint64_t *target = o + first[p];
            for (ppir_index k = 0; k < width; ++k) {
                target[k] += v * w[k];
            }
        }
    }
    return PPIR_OK;
}

ppir_status ppir_ring_window_left(ppir_index rows, ppir_index bins, ppir_index count,
                                  ppir_index width, const uint64_t *left,
                                  const ppir_index *first, const uint64_t *weights,
                                  uint64_t *out)
{
    const ppir_status status =
        ppir_window_check_(rows, bins, count, width, left, first, weights, out);
    if (status != PPIR_OK) {
        return status;
    }
    for (ppir_index i = 0; i < rows; ++i) {
        const uint64_t *l = left + i * bins;
        uint64_t *o = out + i * count;
        for (ppir_index p = 0; p < count; ++p) {
            const uint64_t *w = weights + p * width;
            const uint64_t *source = l + first[p];
            uint64_t s = 0;
            for (ppir_index k = 0; k < width; ++k) {
                s += source[k] * w[k];
            }
            o[p] = s;
        }
    }
    return PPIR_OK;
}

ppir_status ppir_ring_column_dots(ppir_index rows, ppir_index count, const uint64_t *x,
                                  const uint64_t *y, uint64_t *out)
{
    if (x == NULL || y == NULL || out == NULL) {
        return PPIR_NULL_POINTER;
    }
    if (rows < 1 || count < 1) {
        return PPIR_BAD_SIZE;
    }
    for (ppir_index p = 0; p < count; ++p) {
        out[p] = x[p] * y[p];
    }
    for (ppir_index i = 1; i < rows; ++i) {
        const uint64_t *a = x + i * count, *b = y + i * count;
        for (ppir_index p = 0; p < count; ++p) {
            out[p] += a[p] * b[p];
        }
    }
    return PPIR_OK;
}

ppir_status ppir_ring_window_subtract(ppir_index bins, ppir_index count, ppir_index width,
                                      const ppir_index *first, const uint64_t *weights,
                                      const uint64_t *dense, uint64_t *out)
{
    const ppir_status status =
        ppir_window_check_(1, bins, count, width, dense, first, weights, out);
    if (status != PPIR_OK) {
        return status;
    }
    for (ppir_index k = 0; k < bins * count; ++k) {
        out[k] = 0u - dense[k];
    }
    for (ppir_index p = 0; p < count; ++p) {
        for (ppir_index k = 0; k < width; ++k) {
            out[(first[p] + k) * count + p] += weights[p * width + k];
        }
    }
    return PPIR_OK;
}

/* The 128-bit product of two words, as (low, high). */
static void ppir_wide_(uint64_t x, uint64_t y, uint64_t *low, uint64_t *high)
{
#ifdef __SIZEOF_INT128__
    const unsigned __int128 product = (unsigned __int128)x * y;
    *low = (uint64_t)product;
    *high = (uint64_t)(product >> 64);
#else
    const uint64_t x0 = x & 0xFFFFFFFFu, x1 = x >> 32, y0 = y & 0xFFFFFFFFu, y1 = y >> 32;
    const uint64_t low_low = x0 * y0, low_high = x0 * y1, high_low = x1 * y0;
    const uint64_t middle = (low_low >> 32) + (low_high & 0xFFFFFFFFu) + (high_low & 0xFFFFFFFFu);
    *low = (middle << 32) | (low_low & 0xFFFFFFFFu);
    *high = x1 * y1 + (low_high >> 32) + (high_low >> 32) + (middle >> 32);
#endif
}

static ppir_status ppir_ring128_check_(ppir_index n, const void *x, const void *y,
                                       const void *out)
{
    if (x == NULL || y == NULL || out == NULL) {
        return PPIR_NULL_POINTER;
    }
    return n < 0 ? PPIR_BAD_SIZE : PPIR_OK;
}

ppir_status ppir_ring128_add(ppir_index n, const uint64_t *x, const uint64_t *y, uint64_t *out)
{
    const ppir_status status = ppir_ring128_check_(n, x, y, out);
    if (status != PPIR_OK) {
        return status;
    }
    for (ppir_index i = 0; i < 2 * n; i += 2) {
        const uint64_t low = x[i] + y[i];
        out[i + 1] = x[i + 1] + y[i + 1] + (low < x[i]);
        out[i] = low;
    }
    return PPIR_OK;
}

ppir_status ppir_ring128_subtract(ppir_index n, const uint64_t *x, const uint64_t *y,
                                  uint64_t *out)
{
    const ppir_status status = ppir_ring128_check_(n, x, y, out);
    if (status != PPIR_OK) {
        return status;
    }
    for (ppir_index i = 0; i < 2 * n; i += 2) {
        const uint64_t borrow = x[i] < y[i];
        out[i] = x[i] - y[i];
        out[i + 1] = x[i + 1] - y[i + 1] - borrow;
    }
    return PPIR_OK;
}

ppir_status ppir_ring128_negate(ppir_index n, const uint64_t *x, uint64_t *out)
{
    const ppir_status status = ppir_ring128_check_(n, x, x, out);
    if (status != PPIR_OK) {
        return status;
    }
    for (ppir_index i = 0; i < 2 * n; i += 2) {
        const uint64_t low = x[i], high = x[i + 1];
        out[i] = 0u - low;
        out[i + 1] = 0u - high - (low != 0);
    }
    return PPIR_OK;
}

/* x y mod 2^128 of the element at x and y (two words each), into out. */
static void ppir_product_(const uint64_t *x, const uint64_t *y, uint64_t *out)
{
    uint64_t low, high;
    ppir_wide_(x[0], y[0], &low, &high);
    out[0] = low;
    out[1] = high + x[0] * y[1] + x[1] * y[0];
}

/* out += x (one element). */
static void ppir_accumulate_(uint64_t *out, const uint64_t *x)
{
    const uint64_t low = out[0] + x[0];
    out[1] += x[1] + (low < x[0]);
    out[0] = low;
}

ppir_status ppir_ring128_multiply(ppir_index n, const uint64_t *x, const uint64_t *y,
                                  uint64_t *out)
{
    const ppir_status status = ppir_ring128_check_(n, x, y, out);
    if (status != PPIR_OK) {
        return status;
    }
    for (ppir_index i = 0; i < 2 * n; i += 2) {
        ppir_product_(x + i, y + i, out + i);
    }
    return PPIR_OK;
}

ppir_status ppir_ring128_beaver(ppir_index n, int party, const uint64_t *e, const uint64_t *f,
                                const uint64_t *a, const uint64_t *b, const uint64_t *c,
                                uint64_t *out)
{
    const ppir_status status = ppir_ring128_check_(n, e, f, out);
    if (status != PPIR_OK) {
        return status;
    }
    if (a == NULL || b == NULL || c == NULL) {
        return PPIR_NULL_POINTER;
    }
    for (ppir_index i = 0; i < 2 * n; i += 2) {
        uint64_t term[2];
        out[i] = c[i];
        out[i + 1] = c[i + 1];
        ppir_product_(e + i, b + i, term);
        ppir_accumulate_(out + i, term);
        ppir_product_(f + i, a + i, term);
        ppir_accumulate_(out + i, term);
        if (party == 0) {
            ppir_product_(e + i, f + i, term);
            ppir_accumulate_(out + i, term);
        }
    }
    return PPIR_OK;
}

ppir_status ppir_ring128_shift_right(ppir_index n, int bits, const uint64_t *x, uint64_t *out)
{
    const ppir_status status = ppir_ring128_check_(n, x, x, out);
    if (status != PPIR_OK) {
        return status;
    }
    if (bits < 0 || bits >= 128) {
        return PPIR_BAD_SIZE;
    }
    for (ppir_index i = 0; i < 2 * n; i += 2) {
        const uint64_t low = x[i], high = x[i + 1];
        if (bits == 0) {
            out[i] = low;
            out[i + 1] = high;
        } else if (bits < 64) {
            out[i] = (low >> bits) | (high << (64 - bits));
            out[i + 1] = high >> bits;
        } else {
            out[i] = high >> (bits - 64);
            out[i + 1] = 0;
        }
    }
    return PPIR_OK;
}

ppir_status ppir_ring128_truncate(ppir_index n, int bits, int party, const uint64_t *x,
                                  uint64_t *out)
{
    ppir_status status;
    if (party == 0) {
        return ppir_ring128_shift_right(n, bits, x, out);
    }
    /* -((-x) >> bits), in place in out: each step reads an element before writing it */
    status = ppir_ring128_negate(n, x, out);
    if (status == PPIR_OK) {
        status = ppir_ring128_shift_right(n, bits, out, out);
    }
    if (status == PPIR_OK) {
        status = ppir_ring128_negate(n, out, out);
    }
    return status;
}
