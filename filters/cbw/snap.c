/* nbdkit-fleece: cbw filter, the snapshot engine.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * How a snapshot works
 * ====================
 *
 * The disk is cut into clusters of cbw-cluster-size bytes (the last
 * one may be short).  While a snapshot is active every cluster is in
 * one of four states, two bits each in 'clusters':
 *
 *   state     | the point-in-time   | writer export       | snapshot read
 *             | (PIT) data is       | (write/zero/trim)   |
 *   ----------+---------------------+---------------------+---------------
 *   FREE   00 | not wanted: never   | goes straight below | EINVAL
 *             | in scope, released  |                     |
 *             | by TRIM, or no      |                     |
 *             | snapshot at all     |                     |
 *   NEEDED 01 | on the live disk    | claims it: COPYING  | live disk,
 *             |                     |                     | frozen (*)
 *   COPYING 10| on the live disk,   | waits until it is   | live disk,
 *             | being copied        | SAVED (or NEEDED    | frozen (*)
 *             |                     | again on failure)   |
 *   SAVED  11 | in the fleece store | goes below after    | store
 *             |                     | frozen reads (*)    |
 *
 * Transitions: taking the PIT sets every cluster NEEDED.  A writer
 * claims the NEEDED clusters it touches (NEEDED -> COPYING), copies
 * them without the lock (read below, write to the store), and then
 * marks them SAVED.  A TRIM on the snapshot export makes any cluster
 * FREE, dropping a SAVED copy from the store; it waits for COPYING
 * clusters first, so a copy never lands on a released cluster.  The
 * end of the snapshot makes every cluster FREE.
 *
 * (*) Frozen reads.  A snapshot read of live-disk data must not see a
 * writer's new data.  Every snapshot read and extents request is
 * registered in 'reads' (a list of cluster ranges) for as long as it
 * runs.  A writer, after its copy-before-write, waits until no
 * registered read that uses the live disk overlaps its clusters.  No
 * new such read can start there meanwhile, because the writer's
 * clusters are no longer NEEDED or COPYING: new reads go to the store.
 * So the writer reaches the live disk only after every read of the
 * old data there is done.  This wait is needed even when the writer
 * did not copy anything itself: another writer may have just saved the
 * cluster while a live read of it is still running.
 *
 * Taking the PIT: writes are held at snap_write_begin ('hold_writes')
 * and those in flight below drain ('writes_inflight' drops to 0); then
 * the clusters are set NEEDED and writes resume.  Each write is either
 * wholly before the PIT (it completed before) or wholly after (it went
 * through the copy-before-write).  The drain drops the lock, so
 * 'taking_pit' makes other openers wait for this PIT and share it.
 *
 * Ending: the state goes ENDING (writers stop claiming clusters), the
 * copies in flight finish, every cluster goes FREE, the store is
 * wiped, and only then can a new PIT be taken.
 *
 * Error policy: a copy that fails or misses its deadline is handled in
 * one place, copy_failed_locked().
 *
 * Locking: one mutex, 'lock', guards everything below it, and one
 * condition variable, 'cond', is broadcast whenever anything that
 * someone may wait for changes (a copy ends, a read ends, writes
 * drain, the state changes).  I/O is never done with the lock held:
 * we claim under the lock, do the I/O unlocked, and publish the
 * result under the lock.
 */

#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/types.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "cleanup.h"
#include "rounding.h"
#include "snap.h"
#include "store.h"

/* Parameters (see snap.h). */
uint32_t cbw_cluster_size = 65536;
double cbw_linger = 0;
double cbw_timeout = 0;
enum cbw_on_error cbw_on_error = CBW_BREAK_SNAPSHOT;

/* -D cbw.verbose=1: log every copy-before-write and release. */
NBDKIT_DLL_PUBLIC int cbw_debug_verbose = 0;

/* Cluster states: see the table above. */
enum { CL_FREE = 0, CL_NEEDED = 1, CL_COPYING = 2, CL_SAVED = 3 };

/* Snapshot states. */
enum snap_state {
  SNAP_NONE,                    /* no snapshot */
  SNAP_ACTIVE,                  /* PIT taken, contexts open or lingering */
  SNAP_ENDING,                  /* being torn down */
};

