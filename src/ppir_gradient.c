/*
 * ppir_gradient.c - index-space central-difference gradient.
 *
 * The bodies live in ppir_gradient_body.inc and are instantiated below for
 * float and double images.
 */
#include "ppir_gradient.h"

#include <stddef.h>

#define PPIR_CAT_(a, b) a##b
#define PPIR_CAT(a, b) PPIR_CAT_(a, b)
#define PPIR_FN(name) PPIR_CAT(name, PPIR_SUFFIX)

/* Finite-difference stencil at index i of an axis of length n and element
 * stride `stride`: derivative = scale * (f[hi] - f[lo]) with offsets lo, hi
 * relative to the current sample.  scale == 0 flags an axis of size 1. */
typedef struct ppir_stencil_ {
    ptrdiff_t lo, hi;
    double scale;
} ppir_stencil_;

static ppir_stencil_ ppir_stencil_at_(ppir_index i, ppir_index n, ppir_index stride)
{
    ppir_stencil_ s;
    if (n == 1) {
        s.lo = 0;
        s.hi = 0;
        s.scale = 0.0;
    } else if (i == 0) {
        s.lo = 0;
        s.hi = (ptrdiff_t)stride;
        s.scale = 1.0;
    } else if (i == n - 1) {
        s.lo = -(ptrdiff_t)stride;
        s.hi = 0;
        s.scale = 1.0;
    } else {
        s.lo = -(ptrdiff_t)stride;
        s.hi = (ptrdiff_t)stride;
        s.scale = 0.5;
    }
    return s;
}

static ppir_status ppir_gradient_check_(int d, const ppir_index *size, const void *image,
                                        const double *out)
{
    if (d != 2 && d != 3) {
        return PPIR_BAD_DIMENSION;
    }
    if (size == NULL || image == NULL || out == NULL) {
        return PPIR_NULL_POINTER;
    }
    {
        ppir_index n = 1;
        for (int k = 0; k < d; ++k) {
            if (size[k] < 1 || size[k] > INT64_MAX / n) {
                return PPIR_BAD_SIZE;
            }
            n *= size[k];
        }
        if (n > INT64_MAX / d) {
            return PPIR_BAD_SIZE;
        }
    }
    return PPIR_OK;
}

#define PPIR_T float
#define PPIR_SUFFIX f32
#include "ppir_gradient_body.inc"
#undef PPIR_T
#undef PPIR_SUFFIX

#define PPIR_T double
#define PPIR_SUFFIX f64
#include "ppir_gradient_body.inc"
#undef PPIR_T
#undef PPIR_SUFFIX
