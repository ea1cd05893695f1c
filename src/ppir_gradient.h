/*
 * ppir_gradient.h - index-space gradient of one image.
 */
#ifndef PPIR_GRADIENT_H
#define PPIR_GRADIENT_H

#include "ppir_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Index-space gradient by central differences.
 *
 *   d     : dimension, 2 or 3 (else PPIR_BAD_DIMENSION)
 *   size  : d grid sizes in ITK order (size[0] is the fastest axis), each >= 1
 *   image : prod(size) samples, C-contiguous, NumPy order
 *   out   : prod(size) * d doubles, out[i * d + k] = d image / d (index axis k)
 *           at flat index i; must not overlap image
 *
 * Along axis k: (f[i+1] - f[i-1]) / 2 inside, f[1] - f[0] and
 * f[n-1] - f[n-2] at the borders, 0 when size[k] == 1.  Samples are
 * converted to double before differencing.
 */
ppir_status ppir_central_gradient_f32(int d, const ppir_index *size, const float *image,
                                      double *out);
ppir_status ppir_central_gradient_f64(int d, const ppir_index *size, const double *image,
                                      double *out);

#ifdef __cplusplus
}
#endif

#endif /* PPIR_GRADIENT_H */
