/* nbdkit-fleece: cbw filter, the snapshot engine.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * How a snapshot works
 * ====================
 *
 * The disk is cut into clusters of cbw-cluster-size bytes (the last
 * one may be short).  While a snapshot is active every cluster is in
 * one of four states, two bits each in 'eng.clusters':
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
 *   COPYING 10| being copied: on    | waits until it is   | waits until it
 *             | the live disk, or   | SAVED (or NEEDED    | is SAVED (or
 *             | read and on its way | again on failure)   | NEEDED again)
 *             | to the store        |                     |
 *   SAVED  11 | in the fleece store | goes below after    | store
 *             |                     | frozen reads (*)    |
 *
 * Transitions: taking the PIT sets every cluster NEEDED.  A writer
 * claims the NEEDED clusters it touches (NEEDED -> COPYING), copies
 * them without the lock (read below, write to the store, the store
 * write overlapping the writer's own write below when it can), and
 * then marks them SAVED: that is the copy module, copy.c, which also
 * holds the error policy (cbw-on-error, cbw-timeout) for a copy that
 * fails or misses its deadline.  A TRIM on the snapshot export makes any
 * cluster FREE, dropping a SAVED copy from the store; it waits for
 * COPYING clusters first, so a copy never lands on a released
 * cluster.  The end of the snapshot makes every cluster FREE.
 *
 * (*) Frozen reads.  A snapshot read of live-disk data must not see a
 * writer's new data.  A snapshot read or extents request is cut into
 * pieces by where its data is (live disk or store), and each piece is
 * registered in 'reads' (reqlist.c) for as long as the request runs,
 * marked live if it reads the live disk.  A writer, after its
 * copy-before-write, waits until no live piece overlaps its clusters;
 * pieces read from the store do not hold it.  No new live piece can
 * start there meanwhile, because the writer's clusters are no longer
 * NEEDED: a new read waits while they are COPYING and then goes to
 * the store.  (It must wait: under write-behind, copy.c, the live
 * disk takes the writer's data while the old data is still on its
 * way to the store.)  So the writer
 * reaches the live disk only after every read of the old data there
 * is done.  This wait is needed even when the writer did not copy
 * anything itself: another writer may have just saved the cluster
 * while a live read of it is still running.
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
 * emptied, and only then can a new PIT be taken.  Emptying costs what
 * the snapshot wrote, not the size of the disk: every claim sets the
 * bit of its 1 GiB chunk in 'eng.stored',
 *
 *   stored    | the store, in that chunk of the disk
 *   ----------+----------------------------------------------
 *   0         | holds nothing of this snapshot (nor of an
 *             | earlier one that was emptied)
 *   1         | may hold data: a copy was claimed there
 *
 * and the end trims only the chunks whose bit is set, found 64 bits
 * at a time.  If emptying fails the bits stay set, so the next end
 * tries again.
 *
 * Locking: one mutex, 'eng.lock', guards the engine state ('eng',
 * engine.h) and the state below it in this file.  I/O is never done
 * with the lock held: we claim under the lock, do the I/O unlocked,
 * and publish the result under the lock.  Each wait has its own
 * condition variable, signalled only when what it waits for changes:
 *
 *   eng.copy_done    a writer's copies ended: writers waiting for
 *                    another writer's COPYING clusters, snapshot
 *                    TRIM, the end of a snapshot;
 *   (per read piece) the end of one registered read piece: the
 *                    writers and TRIMs waiting for that piece;
 *   writes_drained   the last write in flight ended while a PIT is
 *                    being taken: the PIT taker;
 *   writes_resumed   the PIT is taken: writers held meanwhile;
 *   pit_changed      a PIT was taken or a snapshot ended: openers;
 *   linger_cond      the linger thread's deadline or stop changed.
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
#include <endian.h>
#include <sys/types.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "cbw-contract.h"
#include "cleanup.h"
#include "json.h"
#include "copy.h"
#include "engine.h"
#include "reqlist.h"
#include "rounding.h"
#include "snap.h"
#include "store.h"
#include "threadname.h"

/* Parameters (see snap.h). */
uint32_t cbw_cluster_size = 65536;
double cbw_linger = 0;
double cbw_timeout = 0;
enum cbw_on_error cbw_on_error = CBW_BREAK_SNAPSHOT;

