/* nbdkit-fleece: cbw filter, the fleece store.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * The fleece store holds the point-in-time copies of clusters that
 * writers have since changed.  It is addressed like the live disk: a
 * cluster at offset X of the disk is kept at offset X of the store,
 * so the store needs no index of its own and a sparse qcow2 of the
 * disk's size costs only what is preserved.
 *
 * This file is the store's interface to the engine (store.h): its
 * configuration, the I/O, the link state, the size bound, the status.
 * Behind it, one NBD connection (common/nbdconn.c), to one of:
 *
 *   - a qcow2 served by a qemu-nbd child (the default): the image and
 *     the process are managed by store-qemu.c;
 *   - an existing NBD server, cbw-store=URI.
 *
 * qemu-nbd locks the image, so there is exactly one connection,
 * shared by all threads.
 *
 * The RAM tier: with cbw-ram=SIZE, the ramtier engine (from
 * filters/ramcache, the same code as the ramcache filter) sits
 * between cbw and the connection.  A copy-before-write then costs a
 * memory copy, snapshot reads of fresh copies come from RAM, and
 * clusters the backup releases before they are written back never
 * reach the disk.  Its blocks are our clusters.  Without it, the calls
 * below go to the NBD connection directly.
 *
 * Losing the store
 * ================
 * The link is UP from store_open on.  When the connection dies (the
 * qemu-nbd child exited or was killed, the cbw-store server went
 * away), the first request to notice it, or the status export, marks
 * the link DOWN and tells the engine (snap_store_failed), which
 * breaks the current snapshot: its preserved data is gone.  From then
 * on store requests fail with EIO at once, without trying the dead
 * connection.  When no snapshot needs the store any more (its wipe
 * at the end of a snapshot, store_prepare before the next point in
 * time) a DOWN store is replaced: the RAM tier and the connection are
 * freed (the tier's data belonged to the lost store), the old image
 * removed, and a fresh store made the way store_open made the first
 * (RESTARTING meanwhile).  If that fails, the link stays DOWN, the
 * new snapshot starts broken, and the next one tries again.
 *
 * Wiping: at the end of a snapshot the engine names the ranges it
 * copied to (store_wipe_ranges), and only those are trimmed.
 *
 * The bound: with cbw-store-limit=SIZE, a write that would take the
 * bytes preserved for the current snapshot past SIZE is refused with
 * ENOSPC after breaking the snapshot (snap_store_failed): the writer
 * goes on, the backup fails.
 */

#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <libnbd.h>
#include <nbdkit-filter.h>

#include "cleanup.h"
#include "json.h"
#include "nbdconn.h"
#include "params.h"
#include "ramtier.h"
#include "rounding.h"
#include "snap.h"
#include "store.h"
#include "store-qemu.h"

/* Parameters. */
static const char *store_uri;           /* cbw-store */
static uint64_t ram_limit;              /* cbw-ram, 0 = no RAM tier */
static uint64_t store_limit;            /* cbw-store-limit, 0 = none */

/* Set by store_open and never changed.  disk_size is what we use of
 * the store (a qcow2 is rounded up to 512 bytes; a cbw-store may be
 * larger).
 */
static uint64_t disk_size;
static uint32_t cluster_size;

/* The current store: the connection and the RAM tier in front of it
 * (if cbw-ram was given).  They are replaced only by renew(), which
 * runs only while no snapshot is active and no store request is in
 * flight (the engine's promise, see store.h); the data paths read
 * them without a lock.  They are written under 'lock' so that the
 * status readers, which run at any time, see them whole.
 */
static struct nbdconn *conn;
static struct ramtier *ram;

/* The largest TRIM we send: NBD requests are at most 4 GiB - 1, and
 * 1 GiB keeps alignment.
 */
#define TRIM_PIECE (UINT64_C (1) << 30)

/* The link to the store, as shown in status. */
enum link_state { LINK_UP, LINK_DOWN, LINK_RESTARTING };

