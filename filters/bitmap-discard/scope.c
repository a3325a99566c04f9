/* nbdkit-fleece: bitmap-discard filter, snapshot scope.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Snapshots with a scope
 * ======================
 *
 * The cbw filter below takes the point in time (PIT) when the first
 * context opens its "snapshot" export, and preserves every cluster
 * until it is TRIMmed there.  This layer decides which granules a
 * backup needs (its scope) and releases the others at once, so cbw
 * never copies them.  One bit per granule in 'scope':
 *
 *   bit | meaning                         | client read | extents
 *   ----+---------------------------------+-------------+--------------
 *    0  | not in this backup, or released | EINVAL      | HOLE (no ZERO)
 *       | since (TRIM, read-once)         |             |
 *    1  | in scope: the backup must copy  | from cbw    | from cbw (real
 *       | it                              | (PIT data)  | allocation)
 *
 * Transitions: the snapshot step sets the bits (all for a full backup,
 * the union of the dirty bitmaps since a checkpoint for an
 * incremental); a client TRIM or a read-once read clears the whole
 * granules inside its range (and passes the same TRIM down, so cbw
 * drops them); nothing sets a bit again until the next snapshot.
 *
 * The snapshot step (scope_snapshot), atomic for the writers:
 *   1. hold new writes at this layer and wait for those in flight;
 *   2. create the checkpoint if asked (the dirty bitmap is cut here);
 *   3. compute the scope;
 *   4. open a "holder" context on "snapshot" below: cbw takes the PIT;
 *   5. TRIM every out-of-scope granule through the holder;
 *   6. let the writes go.
 * A write is thus either wholly before the PIT and the checkpoint, or
 * wholly after both.  On failure every step is undone (a checkpoint
 * created in step 2 is deleted again, which merges it back).
 * 'release' closes the holder: cbw ends the PIT once the last client
 * context on "snapshot" closes too.  Release first waits for clients
 * that are still opening "snapshot" below ('opening'), so that every
 * client context below shares the holder's PIT.
 *
 * Without bitmap-control, the first client to open "snapshot" when no
 * snapshot exists gets a full-scope one (cbw takes the PIT as usual),
 * which ends with the last such client.
 *
 * The writer gate (holding writes, and freezes) is in gate.c.
 *
 * Locking: 'lock' guards everything marked below; 'cond' is broadcast
 * when 'opening' reaches 0.  No I/O is done with the lock held:
 * bits are checked or cleared under it, then the request goes below.
 * Control commands are serialized by the caller (control.c).
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

#include <pthread.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "cbw-contract.h"
#include "cleanup.h"
#include "context.h"
#include "json.h"
#include "rounding.h"
#include "commands.h"
#include "dirty.h"
#include "scope.h"

uint32_t bd_granularity = 65536;
bool bd_discard_on_read = false;
bool bd_have_control = false;

/* The cbw exports below (common/cbw-contract.h). */
#define SNAPSHOT_EXPORT CBW_SNAPSHOT_EXPORT
#define STATUS_EXPORT   CBW_STATUS_EXPORT
#define STATUS_SIZE     CBW_STATUS_SIZE

/* Largest TRIM sent below in one request (a multiple of any
 * granularity).
 */
#define MAX_TRIM (UINT64_C (1) << 30)

enum scope_state {
  SC_NONE,                      /* no snapshot */
  SC_ACTIVE,                    /* taken by the control socket */
  SC_AUTO,                      /* taken by a client (no control) */
};

/* Initialized in scope_init and never changed. */
static nbdkit_backend *backend;
static uint64_t disk_size;
static uint64_t nr_granules;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;

/* --- Everything below is protected by lock. --- */

static enum scope_state state = SC_NONE;
static bool scope_valid;        /* 'scope' describes the PIT below */
static struct bitmap scope;     /* see the table above */
static unsigned clients;        /* client contexts on "snapshot" */
static unsigned opening;        /* of those, still opening below */
static uint64_t generation;     /* snapshots taken */
static uint64_t scope_bytes;    /* bytes in scope when taken */
static uint64_t released_bytes; /* of those, released since */
static char since_name[CKPT_NAME_MAX + 1];
static char ckpt_name[CKPT_NAME_MAX + 1];

/* Only touched by the control thread (serialized). */
static nbdkit_next *holder;     /* our context on "snapshot" below */

static void close_holder (void);

