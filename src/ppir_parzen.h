/*
 * ppir_parzen.h - the per-sample arithmetic of ITK's Mattes mutual information
 * (MattesMutualInformationImageToImageMetricv4; ppir_itk/parzen.py has the formulas).
 *
 * B bins (count, 5 to 256) with padding P = 2 on each side of an intensity
 * range [minimum, maximum]; a value's window position is
 *   term = value / bin_size - normalized_minimum.
 * The moving window is the cubic B-spline beta3 over the 4 bins from
 *   first = clamp(floor(term), P, B - P - 1) - 1.
 * Arrays of windows are (n, 4) row-major; histograms (B, B) row-major, rows the
 * fixed bins and columns the moving bins.
 *
 * Every sum runs in the order NumPy's would (sequential, or NumPy's pairwise
 * summation where NumPy sums a whole array), so the results equal the NumPy
 * reference's (tests/test_parzen.py) to the last bit.
 */
#ifndef PPIR_PARZEN_H
#define PPIR_PARZEN_H

#include "ppir_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PPIR_PARZEN_PADDING 2

/* Every function: count outside [5, 256], n < 0 or bin_size <= 0: PPIR_BAD_SIZE. */

/*
 * The cubic windows of n moving values.  A value is inside when valid[i] is
 * non-zero and minimum <= value <= maximum (ITK skips the other samples); for
 * those: first_bin[i] = first, weights[4i + k] = beta3(first + k - term) and
 * derivatives[4i + k] = -beta3'(first + k - term) / bin_size (d weight / d
 * value).  The others get first_bin P - 1 (the minimum's window) and rows of
 * zeros.  inside[i] says which and *n_inside counts them.  With p_m(j) the
 * inside windows' weights summed in bin j (in sample order) divided by
 * *n_inside, the moving marginal, *negative_entropy = sum_j p_m(j) log p_m(j)
 * over the bins where p_m(j) > DBL_EPSILON (0 when none is).
 */
ppir_status ppir_parzen_windows(ppir_index n, const double *values, const uint8_t *valid,
                                int count, double minimum, double maximum, double bin_size,
                                double normalized_minimum, ppir_index *first_bin, double *weights,
                                double *derivatives, uint8_t *inside, ppir_index *n_inside,
                                double *negative_entropy);

/*
 * histogram (B x B) = the sums of the valid samples' window weights:
 * histogram[fixed_bin[i], first_bin[i] + k] += weights[4i + k], in sample order.
 * A valid sample's fixed bin outside [0, B) or first bin outside [0, B - 4]:
 * PPIR_BAD_INDEX.
 */
ppir_status ppir_parzen_joint_histogram(ppir_index n, int count, const ppir_index *fixed_bin,
                                        const ppir_index *first_bin, const double *weights,
                                        const uint8_t *valid, double *histogram);

/*
 * ITK's PRatio of a histogram: with p = histogram / total (*total = its sum)
 * and p_m(j) = sum_i p(i, j), ratio(i, j) = log(p(i, j) / p_m(j)) where both
 * exceed DBL_EPSILON, else 0.  A total below DBL_EPSILON leaves ratio all 0.
 */
ppir_status ppir_parzen_log_ratio(int count, const double *histogram, double *ratio,
                                  double *total);

/*
 * *out = sum x log x - sum r log r over the entries x of fractions (B x B)
 * and its row sums r, each over the entries > DBL_EPSILON.  scratch: B * B
 * doubles of work space.
 */
ppir_status ppir_parzen_entropy_difference(int count, const double *fractions, double *scratch,
                                           double *out);

/*
 * s[i] = sum_k ratio[fixed_bin[i], first_bin[i] + k] * derivatives[4i + k]
 * for each of the n samples.  A fixed bin outside [0, B) or first bin outside
 * [0, B - 4]: PPIR_BAD_INDEX.
 */
ppir_status ppir_parzen_sample_weights(ppir_index n, int count, const double *ratio,
                                       const ppir_index *fixed_bin, const ppir_index *first_bin,
                                       const double *derivatives, double *s);

#ifdef __cplusplus
}
#endif

#endif /* PPIR_PARZEN_H */
