/* nbdkit-fleece: the bitmap-discard filter.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Sits above the cbw filter and serves:
 *
 *   ""            the writer's export: every write, zero and trim
 *                 marks its granules in the persistent dirty bitmap
 *                 (dirty.c) before it goes below;
 *   "snapshot"    the point-in-time view, restricted to the scope of
 *                 the current backup (scope.c);
 *   "cbw-status"  passed through.
 *
 * Control commands arrive on bitmap-discard-control (control.c).  This file
 * holds the nbdkit callbacks only.
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
#include "control.h"
#include "dirty.h"
#include "scope.h"

#define SNAPSHOT_EXPORT CBW_SNAPSHOT_EXPORT

/* bitmap-discard-dir (absolute), or NULL: no dirty tracking. */
static char *bitmap_dir;

/* bitmap-discard-disk-id, or "": recorded in and checked against the
 * bitmap files.
 */
static char disk_id[DISK_ID_MAX + 1];

/* bitmap-discard-control (absolute), or NULL: no control socket. */
static char *control_path;

/* What a connection is looking at. */
enum export_kind { EXPORT_WRITER, EXPORT_SNAPSHOT, EXPORT_OTHER };

struct bd_handle {
  enum export_kind kind;
};

/* No more control commands, and an active snapshot ends, while the
 * layers below can still be used.
 */
static void
bd_cleanup (nbdkit_backend *backend)
{
  control_stop ();
  scope_cleanup ();
}

static void
bd_unload (void)
{
  control_stop ();
  dirty_close ();
  scope_free ();
  free (bitmap_dir);
  free (control_path);
}

/* Is key the parameter name, or its old spelling (accepted for one
 * release, see the man page)?
 */
static bool
is_key (const char *key, const char *name, const char *old)
{
  return strcmp (key, name) == 0 || (old && strcmp (key, old) == 0);
}

/* bitmap-discard-disk-id: 1 to DISK_ID_MAX printable ASCII characters
 * other than space, '"' and '\\'.
 */
static int
config_disk_id (const char *key, const char *value)
{
  size_t i, len = strlen (value);

  for (i = 0; i < len; ++i)
    if (value[i] <= ' ' || value[i] > '~' || value[i] == '"' ||
        value[i] == '\\')
      break;
  if (len == 0 || len > DISK_ID_MAX || i < len) {
    nbdkit_error ("bitmap-discard: %s: must have 1 to %d printable "
                  "characters, without spaces, '\"' or '\\'",
                  key, DISK_ID_MAX);
    return -1;
  }
  strcpy (disk_id, value);
  return 0;
}

static int
config_granularity (const char *key, const char *value)
{
  int64_t n;

  if (param_size ("bitmap-discard", key, value, &n) == -1)
    return -1;
  if (n < 4096 || n > (INT64_C (1) << 30) || !is_power_of_2 (n)) {
    nbdkit_error ("bitmap-discard: %s=%s: must be a power of 2 between "
                  "4K and 1G", key, value);
    return -1;
  }
  bd_granularity = n;
  return 0;
}

static int
bd_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
           const char *key, const char *value)
{
  if (is_key (key, "bitmap-discard-dir", "bitmap-dir")) {
    free (bitmap_dir);
    bitmap_dir = nbdkit_absolute_path (value);
    return bitmap_dir ? 0 : -1;
  }
  if (is_key (key, "bitmap-discard-control", "bitmap-control")) {
    free (control_path);
    control_path = nbdkit_absolute_path (value);
    return control_path ? 0 : -1;
  }
  if (is_key (key, "bitmap-discard-granularity",
              "bitmap-granularity"))
    return config_granularity (key, value);
  if (is_key (key, "bitmap-discard-disk-id", NULL))
    return config_disk_id (key, value);
  if (is_key (key, "bitmap-discard-on-read", NULL))
    return param_bool ("bitmap-discard", key, value, &bd_discard_on_read);
  return next (nxdata, key, value);
}

#define bd_config_help \
  "bitmap-discard-dir=<DIR>     Persistent dirty bitmaps (checkpoints).\n" \
  "bitmap-discard-control=<SOCKET> Control socket (snapshot, release...).\n" \
  "bitmap-discard-granularity=<SIZE> Dirty tracking granule (default 64K).\n" \
  "bitmap-discard-disk-id=<ID>  The disk's name, kept in the bitmaps.\n" \
  "bitmap-discard-on-read=<BOOL> Release what was read (default false)."

/* The size of the disk below, or -1 with an error logged. */
static int64_t
disk_size_below (nbdkit_backend *backend)
{
  struct context_caps caps;
  nbdkit_next *next;

  next = context_open_below (backend, 1, "", "bitmap-discard", &caps);
  if (next == NULL)
    return -1;
  context_close_below (next);
  return caps.size;
}

/* What can refuse the start without asking the layers below happens
 * here, before nbdkit forks, so that a daemonised nbdkit exits non-zero
 * with the message: the control socket is bound and the bitmap
 * directory is loaded and checked.  (The layers below cannot be asked
 * for the disk size before the fork: some sleep in their open, which
 * nbdkit only supports once it serves.)
 */
