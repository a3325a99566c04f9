/* nbdkit-fleece: bitmap-discard filter, the checkpoint chain and the
 * group commit of dirty bits.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Checkpoints and their bitmaps
 * =============================
 *
 * A checkpoint is a named point in time.  The checkpoints form one
 * chain, oldest first, each naming its predecessor ("parent"):
 *
 *   c1 ---------- c2 ---------- c3 ---------- now
 *   | bitmap c1   | bitmap c2   | bitmap c3 (active)
 *
 * The bitmap of a checkpoint holds one bit per granule
 * (bitmap-geom.granularity bytes; the last granule may be short):
 *
 *   bit | meaning
 *   ----+---------------------------------------------------------
 *    0  | not changed between this checkpoint and the next one
 *       | (for the newest, "active", checkpoint: until now)
 *    1  | a write, zero or trim may have changed the granule
 *
 * "Changed since cN" is the union of the bitmaps of cN and all newer
 * checkpoints.  Creating a checkpoint freezes the active bitmap and
 * starts an empty one.  Deleting a checkpoint ORs its bits into its
 * predecessor (whose interval now covers both), or drops them if it
 * is the oldest (nobody can ask "since" a point before it any more).
 * Before the first checkpoint nothing is tracked: no incremental
 * could use it.
 *
 * Files
 * =====
 *
 * bitmap-discard-dir holds one file NAME.bitmap per checkpoint; their
 * format is in bitmap-file.c.  The active file gets change records
 * appended; when its log grows larger than the bits, it is rewritten
 * compactly.
 *
 * Crash safety (group commit)
 * ===========================
 *
 * dirty_mark runs before a write, zero or trim goes below.  Two
 * in-memory bitmaps of the active checkpoint:
 *
 *   requested | durable | meaning
 *   ----------+---------+-----------------------------------------
 *       0     |    0    | clean
 *       1     |    0    | queued in the pending batch or being
 *             |         | synced; writers touching it must wait
 *       1     |    1    | on disk: writers go ahead at once
 *
 * A caller sets 'requested' and queues the granules it newly dirties
 * in the pending batch (number 'batch_gen'), then waits until
 * 'synced_gen' reaches that batch.  If no sync is running, the waiter
 * becomes the leader: it takes the whole pending batch, appends one
 * record for it and fdatasyncs, then marks it durable and wakes
 * everyone.  Callers that arrive meanwhile queue into the next batch,
 * so N concurrent writers cost about one sync per sync latency, and
 * writes to already durable granules cost nothing.
 *
 * Loading: a record is trusted only if its checksum matches.  A bad
 * record followed by more data is corruption (refused).  A bad or
 * short record at the very end of the file can only be a torn append
 * after a power failure (the requests it covered never went below),
 * but it could also be damage: we then mark every granule dirty (the
 * safe answer: the next incremental copies everything) and say so.
 *
 * Checkpoint operations (create, delete) are crash safe by order:
 *   create NEW:  write NEW (active, parent = newest); rewrite the old
 *                newest as frozen.  A crash in between leaves two
 *                files with logs; loading freezes the older one.
 *   delete X:    rewrite X with state "deleting"; OR X into its
 *                parent; re-parent X's child; unlink X.  Loading
 *                finishes any "deleting" file (all steps idempotent);
 *                if X's child already names X's parent, only the
 *                unlink was missing.
 *   pending:     a snapshot's checkpoint is created with state
 *                "pending"; committing rewrites it as active (one
 *                rename), dropping is the delete above.  Loading
 *                drops any file still pending: its backup never
 *                ended.
 *
 * Locking: 'lock' guards everything marked below.  The file is only
 * touched by the sync leader ('syncing' true, appending without the
 * lock), by the leader while it compacts the file (with the lock held:
 * rare, as each granule is logged once between compactions), or by
 * the checkpoint functions, which run with writes drained and no
 * leader.  'cond' is broadcast whenever a sync ends.
 */