/* Bytes of the disk in the granules set in BM (a scope map). */
static uint64_t
map_bytes (const struct bitmap *bm)
{
  uint64_t n = bitmap_count_ones (bm) * bd_granularity;

  /* The last granule may be short. */
  if (nr_granules > 0 && bitmap_get (bm, nr_granules - 1))
    n -= nr_granules * bd_granularity - disk_size;
  return n;
}

/* Bytes of the disk in granules [first, end). */
static uint64_t
granule_bytes (uint64_t first, uint64_t end)
{
  if (end <= first)
    return 0;
  return MIN (end * bd_granularity, disk_size) - first * bd_granularity;
}

int
scope_init (nbdkit_backend *b, uint64_t size)
{
  backend = b;
  disk_size = size;
  nr_granules = (size + bd_granularity - 1) / bd_granularity;
  if (bitmap_init (&scope, 1, nr_granules) == -1) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  return gate_init ();
}

void
scope_cleanup (void)
{
  close_holder ();
}

void
scope_free (void)
{
  bitmap_free (&scope);
}

int
scope_client_open (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  if (!bd_have_control && state == SC_NONE && clients == 0) {
    bitmap_fill (&scope, 1);
    scope_valid = true;
    state = SC_AUTO;
    generation++;
    scope_bytes = disk_size;
    released_bytes = 0;
    since_name[0] = ckpt_name[0] = '\0';
  }
  if (state == SC_NONE) {
    nbdkit_error ("bitmap-discard: no snapshot to read: send \"snapshot\" "
                  "on the control socket first");
    return -1;
  }
  clients++;
  opening++;
  return 0;
}

void
scope_client_opened (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (opening > 0);
  if (--opening == 0)
    pthread_cond_broadcast (&cond);
}

void
scope_client_close (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  assert (clients > 0);
  if (--clients == 0 && state == SC_AUTO)
    state = SC_NONE;
}

/* Whole granules inside [offset, offset+count): [*first, *end).  The
 * last, short granule counts as whole when the range reaches the end
 * of the disk.
 */
static void
whole_granules (uint64_t offset, uint64_t count, uint64_t *first,
                uint64_t *end)
{
  *first = (offset + bd_granularity - 1) / bd_granularity;
  if (offset + count >= disk_size)
    *end = nr_granules;
  else
    *end = (offset + count) / bd_granularity;
  if (*end < *first)
    *end = *first;
}

/* Clear the scope bits of granules [first, end). */
static void
clear_scope_locked (uint64_t first, uint64_t end)
{
  uint64_t g;

  for (g = first; g < end; ++g)
    if (bitmap_get (&scope, g)) {
      bitmap_set (&scope, g, 0);
      released_bytes += granule_bytes (g, g + 1);
    }
}

/* Release the whole granules in [offset, offset+count) at this layer
 * and below.
 */
static int
release_range (nbdkit_next *next, uint64_t offset, uint64_t count,
               int *err)
{
  uint64_t first, end, off, stop;

  whole_granules (offset, count, &first, &end);
  if (first == end)
    return 0;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    clear_scope_locked (first, end);
  }
  off = first * bd_granularity;
  stop = MIN (end * bd_granularity, disk_size);
  while (off < stop) {
    uint64_t n = MIN (stop - off, MAX_TRIM);
    if (next->trim (next, n, off, 0, err) == -1)
      return -1;
    off += n;
  }
  return 0;
}

int
scope_pread (nbdkit_next *next, void *buf, uint32_t count, uint64_t offset,
             uint32_t flags, int *err)
{
  uint64_t g, end;

  if (count == 0)
    return 0;
  end = (offset + count + bd_granularity - 1) / bd_granularity;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    for (g = offset / bd_granularity; g < end; ++g)
      if (!scope_valid || !bitmap_get (&scope, g)) {
        *err = EINVAL;
        nbdkit_debug ("bitmap-discard: read at %" PRIu64 " outside the "
                      "snapshot's scope", g * bd_granularity);
        return -1;
      }
  }
  if (next->pread (next, buf, count, offset, flags, err) == -1)
    return -1;
  /* Read-once: what was read whole is released.  A failure here does
   * not undo the read the client already has: report it in the log
   * only.
   */
  if (bd_discard_on_read) {
    int e;
    if (release_range (next, offset, count, &e) == -1)
      nbdkit_debug ("bitmap-discard: read-once release at %" PRIu64
                    " failed: %s", offset, strerror (e));
  }
  return 0;
}

