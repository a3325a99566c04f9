/* nbdkit-fleece: cbw filter, the copy-before-write module.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * A writer's copy-before-write goes through three steps:
 *
 *   claim    under the lock: the NEEDED clusters it touches become
 *            COPYING, in runs of adjacent clusters;
 *   copy     without the lock: each run is read below and written to
 *            the store, within cbw-timeout if one is set;
 *   publish  under the lock: the runs that were copied become SAVED;
 *            if any failed, the cbw-on-error policy decides, here and
 *            only here: break-write makes them NEEDED again and fails
 *            the write; break-snapshot breaks the snapshot (every
 *            cluster FREE) and lets the write go on.
 *
 * A cluster is COPYING only between its claim and its publish, and
 * only the writer that claimed it moves it on, so the publish step
 * asserts what it finds.
 */

#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include "copy.h"
#include "engine.h"
#include "store.h"

/* A run of clusters claimed for copying. */
struct run {
  uint64_t first, end;          /* clusters [first, end) */
  int err;                      /* 0, or why its copy failed */
};

/* The runs a writer claimed. */
struct claim {
  struct run *runs;
  size_t nr_runs;
};

/* True if a cluster in [first, end) is COPYING. */
static bool
any_copying_locked (uint64_t first, uint64_t end)
{
  uint64_t c;

  for (c = first; c < end; ++c)
    if (bitmap_get (&eng.clusters, c) == CL_COPYING)
      return true;
  return false;
}

bool
copy_wait_range_locked (uint64_t first, uint64_t end)
{
  bool waited = false;

  while (any_copying_locked (first, end)) {
    pthread_cond_wait (&eng.copy_done, &eng.lock);
    waited = true;
  }
  return waited;
}

void
copy_wait_all_locked (void)
{
  while (eng.copies_inflight > 0)
    pthread_cond_wait (&eng.copy_done, &eng.lock);
}

/* Claim the NEEDED clusters of [first, end): they become COPYING.
 * With FAST_ZERO, fail with ENOTSUP if any is NEEDED, claiming none.
 */
static int
claim_locked (uint64_t first, uint64_t end, bool fast_zero,
              struct claim *cl, int *err)
{
  uint64_t c;

  cl->nr_runs = 0;
  /* Runs of NEEDED clusters alternate with others: at most half. */
  cl->runs = malloc ((end - first + 2) / 2 * sizeof *cl->runs);
  if (cl->runs == NULL) {
    *err = errno;
    nbdkit_error ("malloc: %m");
    return -1;
  }
  for (c = first; c < end; ++c) {
    if (bitmap_get (&eng.clusters, c) != CL_NEEDED)
      continue;
    if (fast_zero) {
      /* A copy is not fast.  Nothing claimed yet. */
      free (cl->runs);
      *err = ENOTSUP;
      return -1;
    }
    if (cl->nr_runs == 0 || cl->runs[cl->nr_runs - 1].end != c)
      cl->runs[cl->nr_runs++] = (struct run) { .first = c, .end = c + 1 };
    else
      cl->runs[cl->nr_runs - 1].end = c + 1;
    bitmap_set (&eng.clusters, c, CL_COPYING);
    eng.copies_inflight++;
    bitmap_set (&eng.stored,
                c * cbw_cluster_size >> STORE_CHUNK_SHIFT, 1);
  }
  return 0;
}

/* Copy one run of clusters from below to the store.  No lock held. */
static int
copy_run (nbdkit_next *next, uint64_t first, uint64_t end, int *err)
{
  uint64_t offset = first * cbw_cluster_size;
  uint64_t len = cluster_bytes (first, end);
  struct timespec deadline, *dl = NULL;
  /* Bound the bounce buffer: big writes copy in pieces. */
  const uint64_t piece = MAX ((uint64_t) cbw_cluster_size, 8u << 20);

  if (cbw_timeout > 0) {
    deadline = deadline_after (cbw_timeout);
    dl = &deadline;
  }

  while (len > 0) {
    uint32_t n = MIN (len, piece);
    char *buf = malloc (n);

    if (buf == NULL) {
      *err = errno;
      nbdkit_error ("malloc: %m");
      return -1;
    }
    if (next->pread (next, buf, n, offset, 0, err) == -1) {
      free (buf);
      return -1;
    }
    /* The store owns buf from here on. */
    if (store_write_owned (buf, n, offset, dl, err) == -1)
      return -1;
    if (cbw_debug_verbose)
      nbdkit_debug ("cbw: copied %" PRIu32 " bytes at %" PRIu64,
                    n, offset);
    offset += n;
    len -= n;
  }
  return 0;
}

/* Copy every claimed run.  No lock held.  Returns true if all were
 * copied; each failed run has its err set.
 */
static bool
copy_runs (nbdkit_next *next, struct claim *cl)
{
  bool ok = true;
  size_t i;

  for (i = 0; i < cl->nr_runs; ++i) {
    struct run *r = &cl->runs[i];

    r->err = 0;
    if (copy_run (next, r->first, r->end, &r->err) == -1) {
      if (r->err == 0)
        r->err = EIO;
      ok = false;
    }
  }
  return ok;
}

/* Break the snapshot: from now on every snapshot read fails with EIO.
 * All clusters go FREE so that writers stop copying.  Clusters being
 * copied stay COPYING until their copier publishes them (it makes
 * them FREE, see undo_after_break_locked).
 */