#include <config.h>

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "cleanup.h"
#include "json.h"
#include "rounding.h"
#include "dirty.h"
#include "bitmap-file.h"

struct ckpt {
  struct bmfile_info f;         /* name, parent, state... as on disk */
  struct bitmap bits;           /* frozen bits; for the newest: durable */
};

/* Set in dirty_open (the size: by the first file, or in dirty_start
 * when there is none) and never changed after.
 */
static char *dir;               /* NULL: no bitmap-discard-dir */
static struct bmfile_geometry geom;

/* The lock: see the top of the file. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;

/* --- Everything below is protected by lock. --- */

/* The chain, oldest first; ckpts[nr_ckpts-1] is active. */
static struct ckpt *ckpts;
static size_t nr_ckpts;

static struct bitmap requested; /* see the table above */
static int active_fd = -1;      /* the active file, for appends */
static uint64_t log_bytes;      /* bytes of log in the active file */
static uint64_t next_seq;       /* sequence number of the next record */

static struct range *pending;   /* the pending batch */
static size_t nr_pending, pending_alloc;
static uint64_t batch_gen = 1;  /* number of the pending batch */
static uint64_t synced_gen;     /* batches durable up to this one */
static bool syncing;            /* a leader is syncing */
static bool failed;             /* a sync failed: refuse writes */

static uint64_t stat_syncs, stat_marks_synced;
static char warning[256];

static void
seterr (char *err, size_t errlen, const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  vsnprintf (err, errlen, fs, args);
  va_end (args);
}

bool
dirty_valid_name (const char *name, char *err, size_t errlen)
{
  size_t len = strlen (name);

  if (len == 0 || len > CKPT_NAME_MAX) {
    seterr (err, errlen, "checkpoint names have 1 to %d characters",
            CKPT_NAME_MAX);
    return false;
  }
  if (name[0] == '.' || name[0] == '-') {
    seterr (err, errlen, "a checkpoint name cannot start with '.' or '-'");
    return false;
  }
  if (strspn (name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
              "0123456789._-") != len) {
    seterr (err, errlen, "a checkpoint name may only contain letters, "
            "digits, '.', '_' and '-'");
    return false;
  }
  return true;
}

/* Write checkpoint c's file anew (see bmfile_write). */
static int
write_file (const struct ckpt *c, int *fdp)
{
  return bmfile_write (dir, &geom, &c->f, &c->bits, fdp);
}

/* Number of bytes of the disk covered by the set bits of bm. */
static uint64_t
bits_bytes (const struct bitmap *bm)
{
  uint64_t n = bitmap_count_ones (bm) * geom.granularity;

  /* The last granule may be short. */
  if (bm->nblocks > 0 && bitmap_get (bm, bm->nblocks - 1))
    n -= bm->nblocks * geom.granularity - geom.disk_size;
  return n;
}

static void
bits_or (struct bitmap *dst, const struct bitmap *src)
{
  size_t i, n = bitmap_bytes (dst);

  for (i = 0; i < n; ++i)
    dst->bits[i] |= src->bits[i];
}

/* Rewrite the active file compactly and switch active_fd to it. */
static int
compact_active (void)
{
  int fd;

  if (write_file (&ckpts[nr_ckpts - 1], &fd) == -1)
    return -1;
  if (active_fd >= 0)
    close (active_fd);
  active_fd = fd;
  log_bytes = 0;
  return 0;
}

static void
free_chain (void)
{
  size_t i;

  for (i = 0; i < nr_ckpts; ++i)
    bitmap_free (&ckpts[i].bits);
  free (ckpts);
  ckpts = NULL;
  nr_ckpts = 0;
}

static ssize_t
find_ckpt (const char *name)
{
  size_t i;

  for (i = 0; i < nr_ckpts; ++i)
    if (strcmp (ckpts[i].f.name, name) == 0)
      return i;
  return -1;
}

/* The last step of deleting ckpts[i]: remove its file (already gone
 * is fine: every step of a delete may be done twice) and its entry.
 */