/* -D cbw.verbose=1: log every copy-before-write and release. */
NBDKIT_DLL_PUBLIC int cbw_debug_verbose = 0;

/* The engine state shared with copy.c (see engine.h). */
struct engine eng = {
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .copy_done = PTHREAD_COND_INITIALIZER,
  .state = SNAP_NONE,
};

/* Condition variables of this file, see the top of the file. */
static pthread_cond_t writes_drained = PTHREAD_COND_INITIALIZER;
static pthread_cond_t writes_resumed = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pit_changed = PTHREAD_COND_INITIALIZER;
static pthread_cond_t linger_cond = PTHREAD_COND_INITIALIZER;

/* --- Everything below is protected by eng.lock. --- */

static unsigned contexts;         /* snapshot contexts open */
static bool lingering;            /* no contexts, waiting for linger */
static struct timespec linger_deadline; /* CLOCK_MONOTONIC */
static bool stop_linger_thread;

static bool taking_pit;           /* take_pit_locked is draining writes */
static unsigned hold_writes;      /* >0: snap_write_begin waits */
static uint64_t writes_inflight;  /* writes between begin and end */
static struct reqlist reads;      /* pieces of snapshot reads running */

/* --- End of lock-protected data. --- */

static pthread_t linger_thread;
static bool linger_thread_started;

static const char *
state_name_locked (void)
{
  switch (eng.state) {
  case SNAP_NONE: return "none";
  case SNAP_ACTIVE: return lingering ? "lingering" : "active";
  case SNAP_ENDING: return "ending";
  }
  abort ();
}

/*----------------------------------------------------------------------
 * The writer export.
 */

/* A write has left (or never reached) the layer below. */
static void
write_done_locked (void)
{
  assert (writes_inflight > 0);
  if (--writes_inflight == 0 && hold_writes > 0)
    pthread_cond_signal (&writes_drained);
}

/* Wait while a PIT is being taken, then count the write in flight. */
static void
write_enter_locked (void)
{
  while (hold_writes > 0)
    pthread_cond_wait (&writes_resumed, &eng.lock);
  writes_inflight++;
}

int
snap_write_begin (nbdkit_next *next, uint32_t count, uint64_t offset,
                  bool fast_zero, struct snap_write *w, int *err)
{
  uint64_t first, end;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);

  clusters_touched (offset, count, &first, &end);
  write_enter_locked ();
  if (copy_begin_locked (next, first, end, fast_zero, &w->copy,
                         err) == -1) {
    write_done_locked ();
    return -1;
  }
  /* Frozen reads: let every live read of the old data finish. */
  reqlist_wait_clear (&reads, first, end, true, &eng.lock);
  return 0;
}

void
snap_write_end (struct snap_write *w)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);

  copy_end_locked (&w->copy);
  write_done_locked ();
}

/*----------------------------------------------------------------------
 * The lifetime of a snapshot: PIT, contexts, linger, end.
 */

/* Take the point in time.  Called with the lock held, state NONE. */
static void
take_pit_locked (void)
{
  bool store_ok;

  assert (eng.state == SNAP_NONE && !taking_pit);

  /* The waits below drop the lock: 'taking_pit' keeps other openers
   * in snap_open from taking a second PIT meanwhile.
   */
  taking_pit = true;

  /* A store lost since the last snapshot is replaced now, before
   * writes are held (it may take a while).  Nothing uses the store.
   */
  pthread_mutex_unlock (&eng.lock);
  store_ok = store_prepare () == 0;
  pthread_mutex_lock (&eng.lock);

  hold_writes++;
  while (writes_inflight > 0)
    pthread_cond_wait (&writes_drained, &eng.lock);

  bitmap_fill (&eng.clusters, CL_NEEDED);
  eng.state = SNAP_ACTIVE;
  eng.generation++;
  eng.broken = false;
  eng.broken_why = NULL;
  eng.preserved_bytes = eng.copied_bytes = 0;
  eng.released_bytes = eng.cbw_failures = 0;
  if (!store_ok)
    break_snapshot_locked ("no fleece store: it was lost and a fresh "
                           "one could not be made");

  if (--hold_writes == 0)
    pthread_cond_broadcast (&writes_resumed);
  taking_pit = false;
  pthread_cond_broadcast (&pit_changed);
  nbdkit_debug ("cbw: snapshot %" PRIu64 " taken", eng.generation);
}

