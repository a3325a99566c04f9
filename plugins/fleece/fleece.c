/* nbdkit-fleece: the fleece plugin, the live disk.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Serves one live NBD disk, reached through libnbd, to the filters
 * above it.  Every export name and every context (including the
 * shared contexts that filters open without a client) sees the same
 * disk: the cbw filter relies on that to read the live disk for both
 * its writer and its snapshot export.  The one exception is the
 * export named "live-status", a read-only JSON text with the state
 * of the link to the live disk.
 *
 * Parallel: requests go to the live disk over a pool of NBD
 * connections driven asynchronously (link.c, common/nbdconn.c), so
 * requests from many clients are in flight on the live disk together.
 * The link survives outages of the live disk's server: see link.c.
 *
 * Capabilities are those the live disk advertised at start-up, read
 * once and kept: so connections (and the filters' status exports)
 * open normally while the live disk is away.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "cbw-contract.h"
#include "link.h"

/* The status export's name (shared with the filters above, which pass
 * it through) and size.
 */
#define STATUS_EXPORT FLEECE_LIVE_STATUS_EXPORT
#define STATUS_SIZE 4096

/* Handles: the live disk, or the status export. */
static int disk_handle, status_handle;
#define IS_STATUS(handle) ((handle) == &status_handle)

static void
fleece_unload (void)
{
  link_unload ();
}

static int
fleece_config (const char *key, const char *value)
{
  int r = link_config (key, value);

  if (r == 0) {
    nbdkit_error ("fleece: unknown parameter '%s'", key);
    return -1;
  }
  return r == 1 ? 0 : -1;
}

static int
fleece_config_complete (void)
{
  return link_config_complete ();
}

#define fleece_config_help link_config_help

/* Connect before nbdkit forks, so an unreachable live disk stops
 * nbdkit with a clear error instead of failing every request.
 */
static int
fleece_get_ready (void)
{
  return link_get_ready ();
}

/* Threads must start in the process that serves. */
static int
fleece_after_fork (void)
{
  return link_after_fork ();
}

static void
fleece_dump_plugin (void)
{
  struct nbd_handle *h = nbd_create ();

  if (h) {
    printf ("fleece_libnbd_version=%s\n", nbd_get_version (h));
    nbd_close (h);
  }
}

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

/* Every export name is the same live disk, except the status export.
 * In the shared contexts that filters open there is no export name.
 */
static void *
fleece_open (int readonly)
{
  const char *name = nbdkit_export_name ();

  if (name && strcmp (name, STATUS_EXPORT) == 0)
    return &status_handle;
  return &disk_handle;
}

static int64_t
fleece_get_size (void *handle)
{
  return IS_STATUS (handle) ? STATUS_SIZE : link_caps ()->size;
}

static int
fleece_block_size (void *handle,
                   uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  const struct link_caps *c = link_caps ();

  if (IS_STATUS (handle)) {
    *minimum = *preferred = *maximum = 0;
    return 0;
  }
  *minimum = c->block_min;
  *preferred = c->block_pref;
  *maximum = c->block_max;
  return 0;
}

/* Capabilities are those of the live disk at start-up (none for the
 * status export).
 */
#define CAP(handle, field) (!IS_STATUS (handle) && link_caps ()->field)

static int
fleece_can_write (void *handle)
{
  return !IS_STATUS (handle) && !link_caps ()->read_only;
}

static int
fleece_can_flush (void *handle)
{
  return CAP (handle, flush);
}

static int
fleece_is_rotational (void *handle)
{
  return CAP (handle, rotational);
}

static int
fleece_can_trim (void *handle)
{
  return CAP (handle, trim);
}

/* Without WRITE_ZEROES on the live disk, nbdkit emulates zero with
 * writes of zeroes.
 */
static int
fleece_can_zero (void *handle)
{
  return CAP (handle, zero);
}

static int
fleece_can_fast_zero (void *handle)
{
  return CAP (handle, fast_zero);
}

static int
fleece_can_fua (void *handle)
{
  return CAP (handle, fua) ? NBDKIT_FUA_NATIVE : NBDKIT_FUA_NONE;
}

/* The status export is the same text on every connection. */
static int
fleece_can_multi_conn (void *handle)
{
  return IS_STATUS (handle) || link_caps ()->multi_conn;
}

static int
fleece_can_cache (void *handle)
{
  return CAP (handle, cache) ? NBDKIT_CACHE_NATIVE : NBDKIT_CACHE_NONE;
}

static int
fleece_can_extents (void *handle)
{
  return CAP (handle, extents);
}

