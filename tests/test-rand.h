/* nbdkit-fleece: the tests' seeded pseudo-random numbers.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * xorshift64*: fast, and the same sequence for the same seed on every
 * machine, so that a failing run can be repeated with its seed.  *S
 * must not be 0.
 */

#ifndef NBDKIT_FLEECE_TEST_RAND_H
#define NBDKIT_FLEECE_TEST_RAND_H

#include <stdint.h>

static inline uint64_t
next_rand (uint64_t *s)
{
  uint64_t x = *s;

  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * UINT64_C (2685821657736338717);
}

#endif /* NBDKIT_FLEECE_TEST_RAND_H */