/* 'lock' guards the link state, the counters below it, and the
 * writes of conn and ram.  Never held across store I/O or calls into
 * the engine.  The engine's lock may be held when it is taken (the
 * status), never the other way round.
 */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static enum link_state link_state = LINK_UP;
static uint64_t restarts;               /* fresh stores made */
static char last_error[160];            /* "" if none */
static uint64_t use_bytes;              /* preserved for this snapshot */
static uint64_t peak_bytes;             /* most of it this snapshot */
static bool warned_use;                 /* logged the 80 % line */

/* Store request to a DOWN store: fail at once, quietly. */
static bool
link_down (int *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (link_state == LINK_UP)
    return false;
  *err = EIO;
  return true;
}

/* The link is lost (WHY): mark it DOWN and break the snapshot.  Only
 * the first caller does anything.
 */
static void
lost (const char *why)
{
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    if (link_state != LINK_UP)
      return;
    link_state = LINK_DOWN;
    snprintf (last_error, sizeof last_error, "%s", why);
  }
  nbdkit_error ("cbw: the fleece store is lost (%s): the current "
                "snapshot breaks, the next one gets a fresh store", why);
  snap_store_failed ("the fleece store was lost");
}

/* The connection to the store died. */
static void
conn_lost (void)
{
  lost (store_uri ? "connection to cbw-store lost"
                  : "connection to qemu-nbd lost (did it exit?)");
}

/* After a request on C failed: was it because the connection died?
 * The handle says so before our reader thread does: libnbd fails the
 * commands of a dropped connection once it has marked it dead.
 */
static void
check_conn (struct nbdconn *c)
{
  struct nbd_handle *h = nbdconn_handle (c);

  if (nbdconn_is_dead (c) || nbd_aio_is_dead (h) || nbd_aio_is_closed (h))
    conn_lost ();
}

/* Notice a store that died while idle. */
void
store_poll (void)
{
  bool dead;

  /* Under the lock: renew may be closing the connection. */
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    dead = link_state == LINK_UP && conn && nbdconn_is_dead (conn);
  }
  if (dead)
    conn_lost ();
}

/* A store parameter?  See store.h. */
int
store_config (const char *key, const char *value)
{
  int64_t n;

  if (strcmp (key, "cbw-store") == 0) {
    store_uri = value;
    return 1;
  }
  if (strcmp (key, "cbw-ram") == 0) {
    if (param_size ("cbw", key, value, &n) == -1)
      return -1;
    ram_limit = n;
    return 1;
  }
  if (strcmp (key, "cbw-store-limit") == 0) {
    if (param_size ("cbw", key, value, &n) == -1)
      return -1;
    if (n == 0) {
      nbdkit_error ("cbw: cbw-store-limit=%s: must be more than 0 "
                    "(leave it out for no limit)", value);
      return -1;
    }
    store_limit = n;
    return 1;
  }
  return qemu_store_config (key, value);
}

/* The machine's RAM in bytes, or 0 if unknown. */
static uint64_t
physical_memory (void)
{
  long pages = sysconf (_SC_PHYS_PAGES);
  long page_size = sysconf (_SC_PAGESIZE);

  if (pages <= 0 || page_size <= 0)
    return 0;
  return (uint64_t) pages * page_size;
}

/* Cross-checks, before nbdkit forks. */
int
store_config_complete (void)
{
  uint64_t mem;

  if (qemu_store_config_complete (store_uri != NULL) == -1)
    return -1;
  /* Checked here, before nbdkit forks, so that a daemonised nbdkit
   * still exits with the message.
   */
  mem = physical_memory ();
  if (mem > 0 && ram_limit > mem) {
    nbdkit_error ("cbw: cbw-ram=%" PRIu64 " is more than this "
                  "machine's memory (%" PRIu64 " bytes)", ram_limit, mem);
    return -1;
  }
  return 0;
}

/* cbw-store=URI: connect to it once to check that it is there, then
 * hang up (the real connection is made after the fork).
 */