int
scope_trim (nbdkit_next *next, uint32_t count, uint64_t offset,
            uint32_t flags, int *err)
{
  /* flags (FUA) is deliberately ignored: releasing has nothing to
   * persist.
   */
  return release_range (next, offset, count, err);
}

/* Whole bytes of the scope bitmap are skipped at once: the map of a
 * large disk has long runs, and clients' reads wait for this lock.
 */
uint64_t
scope_run (uint64_t pos, uint64_t end, bool *in)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  uint64_t g = pos / bd_granularity;
  uint64_t last = MIN ((end + bd_granularity - 1) / bd_granularity,
                       nr_granules);
  uint8_t same;

  if (!scope_valid) {
    *in = false;
    return end;
  }
  *in = bitmap_get (&scope, g);
  same = *in ? 0xff : 0;
  for (++g; g < last; ) {
    if (g % 8 == 0 && g + 8 <= last && scope.bits[g / 8] == same)
      g += 8;
    else if (bitmap_get (&scope, g) == *in)
      g++;
    else
      break;
  }
  return MIN (g * bd_granularity, end);
}

int
scope_extents (nbdkit_next *next, uint32_t count, uint64_t offset,
               uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  uint64_t end = offset + count, pos = offset;

  while (pos < end) {
    bool in;
    uint64_t run_end = scope_run (pos, end, &in);

    if (!in) {
      /* Not part of this backup: hole, but not known to be zero, so
       * that "qemu-img convert -B" leaves it to the backing file.
       */
      if (nbdkit_add_extent (extents, pos, run_end - pos,
                             NBDKIT_EXTENT_HOLE) == -1) {
        *err = errno;
        return -1;
      }
      pos = run_end;
    }
    else {
      uint64_t got;

      if (context_extents_below (next, run_end - pos, pos, flags,
                                 extents, &got, err) == -1)
        return -1;
      /* Below may answer for less than asked: stop where it stopped. */
      if (got < run_end)
        return 0;
      pos = run_end;
    }
    if (flags & NBDKIT_FLAG_REQ_ONE)
      return 0;
  }
  return 0;
}

/*----------------------------------------------------------------------
 * Control commands.
 */

/* What cbw says about itself. */
struct cbw_status {
  char state[16];
  uint64_t generation;
  uint64_t cluster_size;
  bool broken;
  char json[STATUS_SIZE + 1];   /* the line itself, trailing blanks cut */
};

/* Read the "cbw-status" export below. */
static int
read_cbw_status (struct cbw_status *st)
{
  nbdkit_next *next;
  int err = 0, r = -1;
  struct cbw_status_record rec;
  char msg[128];
  size_t len;

  memset (st, 0, sizeof *st);
  next = nbdkit_next_context_open (backend, 1, STATUS_EXPORT, 1);
  if (next == NULL)
    return -1;
  if (next->prepare (next) == 0 &&
      next->get_size (next) == STATUS_SIZE &&
      next->pread (next, st->json, STATUS_SIZE, 0, 0, &err) == 0)
    r = 0;
  next->finalize (next);
  nbdkit_next_context_close (next);
  if (r == -1)
    return -1;
  st->json[STATUS_SIZE] = '\0';
  len = strlen (st->json);
  while (len > 0 && (st->json[len-1] == ' ' || st->json[len-1] == '\n'))
    st->json[--len] = '\0';
  if (cbw_status_parse (st->json, &rec, msg, sizeof msg) == -1) {
    nbdkit_error ("bitmap-discard: %s", msg);
    return -1;
  }
  memcpy (st->state, rec.state, sizeof st->state);
  st->generation = rec.generation;
  st->cluster_size = rec.cluster_size;
  st->broken = rec.broken;
  return 0;
}

/* Close the holder context. */
static void
close_holder (void)
{
  context_close_below (holder);
  holder = NULL;
}

/* The next run of out-of-scope granules at or after *G, of at most
 * MAX_TRIM bytes: sets *FIRST to its start and *G to its end.  Looks
 * at no more than MAX_TRIM bytes' worth of in-scope granules at a
 * time, so that the lock is held briefly; *FIRST == *G when it found
 * none in that stretch (call again while *G < nr_granules).
 */
