/*
 * ppir_bfv.c - see ppir_bfv.h.
 */
#include "ppir_bfv.h"

#include <stddef.h>

#ifndef __SIZEOF_INT128__
#error "ppir_bfv.c needs a compiler with unsigned __int128 (GCC or Clang)"
#endif

ppir_status ppir_bfv_add_scaled(ppir_index n, ppir_index count, const uint64_t *plain,
                                uint64_t t, uint64_t q_mod_t, const uint64_t *primes,
                                const uint64_t *delta, uint64_t *c0)
{
    if (plain == NULL || primes == NULL || delta == NULL || c0 == NULL) {
        return PPIR_NULL_POINTER;
    }
    if (n < 1 || count < 1 || t < 2) {
        return PPIR_BAD_SIZE;
    }
    const unsigned __int128 half = (t + 1) / 2;
    for (ppir_index k = 0; k < n; ++k) {
        const uint64_t m = plain[k];
        /* q m = floor(q / t) t m + (q mod t) m: the second part's share of the rounding */
        const uint64_t fix = (uint64_t)(((unsigned __int128)q_mod_t * m + half) / t);
        for (ppir_index j = 0; j < count; ++j) {
            const uint64_t p = primes[j];
            const uint64_t scaled = (uint64_t)(((unsigned __int128)m * delta[j] + fix) % p);
            uint64_t *c = c0 + j * n + k;
            const uint64_t sum = *c + scaled; /* both below p < 2^62: no wrap */
            *c = sum >= p ? sum - p : sum;
        }
    }
    return PPIR_OK;
}