static int
probe_uri (void)
{
  struct nbd_handle *h = nbd_create ();
  int r = -1;

  if (h == NULL) {
    nbdkit_error ("cbw: nbd_create: %s", nbd_get_error ());
    return -1;
  }
  if (nbd_connect_uri (h, store_uri) == -1)
    nbdkit_error ("cbw: cbw-store=%s: cannot connect: %s",
                  store_uri, nbd_get_error ());
  else if (nbd_is_read_only (h) == 1)
    nbdkit_error ("cbw: cbw-store=%s is read-only", store_uri);
  else
    r = 0;
  nbd_close (h);
  return r;
}

/* Checks that need the outside world, before nbdkit forks. */
int
store_get_ready (void)
{
  if (store_uri)
    return probe_uri ();
  return qemu_store_get_ready ();
}

/* The store below the RAM tier: the NBD connection OPAQUE.  (The
 * tier's writer threads use it, so it is passed, not read from the
 * global.)
 */
static int
below_pread (void *opaque, void *buf, uint32_t count, uint64_t offset,
             int *err)
{
  struct nbdconn *c = opaque;

  if (link_down (err))
    return -1;
  if (nbdconn_pread (c, buf, count, offset, 0, err) == -1) {
    check_conn (c);
    return -1;
  }
  return 0;
}

/* Write below. */
static int
below_pwrite (void *opaque, const void *buf, uint32_t count,
              uint64_t offset, int *err)
{
  struct nbdconn *c = opaque;

  if (link_down (err))
    return -1;
  if (nbdconn_pwrite (c, buf, count, offset, 0, err) == -1) {
    check_conn (c);
    return -1;
  }
  return 0;
}

/* Trim below, if the server can. */
static int
below_trim (void *opaque, uint32_t count, uint64_t offset, int *err)
{
  struct nbdconn *c = opaque;

  if (link_down (err))
    return -1;
  if (nbd_can_trim (nbdconn_handle (c)) != 1)
    return 0;
  if (nbdconn_trim (c, count, offset, 0, err) == -1) {
    check_conn (c);
    return -1;
  }
  return 0;
}

/* Check what the server behind C offers. */
static int
check_store (struct nbdconn *c)
{
  int64_t store_size = nbd_get_size (nbdconn_handle (c));

  if (store_size == -1) {
    nbdkit_error ("cbw: fleece store: cannot get size: %s",
                  nbd_get_error ());
    return -1;
  }
  if ((uint64_t) store_size < disk_size) {
    nbdkit_error ("cbw: fleece store is %" PRIi64 " bytes, smaller than "
                  "the live disk (%" PRIu64 " bytes)", store_size, disk_size);
    return -1;
  }
  if (nbd_is_read_only (nbdconn_handle (c)) == 1) {
    nbdkit_error ("cbw: fleece store is read-only");
    return -1;
  }
  if (nbd_can_trim (nbdconn_handle (c)) != 1)
    nbdkit_debug ("cbw: fleece store cannot trim: released clusters "
                  "will not free space");
  return 0;
}

/* Make a store: connect (creating the image and qemu-nbd first if it
 * is ours), check it, and put the RAM tier in front.  On success
 * *CONNP and *RAMP are set; on failure nothing is left behind.
 */
static int
make_store (struct nbdconn **connp, struct ramtier **ramp)
{
  struct ramtier_below below = {
    .pread = below_pread, .pwrite = below_pwrite, .trim = below_trim,
  };
  struct nbdconn *c;
  struct ramtier *r = NULL;

  c = nbdconn_new ("cbw: fleece store");
  if (c == NULL)
    return -1;
  below.opaque = c;
  if (store_uri) {
    if (nbdconn_connect_uri (c, store_uri) == -1)
      goto err;
  }
  else if (qemu_store_create (disk_size, cluster_size, c) == -1)
    goto err;
  if (check_store (c) == -1 || nbdconn_start (c, "cbw-store") == -1)
    goto err;

  if (ram_limit > 0) {
    r = ramtier_new (ram_limit, cluster_size, disk_size, &below);
    if (r == NULL || ramtier_start (r) == -1)
      goto err;
    nbdkit_debug ("cbw: RAM tier of %" PRIu64 " bytes in front of the "
                  "fleece store", ram_limit);
  }
  *connp = c;
  *ramp = r;
  return 0;

 err:
  ramtier_free (r);
  nbdconn_close (c);
  if (!store_uri) {
    qemu_store_disconnected ();
    qemu_store_remove (false);
  }
  return -1;
}