/* nbdkit flags to libnbd flags. */
static uint32_t
to_libnbd_flags (uint32_t flags)
{
  uint32_t f = 0;

  if (flags & NBDKIT_FLAG_FUA)
    f |= LIBNBD_CMD_FLAG_FUA;
  if (!(flags & NBDKIT_FLAG_MAY_TRIM))
    f |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (flags & NBDKIT_FLAG_FAST_ZERO)
    f |= LIBNBD_CMD_FLAG_FAST_ZERO;
  if (flags & NBDKIT_FLAG_REQ_ONE)
    f |= LIBNBD_CMD_FLAG_REQ_ONE;
  return f;
}

/* Send R to the live disk. */
static int
request (enum link_kind kind, void *buf, uint32_t count, uint64_t offset,
         uint32_t flags, struct nbdkit_extents *extents)
{
  struct link_req r = { .kind = kind, .buf = buf, .count = count,
                        .offset = offset, .flags = flags,
                        .extents = extents };
  int err = 0;

  if (link_request (&r, &err) == -1) {
    errno = err;
    return -1;
  }
  return 0;
}

/* The status export: one line of JSON, padded with spaces, ending in
 * a newline.
 */
static void
status_read (void *buf, uint32_t count, uint64_t offset)
{
  char status[STATUS_SIZE + 1], link[STATUS_SIZE - 8];
  size_t len;

  link_status_json (link, sizeof link);
  snprintf (status, sizeof status, "{%s}", link);
  len = strlen (status);
  memset (status + len, ' ', STATUS_SIZE - len);
  status[STATUS_SIZE - 1] = '\n';
  memcpy (buf, status + offset, count);
}

/* Read data. */
static int
fleece_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  if (IS_STATUS (handle)) {
    status_read (buf, count, offset);
    return 0;
  }
  return request (LINK_READ, buf, count, offset, 0, NULL);
}

/* Write data. */
static int
fleece_pwrite (void *handle, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags)
{
  /* libnbd takes a const buffer for writes; the cast only fits the
   * shared request struct.
   */
  return request (LINK_WRITE, (void *) buf, count, offset,
                  flags & NBDKIT_FLAG_FUA ? LIBNBD_CMD_FLAG_FUA : 0, NULL);
}

/* Zero. */
static int
fleece_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return request (LINK_ZERO, NULL, count, offset, to_libnbd_flags (flags),
                  NULL);
}

/* Trim. */
static int
fleece_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return request (LINK_TRIM, NULL, count, offset,
                  flags & NBDKIT_FLAG_FUA ? LIBNBD_CMD_FLAG_FUA : 0, NULL);
}

/* Flush. */
static int
fleece_flush (void *handle, uint32_t flags)
{
  return request (LINK_FLUSH, NULL, 0, 0, 0, NULL);
}

/* Cache (prefetch). */
static int
fleece_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return request (LINK_CACHE, NULL, count, offset, 0, NULL);
}

/* Extents. */
static int
fleece_extents (void *handle, uint32_t count, uint64_t offset,
                uint32_t flags, struct nbdkit_extents *extents)
{
  return request (LINK_EXTENTS, NULL, count, offset,
                  flags & NBDKIT_FLAG_REQ_ONE ? LIBNBD_CMD_FLAG_REQ_ONE : 0,
                  extents);
}

static struct nbdkit_plugin plugin = {
  .name               = "fleece",
  .longname           = "nbdkit fleece plugin (live disk for fleecing)",
  .version            = PACKAGE_VERSION,
  .unload             = fleece_unload,
  .config             = fleece_config,
  .config_complete    = fleece_config_complete,
  .config_help        = fleece_config_help,
  .magic_config_key   = "live",
  .get_ready          = fleece_get_ready,
  .after_fork         = fleece_after_fork,
  .dump_plugin        = fleece_dump_plugin,
  .open               = fleece_open,
  .get_size           = fleece_get_size,
  .block_size         = fleece_block_size,
  .can_write          = fleece_can_write,
  .can_flush          = fleece_can_flush,
  .is_rotational      = fleece_is_rotational,
  .can_trim           = fleece_can_trim,
  .can_zero           = fleece_can_zero,
  .can_fast_zero      = fleece_can_fast_zero,
  .can_fua            = fleece_can_fua,
  .can_multi_conn     = fleece_can_multi_conn,
  .can_cache          = fleece_can_cache,
  .can_extents        = fleece_can_extents,
  .pread              = fleece_pread,
  .pwrite             = fleece_pwrite,
  .zero               = fleece_zero,
  .trim               = fleece_trim,
  .flush              = fleece_flush,
  .cache              = fleece_cache,
  .extents            = fleece_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