static int
bd_get_ready (int thread_model)
{
  bd_have_control = control_path != NULL;
  if (bitmap_dir && dirty_open (bitmap_dir, bd_granularity, disk_id) == -1)
    return -1;
  if (control_path && control_listen (control_path) == -1)
    return -1;
  return 0;
}

/* Learn the disk size, check the bitmaps against it, start the
 * control thread.
 */
static int
bd_after_fork (nbdkit_backend *backend)
{
  int64_t size = disk_size_below (backend);

  if (size == -1)
    return -1;
  if (scope_init (backend, size) == -1)
    return -1;
  if (dirty_start (size) == -1)
    return -1;
  if (control_path && control_start () == -1)
    return -1;
  return 0;
}

static void *
bd_open (nbdkit_next_open *next, nbdkit_context *nxdata,
         int readonly, const char *exportname, int is_tls)
{
  struct bd_handle *h;
  enum export_kind kind;

  if (strcmp (exportname, "") == 0)
    kind = EXPORT_WRITER;
  else if (strcmp (exportname, SNAPSHOT_EXPORT) == 0)
    kind = EXPORT_SNAPSHOT;
  else
    kind = EXPORT_OTHER;        /* cbw-status, or refused below */

  h = malloc (sizeof *h);
  if (h == NULL) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  h->kind = kind;
  /* Join the snapshot before cbw sees the context, so that without a
   * control socket our full scope exists before cbw takes the PIT.
   */
  if (kind == EXPORT_SNAPSHOT && scope_client_open () == -1) {
    free (h);
    return NULL;
  }
  if (next (nxdata, readonly, exportname) == -1) {
    if (kind == EXPORT_SNAPSHOT) {
      scope_client_opened ();
      scope_client_close ();
    }
    free (h);
    return NULL;
  }
  if (kind == EXPORT_SNAPSHOT)
    scope_client_opened ();
  return h;
}

static void
bd_close (void *handle)
{
  struct bd_handle *h = handle;

  if (h->kind == EXPORT_SNAPSHOT)
    scope_client_close ();
  free (h);
}

/* Ask below, once, for everything this filter may use. */
static int
bd_prepare (nbdkit_next *next, void *handle, int readonly)
{
  return context_ask_all (next);
}

/* Read data. */
static int
bd_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  struct bd_handle *h = handle;

  if (h->kind == EXPORT_SNAPSHOT)
    return scope_pread (next, buf, count, offset, flags, err);
  return next->pread (next, buf, count, offset, flags, err);
}

/* Write, zero and trim on the writer export: the granules' bits are
 * durable before the request goes below.
 */
static int
dirty_request_begin (uint32_t count, uint64_t offset, int *err)
{
  gate_begin ();
  if (dirty_mark (offset, count, err) == -1) {
    gate_end ();
    return -1;
  }
  return 0;
}

/* Write data. */
static int
bd_pwrite (nbdkit_next *next, void *handle, const void *buf,
           uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct bd_handle *h = handle;
  int r;

  if (h->kind != EXPORT_WRITER)
    return next->pwrite (next, buf, count, offset, flags, err);
  if (dirty_request_begin (count, offset, err) == -1)
    return -1;
  r = next->pwrite (next, buf, count, offset, flags, err);
  gate_end ();
  return r;
}

/* Zero. */
static int
bd_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
         uint32_t flags, int *err)
{
  struct bd_handle *h = handle;
  int r;

  if (h->kind != EXPORT_WRITER)
    return next->zero (next, count, offset, flags, err);
  if (dirty_request_begin (count, offset, err) == -1)
    return -1;
  r = next->zero (next, count, offset, flags, err);
  gate_end ();
  return r;
}

/* Trim: on the writer export it changes data; on the snapshot export
 * it releases.
 */
static int
bd_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
         uint32_t flags, int *err)
{
  struct bd_handle *h = handle;
  int r;

  switch (h->kind) {
  case EXPORT_WRITER:
    if (dirty_request_begin (count, offset, err) == -1)
      return -1;
    r = next->trim (next, count, offset, flags, err);
    gate_end ();
    return r;
  case EXPORT_SNAPSHOT:
    return scope_trim (next, count, offset, flags, err);
  case EXPORT_OTHER:
    return next->trim (next, count, offset, flags, err);
  }
  abort ();
}

/* Extents. */
static int
bd_extents (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags,
            struct nbdkit_extents *extents, int *err)
{
  struct bd_handle *h = handle;

  if (h->kind == EXPORT_SNAPSHOT)
    return scope_extents (next, count, offset, flags, extents, err);
  return next->extents (next, count, offset, flags, extents, err);
}

static struct nbdkit_filter filter = {
  .name               = "bitmap-discard",
  .longname           = "nbdkit dirty bitmap and backup scope filter",
  .unload             = bd_unload,
  .config             = bd_config,
  .config_help        = bd_config_help,
  .get_ready          = bd_get_ready,
  .after_fork         = bd_after_fork,
  .cleanup            = bd_cleanup,
  .open               = bd_open,
  .close              = bd_close,
  .prepare            = bd_prepare,
  .pread              = bd_pread,
  .pwrite             = bd_pwrite,
  .zero               = bd_zero,
  .trim               = bd_trim,
  .extents            = bd_extents,
};

NBDKIT_REGISTER_FILTER (filter)