/* A registered snapshot read or extents request, in clusters. */
struct read_req {
  uint64_t first, end;          /* clusters [first, end) */
  bool live;                    /* reads (part of it) from the live disk */
  struct read_req *next;
};

/* Initialized in snap_init and never changed. */
static uint64_t disk_size;
static uint64_t nr_clusters;

/* The lock and the condition variable, see the top of the file. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;

/* --- Everything below is protected by lock. --- */

static struct bitmap clusters;    /* 2 bits a cluster, CL_* */
static enum snap_state state = SNAP_NONE;
static uint64_t generation;       /* PITs taken so far */
static unsigned contexts;         /* snapshot contexts open */
static bool lingering;            /* no contexts, waiting for linger */
static struct timespec linger_deadline; /* CLOCK_MONOTONIC */
static bool stop_linger_thread;

/* The snapshot is broken: every read fails with EIO until it ends.
 * Set once by copy_failed_locked or snap_store_failed, reported once,
 * with the reason in broken_why (a string constant).
 */
static bool broken;
static const char *broken_why;

static bool taking_pit;           /* take_pit_locked is draining writes */
static unsigned hold_writes;      /* >0: snap_write_begin waits */
static uint64_t writes_inflight;  /* writes between begin and end */
static uint64_t copies_inflight;  /* clusters in state COPYING */
static struct read_req *reads;    /* registered snapshot reads */

/* Statistics of the current (or last) snapshot, in bytes. */
static uint64_t preserved_bytes;  /* now SAVED */
static uint64_t copied_bytes;     /* ever copied to the store */
static uint64_t released_bytes;   /* made FREE by TRIM */
static uint64_t cbw_failures;     /* failed copy-before-writes */

/* --- End of lock-protected data. --- */

static pthread_t linger_thread;
static bool linger_thread_started;

/* Bytes in clusters [first, end), the last cluster being short. */
static uint64_t
cluster_bytes (uint64_t first, uint64_t end)
{
  uint64_t start = first * cbw_cluster_size;
  uint64_t stop = MIN (end * cbw_cluster_size, disk_size);

  return stop > start ? stop - start : 0;
}