static int
unlink_ckpt (size_t i)
{
  if (bmfile_unlink (dir, ckpts[i].f.name) == -1)
    return -1;
  bitmap_free (&ckpts[i].bits);
  memmove (&ckpts[i], &ckpts[i+1], (nr_ckpts - i - 1) * sizeof *ckpts);
  nr_ckpts--;
  return 0;
}

/* A delete that crashed after re-parenting the child of X but before
 * unlinking X leaves two files naming X's parent as theirs.  X's bits
 * were merged into its parent before the child was re-parented, so
 * only the unlink is missing: do it.
 */
static int
drop_finished_deletes (void)
{
  size_t i, j;

  for (i = 0; i < nr_ckpts; ) {
    bool finished = false;

    if (ckpts[i].f.state == ST_DELETING)
      for (j = 0; j < nr_ckpts; ++j)
        if (j != i && ckpts[j].f.state != ST_DELETING &&
            strcmp (ckpts[j].f.parent, ckpts[i].f.parent) == 0)
          finished = true;
    if (!finished) {
      i++;
      continue;
    }
    nbdkit_debug ("bitmap-discard: finishing the deletion of "
                  "checkpoint %s (its child is re-parented already)",
                  ckpts[i].f.name);
    if (unlink_ckpt (i) == -1)
      return -1;
  }
  return 0;
}

