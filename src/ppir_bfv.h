/*
 * ppir_bfv.h - BFV's plaintext scaling in RNS form, for the he backend's fixed party.
 *
 * SEAL encrypts symmetrically at the top level of the modulus chain only; the fixed
 * party encrypts zero at a lower level (seeded) and adds its plaintext here, as SEAL's
 * encryption would: round(q m / t), ties up, i.e. floor((q m + floor((t + 1) / 2)) / t),
 * reduced modulo each of the level's primes.  Needs unsigned __int128 (GCC, Clang).
 */
#ifndef PPIR_BFV_H
#define PPIR_BFV_H

#include "ppir_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* c0[j * n + k] = (c0[j * n + k] + round(q plain[k] / t)) mod primes[j], for the n
 * coefficients plain[k] < t of a plaintext and the count primes of a level, whose product
 * q is given as q_mod_t = q mod t and delta[j] = floor(q / t) mod primes[j].  The primes
 * and t must be below 2^62 and c0's entries below their prime (SEAL's own bounds); sizes
 * >= 1 (else PPIR_BAD_SIZE).  c0 (count x n) is updated in place. */
ppir_status ppir_bfv_add_scaled(ppir_index n, ppir_index count, const uint64_t *plain,
                                uint64_t t, uint64_t q_mod_t, const uint64_t *primes,
                                const uint64_t *delta, uint64_t *c0);

#ifdef __cplusplus
}
#endif

#endif /* PPIR_BFV_H */