void
break_snapshot_locked (const char *why)
{
  uint64_t c;

  if (eng.broken)
    return;
  eng.broken = true;
  eng.broken_why = why;
  nbdkit_error ("cbw: snapshot %" PRIu64 " is broken (%s): every "
                "further read of the snapshot export fails with EIO "
                "until the snapshot ends", eng.generation, why);
  for (c = 0; c < eng.nr_clusters; ++c)
    if (bitmap_get (&eng.clusters, c) != CL_COPYING)
      bitmap_set (&eng.clusters, c, CL_FREE);
  eng.preserved_bytes = 0;
}

/* The cbw-on-error policy, after a copy of which at least one run
 * failed.  Returns 0 if the writer's request may proceed, or -1 with
 * *err set if it must fail.
 */
static int
apply_error_policy_locked (const struct claim *cl, int *err)
{
  int first_err = 0;
  size_t i;
  uint64_t c;

  for (i = 0; i < cl->nr_runs; ++i) {
    const struct run *r = &cl->runs[i];

    if (r->err == 0)
      continue;
    eng.cbw_failures++;
    if (first_err == 0)
      first_err = r->err;
    if (cbw_on_error == CBW_BREAK_WRITE && !eng.broken) {
      /* The PIT data is still on the live disk: keep needing it. */
      for (c = r->first; c < r->end; ++c) {
        assert (bitmap_get (&eng.clusters, c) == CL_COPYING);
        bitmap_set (&eng.clusters, c, CL_NEEDED);
      }
    }
  }
  assert (first_err != 0);

  /* The store broke the snapshot (it was lost, or is full): there is
   * nothing left to keep by failing the writer.
   */
  if (eng.broken)
    return 0;

  switch (cbw_on_error) {
  case CBW_BREAK_WRITE:
    nbdkit_error ("cbw: copy before write failed (%s): failing the "
                  "write to keep the snapshot (cbw-on-error=break-write)",
                  strerror (first_err));
    *err = EIO;
    return -1;
  case CBW_BREAK_SNAPSHOT:
    break_snapshot_locked (first_err == ETIMEDOUT ?
                           "copy before write timed out "
                           "(cbw-on-error=break-snapshot)" :
                           "copy before write failed "
                           "(cbw-on-error=break-snapshot)");
    return 0;
  }
  abort ();
}

/* After a break (ours or another writer's), our clusters still
 * COPYING go FREE: the snapshot no longer wants them.
 */
static void
undo_after_break_locked (const struct claim *cl)
{
  size_t i;
  uint64_t c;

  for (i = 0; i < cl->nr_runs; ++i)
    for (c = cl->runs[i].first; c < cl->runs[i].end; ++c)
      if (bitmap_get (&eng.clusters, c) == CL_COPYING)
        bitmap_set (&eng.clusters, c, CL_FREE);
}

/* Publish the runs that were copied (SAVED), apply the error policy
 * to those that were not, and wake whoever waits for copies.
 */
static int
publish_locked (const struct claim *cl, bool all_ok, int *err)
{
  size_t i;
  uint64_t c;
  int r = 0;

  for (i = 0; i < cl->nr_runs; ++i) {
    const struct run *run = &cl->runs[i];
    uint64_t bytes = cluster_bytes (run->first, run->end);

    eng.copies_inflight -= run->end - run->first;
    if (run->err != 0 || eng.broken)
      continue;
    for (c = run->first; c < run->end; ++c) {
      assert (bitmap_get (&eng.clusters, c) == CL_COPYING);
      bitmap_set (&eng.clusters, c, CL_SAVED);
    }
    eng.preserved_bytes += bytes;
    eng.copied_bytes += bytes;
  }
  if (!all_ok)
    r = apply_error_policy_locked (cl, err);
  if (eng.broken)
    undo_after_break_locked (cl);
  pthread_cond_broadcast (&eng.copy_done);
  return r;
}

/* Wait for other writers' copies of [first, end).  Returns false if
 * there is nothing to preserve (no snapshot, or a broken one).
 */
static bool
wait_for_other_copies_locked (uint64_t first, uint64_t end)
{
  for (;;) {
    if (eng.state != SNAP_ACTIVE || eng.broken)
      return false;
    if (!copy_wait_range_locked (first, end))
      return true;
  }
}

int
copy_before_write_locked (nbdkit_next *next, uint64_t first, uint64_t end,
                          bool fast_zero, int *err)
{
  struct claim cl;
  bool all_ok;
  int r;

  if (!wait_for_other_copies_locked (first, end))
    return 0;
  if (claim_locked (first, end, fast_zero, &cl, err) == -1)
    return -1;
  if (cl.nr_runs == 0) {
    free (cl.runs);
    return 0;
  }

  pthread_mutex_unlock (&eng.lock);
  all_ok = copy_runs (next, &cl);
  pthread_mutex_lock (&eng.lock);

  r = publish_locked (&cl, all_ok, err);
  free (cl.runs);
  return r;
}

/* The store can no longer keep the snapshot's data (see snap.h). */
void
snap_store_failed (const char *why)
{
  pthread_mutex_lock (&eng.lock);
  if (eng.state == SNAP_ACTIVE)
    break_snapshot_locked (why);
  pthread_mutex_unlock (&eng.lock);
}