/* The first set bit of the 1-bit bitmap BM at or after FROM, or
 * BM->nblocks if none: 64 bits at a time where it can.
 */
static uint64_t
next_one (const struct bitmap *bm, uint64_t from)
{
  while (from < bm->nblocks) {
    uint64_t word;

    if (from % 64 == 0 && from + 64 <= bm->nblocks) {
      memcpy (&word, &bm->bits[from / 8], sizeof word);
      word = le64toh (word);    /* block 8j+i is bit i of byte j */
      if (word != 0)
        return from + __builtin_ctzll (word);
      from += 64;
    }
    else if (bitmap_get (bm, from))
      return from;
    else
      from++;
  }
  return bm->nblocks;
}

/* store_range_fn over the chunks set in 'eng.stored', adjacent ones
 * merged.  *OPAQUE is the chunk to look from.
 */
static bool
next_stored_range (void *opaque, uint64_t *offset, uint64_t *count)
{
  uint64_t *chunk = opaque;
  uint64_t first = next_one (&eng.stored, *chunk), end;

  if (first >= eng.stored.nblocks)
    return false;
  for (end = first + 1;
       end < eng.stored.nblocks && bitmap_get (&eng.stored, end); ++end)
    ;
  *chunk = end;
  *offset = first << STORE_CHUNK_SHIFT;
  *count = MIN (end << STORE_CHUNK_SHIFT, eng.disk_size) - *offset;
  return true;
}

/* End the snapshot.  Called with the lock held, state ACTIVE and no
 * contexts; drops the lock while the store is wiped.
 */
static void
end_snapshot_locked (void)
{
  int err = 0;
  uint64_t chunk;
  bool wiped;

  assert (eng.state == SNAP_ACTIVE && contexts == 0);
  eng.state = SNAP_ENDING;
  lingering = false;

  /* Writers no longer claim clusters; let the running copies end. */
  copy_wait_all_locked ();
  assert (reqlist_empty (&reads));
  bitmap_fill (&eng.clusters, CL_FREE);
  nbdkit_debug ("cbw: snapshot %" PRIu64 " ended: %" PRIu64 " bytes "
                "copied, %" PRIu64 " released, %" PRIu64 " failures%s",
                eng.generation, eng.copied_bytes, eng.released_bytes,
                eng.cbw_failures, eng.broken ? ", broken" : "");
  eng.preserved_bytes = 0;

  /* No claim can set a bit of 'eng.stored' while ENDING: it is read
   * without the lock below.
   */
  pthread_mutex_unlock (&eng.lock);
  chunk = 0;
  wiped = store_wipe_ranges (next_stored_range, &chunk, &err) == 0;
  if (!wiped)
    nbdkit_error ("cbw: emptying the fleece store failed (%s); its "
                  "space is freed at exit", strerror (err));
  pthread_mutex_lock (&eng.lock);

  if (wiped)
    bitmap_fill (&eng.stored, 0);
  eng.state = SNAP_NONE;
  pthread_cond_broadcast (&pit_changed);
}

void
snap_open (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);

  /* Wait for a snapshot that is ending, or for another opener that is
   * taking the PIT: every context opened from here on shares it.
   */
  while (eng.state == SNAP_ENDING || taking_pit)
    pthread_cond_wait (&pit_changed, &eng.lock);
  if (eng.state == SNAP_NONE)
    take_pit_locked ();
  else if (lingering) {
    nbdkit_debug ("cbw: snapshot %" PRIu64 " reused within its linger",
                  eng.generation);
    lingering = false;
    pthread_cond_signal (&linger_cond);
  }
  contexts++;
}

