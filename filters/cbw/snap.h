/* nbdkit-fleece: cbw filter, the snapshot engine.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * All functions are thread safe: they take the engine lock
 * themselves.  None may be called with it held.
 */

#ifndef NBDKIT_CBW_SNAP_H
#define NBDKIT_CBW_SNAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "copy.h"

/* What a failed (or timed out) copy-before-write does. */
enum cbw_on_error {
  CBW_BREAK_SNAPSHOT,           /* the write proceeds, snapshot breaks */
  CBW_BREAK_WRITE,              /* the write fails, snapshot stays */
};

/* Parameters, set in .config and fixed from .get_ready on. */
extern uint32_t cbw_cluster_size;
extern double cbw_linger;       /* seconds */
extern double cbw_timeout;      /* seconds, 0 = none */
extern enum cbw_on_error cbw_on_error;

/* Allocate the cluster map for a disk of SIZE bytes and start the
 * linger thread.  Called once, after nbdkit forks.
 */
extern int snap_init (uint64_t size);

/* Stop the linger thread and free everything. */
extern void snap_free (void);

/* The writer export.  Call snap_write_begin before sending a write,
 * zero or trim of [offset, offset+count) below: it waits while a
 * snapshot is being taken, copies whatever clusters the snapshot
 * still needs to the store, and waits until no snapshot read of the
 * old data is in flight.  The store writes of the copy may still be
 * on their way (copy.c, "Write-behind").  On success, call
 * snap_write_end with the same W once the request below has
 * completed (whether or not it succeeded): it finishes the copy.  On
 * failure (-1, *err set) do not send the request and do not call
 * snap_write_end.  With FAST_ZERO, a request that needs a copy fails
 * with ENOTSUP instead.
 */
struct snap_write {
  struct copy copy;
};
extern int snap_write_begin (nbdkit_next *next, uint32_t count,
                             uint64_t offset, bool fast_zero,
                             struct snap_write *w, int *err)
  __attribute__ ((__nonnull__ (1, 5, 6)));
extern void snap_write_end (struct snap_write *w)
  __attribute__ ((__nonnull__ (1)));

/* The snapshot export: open takes the point in time if no snapshot
 * is active (or revives a lingering one); close ends it with the last
 * context, after cbw-linger.
 */
extern void snap_open (void);
extern void snap_close (void);

/* Read the point-in-time data. */
extern int snap_read (nbdkit_next *next, void *buf, uint32_t count,
                      uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 2, 5)));

/* Release the whole clusters inside [offset, offset+count). */
extern int snap_trim (uint32_t count, uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (3)));

/* Extents of the point-in-time view. */
extern int snap_extents (nbdkit_next *next, uint32_t count, uint64_t offset,
                         uint32_t flags, struct nbdkit_extents *extents,
                         int *err)
  __attribute__ ((__nonnull__ (1, 5, 6)));

/* Called by the store (store.c) when it can no longer keep the
 * current snapshot's data: the store was lost, or preserving more
 * would pass cbw-store-limit.  Breaks the active snapshot, whatever
 * cbw-on-error says, with WHY as the reason in status; writers go on.
 * No effect without an active snapshot.  Takes the engine lock.
 */
extern void snap_store_failed (const char *why)
  __attribute__ ((__nonnull__ (1)));

/* One line of JSON describing the engine, into BUF of LEN bytes. */
extern void snap_status_json (char *buf, size_t len)
  __attribute__ ((__nonnull__ (1)));

#endif /* NBDKIT_CBW_SNAP_H */