/* Free the current store (the tier first: its writers use the
 * connection).  Its data is lost.
 */
static void
free_store (void)
{
  struct nbdconn *c;
  struct ramtier *r;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    r = ram;
    ram = NULL;
  }
  if (r) {
    ramtier_debug_stats (r, "cbw: RAM tier");
    ramtier_free (r);
  }
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    c = conn;
    conn = NULL;
  }
  nbdconn_close (c);
  if (!store_uri)
    qemu_store_disconnected ();
}

/* The first store, after the fork. */
int
store_open (uint64_t size, uint32_t clsize)
{
  struct nbdconn *c;
  struct ramtier *r;

  disk_size = size;
  cluster_size = clsize;
  /* The first store is a condition of serving: nbdkit exits if it
   * cannot be made.
   */
  if (make_store (&c, &r) == -1)
    return -1;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  conn = c;
  ram = r;
  link_state = LINK_UP;
  return 0;
}

/* Replace a lost store by a fresh one.  No snapshot is active and no
 * store request in flight.  Returns 0, or -1 (still DOWN).
 */
static int
renew (void)
{
  struct nbdconn *c;
  struct ramtier *r;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    assert (link_state == LINK_DOWN);
    link_state = LINK_RESTARTING;
  }
  free_store ();
  if (!store_uri)
    qemu_store_remove (false);
  nbdkit_debug ("cbw: making a fresh fleece store");

  if (make_store (&c, &r) == -1) {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    link_state = LINK_DOWN;
    snprintf (last_error, sizeof last_error, "%s",
              store_uri ? "cannot reconnect to cbw-store"
                        : "cannot start a fresh qemu-nbd store");
    return -1;
  }
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  conn = c;
  ram = r;
  link_state = LINK_UP;
  restarts++;
  use_bytes = 0;
  nbdkit_debug ("cbw: fresh fleece store up (restart %" PRIu64 ")",
                restarts);
  return 0;
}

/* The current link state. */
static enum link_state
current_link (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  return link_state;
}

/* Before a point in time: a lost store is replaced. */
int
store_prepare (void)
{
  store_poll ();
  if (current_link () == LINK_DOWN && renew () == -1)
    return -1;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    peak_bytes = use_bytes;
    warned_use = false;
  }
  return 0;
}

/* At unload: free the store, remove the image unless kept. */
void
store_close (void)
{
  free_store ();
  if (!store_uri)
    qemu_store_remove (true);
  qemu_store_free ();
}

/* Read preserved data. */
int
store_read (void *buf, uint32_t count, uint64_t offset, int *err)
{
  if (ram)
    return ramtier_pread (ram, buf, count, offset, err);
  return below_pread (conn, buf, count, offset, err);
}

/* Count COUNT more bytes preserved, unless that passes the limit.
 * Returns 0, or -1 (the limit) with *err = ENOSPC after breaking the
 * snapshot.  Logs once a snapshot when use passes 80 % of the limit.
 */
static int
use_more (uint32_t count, int *err)
{
  uint64_t use;
  bool warn = false, refuse = false;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    if (store_limit > 0 && use_bytes + count > store_limit)
      refuse = true;
    else {
      use_bytes += count;
      peak_bytes = MAX (peak_bytes, use_bytes);
      if (store_limit > 0 && !warned_use &&
          use_bytes > store_limit / 5 * 4)
        warn = warned_use = true;
    }
    use = use_bytes;
  }
  if (warn)
    nbdkit_error ("cbw: warning: the fleece store holds %" PRIu64
                  " bytes, over 80%% of cbw-store-limit=%" PRIu64
                  "; past the limit the snapshot breaks",
                  use, store_limit);
  if (!refuse)
    return 0;
  nbdkit_error ("cbw: preserving %" PRIu32 " more bytes would take the "
                "fleece store past cbw-store-limit=%" PRIu64 ": the "
                "snapshot breaks, the writer goes on", count, store_limit);
  snap_store_failed ("the fleece store reached cbw-store-limit");
  *err = ENOSPC;
  return -1;
}