/* Order the loaded checkpoints into a chain by their parents. */
static int
order_chain (void)
{
  struct ckpt *sorted;
  size_t i, n = 0;
  const char *prev = "";

  sorted = calloc (nr_ckpts ? nr_ckpts : 1, sizeof *sorted);
  if (sorted == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  while (n < nr_ckpts) {
    size_t found = nr_ckpts, count = 0;

    for (i = 0; i < nr_ckpts; ++i)
      if (strcmp (ckpts[i].f.parent, prev) == 0) {
        found = i;
        count++;
      }
    if (count != 1) {
      nbdkit_error ("bitmap-discard: %s: the checkpoint files do not form "
                    "one chain (%zu files name \"%s\" as their parent)"
                    UNTRUSTED, dir, count, prev);
      free (sorted);
      return -1;
    }
    sorted[n++] = ckpts[found];
    prev = ckpts[found].f.name;
  }
  free (ckpts);
  ckpts = sorted;
  return 0;
}

/* The steps of deleting ckpts[i] after it is marked ST_DELETING. */
static int
finish_delete (size_t i)
{
  bool was_active = i == nr_ckpts - 1;

  if (i > 0) {
    bits_or (&ckpts[i-1].bits, &ckpts[i].bits);
    if (was_active)
      ckpts[i-1].f.state = ST_ACTIVE;
    if (write_file (&ckpts[i-1], NULL) == -1)
      return -1;
  }
  if (!was_active) {
    strcpy (ckpts[i+1].f.parent, ckpts[i].f.parent);
    if (write_file (&ckpts[i+1], NULL) == -1)
      return -1;
  }
  return unlink_ckpt (i);
}

/* Open the newest file for appending, compacting it first, and make
 * 'requested' match its bits.
 */
static int
open_active (void)
{
  if (active_fd >= 0) {
    close (active_fd);
    active_fd = -1;
  }
  bitmap_free (&requested);
  if (bitmap_init (&requested, 1, geom.nr_granules) == -1) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  if (nr_ckpts == 0)
    return 0;
  memcpy (requested.bits, ckpts[nr_ckpts-1].bits.bits, geom.bits_size);
  return compact_active ();
}

int
dirty_open (const char *d, uint32_t gran, const char *disk_id)
{
  DIR *dp;
  struct dirent *de;

  geom.granularity = gran;
  assert (strlen (disk_id) <= DISK_ID_MAX);
  strcpy (geom.disk_id, disk_id);
  dir = strdup (d);
  if (dir == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  if (mkdir (dir, 0700) == -1 && errno != EEXIST) {
    nbdkit_error ("bitmap-discard: mkdir: %s: %m", dir);
    return -1;
  }

  dp = opendir (dir);
  if (dp == NULL) {
    nbdkit_error ("bitmap-discard: bitmap-discard-dir=%s: %m", dir);
    return -1;
  }
  while ((de = readdir (dp)) != NULL) {
    size_t len = strlen (de->d_name);
    struct ckpt *p;

    if (len > 11 && strcmp (de->d_name + len - 11, ".bitmap.tmp") == 0) {
      /* A half-written file from a crash: never renamed, never used. */
      unlinkat (dirfd (dp), de->d_name, 0);
      continue;
    }
    if (len <= 7 || strcmp (de->d_name + len - 7, ".bitmap") != 0)
      continue;
    p = realloc (ckpts, (nr_ckpts + 1) * sizeof *ckpts);
    if (p == NULL) {
      nbdkit_error ("realloc: %m");
      closedir (dp);
      return -1;
    }
    ckpts = p;
    memset (&ckpts[nr_ckpts], 0, sizeof *ckpts);
    if (bmfile_load (dir, de->d_name, &geom,
                     nr_ckpts ? ckpts[0].f.name : NULL,
                     &ckpts[nr_ckpts].f, &ckpts[nr_ckpts].bits,
                     warning, sizeof warning) == -1) {
      closedir (dp);
      free_chain ();
      return -1;
    }
    nr_ckpts++;
  }
  closedir (dp);
  if (drop_finished_deletes () == -1) {
    free_chain ();
    return -1;
  }
  if (order_chain () == -1) {
    free_chain ();
    return -1;
  }

  nbdkit_debug ("bitmap-discard: %s: %zu checkpoints", dir, nr_ckpts);
  return 0;
}

/* Finish interrupted deletes, then freeze any older file that a crash
 * during checkpoint creation left active, and open the newest file.
 */
static int
recover_chain (void)
{
  size_t i;

  /* A pending checkpoint whose backup never ended: drop it. */
  bmfile_crash_op = "recover";
  for (i = 0; i < nr_ckpts; ++i)
    if (ckpts[i].f.state == ST_PENDING) {
      snprintf (warning, sizeof warning,
                "checkpoint %s was pending when nbdkit stopped (its "
                "backup never ended): dropped, its changes merged into "
                "%s", ckpts[i].f.name,
                ckpts[i].f.parent[0] ? ckpts[i].f.parent : "nothing");
      nbdkit_debug ("bitmap-discard: %s", warning);
      ckpts[i].f.state = ST_DELETING;
      if (write_file (&ckpts[i], NULL) == -1)
        return -1;
      bmfile_crash_point ("marked");
    }
  for (i = 0; i < nr_ckpts; ) {
    if (ckpts[i].f.state == ST_DELETING) {
      nbdkit_debug ("bitmap-discard: finishing the deletion of "
                    "checkpoint %s", ckpts[i].f.name);
      if (finish_delete (i) == -1)
        return -1;
    }
    else
      i++;
  }
  for (i = 0; i + 1 < nr_ckpts; ++i)
    if (ckpts[i].f.state != ST_FROZEN) {
      ckpts[i].f.state = ST_FROZEN;
      if (write_file (&ckpts[i], NULL) == -1)
        return -1;
    }
  if (nr_ckpts > 0)
    ckpts[nr_ckpts-1].f.state = ST_ACTIVE;
  /* Files of format 1 carry no disk identity: they take this disk's
   * (see "FILE FORMAT" in the man page).
   */
  for (i = 0; i < nr_ckpts; ++i)
    if (ckpts[i].f.old_format) {
      nbdkit_debug ("bitmap-discard: %s: upgrading to format 2",
                    ckpts[i].f.name);
      if (write_file (&ckpts[i], NULL) == -1)
        return -1;
      ckpts[i].f.old_format = false;
    }
  bmfile_crash_op = NULL;
  return open_active ();
}

int
dirty_start (uint64_t size)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (dir == NULL)
    return 0;
  if (nr_ckpts > 0 && size != geom.disk_size) {
    nbdkit_error ("bitmap-discard: %s: the checkpoints were made for a "
                  "disk of %" PRIu64 " bytes, but this disk has %" PRIu64
                  " bytes: is bitmap-discard-dir the right one for this "
                  "disk?  If the disk was resized, the bitmaps are useless:"
                  WHAT_TO_DO, dir, geom.disk_size, size);
    return -1;
  }
  if (nr_ckpts == 0)
    bmfile_set_size (&geom, size);
  return recover_chain ();
}

void
dirty_close (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (dir == NULL)
    return;
  /* Leave a compact file behind; if this fails the log is still good. */
  if (nr_ckpts > 0 && !failed && !syncing)
    compact_active ();
  if (active_fd >= 0)
    close (active_fd);
  active_fd = -1;
  free_chain ();
  bitmap_free (&requested);
  free (pending);
  pending = NULL;
  free (dir);
  dir = NULL;
}

/* Queue granules [first, end) in the pending batch. */
static int
queue_locked (uint64_t first, uint64_t end)
{
  if (nr_pending > 0 &&
      pending[nr_pending-1].first + pending[nr_pending-1].count == first) {
    pending[nr_pending-1].count += end - first;
    return 0;
  }
  if (nr_pending == pending_alloc) {
    size_t n = pending_alloc ? 2 * pending_alloc : 64;
    struct range *p = realloc (pending, n * sizeof *p);
    if (p == NULL)
      return -1;
    pending = p;
    pending_alloc = n;
  }
  pending[nr_pending].first = first;
  pending[nr_pending].count = end - first;
  nr_pending++;
  return 0;
}

/* Queue the granules [first, end) that are not requested yet.  Sets
 * *need if the caller must wait for a sync (some are not durable).
 */
static int
request_locked (uint64_t first, uint64_t end, bool *need)
{
  uint64_t g;

  for (g = first; g < end; ++g) {
    if (!bitmap_get (&requested, g)) {
      if (queue_locked (g, g + 1) == -1) {
        nbdkit_error ("realloc: %m");
        return -1;
      }
      bitmap_set (&requested, g, 1);
      *need = true;
    }
    else if (!bitmap_get (&ckpts[nr_ckpts-1].bits, g))
      *need = true;
  }
  return 0;
}

/* The batch of n ranges is durable: set its bits, and compact the file
 * when the log has grown larger than the bits (and 1M).  With writes
 * still flowing this holds the lock for one file rewrite, rarely: each
 * granule is logged once between compactions.
 */
static int
synced_locked (const struct range *batch, size_t n)
{
  size_t i;
  uint64_t g;

  stat_syncs++;
  next_seq++;
  log_bytes += bmfile_record_size (n);
  for (i = 0; i < n; ++i)
    for (g = batch[i].first; g < batch[i].first + batch[i].count; ++g)
      bitmap_set (&ckpts[nr_ckpts-1].bits, g, 1);
  if (log_bytes > MAX (geom.bits_size, (size_t) 1 << 20))
    return compact_active ();
  return 0;
}

/* Lead (lock held, no leader running): take the whole pending batch,
 * append it without the lock, and wake everyone.
 */
static void
lead_sync_locked (void)
{
  struct range *batch = pending;
  size_t n = nr_pending;
  uint64_t gen = batch_gen, seq = next_seq, off;
  int r = 0;

  pending = NULL;
  nr_pending = pending_alloc = 0;
  batch_gen++;
  /* With no checkpoint left (the only one was dropped while this batch
   * waited) there is nothing to record the batch into.
   */
  if (n > 0 && nr_ckpts > 0) {
    syncing = true;
    off = bmfile_log_start (&geom) + log_bytes;
    pthread_mutex_unlock (&lock);
    r = bmfile_append (active_fd, dir, batch, n, seq, off);
    pthread_mutex_lock (&lock);
    syncing = false;
    if (r == 0)
      r = synced_locked (batch, n);
  }
  free (batch);
  if (r == -1)
    failed = true;
  else
    synced_gen = gen;
  pthread_cond_broadcast (&cond);
}

int
dirty_mark (uint64_t offset, uint64_t count, int *err)
{
  uint64_t first, end, my_gen;
  bool need = false;

  if (dir == NULL || count == 0)
    return 0;
  first = offset / geom.granularity;
  end = MIN (geom.nr_granules,
             (offset + count + geom.granularity - 1) / geom.granularity);

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (nr_ckpts == 0)            /* nothing to track into yet */
    return 0;
  if (failed) {
    *err = EIO;
    return -1;
  }
  if (request_locked (first, end, &need) == -1) {
    *err = ENOMEM;
    return -1;
  }
  if (!need)
    return 0;

  stat_marks_synced++;
  my_gen = batch_gen;
  while (synced_gen < my_gen) {
    if (failed) {
      *err = EIO;
      return -1;
    }
    if (!syncing)
      lead_sync_locked ();
    else
      pthread_cond_wait (&cond, &lock);
  }
  return 0;
}

void
dirty_get_stats (struct dirty_stats *st)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  memset (st, 0, sizeof *st);
  st->enabled = dir != NULL;
  st->tracking = nr_ckpts > 0;
  st->failed = failed;
  st->syncs = stat_syncs;
  st->marks_synced = stat_marks_synced;
  st->nr_checkpoints = nr_ckpts;
  if (nr_ckpts > 0)
    st->active_dirty_bytes = bits_bytes (&requested);
  if (nr_ckpts > 0 && ckpts[nr_ckpts-1].f.state == ST_PENDING)
    strcpy (st->pending, ckpts[nr_ckpts-1].f.name);
  strcpy (st->warning, warning);
}

