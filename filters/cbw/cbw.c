/* nbdkit-fleece: the cbw (copy-before-write) filter.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Serves three exports over the disk below:
 *
 *   ""            the writer's view: the live disk, with copy-before-
 *                 write while a snapshot is active;
 *   "snapshot"    the point-in-time view (read, TRIM to release);
 *   "cbw-status"  4096 bytes of JSON describing the snapshot, for the
 *                 filters above (bitmap-discard) and for people.
 *
 * The engine is in snap.c (see the essay at its top), with the
 * copy-before-write in copy.c and the registry of snapshot reads in
 * reqlist.c; the fleece store is in store.c.  The export names and
 * the status record are the contract with the layers above
 * (common/cbw-contract.h).  This file holds the nbdkit callbacks only.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include "cbw-contract.h"
#include "context.h"
#include "params.h"
#include "rounding.h"
#include "snap.h"
#include "store.h"

/* What a connection (or context) is looking at. */
enum export_kind { EXPORT_WRITER, EXPORT_SNAPSHOT, EXPORT_STATUS };

struct cbw_handle {
  enum export_kind kind;
};

static void
cbw_unload (void)
{
  snap_free ();
  store_close ();
}

static int
cbw_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  int r;

  if (strcmp (key, "cbw-cluster-size") == 0) {
    int64_t n;

    if (param_size ("cbw", key, value, &n) == -1)
      return -1;
    if (n < 4096 || n > (16 << 20) || !is_power_of_2 (n)) {
      nbdkit_error ("cbw: cbw-cluster-size=%s: must be a power of 2 "
                    "between 4K and 16M", value);
      return -1;
    }
    cbw_cluster_size = n;
    return 0;
  }
  if (strcmp (key, "cbw-linger") == 0)
    return param_seconds ("cbw", key, value, &cbw_linger);
  if (strcmp (key, "cbw-timeout") == 0)
    return param_seconds ("cbw", key, value, &cbw_timeout);
  if (strcmp (key, "cbw-on-error") == 0) {
    if (strcmp (value, "break-snapshot") == 0)
      cbw_on_error = CBW_BREAK_SNAPSHOT;
    else if (strcmp (value, "break-write") == 0)
      cbw_on_error = CBW_BREAK_WRITE;
    else {
      nbdkit_error ("cbw: cbw-on-error=%s: expected break-snapshot "
                    "or break-write", value);
      return -1;
    }
    return 0;
  }
  r = store_config (key, value);
  if (r != 0)
    return r == 1 ? 0 : -1;
  return next (nxdata, key, value);
}

static int
cbw_config_complete (nbdkit_next_config_complete *next,
                     nbdkit_backend *nxdata)
{
  if (store_config_complete () == -1)
    return -1;
  return next (nxdata);
}

#define cbw_config_help \
  "cbw-cluster-size=<SIZE>  Copy granularity (default 64K).\n" \
  "cbw-linger=<SECS>        Keep a snapshot after its last client (0).\n" \
  "cbw-on-error=break-snapshot|break-write\n" \
  "                         What a failed copy breaks (break-snapshot).\n" \
  "cbw-timeout=<SECS>       Copies slower than this fail (0 = never).\n" \
  store_config_help

static int
cbw_get_ready (int thread_model)
{
  return store_get_ready ();
}

/* Learn the disk size from below, then create the store and the
 * engine.  This is the first moment the layers below can be asked.
 */
static int
cbw_after_fork (nbdkit_backend *backend)
{
  struct context_caps caps;
  nbdkit_next *next;
  int64_t size;

  next = context_open_below (backend, 1, "", "cbw", &caps);
  if (next == NULL)
    return -1;
  size = caps.size;
  context_close_below (next);

  if (store_open (size, cbw_cluster_size) == -1)
    return -1;
  if (snap_init (size) == -1)
    return -1;
  nbdkit_debug ("cbw: disk of %" PRIi64 " bytes, clusters of %" PRIu32,
                size, cbw_cluster_size);
  return 0;
}

static int
cbw_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                  int readonly, int is_tls, struct nbdkit_exports *exports)
{
  if (nbdkit_add_export (exports, "", "the live disk (writer)") == -1 ||
      nbdkit_add_export (exports, CBW_SNAPSHOT_EXPORT,
                         "point-in-time snapshot") == -1 ||
      nbdkit_add_export (exports, CBW_STATUS_EXPORT,
                         "snapshot status (JSON)") == -1)
    return -1;
  return 0;
}