/* Count COUNT bytes no longer preserved. */
static void
use_less (uint64_t count)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
  use_bytes -= MIN (use_bytes, count);
}

/* Start preserving data (see store.h).  Into the RAM tier, or when
 * the write cannot go as one command, the write is done here, and
 * store_write_finish only reports it.
 */
void
store_write_start (void *buf, uint32_t count, uint64_t offset,
                   const struct timespec *deadline, struct store_write *w)
{
  *w = (struct store_write) { .count = count, .offset = offset };
  if (deadline) {
    w->deadline = *deadline;
    w->has_deadline = true;
  }
  if (use_more (count, &w->err) == -1) {
    free (buf);
    w->r = -1;
    return;
  }
  w->counted = true;
  if (ram) {
    /* Into RAM; only a full tier makes this wait, and the deadline
     * bounds that wait.
     */
    w->r = deadline ?
      ramtier_pwrite_deadline (ram, buf, count, offset, deadline, &w->err) :
      ramtier_pwrite (ram, buf, count, offset, &w->err);
    free (buf);
  }
  else if (link_down (&w->err)) {
    free (buf);
    w->r = -1;
  }
  else if (count > nbdconn_max_request (conn)) {
    w->r = nbdconn_pwrite (conn, buf, count, offset, 0, &w->err);
    free (buf);
  }
  else {
    w->cmd = nbdconn_pwrite_owned_start (conn, buf, count, offset, 0,
                                         &w->err);
    w->r = w->cmd ? 0 : -1;
  }
}

int
store_write_finish (struct store_write *w, int *err)
{
  if (w->cmd) {
    w->r = nbdconn_finish (w->cmd, w->has_deadline ? &w->deadline : NULL,
                           &w->err);
    w->cmd = NULL;
  }
  if (w->r == -1) {
    if (!ram)
      check_conn (conn);
    /* A failed copy is undone by the engine: not preserved. */
    if (w->counted)
      use_less (w->count);
    *err = w->err;
  }
  return w->r;
}

/* A detached store write: what its completion needs. */
struct detached {
  store_done_fn done;
  void *opaque;
  uint32_t count;
  uint64_t offset;
  bool counted;
};

/* The reply to a detached write, on the store's reader thread, inside
 * libnbd's callback: so no call on the connection (check_conn would
 * make one); a lost connection shows as ENOTCONN.
 */
static void
detached_done (void *opaque, int e)
{
  struct detached d = *(struct detached *) opaque;

  free (opaque);
  if (e == 0) {
    d.done (d.opaque, 0, 0);
    return;
  }
  nbdkit_error ("cbw: fleece store: write at offset %" PRIu64 ": %s",
                d.offset, strerror (e));
  if (e == ENOTCONN)
    conn_lost ();
  /* A failed copy is undone by the engine: not preserved. */
  if (d.counted)
    use_less (d.count);
  d.done (d.opaque, -1, e == ENOTCONN ? EIO : e);
}

bool
store_write_detach (struct store_write *w, store_done_fn done,
                    void *opaque)
{
  struct detached *d;

  if (w->cmd == NULL || w->has_deadline)
    return false;
  d = malloc (sizeof *d);
  if (d == NULL)
    return false;               /* the caller waits instead */
  *d = (struct detached) { .done = done, .opaque = opaque,
                           .count = w->count, .offset = w->offset,
                           .counted = w->counted };
  if (!nbdconn_detach (w->cmd, detached_done, d)) {
    free (d);
    return false;
  }
  w->cmd = NULL;
  return true;
}

/* Preserve data (see store.h). */
int
store_write_owned (void *buf, uint32_t count, uint64_t offset,
                   const struct timespec *deadline, int *err)
{
  struct store_write w;

  store_write_start (buf, count, offset, deadline, &w);
  return store_write_finish (&w, err);
}

