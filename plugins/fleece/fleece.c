/* nbdkit-fleece: the fleece plugin, the live disk.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Serves one live NBD disk, reached through libnbd, to the filters
 * above it.  Every export name and every context (including the
 * shared contexts that filters open without a client) sees the same
 * disk: the cbw filter relies on that to read the live disk for both
 * its writer and its snapshot export.
 *
 * Parallel: requests go to the live disk over a pool of NBD
 * connections driven asynchronously (link.c, common/nbdconn.c), so
 * requests from many clients are in flight on the live disk together.
 * The link survives outages of the live disk's server: see link.c.
 *
 * Capabilities are those the live disk advertised at start-up, read
 * once and kept: so connections (and the filters' status exports)
 * open normally while the live disk is away.
 *
 * Why the link's state goes to a file (live-status-file) rather than
 * to an export of its own: a plugin learns the export name only from
 * nbdkit_export_name, which logs an error when called from a thread
 * without a client connection, and the filters above open contexts
 * from such threads (cbw in .after_fork, bitmap-discard from its
 * control thread).
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

#include "link.h"

/* Disconnect from the live disk. */
static void
fleece_unload (void)
{
  link_unload ();
}

/* Every parameter is the link's. */
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

/* Check the parameters together. */
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

/* Extra lines for nbdkit --dump-plugin. */
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

/* The live disk's size, read at start-up. */
static int64_t
fleece_get_size (void *handle)
{
  return link_caps ()->size;
}

/* The live disk's block size constraints (0: none said). */
static int
fleece_block_size (void *handle,
                   uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  const struct link_caps *c = link_caps ();

  *minimum = c->block_min;
  *preferred = c->block_pref;
  *maximum = c->block_max;
  return 0;
}

/* Capabilities are those of the live disk at start-up. */
#define CAP(handle, field) (link_caps ()->field)

/* Writable unless the live disk is read-only. */
static int
fleece_can_write (void *handle)
{
  return !link_caps ()->read_only;
}

/* Flush. */
static int
fleece_can_flush (void *handle)
{
  return CAP (handle, flush);
}

/* Rotational. */
static int
fleece_is_rotational (void *handle)
{
  return CAP (handle, rotational);
}

/* Trim. */
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

/* Fast zero. */
static int
fleece_can_fast_zero (void *handle)
{
  return CAP (handle, fast_zero);
}

/* FUA, sent to the live disk as such. */
static int
fleece_can_fua (void *handle)
{
  return CAP (handle, fua) ? NBDKIT_FUA_NATIVE : NBDKIT_FUA_NONE;
}

/* Multi-conn. */
static int
fleece_can_multi_conn (void *handle)
{
  return CAP (handle, multi_conn);
}

/* Cache, sent to the live disk as such. */
static int
fleece_can_cache (void *handle)
{
  return CAP (handle, cache) ? NBDKIT_CACHE_NATIVE : NBDKIT_CACHE_NONE;
}

/* Extents (base:allocation). */
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

/* Read data. */
static int
fleece_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
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
