/*
 * ppir_common.h - types shared by every ppir kernel.
 *
 * Conventions (see docs/kernels.md):
 *   - arrays are C-contiguous, in NumPy axis order ([z, y, x] in 3-D);
 *   - geometry is in ITK order: size[0] is the x (fastest) axis;
 *   - a grid point's flat index is i = x + size[0] * (y + size[1] * z);
 *   - matrices are d x d, row-major;
 *   - every function returns a ppir_status; outputs come last.
 *
 * Pure C99: no allocation, no globals, no Python.
 */
#ifndef PPIR_COMMON_H
#define PPIR_COMMON_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Index / size type used for sizes, flat indices and positions. */
typedef int64_t ppir_index;

typedef enum ppir_status {
    PPIR_OK = 0,            /* success */
    PPIR_BAD_DIMENSION = 1, /* d is not 2 or 3 */
    PPIR_BAD_INDEX = 2,     /* a flat index lies outside [0, prod(size)) */
    PPIR_BAD_RANGE = 3,     /* not 0 <= start <= stop <= n */
    PPIR_BAD_SIZE = 4,      /* a size is < 1, or prod(size) overflows */
    PPIR_NULL_POINTER = 5   /* a required pointer is NULL */
} ppir_status;

/* Largest supported dimension. */
#define PPIR_MAX_DIM 3

#ifdef __cplusplus
}
#endif

#endif /* PPIR_COMMON_H */