bool
dirty_checkpoint_exists (const char *name)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  return dir && find_ckpt (name) >= 0;
}

/* May checkpoint name be created now?  If not, say why in err. */
static bool
can_create_locked (const char *name, char *err, size_t errlen)
{
  if (dir == NULL) {
    seterr (err, errlen, "checkpoints need bitmap-discard-dir=DIR on the "
            "nbdkit command line");
    return false;
  }
  if (!dirty_valid_name (name, err, errlen))
    return false;
  if (find_ckpt (name) >= 0) {
    seterr (err, errlen, "checkpoint %s already exists", name);
    return false;
  }
  if (nr_ckpts > 0 && ckpts[nr_ckpts-1].f.state == ST_PENDING) {
    seterr (err, errlen, "checkpoint %s is pending until its backup "
            "ends (\"release\")", ckpts[nr_ckpts-1].f.name);
    return false;
  }
  if (failed) {
    seterr (err, errlen, "dirty tracking failed earlier (see the nbdkit "
            "log): restart nbdkit");
    return false;
  }
  return true;
}

int
dirty_checkpoint_create (const char *name, bool is_pending,
                         char *err, size_t errlen)
{
  struct ckpt *p, *c;
  size_t n;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (!syncing);
  if (!can_create_locked (name, err, errlen))
    return -1;
  /* With writes drained every requested bit is durable. */
  assert (nr_pending == 0);

  n = nr_ckpts;
  p = realloc (ckpts, (n + 1) * sizeof *ckpts);
  if (p == NULL) {
    seterr (err, errlen, "out of memory");
    return -1;
  }
  ckpts = p;
  c = &ckpts[n];
  memset (c, 0, sizeof *c);
  strcpy (c->f.name, name);
  strcpy (c->f.parent, n > 0 ? ckpts[n-1].f.name : "");
  c->f.created = time (NULL);
  c->f.state = is_pending ? ST_PENDING : ST_ACTIVE;
  if (bitmap_init (&c->bits, 1, geom.nr_granules) == -1) {
    seterr (err, errlen, "out of memory");
    return -1;
  }
  if (write_file (c, NULL) == -1) {
    bitmap_free (&c->bits);
    seterr (err, errlen, "cannot write the bitmap file (see the nbdkit "
            "log)");
    return -1;
  }
  if (n > 0) {
    ckpts[n-1].f.state = ST_FROZEN;
    if (write_file (&ckpts[n-1], NULL) == -1) {
      /* Loading would freeze it; but tracking must go on in the new
       * file, so carry on.
       */
      nbdkit_debug ("bitmap-discard: could not rewrite %s as frozen",
                    ckpts[n-1].f.name);
    }
  }
  nr_ckpts++;
  if (open_active () == -1) {
    failed = true;
    seterr (err, errlen, "cannot open the new bitmap file (see the "
            "nbdkit log)");
    return -1;
  }
  nbdkit_debug ("bitmap-discard: created checkpoint %s", name);
  return 0;
}

