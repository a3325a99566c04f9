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
 *
 * Write-behind.  The copy step is two round trips: read the old data
 * below, write it to the store.  The writer's own write to the live
 * disk needs only the first to be done: from then on the old data is
 * in our buffer, and the store write can travel while the live disk
 * takes the new data.  So under break-snapshot (the default), once
 * the old data is read, copy_begin_locked starts the store writes and
 * returns; the writer goes below, and copy_end_locked waits for the
 * store writes and publishes.  A first write then costs a read and
 * the longer of two writes, instead of the sum of three.
 *
 * Detached publish.  Without cbw-timeout the writer does not even
 * wait for the store writes: copy_end_locked hands the runs to a
 * struct copy_detached, the store calls back as each write completes
 * (on its connection's reader thread), and the last one publishes.
 * A first write then costs a read and a write, and its store write
 * no longer holds a worker thread.  With cbw-timeout, the writer
 * waits for them as before, so that the deadline is kept; and so it
 * does while detached copies hold DETACHED_MAX bytes, so that memory
 * stays bounded however slow the store is.
 *
 * The PIT stays exact because the clusters stay COPYING until the
 * publish, and a snapshot read never reads a COPYING cluster: it
 * waits for the publish (snap.c, "Frozen reads") and then reads the
 * store.  The end of a snapshot and snap_free wait for every copy in
 * flight (copy_wait_all_locked), detached ones included.  A store
 * write that fails after the live disk changed cannot keep the data,
 * so its only possible policy is to break the snapshot: under
 * break-write the copy is done in full before the writer goes below,
 * as the policy requires.  Memory stays bounded:
 * each buffer belongs to one write in flight, and runs longer than
 * one copy piece are copied in full first.
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
#include <stdatomic.h>

#include <nbdkit-filter.h>

#include "copy.h"
#include "engine.h"
#include "store.h"

/* The largest buffer a copy reads at once: big writes copy in
 * pieces, and only runs up to this size are written behind.
 */
#define COPY_PIECE (UINT64_C (8) << 20)

/* The most memory detached copies hold (their buffers wait for the
 * store): past it, writers wait for their store writes again, so a
 * store slower than the live disk slows the writers instead of
 * filling memory.
 */
#define DETACHED_MAX (UINT64_C (16) << 20)

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
              struct copy *cl, int *err)
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
      cl->runs[cl->nr_runs++] =
        (struct copy_run) { .first = c, .end = c + 1 };
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
copy_run (nbdkit_next *next, uint64_t first, uint64_t end,
          const struct timespec *dl, int *err)
{
  uint64_t offset = first * cbw_cluster_size;
  uint64_t len = cluster_bytes (first, end);
  const uint64_t piece = MAX ((uint64_t) cbw_cluster_size, COPY_PIECE);

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

/* The copy's deadline (cbw-timeout), or NULL. */
static const struct timespec *
deadline_of (const struct copy *cl)
{
  return cl->has_deadline ? &cl->deadline : NULL;
}

/* Copy every claimed run.  No lock held.  Returns true if all were
 * copied; each failed run has its err set.
 */
static bool
copy_runs (nbdkit_next *next, struct copy *cl)
{
  bool ok = true;
  size_t i;

  for (i = 0; i < cl->nr_runs; ++i) {
    struct copy_run *r = &cl->runs[i];

    r->err = 0;
    if (copy_run (next, r->first, r->end, deadline_of (cl),
                  &r->err) == -1) {
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
apply_error_policy_locked (const struct copy *cl, int *err)
{
  int first_err = 0;
  size_t i;
  uint64_t c;

  for (i = 0; i < cl->nr_runs; ++i) {
    const struct copy_run *r = &cl->runs[i];

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
undo_after_break_locked (const struct copy *cl)
{
  size_t i;
  uint64_t c;

  for (i = 0; i < cl->nr_runs; ++i)
    for (c = cl->runs[i].first; c < cl->runs[i].end; ++c)
      if (bitmap_get (&eng.clusters, c) == CL_COPYING)
        bitmap_set (&eng.clusters, c, CL_FREE);
}

/* Count CL's runs as copied and preserved, as publish_locked does
 * for a copy that was not counted before.  Returns false if the
 * snapshot is broken (nothing counted).
 */
static bool
count_locked (const struct copy *cl)
{
  size_t i;

  if (eng.broken)
    return false;
  for (i = 0; i < cl->nr_runs; ++i) {
    uint64_t bytes = cluster_bytes (cl->runs[i].first, cl->runs[i].end);

    eng.preserved_bytes += bytes;
    eng.copied_bytes += bytes;
  }
  return true;
}

/* Publish the runs that were copied (SAVED), apply the error policy
 * to those that were not, and wake whoever waits for copies.  If
 * COUNTED, count_locked has counted CL already (a detached copy,
 * counted when its writer was done): a run that failed since is
 * taken off copied_bytes (the break resets preserved_bytes).
 */
static int
publish_locked (const struct copy *cl, bool all_ok, bool counted, int *err)
{
  size_t i;
  uint64_t c;
  int r = 0;

  for (i = 0; i < cl->nr_runs; ++i) {
    const struct copy_run *run = &cl->runs[i];
    uint64_t bytes = cluster_bytes (run->first, run->end);

    eng.copies_inflight -= run->end - run->first;
    if (run->err != 0 && counted)
      eng.copied_bytes -= MIN (eng.copied_bytes, bytes);
    if (run->err != 0 || eng.broken)
      continue;
    for (c = run->first; c < run->end; ++c) {
      assert (bitmap_get (&eng.clusters, c) == CL_COPYING);
      bitmap_set (&eng.clusters, c, CL_SAVED);
    }
    if (!counted) {
      eng.preserved_bytes += bytes;
      eng.copied_bytes += bytes;
    }
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

/* Can CL's store writes go on behind the writer (see "Write-behind")? */
static bool
can_write_behind (const struct copy *cl)
{
  size_t i;

  if (cbw_on_error != CBW_BREAK_SNAPSHOT)
    return false;
  for (i = 0; i < cl->nr_runs; ++i)
    if (cluster_bytes (cl->runs[i].first, cl->runs[i].end) > COPY_PIECE)
      return false;
  return true;
}

static bool finish_runs (struct copy *cl);

/* Read each run below and start its store write.  No lock held.
 * Returns false if a read failed: then every store write that was
 * started has been waited for, and the runs carry their errors.
 */
static bool
read_and_start_runs (nbdkit_next *next, struct copy *cl)
{
  bool ok = true;
  size_t i;

  for (i = 0; i < cl->nr_runs && ok; ++i) {
    struct copy_run *r = &cl->runs[i];
    uint64_t offset = r->first * cbw_cluster_size;
    uint32_t n = cluster_bytes (r->first, r->end);
    char *buf = malloc (n);

    if (buf == NULL) {
      r->err = errno;
      nbdkit_error ("malloc: %m");
      ok = false;
    }
    else if (next->pread (next, buf, n, offset, 0, &r->err) == -1) {
      free (buf);
      ok = false;
    }
    else {
      store_write_start (buf, n, offset, deadline_of (cl), &r->w);
      r->started = true;
    }
  }
  if (!ok)
    finish_runs (cl);
  return ok;
}

/* Wait for the store writes read_and_start_runs started.  No lock
 * held.  Returns true if all of them, and every read, succeeded.
 */
static bool
finish_runs (struct copy *cl)
{
  bool ok = true;
  size_t i;

  for (i = 0; i < cl->nr_runs; ++i) {
    struct copy_run *r = &cl->runs[i];

    if (r->started) {
      r->started = false;
      if (store_write_finish (&r->w, &r->err) == -1 && r->err == 0)
        r->err = EIO;
    }
    if (r->err != 0)
      ok = false;
  }
  return ok;
}

int
copy_begin_locked (nbdkit_next *next, uint64_t first, uint64_t end,
                   bool fast_zero, struct copy *cl, int *err)
{
  bool all_ok;
  int r;

  *cl = (struct copy) { .behind = false };
  if (!wait_for_other_copies_locked (first, end))
    return 0;
  if (claim_locked (first, end, fast_zero, cl, err) == -1)
    return -1;
  if (cl->nr_runs == 0) {
    free (cl->runs);
    cl->runs = NULL;
    return 0;
  }
  if (cbw_timeout > 0) {
    cl->deadline = deadline_after (cbw_timeout);
    cl->has_deadline = true;
  }

  cl->behind = can_write_behind (cl);
  pthread_mutex_unlock (&eng.lock);
  if (cl->behind)
    cl->behind = all_ok = read_and_start_runs (next, cl);
  else
    all_ok = copy_runs (next, cl);
  pthread_mutex_lock (&eng.lock);
  if (cl->behind)
    return 0;                   /* published by copy_end_locked */

  r = publish_locked (cl, all_ok, false, err);
  free (cl->runs);
  cl->runs = NULL;
  return r;
}

/* A write-behind copy whose writer is done: its runs, and how many
 * of their store writes are still to complete, plus one while the
 * writer hands them over.  Whoever brings it to 0 publishes.
 */
struct copy_detached {
  struct copy cl;
  atomic_size_t left;
  bool counted;                 /* count_locked counted it */
};

/* True if none of CL's runs failed. */
static bool
runs_ok (const struct copy *cl)
{
  size_t i;

  for (i = 0; i < cl->nr_runs; ++i)
    if (cl->runs[i].err != 0)
      return false;
  return true;
}

/* The bytes CL's runs hold. */
static uint64_t
copy_bytes (const struct copy *cl)
{
  uint64_t bytes = 0;
  size_t i;

  for (i = 0; i < cl->nr_runs; ++i)
    bytes += cluster_bytes (cl->runs[i].first, cl->runs[i].end);
  return bytes;
}

/* Publish a detached copy and free it. */
static void
publish_detached_locked (struct copy_detached *d)
{
  int err = 0;
  int r;

  eng.detached_bytes -= copy_bytes (&d->cl);
  /* Only break-snapshot writes behind: nobody fails here. */
  r = publish_locked (&d->cl, runs_ok (&d->cl), d->counted, &err);
  assert (r == 0);
  (void) r;
  free (d->cl.runs);
  free (d);
}

/* A detached store write completed (store.h, store_write_detach): on
 * the store's reader thread, no lock held.
 */
static void
run_stored (void *opaque, int r, int err)
{
  struct copy_run *run = opaque;
  struct copy_detached *d = run->detached;

  if (r == -1)
    run->err = err != 0 ? err : EIO;
  if (atomic_fetch_sub (&d->left, 1) == 1) {
    pthread_mutex_lock (&eng.lock);
    publish_detached_locked (d);
    pthread_mutex_unlock (&eng.lock);
  }
}

/* Hand CL's store writes over to run_stored, in D.  No lock held.
 * Returns NULL if the last of them will publish, or D for the caller
 * to publish (every write was done already).
 */
static struct copy_detached *
detach_runs (struct copy *cl, struct copy_detached *d)
{
  size_t i;

  d->cl = *cl;
  atomic_init (&d->left, d->cl.nr_runs + 1);
  for (i = 0; i < d->cl.nr_runs; ++i) {
    struct copy_run *run = &d->cl.runs[i];

    run->detached = d;
    if (run->started) {
      run->started = false;
      if (store_write_detach (&run->w, run_stored, run))
        continue;               /* run_stored counts it down */
      if (store_write_finish (&run->w, &run->err) == -1 && run->err == 0)
        run->err = EIO;
    }
    atomic_fetch_sub (&d->left, 1);
  }
  /* Our own count: after it, run_stored may publish and free d. */
  if (atomic_fetch_sub (&d->left, 1) == 1)
    return d;
  return NULL;
}

void
copy_end_locked (struct copy *cl)
{
  struct copy_detached *d;
  bool all_ok;
  int err = 0;
  int r;

  if (!cl->behind)
    return;
  /* Without a deadline to keep, and within DETACHED_MAX, the writer
   * need not wait (see "Detached publish"); otherwise it waits.
   */
  d = NULL;
  if (!cl->has_deadline &&
      eng.detached_bytes + copy_bytes (cl) <= DETACHED_MAX)
    d = malloc (sizeof *d);
  if (d) {
    eng.detached_bytes += copy_bytes (cl);
    /* Counted now, so that status is current when the write returns. */
    d->counted = count_locked (cl);
    pthread_mutex_unlock (&eng.lock);
    d = detach_runs (cl, d);
    pthread_mutex_lock (&eng.lock);
    if (d)
      publish_detached_locked (d);
    *cl = (struct copy) { .behind = false };
    return;
  }
  pthread_mutex_unlock (&eng.lock);
  all_ok = finish_runs (cl);
  pthread_mutex_lock (&eng.lock);

  /* Only break-snapshot writes behind: the writer never fails here. */
  r = publish_locked (cl, all_ok, false, &err);
  assert (r == 0);
  free (cl->runs);
  cl->runs = NULL;
  cl->behind = false;
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
