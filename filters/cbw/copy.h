/* nbdkit-fleece: cbw filter, the copy-before-write module.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Every function here is called with eng.lock held.
 */

#ifndef NBDKIT_CBW_COPY_H
#define NBDKIT_CBW_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

/* Preserve clusters [first, end) before a writer changes them: wait
 * for other writers' copies of them, claim the NEEDED ones (COPYING),
 * copy them from below to the store with the lock dropped, then
 * publish them (SAVED) or, on failure or timeout, apply cbw-on-error.
 * Returns 0 if the write may go below, or -1 with *err set if it must
 * fail (ENOTSUP: FAST_ZERO and a copy was needed; EIO: the copy
 * failed under break-write; ENOMEM).
 */
extern int copy_before_write_locked (nbdkit_next *next, uint64_t first,
                                     uint64_t end, bool fast_zero,
                                     int *err)
  __attribute__ ((__nonnull__ (1, 5)));

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
