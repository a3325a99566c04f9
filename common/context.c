/* nbdkit-fleece: open a context on the layer below by hand.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>

#include <nbdkit-filter.h>

#include "context.h"
#include "rounding.h"

/* Ask every capability; -1 if one failed. */
static int
ask_caps (nbdkit_next *next, struct context_caps *c)
{
  c->size = next->get_size (next);
  c->can_write = next->can_write (next);
  c->can_flush = next->can_flush (next);
  c->can_trim = next->can_trim (next);
  c->can_zero = next->can_zero (next);
  c->can_fast_zero = next->can_fast_zero (next);
  c->can_fua = next->can_fua (next);
  c->can_extents = next->can_extents (next);
  c->can_cache = next->can_cache (next);
  if (c->size == -1 || c->can_write == -1 || c->can_flush == -1 ||
      c->can_trim == -1 || c->can_zero == -1 || c->can_fast_zero == -1 ||
      c->can_fua == -1 || c->can_extents == -1 || c->can_cache == -1)
    return -1;
  return 0;
}

/* Ask everything once (see context.h). */
int
context_ask_all (nbdkit_next *next)
{
  struct context_caps c;

  if (ask_caps (next, &c) == -1 || next->can_multi_conn (next) == -1)
    return -1;
  return 0;
}

/* Open, prepare and ask (see context.h). */
nbdkit_next *
context_open_below (nbdkit_backend *backend, int readonly,
                    const char *exportname, const char *who,
                    struct context_caps *caps)
{
  struct context_caps c;
  nbdkit_next *next;
  char what[256];

  if (exportname[0])
    snprintf (what, sizeof what, "the export \"%s\"", exportname);
  else
    snprintf (what, sizeof what, "the disk");
  next = nbdkit_next_context_open (backend, readonly, exportname, 1);
  if (next == NULL) {
    nbdkit_error ("%s: cannot open %s below", who, what);
    return NULL;
  }
  if (next->prepare (next) == -1) {
    nbdkit_error ("%s: cannot open %s below: it failed to prepare",
                  who, what);
    nbdkit_next_context_close (next);
    return NULL;
  }
  if (ask_caps (next, &c) == -1) {
    nbdkit_error ("%s: cannot open %s below: it did not report its "
                  "size and capabilities", who, what);
    context_close_below (next);
    return NULL;
  }
  if (caps)
    *caps = c;
  return next;
}

/* Finalize and close. */
void
context_close_below (nbdkit_next *next)
{
  if (next) {
    next->finalize (next);
    nbdkit_next_context_close (next);
  }
}

/* Ask below and copy its answer (see context.h). */
int
context_extents_below (nbdkit_next *next, uint32_t count, uint64_t offset,
                       uint32_t flags, struct nbdkit_extents *extents,
                       uint64_t *end, int *err)
{
  const uint64_t limit = offset + count;
  struct nbdkit_extents *below;
  size_t i, n;

  *end = offset;
  below = nbdkit_extents_new (offset, limit);
  if (below == NULL) {
    *err = errno;
    return -1;
  }
  if (next->extents (next, count, offset, flags & ~NBDKIT_FLAG_REQ_ONE,
                     below, err) == -1) {
    nbdkit_extents_free (below);
    return -1;
  }
  n = nbdkit_extents_count (below);
  for (i = 0; i < n; ++i) {
    const struct nbdkit_extent e = nbdkit_get_extent (below, i);
    const uint64_t s = MAX (e.offset, *end);
    const uint64_t t = MIN (e.offset + e.length, limit);

    if (t <= s)
      continue;
    if (nbdkit_add_extent (extents, s, t - s, e.type) == -1) {
      *err = errno;
      nbdkit_extents_free (below);
      return -1;
    }
    *end = t;
  }
  nbdkit_extents_free (below);
  return 0;
}
