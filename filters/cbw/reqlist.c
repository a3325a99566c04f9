/* nbdkit-fleece: cbw filter, the registry of snapshot reads.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Waiting: a thread that finds an overlapping range hangs a waiter
 * (its own condition variable, on its stack) on that range and sleeps
 * on it.  reqlist_remove signals exactly the waiters of the range it
 * removes, so the end of a read wakes the writers waiting for that
 * read and nobody else.  A waiter is unlinked by the remover before
 * it is signalled, under the lock, so the range's memory is never
 * touched after reqlist_remove returns, and the waiter's memory is
 * never touched after it wakes.
 */

#include <config.h>

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pthread.h>

#include "reqlist.h"

/* A thread waiting for one range to end. */
struct reqlist_waiter {
  pthread_cond_t cond;
  bool woken;                   /* the range was removed */
  struct reqlist_waiter *next;
};

/* Register a range. */
void
reqlist_add (struct reqlist *list, struct read_req *req,
             uint64_t first, uint64_t end, bool live)
{
  req->first = first;
  req->end = end;
  req->live = live;
  req->waiters = NULL;
  req->next = list->head;
  list->head = req;
}

/* Unregister a range and wake its waiters. */
void
reqlist_remove (struct reqlist *list, struct read_req *req)
{
  struct read_req **p;
  struct reqlist_waiter *w, *next;

  for (p = &list->head; *p != req; p = &(*p)->next)
    assert (*p != NULL);
  *p = req->next;
  for (w = req->waiters; w; w = next) {
    next = w->next;
    w->woken = true;
    pthread_cond_signal (&w->cond);
  }
  req->waiters = NULL;
}

/* The first registered range that overlaps [first, end), or NULL. */
static struct read_req *
find_overlap (const struct reqlist *list, uint64_t first, uint64_t end,
              bool live_only)
{
  struct read_req *r;

  for (r = list->head; r; r = r->next)
    if ((r->live || !live_only) && r->first < end && first < r->end)
      return r;
  return NULL;
}

/* Wait until no (live) range overlaps [first, end). */
void
reqlist_wait_clear (struct reqlist *list, uint64_t first, uint64_t end,
                    bool live_only, pthread_mutex_t *lock)
{
  struct read_req *r;

  while ((r = find_overlap (list, first, end, live_only)) != NULL) {
    struct reqlist_waiter w = { .woken = false, .next = r->waiters };

    pthread_cond_init (&w.cond, NULL);
    r->waiters = &w;
    while (!w.woken)
      pthread_cond_wait (&w.cond, lock);
    pthread_cond_destroy (&w.cond);
  }
}
