/* nbdkit-fleece: cbw filter, the registry of snapshot reads.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * A list of the cluster ranges that snapshot reads and extents
 * requests are using right now, so that writers (and TRIM) can wait
 * until the ones that overlap them are done.  A read registers one
 * entry per piece, and only the pieces that read the live disk are
 * marked live: a writer waits for live entries only, so a read that
 * spans a saved cluster and a needed one holds writers of the needed
 * one, not of the saved one.
 *
 * Not thread safe by itself: every function is called with the
 * engine lock held, the one passed to reqlist_wait_clear.
 */

#ifndef NBDKIT_CBW_REQLIST_H
#define NBDKIT_CBW_REQLIST_H

#include <stdbool.h>
#include <stdint.h>

#include <pthread.h>

struct reqlist_waiter;

/* One registered range.  The caller owns the memory and keeps it
 * until reqlist_remove.
 */
struct read_req {
  uint64_t first, end;          /* clusters [first, end) */
  bool live;                    /* reads the live disk */
  struct read_req *next;
  struct reqlist_waiter *waiters; /* threads waiting for it to end */
};

struct reqlist {
  struct read_req *head;
};

/* Register REQ for clusters [first, end). */
extern void reqlist_add (struct reqlist *list, struct read_req *req,
                         uint64_t first, uint64_t end, bool live)
  __attribute__ ((__nonnull__ (1, 2)));

/* Unregister REQ and wake the threads waiting for it (only those). */
extern void reqlist_remove (struct reqlist *list, struct read_req *req)
  __attribute__ ((__nonnull__ (1, 2)));

/* Wait until no registered range overlaps clusters [first, end).
 * With LIVE_ONLY, only live ranges count.  LOCK is dropped while
 * waiting.
 */
extern void reqlist_wait_clear (struct reqlist *list, uint64_t first,
                                uint64_t end, bool live_only,
                                pthread_mutex_t *lock)
  __attribute__ ((__nonnull__ (1, 5)));

/* True if no range is registered. */
static inline bool
reqlist_empty (const struct reqlist *list)
{
  return list->head == NULL;
}

#endif /* NBDKIT_CBW_REQLIST_H */