static void
next_out_of_scope (uint64_t *g, uint64_t *first)
{
  const uint64_t stretch = MAX (MAX_TRIM / bd_granularity, 1u);
  const uint64_t stop = MIN (nr_granules, *g + stretch);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  while (*g < stop && bitmap_get (&scope, *g))
    (*g)++;
  *first = *g;
  while (*g < nr_granules && !bitmap_get (&scope, *g) &&
         (*g - *first) * bd_granularity < MAX_TRIM)
    (*g)++;
}

/* Step 5: TRIM every out-of-scope granule through the holder. */
static int
release_out_of_scope (char *err, size_t errlen)
{
  uint64_t g = 0, first;
  int e;

  while (g < nr_granules) {
    next_out_of_scope (&g, &first);
    if (first == g)
      continue;
    if (holder->trim (holder, granule_bytes (first, g),
                      first * bd_granularity, 0, &e) == -1) {
      snprintf (err, errlen, "releasing out-of-scope data below failed: "
                "%s", strerror (e));
      return -1;
    }
  }
  return 0;
}

/* Steps 4 and 5: take the PIT below and release what is out of scope
 * (writes are held).
 */
static int
open_holder (char *err, size_t errlen)
{
  struct context_caps caps;

  holder = context_open_below (backend, 0, SNAPSHOT_EXPORT,
                               "bitmap-discard", &caps);
  if (holder == NULL) {
    snprintf (err, errlen, "cannot open the \"snapshot\" export below "
              "(see the nbdkit log)");
    return -1;
  }
  if (caps.size != (int64_t) disk_size ||
      caps.can_write != 1 || caps.can_trim != 1) {
    snprintf (err, errlen, "the \"snapshot\" export below is not usable "
              "(is the cbw filter below this one?)");
    close_holder ();
    return -1;
  }
  if (release_out_of_scope (err, errlen) == -1) {
    close_holder ();
    return -1;
  }
  return 0;
}

/* Before the snapshot step: refuse what would fail (a snapshot is
 * active, bad or missing names, cbw missing below or still holding the
 * previous snapshot, granules that are not whole clusters).  *before
 * is cbw's status now.
 */
static int
snapshot_check (const char *since, const char *checkpoint,
                struct cbw_status *before, char *err, size_t errlen)
{
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    if (state != SC_NONE) {
      snprintf (err, errlen, "a snapshot is already active: send "
                "\"release\" first");
      return -1;
    }
  }
  if (since && !dirty_valid_name (since, err, errlen))
    return -1;
  if (since && !dirty_checkpoint_exists (since)) {
    snprintf (err, errlen, "no checkpoint named %s: take a full backup",
              since);
    return -1;
  }
  if (checkpoint) {
    if (!dirty_valid_name (checkpoint, err, errlen))
      return -1;
    if (dirty_checkpoint_exists (checkpoint)) {
      snprintf (err, errlen, "checkpoint %s already exists", checkpoint);
      return -1;
    }
  }
  if (read_cbw_status (before) == -1) {
    snprintf (err, errlen, "cannot read \"cbw-status\" below: this "
              "filter must sit above the cbw filter");
    return -1;
  }
  if (before->cluster_size == 0 || bd_granularity % before->cluster_size) {
    snprintf (err, errlen, "bitmap-discard-granularity=%" PRIu32
              " is not a multiple of cbw-cluster-size=%" PRIu64 ": "
              "restart nbdkit with matching values",
              bd_granularity, before->cluster_size);
    return -1;
  }
  if (strcmp (before->state, "none") != 0) {
    snprintf (err, errlen, "the cbw filter still holds the previous "
              "snapshot (state %s: clients still connected to "
              "\"snapshot\", or cbw-linger): disconnect them or wait, "
              "then retry", before->state);
    return -1;
  }
  return 0;
}

/* The snapshot is taken: record it and print the reply fields. */
static void
snapshot_publish (const char *since, const char *checkpoint,
                  uint64_t freeze, uint64_t bytes, FILE *fp)
{
  uint64_t gen;
  struct json_writer w;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    state = SC_ACTIVE;
    gen = ++generation;
    scope_bytes = bytes;
    released_bytes = 0;
    strcpy (since_name, since ? since : "");
    strcpy (ckpt_name, checkpoint ? checkpoint : "");
  }
  json_init (&w, fp, true);
  json_member_uint (&w, "generation", gen);
  json_member_uint (&w, "scope_bytes", bytes);
  if (since)
    json_member_string (&w, "since", since);
  if (checkpoint)
    json_member_string (&w, "checkpoint", checkpoint);
  if (freeze)
    json_member_uint (&w, "freeze", freeze);
  nbdkit_debug ("bitmap-discard: snapshot %" PRIu64 " taken, scope %"
                PRIu64 " bytes", gen, bytes);
}