/* *TS = now + SECONDS, on CLOCK_MONOTONIC. */
static void
deadline_after (double seconds, struct timespec *ts)
{
  clock_gettime (CLOCK_MONOTONIC, ts);
  ts->tv_sec += (time_t) seconds;
  ts->tv_nsec += (long) ((seconds - (time_t) seconds) * 1e9);
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

/* Clusters touched by [offset, offset+count): [*first, *end). */
static void
clusters_touched (uint64_t offset, uint32_t count,
                  uint64_t *first, uint64_t *end)
{
  if (count == 0) {
    *first = *end = 0;
    return;
  }
  *first = offset / cbw_cluster_size;
  *end = (offset + count - 1) / cbw_cluster_size + 1;
  assert (*end <= nr_clusters);
}

/* True if a registered read overlaps clusters [first, end).  With
 * LIVE_ONLY, only reads that use the live disk count.
 */
static bool
reads_overlap_locked (uint64_t first, uint64_t end, bool live_only)
{
  const struct read_req *r;

  for (r = reads; r; r = r->next)
    if ((r->live || !live_only) && r->first < end && first < r->end)
      return true;
  return false;
}

static void
register_read_locked (struct read_req *req)
{
  req->next = reads;
  reads = req;
}

static void
unregister_read (struct read_req *req)
{
  struct read_req **p;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (p = &reads; *p != req; p = &(*p)->next)
    assert (*p != NULL);
  *p = req->next;
  pthread_cond_broadcast (&cond);
}

static const char *
state_name_locked (void)
{
  switch (state) {
  case SNAP_NONE: return "none";
  case SNAP_ACTIVE: return lingering ? "lingering" : "active";
  case SNAP_ENDING: return "ending";
  }
  abort ();
}

/* Break the snapshot: from now on every snapshot read fails with EIO.
 * All clusters go FREE so that writers stop copying.  Clusters being
 * copied stay COPYING until their copy ends (see copy_end_locked).
 */
static void
break_snapshot_locked (const char *why)
{
  uint64_t c;

  if (broken)
    return;
  broken = true;
  broken_why = why;
  nbdkit_error ("cbw: snapshot %" PRIu64 " is broken (%s): every "
                "further read of the snapshot export fails with EIO "
                "until the snapshot ends", generation, why);
  for (c = 0; c < nr_clusters; ++c)
    if (bitmap_get (&clusters, c) != CL_COPYING)
      bitmap_set (&clusters, c, CL_FREE);
  preserved_bytes = 0;
}

/* A run of clusters claimed for copying. */
struct run {
  uint64_t first, end;          /* clusters [first, end) */
  int err;                      /* 0, or why its copy failed */
};

/* The one place where the cbw-on-error policy is applied.  Called
 * with the lock held, after a copy of RUNS, of which at least one
 * failed.  Returns 0 if the writer's request may proceed, or -1 with
 * *err set if it must fail.
 */
static int
copy_failed_locked (const struct run *runs, size_t nr_runs, int *err)
{
  size_t i;
  uint64_t c;
  int first_err = 0;

  for (i = 0; i < nr_runs; ++i) {
    if (runs[i].err == 0)
      continue;
    cbw_failures++;
    if (first_err == 0)
      first_err = runs[i].err;
    if (cbw_on_error == CBW_BREAK_WRITE && !broken) {
      /* The PIT data is still on the live disk: keep needing it. */
      for (c = runs[i].first; c < runs[i].end; ++c) {
        assert (bitmap_get (&clusters, c) == CL_COPYING);
        bitmap_set (&clusters, c, CL_NEEDED);
      }
    }
  }
  assert (first_err != 0);

  /* The store broke the snapshot (it was lost, or is full): there is
   * nothing left to keep by failing the writer.
   */
  if (broken)
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
    deadline_after (cbw_timeout, &deadline);
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

int
snap_write_begin (nbdkit_next *next, uint32_t count, uint64_t offset,
                  bool fast_zero, int *err)
{
  uint64_t first, end, c;
  struct run *runs = NULL;
  size_t nr_runs = 0, i;
  bool failed = false;
  int r;

  clusters_touched (offset, count, &first, &end);
  /* Runs of NEEDED clusters alternate with others: at most half. */
  runs = malloc ((end - first + 2) / 2 * sizeof *runs);
  if (runs == NULL) {
    *err = errno;
    nbdkit_error ("malloc: %m");
    return -1;
  }

  /* Claim the clusters that need copying. */
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    bool waited;

    while (hold_writes > 0)
      pthread_cond_wait (&cond, &lock);
    writes_inflight++;

    do {
      waited = false;
      if (state != SNAP_ACTIVE || broken) {
        free (runs);
        return 0;               /* nothing to preserve */
      }
      for (c = first; c < end; ++c) {
        if (bitmap_get (&clusters, c) == CL_COPYING) {
          /* Another writer is copying it: wait, then look again. */
          pthread_cond_wait (&cond, &lock);
          waited = true;
          break;
        }
      }
    } while (waited);

    for (c = first; c < end; ++c) {
      if (bitmap_get (&clusters, c) != CL_NEEDED)
        continue;
      if (fast_zero) {
        /* A copy is not fast.  Nothing claimed yet. */
        writes_inflight--;
        pthread_cond_broadcast (&cond);
        free (runs);
        *err = ENOTSUP;
        return -1;
      }
      if (nr_runs == 0 || runs[nr_runs - 1].end != c)
        runs[nr_runs++] = (struct run) { .first = c, .end = c + 1 };
      else
        runs[nr_runs - 1].end = c + 1;
      bitmap_set (&clusters, c, CL_COPYING);
      copies_inflight++;
    }
  }

  /* Copy, without the lock. */
  for (i = 0; i < nr_runs; ++i) {
    if (copy_run (next, runs[i].first, runs[i].end, &runs[i].err) == -1) {
      if (runs[i].err == 0)
        runs[i].err = EIO;
      failed = true;
    }
  }

  /* Publish, apply the error policy, wait for frozen reads. */
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

    for (i = 0; i < nr_runs; ++i) {
      copies_inflight -= runs[i].end - runs[i].first;
      if (runs[i].err != 0 || broken)
        continue;
      for (c = runs[i].first; c < runs[i].end; ++c) {
        assert (bitmap_get (&clusters, c) == CL_COPYING);
        bitmap_set (&clusters, c, CL_SAVED);
      }
      preserved_bytes += cluster_bytes (runs[i].first, runs[i].end);
      copied_bytes += cluster_bytes (runs[i].first, runs[i].end);
    }
    r = 0;
    if (failed)
      r = copy_failed_locked (runs, nr_runs, err);
    if (broken) {
      /* Clusters of ours still COPYING after a break go FREE. */
      for (i = 0; i < nr_runs; ++i)
        for (c = runs[i].first; c < runs[i].end; ++c)
          if (bitmap_get (&clusters, c) == CL_COPYING)
            bitmap_set (&clusters, c, CL_FREE);
    }
    if (nr_runs > 0)
      pthread_cond_broadcast (&cond);
    free (runs);

    if (r == -1) {
      writes_inflight--;
      pthread_cond_broadcast (&cond);
      return -1;
    }

    /* Frozen reads: let every read of the old data finish. */
    while (reads_overlap_locked (first, end, true))
      pthread_cond_wait (&cond, &lock);
  }
  return 0;
}