static const char *
cbw_default_export (nbdkit_next_default_export *next,
                    nbdkit_backend *nxdata, int readonly, int is_tls)
{
  return "";
}

static void *
cbw_open (nbdkit_next_open *next, nbdkit_context *nxdata,
          int readonly, const char *exportname, int is_tls)
{
  struct cbw_handle *h;
  enum export_kind kind;

  if (strcmp (exportname, CBW_WRITER_EXPORT) == 0)
    kind = EXPORT_WRITER;
  else if (strcmp (exportname, CBW_SNAPSHOT_EXPORT) == 0)
    kind = EXPORT_SNAPSHOT;
  else if (strcmp (exportname, CBW_STATUS_EXPORT) == 0)
    kind = EXPORT_STATUS;
  else {
    nbdkit_error ("cbw: no export named \"%s\": the exports are \"\" "
                  "(the live disk), \"" CBW_SNAPSHOT_EXPORT "\" and \""
                  CBW_STATUS_EXPORT "\"", exportname);
    return NULL;
  }

  /* Every export reads the one live disk below. */
  if (next (nxdata, readonly || kind == EXPORT_STATUS, "") == -1)
    return NULL;

  h = malloc (sizeof *h);
  if (h == NULL) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  h->kind = kind;
  /* The point in time is taken here, when the first snapshot context
   * opens.
   */
  if (kind == EXPORT_SNAPSHOT)
    snap_open ();
  return h;
}

static void
cbw_close (void *handle)
{
  struct cbw_handle *h = handle;

  if (h->kind == EXPORT_SNAPSHOT)
    snap_close ();
  free (h);
}

/* nbdkit caches each capability of the layer below when it is first
 * asked, and asserts that it was asked before the matching data call.
 * The snapshot and status exports answer the can_* callbacks
 * themselves, so ask below here, once, for every export.
 */
static int
cbw_prepare (nbdkit_next *next, void *handle, int readonly)
{
  return context_ask_all (next);
}

static int64_t
cbw_get_size (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  if (h->kind == EXPORT_STATUS)
    return CBW_STATUS_SIZE;
  return next->get_size (next);
}

/* The snapshot export accepts TRIM, so it must be writable; its writes
 * and zeroes fail with EROFS.
 */
static int
cbw_can_write (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  switch (h->kind) {
  case EXPORT_WRITER: return next->can_write (next);
  case EXPORT_SNAPSHOT: return 1;
  case EXPORT_STATUS: return 0;
  }
  abort ();
}

static int
cbw_can_trim (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  switch (h->kind) {
  case EXPORT_WRITER: return next->can_trim (next);
  case EXPORT_SNAPSHOT: return 1;
  case EXPORT_STATUS: return 0;
  }
  abort ();
}

static int
cbw_can_zero (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  switch (h->kind) {
  case EXPORT_WRITER: return next->can_zero (next);
  case EXPORT_SNAPSHOT: return NBDKIT_ZERO_NATIVE; /* fails with EROFS */
  case EXPORT_STATUS: return NBDKIT_ZERO_NONE;
  }
  abort ();
}

static int
cbw_can_fast_zero (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  if (h->kind == EXPORT_WRITER)
    return next->can_fast_zero (next);
  return 0;
}

static int
cbw_can_fua (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  if (h->kind == EXPORT_WRITER)
    return next->can_fua (next);
  return NBDKIT_FUA_NONE;
}

static int
cbw_can_flush (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  if (h->kind == EXPORT_WRITER)
    return next->can_flush (next);
  return 1;                     /* nothing to flush: succeeds */
}

static int
cbw_can_extents (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  switch (h->kind) {
  case EXPORT_WRITER: return next->can_extents (next);
  case EXPORT_SNAPSHOT: return 1;
  case EXPORT_STATUS: return 0;
  }
  abort ();
}

static int
cbw_can_cache (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  if (h->kind == EXPORT_WRITER)
    return next->can_cache (next);
  return NBDKIT_CACHE_NONE;
}

/* The engine's state is shared by all connections, so what one
 * connection sees another sees too: multi-conn is safe for the
 * snapshot, and as safe as the disk below for the writer.
 */
static int
cbw_can_multi_conn (nbdkit_next *next, void *handle)
{
  struct cbw_handle *h = handle;

  if (h->kind == EXPORT_WRITER)
    return next->can_multi_conn (next);
  return 1;
}

