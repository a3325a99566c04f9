/* nbdkit-fleece: the fleece plugin, the live disk.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Serves one live NBD disk, reached through libnbd, to the filters
 * above it.  Every export name and every context (including the
 * shared contexts that filters open without a client) sees the same
 * disk: the cbw filter relies on that to read the live disk for both
 * its writer and its snapshot export.
 *
 * Parallel: all requests share one NBD connection driven
 * asynchronously (see common/nbdconn.c), so requests from many
 * clients are in flight on the live disk together.
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

#include "nbdconn.h"

/* live=URI, required. */
static const char *live_uri;

/* The connection to the live disk, made in .get_ready. */
static struct nbdconn *live;

/* Size and capabilities, read once after connecting. */
static int64_t live_size;

static void
fleece_unload (void)
{
  nbdconn_close (live);
}

static int
fleece_config (const char *key, const char *value)
{
  if (strcmp (key, "live") == 0) {
    if (live_uri) {
      nbdkit_error ("fleece: live= given more than once");
      return -1;
    }
    live_uri = value;
  }
  else {
    nbdkit_error ("fleece: unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

static int
fleece_config_complete (void)
{
  struct nbd_handle *h;

  if (live_uri == NULL) {
    nbdkit_error ("fleece: the live=URI parameter is required, "
                  "e.g. live=nbd+unix:///?socket=/run/disk.sock");
    return -1;
  }
  /* Check the URI's form now, so a typo is reported as such rather
   * than as a connection failure.
   */
  h = nbd_create ();
  if (h == NULL) {
    nbdkit_error ("fleece: nbd_create: %s", nbd_get_error ());
    return -1;
  }
  if (!nbd_supports_uri (h)) {
    nbdkit_error ("fleece: this libnbd was built without URI support");
    nbd_close (h);
    return -1;
  }
  nbd_close (h);
  if (strstr (live_uri, "://") == NULL) {
    nbdkit_error ("fleece: live=%s is not an NBD URI "
                  "(nbd://, nbds://, nbd+unix://, nbds+unix://)",
                  live_uri);
    return -1;
  }
  return 0;
}

#define fleece_config_help \
  "live=<URI>       (required) NBD URI of the live disk."

/* Connect before nbdkit forks, so an unreachable live disk stops
 * nbdkit with a clear error instead of failing every request.
 */
static int
fleece_get_ready (void)
{
  live = nbdconn_new ("fleece: live disk");
  if (live == NULL)
    return -1;
  if (nbdconn_connect_uri (live, live_uri) == -1)
    return -1;
  live_size = nbd_get_size (nbdconn_handle (live));
  if (live_size == -1) {
    nbdkit_error ("fleece: live disk: cannot get size: %s",
                  nbd_get_error ());
    return -1;
  }
  nbdkit_debug ("fleece: connected to %s, size %" PRIi64,
                live_uri, live_size);
  return 0;
}

/* The reader thread must start in the process that serves. */
static int
fleece_after_fork (void)
{
  return nbdconn_start (live);
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

/* Every export name is the same live disk. */
static void *
fleece_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
fleece_get_size (void *handle)
{
  return live_size;
}

static int
fleece_block_size (void *handle,
                   uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  struct nbd_handle *h = nbdconn_handle (live);
  int64_t min = nbd_get_block_size (h, LIBNBD_SIZE_MINIMUM);
  int64_t pref = nbd_get_block_size (h, LIBNBD_SIZE_PREFERRED);
  int64_t max = nbd_get_block_size (h, LIBNBD_SIZE_MAXIMUM);

  /* 0 means the server did not say: so do we. */
  if (min <= 0 || pref <= 0 || max <= 0) {
    *minimum = *preferred = *maximum = 0;
    return 0;
  }
  *minimum = min;
  *preferred = pref;
  *maximum = max;
  return 0;
}

/* Capabilities are those of the live disk.  libnbd returns -1 only
 * on a handle that is not connected, which cannot happen here.
 */
static int
fleece_can_write (void *handle)
{
  return !nbd_is_read_only (nbdconn_handle (live));
}

static int
fleece_can_flush (void *handle)
{
  return nbd_can_flush (nbdconn_handle (live));
}

static int
fleece_is_rotational (void *handle)
{
  return nbd_is_rotational (nbdconn_handle (live));
}

static int
fleece_can_trim (void *handle)
{
  return nbd_can_trim (nbdconn_handle (live));
}

/* Without WRITE_ZEROES on the live disk, nbdkit emulates zero with
 * writes of zeroes.
 */
static int
fleece_can_zero (void *handle)
{
  return nbd_can_zero (nbdconn_handle (live));
}

static int
fleece_can_fast_zero (void *handle)
{
  return nbd_can_fast_zero (nbdconn_handle (live));
}

static int
fleece_can_fua (void *handle)
{
  return nbd_can_fua (nbdconn_handle (live)) > 0 ?
    NBDKIT_FUA_NATIVE : NBDKIT_FUA_NONE;
}

static int
fleece_can_multi_conn (void *handle)
{
  return nbd_can_multi_conn (nbdconn_handle (live));
}

static int
fleece_can_cache (void *handle)
{
  return nbd_can_cache (nbdconn_handle (live)) > 0 ?
    NBDKIT_CACHE_NATIVE : NBDKIT_CACHE_NONE;
}

static int
fleece_can_extents (void *handle)
{
  return nbd_can_meta_context (nbdconn_handle (live),
                               LIBNBD_CONTEXT_BASE_ALLOCATION) > 0;
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

/* Plugins report errors through errno. */
#define RETURN_ERRNO(r, err) \
  do { if ((r) == -1) { errno = (err); return -1; } return 0; } while (0)

/* Read data. */
static int
fleece_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  int err = 0, r = nbdconn_pread (live, buf, count, offset, 0, &err);
  RETURN_ERRNO (r, err);
}

/* Write data. */
static int
fleece_pwrite (void *handle, const void *buf, uint32_t count,
               uint64_t offset, uint32_t flags)
{
  int err = 0, r = nbdconn_pwrite (live, buf, count, offset,
                                   flags & NBDKIT_FLAG_FUA ?
                                   LIBNBD_CMD_FLAG_FUA : 0, &err);
  RETURN_ERRNO (r, err);
}

/* Zero. */
static int
fleece_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int err = 0, r = nbdconn_zero (live, count, offset,
                                 to_libnbd_flags (flags), &err);
  RETURN_ERRNO (r, err);
}

/* Trim. */
static int
fleece_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int err = 0, r = nbdconn_trim (live, count, offset,
                                 flags & NBDKIT_FLAG_FUA ?
                                 LIBNBD_CMD_FLAG_FUA : 0, &err);
  RETURN_ERRNO (r, err);
}

/* Flush. */
static int
fleece_flush (void *handle, uint32_t flags)
{
  int err = 0, r = nbdconn_flush (live, 0, &err);
  RETURN_ERRNO (r, err);
}

/* Cache (prefetch). */
static int
fleece_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int err = 0, r = nbdconn_cache (live, count, offset, 0, &err);
  RETURN_ERRNO (r, err);
}

/* Extents. */
static int
fleece_extents (void *handle, uint32_t count, uint64_t offset,
                uint32_t flags, struct nbdkit_extents *extents)
{
  int err = 0, r = nbdconn_extents (live, count, offset,
                                    flags & NBDKIT_FLAG_REQ_ONE ?
                                    LIBNBD_CMD_FLAG_REQ_ONE : 0,
                                    extents, &err);
  RETURN_ERRNO (r, err);
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