void
snap_write_end (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  assert (writes_inflight > 0);
  writes_inflight--;
  if (writes_inflight == 0 && hold_writes > 0)
    pthread_cond_broadcast (&cond);
}

/* Take the point in time.  Called with the lock held, state NONE. */
static void
take_pit_locked (void)
{
  bool store_ok;

  assert (state == SNAP_NONE && !taking_pit);

  /* The wait below drops the lock: 'taking_pit' keeps other openers
   * in snap_open from taking a second PIT meanwhile.
   */
  taking_pit = true;

  /* A store lost since the last snapshot is replaced now, before
   * writes are held (it may take a while).  Nothing uses the store.
   */
  pthread_mutex_unlock (&lock);
  store_ok = store_prepare () == 0;
  pthread_mutex_lock (&lock);

  hold_writes++;
  while (writes_inflight > 0)
    pthread_cond_wait (&cond, &lock);

  bitmap_fill (&clusters, CL_NEEDED);
  state = SNAP_ACTIVE;
  generation++;
  broken = false;
  broken_why = NULL;
  preserved_bytes = copied_bytes = released_bytes = cbw_failures = 0;
  if (!store_ok)
    break_snapshot_locked ("no fleece store: it was lost and a fresh "
                           "one could not be made");

  hold_writes--;
  taking_pit = false;
  pthread_cond_broadcast (&cond);
  nbdkit_debug ("cbw: snapshot %" PRIu64 " taken", generation);
}

/* End the snapshot.  Called with the lock held, state ACTIVE and no
 * contexts; drops the lock while the store is wiped.
 */
static void
end_snapshot_locked (void)
{
  int err = 0;

  assert (state == SNAP_ACTIVE && contexts == 0);
  state = SNAP_ENDING;
  lingering = false;
  pthread_cond_broadcast (&cond);

  /* Writers no longer claim clusters; let the running copies end. */
  while (copies_inflight > 0)
    pthread_cond_wait (&cond, &lock);
  assert (reads == NULL);
  bitmap_fill (&clusters, CL_FREE);
  nbdkit_debug ("cbw: snapshot %" PRIu64 " ended: %" PRIu64 " bytes "
                "copied, %" PRIu64 " released, %" PRIu64 " failures%s",
                generation, copied_bytes, released_bytes, cbw_failures,
                broken ? ", broken" : "");
  preserved_bytes = 0;

  pthread_mutex_unlock (&lock);
  if (store_wipe (&err) == -1)
    nbdkit_error ("cbw: emptying the fleece store failed (%s); its "
                  "space is freed at exit", strerror (err));
  pthread_mutex_lock (&lock);

  state = SNAP_NONE;
  pthread_cond_broadcast (&cond);
}