void
snap_close (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);

  assert (contexts > 0 && eng.state == SNAP_ACTIVE);
  if (--contexts > 0)
    return;
  if (cbw_linger > 0) {
    linger_deadline = deadline_after (cbw_linger);
    lingering = true;
    pthread_cond_signal (&linger_cond);
  }
  else
    end_snapshot_locked ();
}

/* The linger thread ends a lingering snapshot at its deadline. */
static void *
linger_main (void *arg)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);

  while (!stop_linger_thread) {
    if (!(eng.state == SNAP_ACTIVE && lingering && contexts == 0)) {
      pthread_cond_wait (&linger_cond, &eng.lock);
      continue;
    }
    if (!deadline_reached (linger_deadline)) {
      pthread_cond_clockwait (&linger_cond, &eng.lock, CLOCK_MONOTONIC,
                              &linger_deadline);
      continue;
    }
    nbdkit_debug ("cbw: linger of snapshot %" PRIu64 " expired",
                  eng.generation);
    end_snapshot_locked ();
  }
  return NULL;
}

int
snap_init (uint64_t size)
{
  int r;

  eng.disk_size = size;
  eng.nr_clusters = (size + cbw_cluster_size - 1) / cbw_cluster_size;
  if (bitmap_init (&eng.clusters, 2, eng.nr_clusters) == -1) {
    nbdkit_error ("cbw: cannot allocate the cluster map: %m");
    return -1;
  }
  if (bitmap_init (&eng.stored, 1,
                   (size >> STORE_CHUNK_SHIFT) + 1) == -1) {
    nbdkit_error ("cbw: cannot allocate the map of the store: %m");
    return -1;
  }
  r = pthread_create (&linger_thread, NULL, linger_main, NULL);
  if (r != 0) {
    errno = r;
    nbdkit_error ("cbw: pthread_create: %m");
    return -1;
  }
  thread_name (linger_thread, "cbw-linger");
  linger_thread_started = true;
  return 0;
}

void
snap_free (void)
{
  if (linger_thread_started) {
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);
      stop_linger_thread = true;
      pthread_cond_signal (&linger_cond);
    }
    pthread_join (linger_thread, NULL);
    linger_thread_started = false;
  }
  /* Detached copies publish into the maps (copy.c): let them end.
   * The store, and so its reader thread, is closed after this.
   */
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);
    copy_wait_all_locked ();
  }
  bitmap_free (&eng.clusters);
  bitmap_free (&eng.stored);
}

/*----------------------------------------------------------------------
 * The snapshot export: reads, extents, TRIM.
 */

/* Where a range of the snapshot comes from. */
enum source { SRC_NONE, SRC_LIVE, SRC_STORE };

/* A piece of a snapshot request with one source.  Pieces that read
 * something (not SRC_NONE) are registered in 'reads' while the
 * request runs.
 */
struct piece {
  uint64_t offset, len;         /* bytes */
  enum source src;
  struct read_req req;
};

/* A snapshot read or extents request: its pieces, in order. */
struct snap_io {
  struct piece *pieces;
  size_t n;
};

/* The source of a cluster in state ST.  Returns -1 for FREE if
 * ALLOW_FREE is false.
 */
static int
source_of (unsigned st, bool allow_free)
{
  switch (st) {
  case CL_FREE: return allow_free ? SRC_NONE : -1;
  case CL_NEEDED: return SRC_LIVE;
  case CL_SAVED: return SRC_STORE;
  case CL_COPYING: break;       /* io_begin waited for the copy */
  }
  abort ();
}

/* Under the lock: split [offset, offset+count) into pieces by source.
 * Returns -1 with *err set (EINVAL if a cluster is FREE and
 * ALLOW_FREE is false).
 */
static int
plan_locked (uint32_t count, uint64_t offset, bool allow_free,
             struct snap_io *io, int *err)
{
  uint64_t first, end, c;
  struct piece *p;
  size_t n = 0;