int
dirty_checkpoint_delete (const char *name, char *err, size_t errlen)
{
  ssize_t i;
  bool was_active;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (!syncing);
  if (dir == NULL) {
    seterr (err, errlen, "checkpoints need bitmap-discard-dir=DIR on the "
            "nbdkit command line");
    return -1;
  }
  if (!dirty_valid_name (name, err, errlen))
    return -1;
  i = find_ckpt (name);
  if (i < 0) {
    seterr (err, errlen, "no checkpoint named %s", name);
    return -1;
  }
  if (ckpts[i].f.state == ST_PENDING) {
    seterr (err, errlen, "checkpoint %s is pending until its backup "
            "ends: \"release result=failed\" drops it", name);
    return -1;
  }
  if (failed) {
    seterr (err, errlen, "dirty tracking failed earlier (see the nbdkit "
            "log): restart nbdkit");
    return -1;
  }
  assert (nr_pending == 0);
  was_active = (size_t) i == nr_ckpts - 1;
  if (active_fd >= 0 && was_active) {
    close (active_fd);
    active_fd = -1;
  }
  ckpts[i].f.state = ST_DELETING;
  if (write_file (&ckpts[i], NULL) == -1 || finish_delete (i) == -1) {
    failed = true;
    seterr (err, errlen, "cannot update the bitmap files (see the nbdkit "
            "log); writes now fail: restart nbdkit to finish the delete");
    return -1;
  }
  /* finish_delete replaced the file of the new newest checkpoint
   * (the deleted one's parent or child) by a rename: appends must go
   * to that new file, never to the old, unlinked one.
   */
  if (open_active () == -1) {
    failed = true;
    seterr (err, errlen, "cannot open the bitmap file (see the nbdkit "
            "log)");
    return -1;
  }
  nbdkit_debug ("bitmap-discard: deleted checkpoint %s", name);
  return 0;
}