/* Step 3: the scope is everything, or what changed since checkpoint
 * SINCE, computed into NEWSCOPE (all zeroes); it replaces the old
 * scope and NEWSCOPE is left empty.  Sets *BYTES to its size.
 */
static int
install_scope (const char *since, struct bitmap *newscope, uint64_t *bytes,
               char *err, size_t errlen)
{
  if (!since)
    bitmap_fill (newscope, 1);
  else if (dirty_union_since (since, newscope, err, errlen) == -1)
    return -1;
  *bytes = map_bytes (newscope);
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    bitmap_free (&scope);
    scope = *newscope;
    newscope->bits = NULL;
    scope_valid = true;
  }
  return 0;
}

/* Steps 4 and 5, and a check that cbw took a new snapshot: its
 * generation must have moved on from BEFORE's.
 */
static int
take_pit (const struct cbw_status *before, char *err, size_t errlen)
{
  struct cbw_status after;

  if (open_holder (err, errlen) == -1)
    return -1;
  if (read_cbw_status (&after) == -1 ||
      strcmp (after.state, "active") != 0 ||
      after.generation <= before->generation) {
    snprintf (err, errlen, "the cbw filter below did not take a new "
              "snapshot");
    close_holder ();
    return -1;
  }
  return 0;
}

/* Undo a snapshot step that failed after step 1: the scope is no
 * longer valid, the checkpoint it created (if MADE_CHECKPOINT) is
 * dropped, which merges it back, and the writes go on.
 */
static void
snapshot_undo (const char *checkpoint, bool made_checkpoint)
{
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    scope_valid = false;
  }
  if (made_checkpoint) {
    char e2[256];
    if (dirty_checkpoint_settle (false, checkpoint, e2, sizeof e2) == -1)
      nbdkit_debug ("bitmap-discard: undoing checkpoint %s: %s",
                    checkpoint, e2);
  }
  gate_release ();
}

/* The snapshot step, 1 to 6 as in the essay at the top. */
int
scope_snapshot (const char *since, const char *checkpoint,
                uint64_t freeze, FILE *fp, char *err, size_t errlen)
{
  struct cbw_status before;
  struct bitmap newscope;
  uint64_t bytes;
  bool made_checkpoint = false;

  if (snapshot_check (since, checkpoint, &before, err, errlen) == -1)
    return -1;
  if (bitmap_init (&newscope, 1, nr_granules) == -1) {
    snprintf (err, errlen, "out of memory");
    return -1;
  }

  /* 1. Hold and drain the writes (while frozen: they are). */
  if (freeze == 0)
    gate_hold ();
  else if (gate_hold_frozen (freeze, err, errlen) == -1) {
    bitmap_free (&newscope);
    return -1;
  }

  /* 2. The checkpoint. */
  if (checkpoint) {
    if (dirty_checkpoint_create (checkpoint, true, err, errlen) == -1)
      goto fail;
    made_checkpoint = true;
  }

  /* 3, 4 and 5. */
  if (install_scope (since, &newscope, &bytes, err, errlen) == -1 ||
      take_pit (&before, err, errlen) == -1)
    goto fail;
  snapshot_publish (since, checkpoint, freeze, bytes, fp);

  /* 6. */
  gate_release ();
  return 0;

 fail:
  snapshot_undo (checkpoint, made_checkpoint);
  bitmap_free (&newscope);
  return -1;
}

/* The end of a backup decides its pending checkpoint name ("" if the
 * snapshot made none): committed if the backup says it succeeded and
 * the snapshot did not break below, otherwise dropped.  Print the
 * decision into the reply; a checkpoint that could be neither stays
 * pending (the next start drops it) and the reply says why.
 */
static void
settle_checkpoint (bool ok, const char *name, FILE *fp)
{
  struct cbw_status cs;
  const char *reason = NULL;
  char err[256];
  struct json_writer w;

  json_init (&w, fp, true);
  if (name[0] == '\0') {
    json_member_null (&w, "checkpoint");
    json_member_bool (&w, "committed", false);
    return;
  }
  if (!ok)
    reason = "the backup reported result=failed";
  else if (read_cbw_status (&cs) == -1)
    reason = "the state of the snapshot below could not be read";
  else if (cs.broken)
    reason = "the snapshot broke below (see cbw in status)";
  json_member_string (&w, "checkpoint", name);
  if (dirty_checkpoint_settle (reason == NULL, name, err, sizeof err) == -1) {
    json_member_bool (&w, "committed", false);
    json_member_string (&w, "dropped_reason", err);
    return;
  }
  json_member_bool (&w, "committed", reason == NULL);
  if (reason)
    json_member_string (&w, "dropped_reason", reason);
}