  clusters_touched (offset, count, &first, &end);
  p = malloc ((end - first + 1) * sizeof *p);
  if (p == NULL) {
    *err = errno;
    nbdkit_error ("malloc: %m");
    return -1;
  }
  for (c = first; c < end; ++c) {
    int src = source_of (bitmap_get (&eng.clusters, c), allow_free);
    uint64_t lo = MAX (offset, c * cbw_cluster_size);
    uint64_t hi = MIN (offset + count, (c + 1) * cbw_cluster_size);

    if (src == -1) {
      free (p);
      *err = EINVAL;
      return -1;
    }
    if (n > 0 && p[n - 1].src == (enum source) src)
      p[n - 1].len += hi - lo;
    else
      p[n++] = (struct piece) { .offset = lo, .len = hi - lo, .src = src };
  }
  io->pieces = p;
  io->n = n;
  return 0;
}

/* The prologue of snapshot reads and extents (WHAT names it): check
 * the snapshot, plan the pieces and register them.  Call io_end when
 * done.
 */
static int
io_begin (const char *what, uint32_t count, uint64_t offset,
          bool allow_free, struct snap_io *io, int *err)
{
  uint64_t first, end;
  size_t i;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);

  assert (eng.state == SNAP_ACTIVE);
  /* COPYING clusters: their old data may be only in a writer's
   * buffer by now (write-behind, copy.c); it is in the store once
   * published.
   */
  clusters_touched (offset, count, &first, &end);
  copy_wait_range_locked (first, end);
  if (eng.broken) {
    nbdkit_error ("cbw: %s of broken snapshot %" PRIu64,
                  what, eng.generation);
    *err = EIO;
    return -1;
  }
  if (plan_locked (count, offset, allow_free, io, err) == -1) {
    if (*err == EINVAL)
      nbdkit_debug ("cbw: snapshot %s at %" PRIu64 " of %" PRIu32
                    " bytes touches a released cluster",
                    what, offset, count);
    return -1;
  }
  for (i = 0; i < io->n; ++i) {
    struct piece *p = &io->pieces[i];

    if (p->src == SRC_NONE)
      continue;
    clusters_touched (p->offset, p->len, &first, &end);
    reqlist_add (&reads, &p->req, first, end, p->src == SRC_LIVE);
  }
  return 0;
}

/* Unregister the pieces of IO (waking who waits for them) and free
 * them.
 */
static void
io_end (struct snap_io *io)
{
  size_t i;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);

    for (i = 0; i < io->n; ++i)
      if (io->pieces[i].src != SRC_NONE)
        reqlist_remove (&reads, &io->pieces[i].req);
  }
  free (io->pieces);
}

int
snap_read (nbdkit_next *next, void *buf, uint32_t count, uint64_t offset,
           int *err)
{
  struct snap_io io;
  size_t i;
  int r = 0;

  if (count == 0)
    return 0;
  if (io_begin ("read", count, offset, false, &io, err) == -1)
    return -1;

  for (i = 0; i < io.n && r == 0; ++i) {
    const struct piece *pc = &io.pieces[i];
    char *p = (char *) buf + (pc->offset - offset);

    if (pc->src == SRC_STORE)
      r = store_read (p, pc->len, pc->offset, err);
    else
      r = next->pread (next, p, pc->len, pc->offset, 0, err);
  }

  io_end (&io);
  return r;
}

/* A run of clusters, to drop from the store. */
struct run {
  uint64_t first, end;          /* clusters [first, end) */
};

/* Under the lock, with no copy or read in [first, end): make every
 * cluster there FREE.  Returns in *SAVED the runs that were SAVED.
 */
static int
release_locked (uint64_t first, uint64_t end, struct run **saved,
                size_t *nr_saved, int *err)
{
  uint64_t c;
  struct run *s;
  size_t n = 0;

  /* Runs of SAVED clusters alternate with others: at most half. */
  s = malloc ((end - first + 2) / 2 * sizeof *s);
  if (s == NULL) {
    *err = errno;
    nbdkit_error ("malloc: %m");
    return -1;
  }
  for (c = first; c < end; ++c) {
    unsigned st = bitmap_get (&eng.clusters, c);

    if (st == CL_FREE)
      continue;
    if (st == CL_SAVED) {
      if (n > 0 && s[n - 1].end == c)
        s[n - 1].end = c + 1;
      else
        s[n++] = (struct run) { .first = c, .end = c + 1 };
      eng.preserved_bytes -= cluster_bytes (c, c + 1);
    }
    eng.released_bytes += cluster_bytes (c, c + 1);
    bitmap_set (&eng.clusters, c, CL_FREE);
  }
  *saved = s;
  *nr_saved = n;
  return 0;
}