/* Read data. */
static int
cbw_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  struct cbw_handle *h = handle;
  char status[CBW_STATUS_SIZE + 1];
  size_t len;

  switch (h->kind) {
  case EXPORT_WRITER:
    return next->pread (next, buf, count, offset, flags, err);
  case EXPORT_SNAPSHOT:
    return snap_read (next, buf, count, offset, err);
  case EXPORT_STATUS:
    /* One line of JSON, padded with spaces, ending in a newline.  A
     * store that died while idle is noticed here first.
     */
    store_poll ();
    snap_status_json (status, sizeof status);
    len = strlen (status);
    memset (status + len, ' ', CBW_STATUS_SIZE - len);
    status[CBW_STATUS_SIZE - 1] = '\n';
    memcpy (buf, status + offset, count);
    return 0;
  }
  abort ();
}

/* Write data. */
static int
cbw_pwrite (nbdkit_next *next, void *handle, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct cbw_handle *h = handle;
  struct snap_write w;
  int r;

  if (h->kind != EXPORT_WRITER) {
    *err = EROFS;
    return -1;
  }
  if (snap_write_begin (next, count, offset, false, &w, err) == -1)
    return -1;
  r = next->pwrite (next, buf, count, offset, flags, err);
  snap_write_end (&w);
  return r;
}

/* Zero.  A fast zero fails with ENOTSUP when it would need a copy. */
static int
cbw_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  struct cbw_handle *h = handle;
  struct snap_write w;
  int r;

  if (h->kind != EXPORT_WRITER) {
    *err = EROFS;
    return -1;
  }
  if (snap_write_begin (next, count, offset,
                        flags & NBDKIT_FLAG_FAST_ZERO, &w, err) == -1)
    return -1;
  r = next->zero (next, count, offset, flags, err);
  snap_write_end (&w);
  return r;
}

/* Trim.  On the writer export it destroys data, so it copies first;
 * on the snapshot export it releases clusters.
 */
static int
cbw_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  struct cbw_handle *h = handle;
  struct snap_write w;
  int r;

  switch (h->kind) {
  case EXPORT_WRITER:
    if (snap_write_begin (next, count, offset, false, &w, err) == -1)
      return -1;
    r = next->trim (next, count, offset, flags, err);
    snap_write_end (&w);
    return r;
  case EXPORT_SNAPSHOT:
    return snap_trim (count, offset, err);
  case EXPORT_STATUS:
    *err = EROFS;
    return -1;
  }
  abort ();
}

/* Flush. */
static int
cbw_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct cbw_handle *h = handle;

  if (h->kind == EXPORT_WRITER)
    return next->flush (next, flags, err);
  return 0;
}

/* Cache (only advertised on the writer export). */
static int
cbw_cache (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
           uint32_t flags, int *err)
{
  return next->cache (next, count, offset, flags, err);
}

/* Extents. */
static int
cbw_extents (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags,
             struct nbdkit_extents *extents, int *err)
{
  struct cbw_handle *h = handle;

  if (h->kind == EXPORT_SNAPSHOT)
    return snap_extents (next, count, offset, flags, extents, err);
  return next->extents (next, count, offset, flags, extents, err);
}

static struct nbdkit_filter filter = {
  .name               = "cbw",
  .longname           = "nbdkit copy-before-write (fleecing) filter",
  .unload             = cbw_unload,
  .config             = cbw_config,
  .config_complete    = cbw_config_complete,
  .config_help        = cbw_config_help,
  .get_ready          = cbw_get_ready,
  .after_fork         = cbw_after_fork,
  .list_exports       = cbw_list_exports,
  .default_export     = cbw_default_export,
  .open               = cbw_open,
  .close              = cbw_close,
  .prepare            = cbw_prepare,
  .get_size           = cbw_get_size,
  .can_write          = cbw_can_write,
  .can_flush          = cbw_can_flush,
  .can_trim           = cbw_can_trim,
  .can_zero           = cbw_can_zero,
  .can_fast_zero      = cbw_can_fast_zero,
  .can_extents        = cbw_can_extents,
  .can_fua            = cbw_can_fua,
  .can_multi_conn     = cbw_can_multi_conn,
  .can_cache          = cbw_can_cache,
  .pread              = cbw_pread,
  .pwrite             = cbw_pwrite,
  .zero               = cbw_zero,
  .trim               = cbw_trim,
  .flush              = cbw_flush,
  .cache              = cbw_cache,
  .extents            = cbw_extents,
};

NBDKIT_REGISTER_FILTER (filter)