int
dirty_union_since (const char *name, struct bitmap *scope,
                   char *err, size_t errlen)
{
  ssize_t i;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (dir == NULL) {
    seterr (err, errlen, "incremental snapshots need bitmap-discard-dir="
            "DIR on the nbdkit command line");
    return -1;
  }
  i = find_ckpt (name);
  if (i < 0) {
    seterr (err, errlen, "no checkpoint named %s: take a full backup",
            name);
    return -1;
  }
  if (failed) {
    seterr (err, errlen, "dirty tracking failed (see the nbdkit log): "
            "the next backup must be a full one");
    return -1;
  }
  assert (scope->nblocks == geom.nr_granules);
  for (; (size_t) i < nr_ckpts; ++i)
    bits_or (scope, &ckpts[i].bits);
  return 0;
}

void
dirty_list_json (FILE *fp)
{
  size_t i, j;
  struct bitmap u;
  struct json_writer a, o;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  json_begin_array (&a, fp);
  /* Without memory for the union, report the lists without it. */
  if (bitmap_init (&u, 1, geom.nr_granules) == -1)
    u.bits = NULL;
  for (i = 0; i < nr_ckpts; ++i) {
    if (u.bits) {
      bitmap_fill (&u, 0);
      for (j = i; j < nr_ckpts; ++j)
        bits_or (&u, &ckpts[j].bits);
    }
    json_element (&a);
    json_begin (&o, fp);
    json_member_string (&o, "name", ckpts[i].f.name);
    json_member_string (&o, "parent", ckpts[i].f.parent);
    json_member_uint (&o, "created", ckpts[i].f.created);
    json_member_string (&o, "state",
                        ckpts[i].f.state == ST_PENDING ? "pending"
                        : i == nr_ckpts - 1 ? "active" : "frozen");
    json_member_uint (&o, "dirty_bytes", bits_bytes (&ckpts[i].bits));
    json_member_uint (&o, "changed_since_bytes",
                      u.bits ? bits_bytes (&u) : 0);
    json_end (&o);
  }
  json_end_array (&a);
  bitmap_free (&u);
}