int
snap_trim (uint32_t count, uint64_t offset, int *err)
{
  uint64_t first, end;
  CLEANUP_FREE struct run *saved = NULL;
  size_t nr_saved = 0, i;

  /* Only whole clusters are released; the short last cluster of the
   * disk is whole when the range reaches the end of the disk.
   */
  first = ROUND_UP (offset, (uint64_t) cbw_cluster_size) / cbw_cluster_size;
  end = offset + count >= eng.disk_size ?
    eng.nr_clusters : (offset + count) / cbw_cluster_size;
  if (first >= end)
    return 0;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);

    assert (eng.state == SNAP_ACTIVE);
    /* Reads (of either source) and copies in flight here end first. */
    do
      reqlist_wait_clear (&reads, first, end, false, &eng.lock);
    while (copy_wait_range_locked (first, end));
    if (release_locked (first, end, &saved, &nr_saved, err) == -1)
      return -1;
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

/* The extents of one piece.  Returns the bytes covered, or -1. */
static int64_t
piece_extents (nbdkit_next *next, const struct piece *p,
               struct nbdkit_extents *extents, int *err)
{
  if (p->src != SRC_NONE)
    return copy_extents (next, p->src == SRC_STORE, p->offset, p->len,
                         extents, err);

  /* Not part of the snapshot: a hole that does not read as zero. */
  if (nbdkit_add_extent (extents, p->offset, p->len,
                         NBDKIT_EXTENT_HOLE) == -1) {
    *err = errno;
    return -1;
  }
  return p->len;
}

int
snap_extents (nbdkit_next *next, uint32_t count, uint64_t offset,
              uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  struct snap_io io;
  size_t i;
  int r = 0;

  if (count == 0)
    return 0;
  if (io_begin ("extents", count, offset, true, &io, err) == -1)
    return -1;

  for (i = 0; i < io.n; ++i) {
    int64_t covered = piece_extents (next, &io.pieces[i], extents, err);

    if (covered == -1) {
      r = -1;
      break;
    }
    /* A short answer, or one extent wanted: that is enough. */
    if ((uint64_t) covered < io.pieces[i].len ||
        (flags & NBDKIT_FLAG_REQ_ONE))
      break;
  }

  io_end (&io);
  return r;
}

/* The status object (see snap.h). */
void
snap_status_json (char *buf, size_t len)
{
  char ram[2048];
  struct json_writer w;
  FILE *fp = json_buffer_open (buf, len);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&eng.lock);

  if (fp == NULL)
    return;
  store_status_json (ram, sizeof ram);
  json_begin (&w, fp);
  json_member_int (&w, "version", CBW_STATUS_VERSION);
  json_member_string (&w, "state", state_name_locked ());
  json_member_uint (&w, "generation", eng.generation);
  json_member_uint (&w, "cluster_size", cbw_cluster_size);
  json_member_uint (&w, "disk_size", eng.disk_size);
  json_member_uint (&w, "preserved_bytes", eng.preserved_bytes);
  json_member_uint (&w, "copied_bytes", eng.copied_bytes);
  json_member_uint (&w, "released_bytes", eng.released_bytes);
  json_member_uint (&w, "cbw_failures", eng.cbw_failures);
  json_member_bool (&w, "broken", eng.broken);
  json_member_string (&w, "broken_reason", eng.broken_why);
  json_member_uint (&w, "snapshot_contexts", contexts);
  json_member_int (&w, "store_allocated_bytes", store_allocated_bytes ());
  /* The store's members, already JSON. */
  fprintf (fp, ",%s", ram);
  json_end (&w);
  json_buffer_close (fp, buf, len);
}