int
scope_release_snapshot (bool ok, FILE *fp, char *err, size_t errlen)
{
  char name[CKPT_NAME_MAX + 1];
  struct json_writer w;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    if (state != SC_ACTIVE) {
      snprintf (err, errlen, "no snapshot to release");
      return -1;
    }
    state = SC_NONE;
    strcpy (name, ckpt_name);
    json_init (&w, fp, true);
    json_member_uint (&w, "clients", clients);
    /* A client that joined the snapshot but has not opened cbw's
     * "snapshot" below yet would, once the holder is gone, make cbw
     * take a new point in time that does not match the scope.  Let
     * it finish opening first: it then shares the holder's PIT.
     * (No one new can join: the state is NONE.)
     */
    while (opening > 0)
      pthread_cond_wait (&cond, &lock);
  }
  /* Decide while the holder still pins the snapshot below. */
  settle_checkpoint (ok, name, fp);
  close_holder ();
  return 0;
}

nbdkit_next *
scope_holder (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  return state == SC_ACTIVE ? holder : NULL;
}

uint64_t
scope_disk_size (void)
{
  return disk_size;
}

int
scope_checkpoint (const char *name, char *err, size_t errlen)
{
  int r;

  gate_hold ();
  r = dirty_checkpoint_create (name, false, err, errlen);
  gate_release ();
  return r;
}

int
scope_delete_checkpoint (const char *name, char *err, size_t errlen)
{
  int r;

  gate_hold ();
  r = dirty_checkpoint_delete (name, err, errlen);
  gate_release ();
  return r;
}

void
scope_status (FILE *fp)
{
  struct dirty_stats ds;
  struct gate_stats gs;
  struct cbw_status cs;
  struct json_writer w, t;

  dirty_get_stats (&ds);
  gate_get_stats (&gs);
  json_init (&w, fp, true);
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    json_member_string (&w, "state", state == SC_NONE ? "none" : "active");
    json_member_uint (&w, "generation", generation);
    json_member_string (&w, "since", since_name);
    json_member_string (&w, "checkpoint", ckpt_name);
    json_member_uint (&w, "scope_bytes", scope_valid ? scope_bytes : 0);
    json_member_uint (&w, "remaining_bytes",
                      scope_valid ? map_bytes (&scope) : 0);
    json_member_uint (&w, "released_bytes", released_bytes);
    json_member_uint (&w, "clients", clients);
    json_member_uint (&w, "granularity", bd_granularity);
    json_member_uint (&w, "disk_size", disk_size);
  }
  json_key (&w, "tracking");
  json_begin (&t, fp);
  json_member_bool (&t, "enabled", ds.enabled);
  json_member_bool (&t, "tracking", ds.tracking);
  json_member_bool (&t, "failed", ds.failed);
  json_member_uint (&t, "checkpoints", ds.nr_checkpoints);
  json_member_uint (&t, "dirty_bytes", ds.active_dirty_bytes);
  json_member_uint (&t, "syncs", ds.syncs);
  json_member_uint (&t, "synced_marks", ds.marks_synced);
  json_end (&t);
  json_member_string (&w, "pending_checkpoint",
                      ds.pending[0] ? ds.pending : NULL);
  json_member_bool (&w, "frozen", gs.frozen);
  if (gs.frozen)
    json_member_uint (&w, "freeze", gs.freeze_id);
  else
    json_member_null (&w, "freeze");
  json_member_fixed (&w, "freeze_remaining", 3, gs.freeze_remaining);
  json_member_uint (&w, "freezes_expired", gs.freezes_expired);
  json_member_uint (&w, "writes_held", gs.writes_held);
  json_member_uint (&w, "writes_in_flight", gs.writes_in_flight);
  if (ds.warning[0])
    json_member_string (&w, "warning", ds.warning);
  if (read_cbw_status (&cs) == 0 && cs.json[0] == '{')
    json_member_raw (&w, "cbw", cs.json);
  else
    json_member_null (&w, "cbw");
}