void
snap_open (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  /* Wait for a snapshot that is ending, or for another opener that is
   * taking the PIT: every context opened from here on shares it.
   */
  while (state == SNAP_ENDING || taking_pit)
    pthread_cond_wait (&cond, &lock);
  if (state == SNAP_NONE)
    take_pit_locked ();
  else if (lingering) {
    nbdkit_debug ("cbw: snapshot %" PRIu64 " reused within its linger",
                  generation);
    lingering = false;
  }
  contexts++;
}

void
snap_close (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  assert (contexts > 0 && state == SNAP_ACTIVE);
  if (--contexts > 0)
    return;
  if (cbw_linger > 0) {
    deadline_after (cbw_linger, &linger_deadline);
    lingering = true;
    pthread_cond_broadcast (&cond); /* wake the linger thread */
  }
  else
    end_snapshot_locked ();
}

/* The linger thread ends a lingering snapshot at its deadline. */
static void *
linger_main (void *arg)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  while (!stop_linger_thread) {
    if (state == SNAP_ACTIVE && lingering && contexts == 0) {
      if (pthread_cond_clockwait (&cond, &lock, CLOCK_MONOTONIC,
                                  &linger_deadline) == ETIMEDOUT &&
          state == SNAP_ACTIVE && lingering && contexts == 0) {
        nbdkit_debug ("cbw: linger of snapshot %" PRIu64 " expired",
                      generation);
        end_snapshot_locked ();
      }
    }
    else
      pthread_cond_wait (&cond, &lock);
  }
  return NULL;
}

int
snap_init (uint64_t size)
{
  int r;

  disk_size = size;
  nr_clusters = (size + cbw_cluster_size - 1) / cbw_cluster_size;
  if (bitmap_init (&clusters, 2, nr_clusters) == -1) {
    nbdkit_error ("cbw: cannot allocate the cluster map: %m");
    return -1;
  }
  r = pthread_create (&linger_thread, NULL, linger_main, NULL);
  if (r != 0) {
    errno = r;
    nbdkit_error ("cbw: pthread_create: %m");
    return -1;
  }
  linger_thread_started = true;
  return 0;
}

void
snap_free (void)
{
  if (linger_thread_started) {
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
      stop_linger_thread = true;
      pthread_cond_broadcast (&cond);
    }
    pthread_join (linger_thread, NULL);
    linger_thread_started = false;
  }
  bitmap_free (&clusters);
}

/* Where a range of the snapshot comes from. */
enum source { SRC_NONE, SRC_LIVE, SRC_STORE };

struct piece {
  uint64_t offset, len;         /* bytes */
  enum source src;
};

/* Under the lock: split [offset, offset+count) into pieces by source.
 * Returns the number of pieces, or -1 with *err set (EINVAL if a
 * cluster is FREE and ALLOW_FREE is false).  *ANY_LIVE tells whether a
 * piece reads the live disk.
 */
static ssize_t
plan_locked (uint32_t count, uint64_t offset, bool allow_free,
             struct piece **pieces, bool *any_live, int *err)
{
  uint64_t first, end, c;
  size_t n = 0;
  struct piece *p;

  *any_live = false;
  clusters_touched (offset, count, &first, &end);
  p = malloc ((end - first + 1) * sizeof *p);
  if (p == NULL) {
    *err = errno;
    nbdkit_error ("malloc: %m");
    return -1;
  }
  for (c = first; c < end; ++c) {
    unsigned st = bitmap_get (&clusters, c);
    enum source src;
    uint64_t lo = MAX (offset, c * cbw_cluster_size);
    uint64_t hi = MIN (offset + count, (c + 1) * cbw_cluster_size);

    switch (st) {
    case CL_FREE:
      if (!allow_free) {
        free (p);
        *err = EINVAL;
        return -1;
      }
      src = SRC_NONE;
      break;
    case CL_NEEDED:
    case CL_COPYING:
      src = SRC_LIVE;
      *any_live = true;
      break;
    case CL_SAVED:
      src = SRC_STORE;
      break;
    default:
      abort ();
    }
    if (n > 0 && p[n - 1].src == src)
      p[n - 1].len += hi - lo;
    else
      p[n++] = (struct piece) { .offset = lo, .len = hi - lo, .src = src };
  }
  *pieces = p;
  return n;
}