/* Trim [offset, offset+count) in pieces an NBD request can take. */
static int
trim_range (uint64_t count, uint64_t offset, int *err)
{
  while (count > 0) {
    uint32_t n = MIN (count, TRIM_PIECE);

    if (ram) {
      if (ramtier_trim (ram, n, offset, err) == -1)
        return -1;
    }
    else if (below_trim (conn, n, offset, err) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

/* Drop released clusters. */
int
store_trim (uint64_t count, uint64_t offset, int *err)
{
  use_less (count);
  return trim_range (count, offset, err);
}

/* Allocation of preserved data. */
int
store_extents (uint32_t count, uint64_t offset,
               struct nbdkit_extents *extents, int *err)
{
  /* Through the RAM tier, allocation is not known cheaply: say data,
   * which is always correct.
   */
  if (ram) {
    if (nbdkit_add_extent (extents, offset, count, 0) == -1) {
      *err = errno;
      return -1;
    }
    return 0;
  }
  if (link_down (err))
    return -1;
  if (nbdconn_extents (conn, count, offset, 0, extents, err) == -1) {
    check_conn (conn);
    return -1;
  }
  return 0;
}

/* Empty the store at the end of a snapshot (see store.h). */
int
store_wipe_ranges (store_range_fn next_range, void *opaque, int *err)
{
  uint64_t offset, count;

  /* Writes abandoned at a deadline must not land after the wipe. */
  if (conn)
    nbdconn_wait_idle (conn);
  store_poll ();
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    use_bytes = 0;
  }
  /* A lost store is not wiped but replaced (with its RAM tier) by an
   * empty one; if that fails, store_prepare tries again.
   */
  if (current_link () == LINK_DOWN) {
    renew ();
    return 0;
  }
  while (next_range (opaque, &offset, &count)) {
    if (trim_range (count, offset, err) == -1) {
      if (current_link () != LINK_DOWN)
        return -1;
      renew ();
      return 0;
    }
  }
  return 0;
}

/* The link state as status shows it. */
static const char *
link_name (enum link_state st)
{
  switch (st) {
  case LINK_UP: return "up";
  case LINK_DOWN: return "down";
  case LINK_RESTARTING: return "restarting";
  }
  abort ();
}

/* Status members (see store.h). */
void
store_status_json (char *buf, size_t len)
{
  struct ramtier_stats st = { 0 };
  struct json_writer w;
  FILE *fp = json_buffer_open (buf, len);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (fp == NULL)
    return;
  /* No tier while a lost store is not replaced: it holds nothing. */
  if (ram)
    ramtier_get_stats (ram, &st);
  json_init (&w, fp, false);
  json_member_string (&w, "store_kind", store_uri ? "nbd" : "qcow2");
  json_member_string (&w, "store_link", link_name (link_state));
  json_member_uint (&w, "store_restarts", restarts);
  json_member_string (&w, "store_last_error", last_error);
  json_member_uint (&w, "store_use_bytes", use_bytes);
  json_member_uint (&w, "store_peak_bytes", peak_bytes);
  json_member_uint (&w, "store_limit_bytes", store_limit);
  json_member_uint (&w, "ram_limit", ram_limit);
  if (ram_limit > 0) {
    json_member_uint (&w, "ram_held_bytes", st.held_bytes);
    json_member_uint (&w, "ram_dirty_bytes", st.dirty_bytes);
    json_member_uint (&w, "ram_written_below_bytes", st.written_below_bytes);
    json_member_uint (&w, "ram_dropped_bytes", st.dropped_bytes);
    json_member_uint (&w, "ram_writer_stalls", st.writer_stalls);
  }
  json_buffer_close (fp, buf, len);
}

/* Space the image takes (see store.h). */
int64_t
store_allocated_bytes (void)
{
  /* Under the lock: while the link is UP, renew is not replacing the
   * image.
   */
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (store_uri || link_state != LINK_UP)
    return -1;
  return qemu_store_allocated_bytes ();
}
