/* nbdkit-fleece: test a buffer for all zeroes.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_FLEECE_ISZERO_H
#define NBDKIT_FLEECE_ISZERO_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* True if the whole buffer is zero.  Checks a short prefix byte by
 * byte, then compares the buffer with itself shifted by that prefix,
 * which memcmp does at full speed.
 */
static inline bool
is_zero (const char *buf, size_t len)
{
  const size_t prefix = 16;
  size_t i;

  for (i = 0; i < len && i < prefix; ++i)
    if (buf[i])
      return false;
  if (len <= prefix)
    return true;
  return memcmp (buf, buf + prefix, len - prefix) == 0;
}

#endif /* NBDKIT_FLEECE_ISZERO_H */
