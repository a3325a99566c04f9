/* nbdkit-fleece: parsing of size, boolean and seconds parameters.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * nbdkit_parse_size and nbdkit_parse_bool report a bad value without
 * saying which parameter it was given to.  These wrappers add a
 * second error line naming the component and the key, so that a user
 * with a long command line knows what to fix.
 */

#ifndef NBDKIT_FLEECE_PARAMS_H
#define NBDKIT_FLEECE_PARAMS_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <nbdkit-common.h>

/* Parse VALUE of parameter KEY as a size (e.g. 64K, 1M) into *RET.
 * WHO is the component's name, for the message.
 */
static inline int
param_size (const char *who, const char *key, const char *value,
            int64_t *ret)
{
  int64_t n = nbdkit_parse_size (value);

  if (n == -1) {
    nbdkit_error ("%s: %s=%s: expected a size in bytes, optionally "
                  "with a suffix (e.g. 65536, 64K, 512M)", who, key, value);
    return -1;
  }
  *ret = n;
  return 0;
}

/* Parse VALUE of parameter KEY as a boolean (true/false, yes/no,
 * on/off, 1/0) into *RET.
 */
static inline int
param_bool (const char *who, const char *key, const char *value,
            bool *ret)
{
  int r = nbdkit_parse_bool (value);

  if (r == -1) {
    nbdkit_error ("%s: %s=%s: expected true or false", who, key, value);
    return -1;
  }
  *ret = r;
  return 0;
}

/* Parse VALUE of parameter KEY as a number of seconds, a decimal
 * between 0 and 86400 (one day), into *RET.
 */
static inline int
param_seconds (const char *who, const char *key, const char *value,
               double *ret)
{
  char *end;
  double d;

  errno = 0;
  d = strtod (value, &end);
  if (errno || end == value || *end != '\0' || !(d >= 0) || d > 86400) {
    nbdkit_error ("%s: %s=%s: expected a number of seconds "
                  "between 0 and 86400 (decimals allowed)", who, key, value);
    return -1;
  }
  *ret = d;
  return 0;
}

#endif /* NBDKIT_FLEECE_PARAMS_H */
