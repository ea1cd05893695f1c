/*
 * ppir_parzen.c - the per-sample arithmetic of ITK's Mattes mutual information.
 * See ppir_parzen.h for the contract.
 */
#include "ppir_parzen.h"

#include <float.h>
#include <math.h>
#include <stddef.h>

#define MAX_BINS 256
#define PAIRWISE_BLOCK 128 /* NumPy's PW_BLOCKSIZE */

static int bad_count(int count) { return count < 2 * PPIR_PARZEN_PADDING + 1 || count > MAX_BINS; }

/* NumPy's pairwise summation of a contiguous array (its DOUBLE_pairwise_sum), so that a
 * sum over a whole array is NumPy's to the last bit. */
static double pairwise_sum(const double *a, ppir_index n)
{
    if (n == 0) {
        return 0.0; /* NumPy's sum of nothing */
    }
    if (n < 8) {
        double sum = -0.0; /* the identity of +, signed zeros included */
        for (ppir_index i = 0; i < n; i++) {
            sum += a[i];
        }
        return sum;
    }
    if (n <= PAIRWISE_BLOCK) {
        double r[8];
        ppir_index i;
        for (int j = 0; j < 8; j++) {
            r[j] = a[j];
        }
        for (i = 8; i < n - (n % 8); i += 8) {
            for (int j = 0; j < 8; j++) {
                r[j] += a[i + j];
            }
        }
        double sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) {
            sum += a[i];
        }
        return sum;
    }
    ppir_index half = n / 2;
    half -= half % 8;
    return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

/* beta3(u), as ITK's BSplineKernelFunction<3>. */
static double cubic_bspline(double u)
{
    double a = fabs(u), a2 = a * a;
    if (a < 1.0) {
        return (4.0 - 6.0 * a2 + 3.0 * a2 * a) / 6.0;
    }
    if (a < 2.0) {
        return (8.0 - 12.0 * a + 6.0 * a2 - a2 * a) / 6.0;
    }
    return 0.0;
}

/* beta3'(u), as ITK's BSplineDerivativeKernelFunction<3> (odd in u). */
static double cubic_bspline_derivative(double u)
{
    double a = fabs(u), value = 0.0;
    if (a < 1.0) {
        value = -2.0 * a + 1.5 * a * a;
    } else if (a < 2.0) {
        value = -2.0 + 2.0 * a - 0.5 * a * a;
    }
    double sign = (double)((u > 0.0) - (u < 0.0));
    return sign * value;
}

ppir_status ppir_parzen_windows(ppir_index n, const double *values, const uint8_t *valid,
                                int count, double minimum, double maximum, double bin_size,
                                double normalized_minimum, ppir_index *first_bin, double *weights,
                                double *derivatives, uint8_t *inside, ppir_index *n_inside,
                                double *negative_entropy)
{
    if (!values || !valid || !first_bin || !weights || !derivatives || !inside || !n_inside ||
        !negative_entropy) {
        return PPIR_NULL_POINTER;
    }
    if (n < 0 || bad_count(count) || !(bin_size > 0.0)) {
        return PPIR_BAD_SIZE;
    }
    const double lowest = PPIR_PARZEN_PADDING, highest = count - PPIR_PARZEN_PADDING - 1;
    const double scale = -1.0 / bin_size; /* w_k = beta3(first + k - term): dw/dv = -beta3'/b */
    ppir_index kept = 0;
    double column_sums[MAX_BINS], terms[MAX_BINS];
    for (int j = 0; j < count; j++) {
        column_sums[j] = 0.0;
    }
    for (ppir_index i = 0; i < n; i++) {
        double value = values[i];
        double *w = weights + 4 * i, *dw = derivatives + 4 * i;
        if (!valid[i] || !(value >= minimum && value <= maximum)) {
            inside[i] = 0;
            first_bin[i] = PPIR_PARZEN_PADDING - 1;
            for (int k = 0; k < 4; k++) {
                w[k] = 0.0;
                dw[k] = 0.0;
            }
            continue;
        }
        double term = value / bin_size - normalized_minimum;
        double centre = floor(term);
        centre = centre < lowest ? lowest : (centre > highest ? highest : centre);
        ppir_index first = (ppir_index)centre - 1;
        for (int k = 0; k < 4; k++) {
            double argument = ((double)first - term) + (double)k;
            w[k] = cubic_bspline(argument);
            dw[k] = cubic_bspline_derivative(argument) * scale;
            column_sums[first + k] += w[k];
        }
        inside[i] = 1;
        first_bin[i] = first;
        kept++;
    }
    *n_inside = kept;
    int used = 0;
    for (int j = 0; j < count; j++) {
        double marginal = column_sums[j] / (double)kept;
        if (marginal > DBL_EPSILON) {
            terms[used++] = marginal * log(marginal);
        }
    }
    *negative_entropy = pairwise_sum(terms, used);
    return PPIR_OK;
}