int
snap_read (nbdkit_next *next, void *buf, uint32_t count, uint64_t offset,
           int *err)
{
  CLEANUP_FREE struct piece *pieces = NULL;
  struct read_req req;
  ssize_t n, i;
  bool any_live;
  int r = 0;

  if (count == 0)
    return 0;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

    assert (state == SNAP_ACTIVE);
    if (broken) {
      nbdkit_error ("cbw: read of broken snapshot %" PRIu64, generation);
      *err = EIO;
      return -1;
    }
    n = plan_locked (count, offset, false, &pieces, &any_live, err);
    if (n == -1) {
      if (*err == EINVAL)
        nbdkit_debug ("cbw: snapshot read at %" PRIu64 " of %" PRIu32
                      " bytes touches a released cluster",
                      offset, count);
      return -1;
    }
    clusters_touched (offset, count, &req.first, &req.end);
    req.live = any_live;
    register_read_locked (&req);
  }

  for (i = 0; i < n && r == 0; ++i) {
    char *p = (char *) buf + (pieces[i].offset - offset);

    if (pieces[i].src == SRC_STORE)
      r = store_read (p, pieces[i].len, pieces[i].offset, err);
    else
      r = next->pread (next, p, pieces[i].len, pieces[i].offset, 0, err);
  }

  unregister_read (&req);
  return r;
}

int
snap_trim (uint32_t count, uint64_t offset, int *err)
{
  uint64_t first, end, c, run_first = 0;
  struct run *saved = NULL;
  size_t nr_saved = 0, i;
  bool in_run = false;

  /* Only whole clusters are released; the short last cluster of the
   * disk is whole when the range reaches the end of the disk.
   */
  first = ROUND_UP (offset, (uint64_t) cbw_cluster_size) / cbw_cluster_size;
  end = offset + count >= disk_size ?
    nr_clusters : (offset + count) / cbw_cluster_size;
  if (first >= end)
    return 0;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    bool waited;

    assert (state == SNAP_ACTIVE);
    /* Copies and reads in flight here must end first. */
    do {
      waited = false;
      if (reads_overlap_locked (first, end, false))
        waited = true;
      else
        for (c = first; c < end; ++c)
          if (bitmap_get (&clusters, c) == CL_COPYING) {
            waited = true;
            break;
          }
      if (waited)
        pthread_cond_wait (&cond, &lock);
    } while (waited);

    saved = malloc ((end - first + 1) / 2 * sizeof *saved + sizeof *saved);
    if (saved == NULL) {
      *err = errno;
      nbdkit_error ("malloc: %m");
      return -1;
    }
    for (c = first; c < end; ++c) {
      unsigned st = bitmap_get (&clusters, c);

      if (st == CL_SAVED) {
        if (!in_run)
          run_first = c;
        in_run = true;
      }
      else if (in_run) {
        saved[nr_saved++] = (struct run) { .first = run_first, .end = c };
        in_run = false;
      }
      if (st != CL_FREE) {
        released_bytes += cluster_bytes (c, c + 1);
        if (st == CL_SAVED)
          preserved_bytes -= cluster_bytes (c, c + 1);
        bitmap_set (&clusters, c, CL_FREE);
      }
    }
    if (in_run)
      saved[nr_saved++] = (struct run) { .first = run_first, .end = end };
  }

  if (cbw_debug_verbose)
    nbdkit_debug ("cbw: released clusters %" PRIu64 "-%" PRIu64,
                  first, end - 1);

  /* The clusters are released whatever happens here: a failure to
   * free their space in the store is logged, not returned.
   */
  for (i = 0; i < nr_saved; ++i) {
    int e = 0;

    if (store_trim (cluster_bytes (saved[i].first, saved[i].end),
                    saved[i].first * cbw_cluster_size, &e) == -1)
      nbdkit_debug ("cbw: could not free released clusters in the "
                    "store: %s", strerror (e));
  }
  free (saved);
  return 0;
}

/* Copy the extents of a sub-range, as found below, into EXTENTS.
 * Returns the number of bytes covered (possibly fewer than LEN), or -1.
 */