/* Drop the pending checkpoint, the newest (lock held, no leader): the
 * steps of a delete.  Writers may be waiting in dirty_mark meanwhile:
 * their queued granules go to the parent's file, which becomes the
 * active one, and 'requested' keeps them.
 */
static int
drop_pending_locked (char *err, size_t errlen)
{
  size_t i = nr_ckpts - 1;
  struct bitmap keep;
  int r;

  if (bitmap_init (&keep, 1, geom.nr_granules) == -1) {
    seterr (err, errlen, "out of memory");
    return -1;
  }
  memcpy (keep.bits, requested.bits, geom.bits_size);
  if (active_fd >= 0) {
    close (active_fd);
    active_fd = -1;
  }
  ckpts[i].f.state = ST_DELETING;
  r = write_file (&ckpts[i], NULL);
  if (r == 0) {
    bmfile_crash_point ("marked");
    r = finish_delete (i);
  }
  if (r == 0)
    r = open_active ();
  if (r == -1) {
    failed = true;
    bitmap_free (&keep);
    seterr (err, errlen, "cannot update the bitmap files (see the nbdkit "
            "log); writes now fail: restart nbdkit to finish the drop");
    return -1;
  }
  bits_or (&requested, &keep);
  bitmap_free (&keep);
  return 0;
}

int
dirty_checkpoint_settle (bool commit, const char *name,
                         char *err, size_t errlen)
{
  struct ckpt *c;
  int r;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (dir == NULL || nr_ckpts == 0 ||
      ckpts[nr_ckpts-1].f.state != ST_PENDING ||
      strcmp (ckpts[nr_ckpts-1].f.name, name) != 0) {
    seterr (err, errlen, "checkpoint %s is not pending", name);
    return -1;
  }
  c = &ckpts[nr_ckpts-1];
  if (failed) {
    seterr (err, errlen, "dirty tracking failed earlier (see the nbdkit "
            "log): checkpoint %s stays pending; restart nbdkit, which "
            "drops it", name);
    return -1;
  }
  /* The file is only touched without the lock by a sync leader. */
  while (syncing)
    pthread_cond_wait (&cond, &lock);
  bmfile_crash_op = commit ? "commit" : "drop";
  bmfile_crash_point ("start");
  if (commit) {
    c->f.state = ST_ACTIVE;
    r = compact_active ();
    if (r == -1) {
      /* The file on disk still says pending: so does memory. */
      c->f.state = ST_PENDING;
      seterr (err, errlen, "cannot write the bitmap file of %s (see the "
              "nbdkit log): it stays pending; restart nbdkit, which "
              "drops it", name);
    }
  }
  else
    r = drop_pending_locked (err, errlen);
  bmfile_crash_point ("done");
  bmfile_crash_op = NULL;
  if (r == 0)
    nbdkit_debug ("bitmap-discard: %s checkpoint %s",
                  commit ? "committed" : "dropped", name);
  return r;
}
