/* nbdkit-fleece: bitmap-discard filter, the map of the snapshot.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * "map" tells a backup client, in plain terms, what to do with each
 * range of the current snapshot, so that it need not interpret
 * base:allocation (where "hole without zero" means "not part of this
 * backup", and a client that reads holes as zeros would restore
 * unchanged data as zeros):
 *
 *   in_scope | zero  | the client
 *   ---------+-------+-----------------------------------------------
 *   false    | false | must not read it (it fails with EINVAL): the
 *            |       | range is unchanged since the base backup, or
 *            |       | released already
 *   true     | true  | knows it reads as zeros; must still write
 *            |       | zeros over an older backup
 *   true     | false | must read and copy it
 *
 * "in_scope" comes from the scope bitmap (scope.c), "zero" from the
 * extents of cbw's "snapshot" export below, asked through the holder
 * context.  Below answers only for what is in scope; a range it calls
 * a hole without zero is reported as data (read it: at worst the read
 * fails, never a wrong zero).  Neighbouring ranges of the same kind
 * are merged; one reply has at most MAX_EXTENTS, and "next" says where
 * to continue.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "json.h"
#include "rounding.h"
#include "scope.h"
#include "map.h"

#define MAX_EXTENTS 1024
#define MAX_ASK     UINT32_C (0xfff00000) /* largest extents request */

struct map_extent {
  uint64_t offset, length;
  bool in_scope, zero;
};

/* The reply being built. */
struct map {
  struct map_extent e[MAX_EXTENTS];
  size_t n;
};

/* Append a range, merged with the last one if of the same kind.
 * Returns false when the reply is full (the range was not added).
 */
static bool
map_add (struct map *m, uint64_t offset, uint64_t length,
         bool in_scope, bool zero)
{
  struct map_extent *last = m->n ? &m->e[m->n - 1] : NULL;

  if (last && last->offset + last->length == offset &&
      last->in_scope == in_scope && last->zero == zero) {
    last->length += length;
    return true;
  }
  if (m->n == MAX_EXTENTS)
    return false;
  m->e[m->n++] = (struct map_extent) { offset, length, in_scope, zero };
  return true;
}

/* Add the in-scope range [pos, end) with the zero flags from below.
 * Sets *next and returns 0 if the reply filled up, sets *next to
 * where below stopped answering otherwise; -1 on error.
 */
static int
map_in_scope (struct map *m, nbdkit_next *holder, uint64_t pos,
              uint64_t end, uint64_t *next, char *err, size_t errlen)
{
  struct nbdkit_extents *below;
  uint32_t ask = MIN (end - pos, MAX_ASK);
  size_t i, n;
  int e = 0;

  if (holder->can_extents (holder) != 1) {
    /* Nothing is known about zeros: all of it is data. */
    *next = map_add (m, pos, ask, true, false) ? pos + ask : pos;
    return 0;
  }
  below = nbdkit_extents_new (pos, pos + ask);
  if (below == NULL) {
    snprintf (err, errlen, "out of memory");
    return -1;
  }
  if (holder->extents (holder, ask, pos, 0, below, &e) == -1) {
    snprintf (err, errlen, "reading the extents of the snapshot below "
              "failed: %s", strerror (e));
    nbdkit_extents_free (below);
    return -1;
  }
  n = nbdkit_extents_count (below);
  if (n == 0) {
    snprintf (err, errlen, "the snapshot below reported no extents at %"
              PRIu64, pos);
    nbdkit_extents_free (below);
    return -1;
  }
  *next = pos;
  for (i = 0; i < n; ++i) {
    struct nbdkit_extent x = nbdkit_get_extent (below, i);
    if (!map_add (m, x.offset, x.length, true,
                  (x.type & NBDKIT_EXTENT_ZERO) != 0))
      break;
    *next = x.offset + x.length;
  }
  nbdkit_extents_free (below);
  return 0;
}

/* Print the reply fields. */
static void
map_print (const struct map *m, uint64_t offset, uint64_t length,
           uint64_t pos, uint64_t end, FILE *fp)
{
  size_t i;
  struct json_writer w, a, e;

  json_init (&w, fp, true);
  json_member_uint (&w, "offset", offset);
  json_member_uint (&w, "length", length);
  json_key (&w, "extents");
  json_begin_array (&a, fp);
  for (i = 0; i < m->n; ++i) {
    json_element (&a);
    json_begin (&e, fp);
    json_member_uint (&e, "offset", m->e[i].offset);
    json_member_uint (&e, "length", m->e[i].length);
    json_member_bool (&e, "in_scope", m->e[i].in_scope);
    json_member_bool (&e, "zero", m->e[i].zero);
    json_end (&e);
  }
  json_end_array (&a);
  if (pos < end)
    json_member_uint (&w, "next", pos);
  else
    json_member_null (&w, "next");
}

int
map_command (uint64_t offset, bool have_length, uint64_t length,
             FILE *fp, char *err, size_t errlen)
{
  static struct map m;          /* large: control thread only */
  nbdkit_next *holder = scope_holder ();
  uint64_t size = scope_disk_size (), pos, end;

  if (holder == NULL) {
    snprintf (err, errlen, "no snapshot is active: send \"snapshot\" "
              "first");
    return -1;
  }
  if (offset > size) {
    snprintf (err, errlen, "offset=%" PRIu64 " is beyond the end of the "
              "disk (%" PRIu64 " bytes)", offset, size);
    return -1;
  }
  if (!have_length)
    length = size - offset;
  else if (length > size - offset) {
    snprintf (err, errlen, "offset=%" PRIu64 " length=%" PRIu64 " goes "
              "beyond the end of the disk (%" PRIu64 " bytes)",
              offset, length, size);
    return -1;
  }

  m.n = 0;
  pos = offset;
  end = offset + length;
  while (pos < end) {
    bool in;
    uint64_t run_end = scope_run (pos, end, &in), next;

    if (!in) {
      if (!map_add (&m, pos, run_end - pos, false, false))
        break;
      pos = run_end;
      continue;
    }
    if (map_in_scope (&m, holder, pos, run_end, &next, err, errlen) == -1)
      return -1;
    if (next == pos)            /* full */
      break;
    pos = next;
  }
  map_print (&m, offset, length, pos, end, fp);
  return 0;
}