static int64_t
copy_extents (nbdkit_next *next, bool from_store, uint64_t offset,
              uint64_t len, struct nbdkit_extents *extents, int *err)
{
  struct nbdkit_extents *tmp;
  size_t i, n;
  uint64_t covered = 0;
  int r;

  tmp = nbdkit_extents_new (offset, offset + len);
  if (tmp == NULL) {
    *err = errno;
    return -1;
  }
  if (from_store)
    r = store_extents (len, offset, tmp, err);
  else
    r = next->extents (next, len, offset, 0, tmp, err);
  if (r == -1) {
    nbdkit_extents_free (tmp);
    return -1;
  }
  n = nbdkit_extents_count (tmp);
  for (i = 0; i < n; ++i) {
    struct nbdkit_extent e = nbdkit_get_extent (tmp, i);
    uint64_t lo = MAX (e.offset, offset);
    uint64_t hi = MIN (e.offset + e.length, offset + len);

    if (hi <= lo)
      continue;
    if (nbdkit_add_extent (extents, lo, hi - lo, e.type) == -1) {
      *err = errno;
      nbdkit_extents_free (tmp);
      return -1;
    }
    covered = hi - offset;
  }
  nbdkit_extents_free (tmp);
  return covered;
}

int
snap_extents (nbdkit_next *next, uint32_t count, uint64_t offset,
              uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  CLEANUP_FREE struct piece *pieces = NULL;
  struct read_req req;
  ssize_t n, i;
  bool any_live;
  int r = 0;

  if (count == 0)
    return 0;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

    assert (state == SNAP_ACTIVE);
    if (broken) {
      nbdkit_error ("cbw: extents of broken snapshot %" PRIu64,
                    generation);
      *err = EIO;
      return -1;
    }
    n = plan_locked (count, offset, true, &pieces, &any_live, err);
    if (n == -1)
      return -1;
    clusters_touched (offset, count, &req.first, &req.end);
    req.live = any_live;
    register_read_locked (&req);
  }

  for (i = 0; i < n; ++i) {
    int64_t covered;

    if (pieces[i].src == SRC_NONE) {
      /* Not part of the snapshot: a hole that does not read as zero. */
      if (nbdkit_add_extent (extents, pieces[i].offset, pieces[i].len,
                             NBDKIT_EXTENT_HOLE) == -1) {
        *err = errno;
        r = -1;
        break;
      }
      covered = pieces[i].len;
    }
    else {
      covered = copy_extents (next, pieces[i].src == SRC_STORE,
                              pieces[i].offset, pieces[i].len,
                              extents, err);
      if (covered == -1) {
        r = -1;
        break;
      }
    }
    /* A short answer, or one extent wanted: that is enough. */
    if ((uint64_t) covered < pieces[i].len || (flags & NBDKIT_FLAG_REQ_ONE))
      break;
  }

  unregister_read (&req);
  return r;
}

void
snap_store_failed (const char *why)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (state == SNAP_ACTIVE)
    break_snapshot_locked (why);
}

void
snap_status_json (char *buf, size_t len)
{
  char ram[1024];
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  store_status_json (ram, sizeof ram);
  snprintf (buf, len,
            "{\"state\":\"%s\",\"generation\":%" PRIu64 ","
            "\"cluster_size\":%" PRIu32 ",\"disk_size\":%" PRIu64 ","
            "\"preserved_bytes\":%" PRIu64 ",\"copied_bytes\":%" PRIu64 ","
            "\"released_bytes\":%" PRIu64 ",\"cbw_failures\":%" PRIu64 ","
            "\"broken\":%s,\"broken_reason\":%s%s%s,"
            "\"snapshot_contexts\":%u,"
            "\"store_allocated_bytes\":%" PRIi64 ",%s}",
            state_name_locked (), generation, cbw_cluster_size, disk_size,
            preserved_bytes, copied_bytes, released_bytes, cbw_failures,
            broken ? "true" : "false",
            broken_why ? "\"" : "", broken_why ? broken_why : "null",
            broken_why ? "\"" : "", contexts,
            store_allocated_bytes (), ram);
}
