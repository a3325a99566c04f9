/* nbdkit-fleece: rounding to powers of two.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_FLEECE_ROUNDING_H
#define NBDKIT_FLEECE_ROUNDING_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>

/* True if v is a power of 2 (0 is not). */
static inline bool
is_power_of_2 (uint64_t v)
{
  return v && (v & (v - 1)) == 0;
}

/* Round i down / up to a multiple of n, which must be a power of 2. */
#define ROUND_DOWN(i, n) ({                     \
      assert (is_power_of_2 (n));               \
      (i) & ~((__typeof__ (i)) (n) - 1);        \
    })
#define ROUND_UP(i, n) ({                                       \
      assert (is_power_of_2 (n));                               \
      ((i) + (n) - 1) & ~((__typeof__ (i)) (n) - 1);            \
    })

/* True if i is a multiple of n, a power of 2. */
#define IS_ALIGNED(i, n) ({                     \
      assert (is_power_of_2 (n));               \
      ((i) & ((n) - 1)) == 0;                   \
    })

/* MIN and MAX evaluating each argument once.  The temporaries get
 * unique names so that MIN (MAX (...), ...) does not shadow.
 */
#define ROUNDING_CAT_(a, b) a##b
#define ROUNDING_CAT(a, b) ROUNDING_CAT_ (a, b)
#define MINMAX_(a, b, op, n) ({                                         \
      __typeof__ (a) ROUNDING_CAT (mma_, n) = (a);                      \
      __typeof__ (b) ROUNDING_CAT (mmb_, n) = (b);                      \
      ROUNDING_CAT (mma_, n) op ROUNDING_CAT (mmb_, n) ?                \
        ROUNDING_CAT (mma_, n) : ROUNDING_CAT (mmb_, n);                \
    })
#define MIN(a, b) MINMAX_ ((a), (b), <, __COUNTER__)
#define MAX(a, b) MINMAX_ ((a), (b), >, __COUNTER__)

#endif /* NBDKIT_FLEECE_ROUNDING_H */
