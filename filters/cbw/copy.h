/* nbdkit-fleece: cbw filter, the copy-before-write module.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Every function here is called with eng.lock held.
 */

#ifndef NBDKIT_CBW_COPY_H
#define NBDKIT_CBW_COPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <nbdkit-filter.h>

#include "store.h"

struct copy_detached;

/* A run of clusters a writer claimed for copying. */
struct copy_run {
  uint64_t first, end;          /* clusters [first, end) */
  int err;                      /* 0, or why its copy failed */
  bool started;                 /* w is on its way (write-behind) */
  struct store_write w;
  struct copy_detached *detached; /* see copy_end_locked */
};

/* A writer's copy-before-write, from copy_begin_locked to
 * copy_end_locked.  Owned by the writer's thread.
 */
struct copy {
  struct copy_run *runs;        /* the claimed runs */
  size_t nr_runs;
  bool behind;                  /* store writes on their way */
  bool has_deadline;            /* cbw-timeout */
  struct timespec deadline;
};

/* Preserve clusters [first, end) before a writer changes them: wait
 * for other writers' copies of them, claim the NEEDED ones (COPYING),
 * and copy them from below to the store with the lock dropped.  When
 * the copy is done in full here, publish them (SAVED) or, on failure
 * or timeout, apply cbw-on-error.  Under write-behind (copy.c), the
 * old data has been read when this returns and the store writes are
 * on their way; copy_end_locked publishes.  Either way the old data
 * no longer needs the live disk when this returns 0.  Returns 0 if
 * the write may go below, or -1 with *err set if it must fail
 * (ENOTSUP: FAST_ZERO and a copy was needed; EIO: the copy failed
 * under break-write; ENOMEM).  Call copy_end_locked once the write
 * below is done, whatever it returned, unless this returned -1.
 */
extern int copy_begin_locked (nbdkit_next *next, uint64_t first,
                              uint64_t end, bool fast_zero,
                              struct copy *cl, int *err)
  __attribute__ ((__nonnull__ (1, 5, 6)));

/* Finish CL, if it was written behind (drops the lock meanwhile);
 * otherwise nothing.  Without cbw-timeout the writer does not wait
 * for its store writes: the last of them to complete publishes the
 * runs, on the store's reader thread, and until then they stay
 * COPYING.  With cbw-timeout, wait for them here (each within the
 * deadline) and publish.  A failure breaks the snapshot (only
 * break-snapshot writes behind), so the writer's request never fails.
 */
extern void copy_end_locked (struct copy *cl)
  __attribute__ ((__nonnull__ (1)));

/* Wait until no cluster in [first, end) is COPYING.  Returns true if
 * it had to wait (and so dropped the lock).
 */
extern bool copy_wait_range_locked (uint64_t first, uint64_t end);

/* Break the snapshot (WHY, a string constant, is the reason shown in
 * status): every later snapshot read fails with EIO.  Also used when
 * the store fails it (snap_store_failed) and when a PIT finds no
 * store.
 */
extern void break_snapshot_locked (const char *why)
  __attribute__ ((__nonnull__ (1)));

/* Wait until no copy is in flight. */
extern void copy_wait_all_locked (void);

#endif /* NBDKIT_CBW_COPY_H */