/* Whether a sample's fixed bin and window lie inside B bins. */
static int bins_inside(int count, ppir_index fixed, ppir_index first)
{
    return fixed >= 0 && fixed < count && first >= 0 && first <= count - 4;
}

ppir_status ppir_parzen_joint_histogram(ppir_index n, int count, const ppir_index *fixed_bin,
                                        const ppir_index *first_bin, const double *weights,
                                        const uint8_t *valid, double *histogram)
{
    if (!fixed_bin || !first_bin || !weights || !valid || !histogram) {
        return PPIR_NULL_POINTER;
    }
    if (n < 0 || bad_count(count)) {
        return PPIR_BAD_SIZE;
    }
    for (ppir_index c = 0; c < (ppir_index)count * count; c++) {
        histogram[c] = 0.0;
    }
    for (ppir_index i = 0; i < n; i++) {
        if (!valid[i]) {
            continue;
        }
        if (!bins_inside(count, fixed_bin[i], first_bin[i])) {
            return PPIR_BAD_INDEX;
        }
        double *row = histogram + fixed_bin[i] * count + first_bin[i];
        for (int k = 0; k < 4; k++) {
            row[k] += weights[4 * i + k];
        }
    }
    return PPIR_OK;
}

ppir_status ppir_parzen_log_ratio(int count, const double *histogram, double *ratio,
                                  double *total)
{
    if (!histogram || !ratio || !total) {
        return PPIR_NULL_POINTER;
    }
    if (bad_count(count)) {
        return PPIR_BAD_SIZE;
    }
    const ppir_index cells = (ppir_index)count * count;
    double sum = pairwise_sum(histogram, cells), marginal[MAX_BINS];
    *total = sum;
    if (sum < DBL_EPSILON) {
        for (ppir_index c = 0; c < cells; c++) {
            ratio[c] = 0.0;
        }
        return PPIR_OK;
    }
    for (int j = 0; j < count; j++) {
        marginal[j] = 0.0;
    }
    for (ppir_index c = 0; c < cells; c++) { /* p, and its column sums row after row */
        ratio[c] = histogram[c] / sum;
        marginal[c % count] += ratio[c];
    }
    for (ppir_index c = 0; c < cells; c++) {
        double p = ratio[c], column = marginal[c % count];
        ratio[c] = p > DBL_EPSILON && column > DBL_EPSILON ? log(p / column) : 0.0;
    }
    return PPIR_OK;
}

ppir_status ppir_parzen_entropy_difference(int count, const double *fractions, double *scratch,
                                           double *out)
{
    if (!fractions || !scratch || !out) {
        return PPIR_NULL_POINTER;
    }
    if (bad_count(count)) {
        return PPIR_BAD_SIZE;
    }
    ppir_index used = 0;
    for (ppir_index c = 0; c < (ppir_index)count * count; c++) {
        double x = fractions[c];
        if (x > DBL_EPSILON) {
            scratch[used++] = x * log(x);
        }
    }
    double joint = pairwise_sum(scratch, used);
    used = 0;
    for (int i = 0; i < count; i++) {
        double row = pairwise_sum(fractions + (ppir_index)i * count, count);
        if (row > DBL_EPSILON) {
            scratch[used++] = row * log(row);
        }
    }
    *out = joint - pairwise_sum(scratch, used);
    return PPIR_OK;
}

ppir_status ppir_parzen_sample_weights(ppir_index n, int count, const double *ratio,
                                       const ppir_index *fixed_bin, const ppir_index *first_bin,
                                       const double *derivatives, double *s)
{
    if (!ratio || !fixed_bin || !first_bin || !derivatives || !s) {
        return PPIR_NULL_POINTER;
    }
    if (n < 0 || bad_count(count)) {
        return PPIR_BAD_SIZE;
    }
    for (ppir_index i = 0; i < n; i++) {
        if (!bins_inside(count, fixed_bin[i], first_bin[i])) {
            return PPIR_BAD_INDEX;
        }
        const double *row = ratio + fixed_bin[i] * count + first_bin[i];
        const double *dw = derivatives + 4 * i;
        double sum = row[0] * dw[0];
        for (int k = 1; k < 4; k++) {
            sum += row[k] * dw[k];
        }
        s[i] = sum;
    }
    return PPIR_OK;
}
