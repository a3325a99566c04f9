/* nbdkit-fleece: the ramcache filter, a bounded write-back RAM tier
 * in front of the layer below.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * The RAM tier (ramtier.c, see the essay at its top) holds one cache
 * for the one disk below, shared by every connection.  It reaches the
 * disk through a shared context that this filter opens in
 * .after_fork ("below"), not through the per-connection next
 * pointers, because its background writers run outside any request.
 * Client data requests go to the tier; per-connection contexts are
 * used only for sizes, capabilities and extents.
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

#include "cleanup.h"
#include "context.h"
#include "params.h"
#include "rounding.h"

#include "ramtier.h"

/* -D ramcache.verbose=1: log every write-back and stall. */
NBDKIT_DLL_PUBLIC int ramcache_debug_verbose = 0;

/* ramcache-size: the limit in bytes (0 = not given). */
static uint64_t ramcache_size = 0;

/* ramcache-block-size: the cache's block size. */
static uint32_t ramcache_block_size = 65536;

/* The shared context below, opened in .after_fork. */
static nbdkit_next *below_next = NULL;

/* Whether below_next may be called by several threads at once: only
 * if the server runs the PARALLEL thread model; otherwise calls from
 * the tier are serialized by below_lock.
 */
static bool below_parallel = true;
static pthread_mutex_t below_lock = PTHREAD_MUTEX_INITIALIZER;

/* Whether the layer below can flush and trim (asked once in
 * .after_fork; nbdkit insists on it before data calls).
 */
static bool below_can_flush = false;
static bool below_can_trim = false;

/* The RAM tier. */
static struct ramtier *tier = NULL;

/* Open connections.  The last one to finish writes everything down,
 * so that data does not stay in RAM while nobody is connected.
 * Protected by conns_lock.
 */
static unsigned conns = 0;
static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- The tier's view of the layer below. ---- */

/* Before every call below: serialize it unless the server runs the
 * PARALLEL thread model.
 */
static void
below_enter (void)
{
  if (!below_parallel)
    pthread_mutex_lock (&below_lock);
}

/* After every call below. */
static void
below_leave (void)
{
  if (!below_parallel)
    pthread_mutex_unlock (&below_lock);
}

static int
below_pread (void *opaque, void *buf, uint32_t count, uint64_t offset,
             int *err)
{
  int r;

  below_enter ();
  r = below_next->pread (below_next, buf, count, offset, 0, err);
  below_leave ();
  return r;
}

static int
below_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t offset,
              int *err)
{
  int r;

  below_enter ();
  r = below_next->pwrite (below_next, buf, count, offset, 0, err);
  below_leave ();
  return r;
}

static int
below_trim (void *opaque, uint32_t count, uint64_t offset, int *err)
{
  int r;

  if (!below_can_trim)
    return 0;                   /* trim is advisory */
  below_enter ();
  r = below_next->trim (below_next, count, offset, 0, err);
  below_leave ();
  return r;
}

static int
below_flush (void *opaque, int *err)
{
  int r;

  if (!below_can_flush)
    return 0;                   /* nothing more we can do */
  below_enter ();
  r = below_next->flush (below_next, 0, err);
  below_leave ();
  return r;
}

/* ---- Callbacks. ---- */

/* Undo .after_fork.  This runs before any layer is unloaded, while
 * the context below is still usable (.unload would be too late).
 */
static void
ramcache_cleanup (nbdkit_backend *backend)
{
  if (tier) {
    ramtier_debug_stats (tier, "ramcache cleanup");
    ramtier_free (tier);
    tier = NULL;
  }
  if (below_next) {
    context_close_below (below_next);
    below_next = NULL;
  }
}

static int
ramcache_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  if (strcmp (key, "ramcache-size") == 0) {
    int64_t n;

    if (param_size ("ramcache", key, value, &n) == -1)
      return -1;
    if (n == 0) {
      nbdkit_error ("ramcache: ramcache-size=%s: must be greater than 0",
                    value);
      return -1;
    }
    ramcache_size = n;
    return 0;
  }
  if (strcmp (key, "ramcache-block-size") == 0) {
    int64_t n;

    if (param_size ("ramcache", key, value, &n) == -1)
      return -1;
    if (n < 4096 || n > (16 << 20) || !is_power_of_2 (n)) {
      nbdkit_error ("ramcache: ramcache-block-size=%s: must be a power of 2 "
                    "between 4K and 16M", value);
      return -1;
    }
    ramcache_block_size = n;
    return 0;
  }
  return next (nxdata, key, value);
}

/* ramcache-size depends on ramcache-block-size: check them together. */
static int
ramcache_config_complete (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata)
{
  if (ramcache_size == 0) {
    nbdkit_error ("ramcache: the ramcache-size=SIZE parameter is required");
    return -1;
  }
  if (ramcache_size < ramcache_block_size) {
    nbdkit_error ("ramcache: ramcache-size=%" PRIu64 " is smaller than "
                  "one block (ramcache-block-size=%" PRIu32 ")",
                  ramcache_size, ramcache_block_size);
    return -1;
  }
  return next (nxdata);
}

#define ramcache_config_help \
  "ramcache-size=<SIZE>        (required) RAM for the cache, data and\n" \
  "                            metadata.\n" \
  "ramcache-block-size=<SIZE>  Cache block size (default 64K)."

/* Calls from the tier's threads bypass nbdkit's request locks. */
static int
ramcache_get_ready (int thread_model)
{
  below_parallel = thread_model == NBDKIT_THREAD_MODEL_PARALLEL;
  if (!below_parallel)
    nbdkit_debug ("ramcache: thread model is not parallel: serializing "
                  "calls below");
  return 0;
}

/* Open the shared context below and create the tier.  This is the
 * first moment the layers below can be asked.
 */
static int
ramcache_after_fork (nbdkit_backend *backend)
{
  struct ramtier_below ops = {
    .pread = below_pread,
    .pwrite = below_pwrite,
    .trim = below_trim,
    .flush = below_flush,
  };
  struct context_caps caps;

  below_next = context_open_below (backend, 0, "", "ramcache", &caps);
  if (below_next == NULL)
    return -1;
  below_can_flush = caps.can_flush;
  below_can_trim = caps.can_trim;

  tier = ramtier_new (ramcache_size, ramcache_block_size, caps.size, &ops);
  if (tier == NULL)
    return -1;
  ramtier_set_verbose (tier, ramcache_debug_verbose);
  return ramtier_start (tier);
}

/* One disk: every export name reads the default export below. */
static void *
ramcache_open (nbdkit_next_open *next, nbdkit_context *nxdata,
               int readonly, const char *exportname, int is_tls)
{
  if (next (nxdata, readonly, "") == -1)
    return NULL;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

/* Ask below for everything the callbacks below rely on. */
static int
ramcache_prepare (nbdkit_next *next, void *handle, int readonly)
{
  if (next->get_size (next) == -1 ||
      next->can_write (next) == -1 ||
      next->can_extents (next) == -1)
    return -1;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&conns_lock);
  conns++;
  return 0;
}

/* The last connection out writes everything down: nobody may be
 * around to flush later.  Errors are logged but cannot be reported.
 */
static int
ramcache_finalize (nbdkit_next *next, void *handle)
{
  bool last;
  int err = 0;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&conns_lock);
    last = --conns == 0;
  }
  if (last && ramtier_flush (tier, &err) == -1)
    nbdkit_debug ("ramcache: write-back after the last connection "
                  "failed: %s", strerror (err));
  return 0;
}

static void
ramcache_close (void *handle)
{
  if (tier)
    ramtier_debug_stats (tier, "ramcache close");
}

/* The cache accepts writes, trims and zeroes as long as below can be
 * written.
 */
static int
ramcache_can_trim (nbdkit_next *next, void *handle)
{
  return next->can_write (next);
}

static int
ramcache_can_zero (nbdkit_next *next, void *handle)
{
  return NBDKIT_ZERO_NATIVE;
}

/* A fast zero would have to fail: better never to offer it. */
static int
ramcache_can_fast_zero (nbdkit_next *next, void *handle)
{
  return 0;
}

/* FLUSH is ours: it writes the cache down.  FUA is done by flushing. */
static int
ramcache_can_flush (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
ramcache_can_fua (nbdkit_next *next, void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

/* One cache for all connections, so all see the same data, and a
 * flush on any writes down everything.
 */
static int
ramcache_can_multi_conn (nbdkit_next *next, void *handle)
{
  return 1;
}

/* NBD_CMD_CACHE would bypass the cache: not offered. */
static int
ramcache_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_NONE;
}

/* Read data. */
static int
ramcache_pread (nbdkit_next *next, void *handle, void *buf,
                uint32_t count, uint64_t offset, uint32_t flags,
                int *err)
{
  return ramtier_pread (tier, buf, count, offset, err);
}

/* With FUA the data must be below before we reply: flush all. */
static int
fua (uint32_t flags, int *err)
{
  if (flags & NBDKIT_FLAG_FUA)
    return ramtier_flush (tier, err);
  return 0;
}

/* Write data. */
static int
ramcache_pwrite (nbdkit_next *next, void *handle, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags,
                 int *err)
{
  if (ramtier_pwrite (tier, buf, count, offset, err) == -1)
    return -1;
  return fua (flags, err);
}

/* Zero.  NBDKIT_FLAG_MAY_TRIM is ignored: zeroes are always written. */
static int
ramcache_zero (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  if (ramtier_zero (tier, count, offset, err) == -1)
    return -1;
  return fua (flags, err);
}

/* Trim. */
static int
ramcache_trim (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  if (ramtier_trim (tier, count, offset, err) == -1)
    return -1;
  return fua (flags, err);
}

/* Flush. */
static int
ramcache_flush (nbdkit_next *next, void *handle, uint32_t flags,
                int *err)
{
  return ramtier_flush (tier, err);
}

/* Extents.  Below does not know about data still in RAM, so any block
 * held in RAM is reported as data; the rest as below says.  The cache
 * is asked first: a block found absent has its newest data below
 * already, while one found held may leave RAM before we ask below,
 * but is reported as data anyway (always safe).
 */
static int
ramcache_extents (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags,
                  struct nbdkit_extents *extents, int *err)
{
  const uint64_t end = offset + count;
  bool cached;
  uint64_t n, got;

  while (offset < end) {
    n = ramtier_cached_run (tier, offset, end - offset, &cached);
    if (cached) {
      if (nbdkit_add_extent (extents, offset, n, 0) == -1) {
        *err = errno;
        return -1;
      }
    }
    else {
      /* Ask below for this run (it may answer for less). */
      if (context_extents_below (next, n, offset, flags, extents,
                                 &got, err) == -1)
        return -1;
      if (got == offset)        /* below answered nothing: stop */
        return 0;
      n = got - offset;
    }
    offset += n;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
}

static struct nbdkit_filter filter = {
  .name               = "ramcache",
  .longname           = "nbdkit RAM write-back cache filter",
  .config             = ramcache_config,
  .config_complete    = ramcache_config_complete,
  .config_help        = ramcache_config_help,
  .get_ready          = ramcache_get_ready,
  .after_fork         = ramcache_after_fork,
  .cleanup            = ramcache_cleanup,
  .open               = ramcache_open,
  .prepare            = ramcache_prepare,
  .finalize           = ramcache_finalize,
  .close              = ramcache_close,
  .can_flush          = ramcache_can_flush,
  .can_trim           = ramcache_can_trim,
  .can_zero           = ramcache_can_zero,
  .can_fast_zero      = ramcache_can_fast_zero,
  .can_fua            = ramcache_can_fua,
  .can_multi_conn     = ramcache_can_multi_conn,
  .can_cache          = ramcache_can_cache,
  .pread              = ramcache_pread,
  .pwrite             = ramcache_pwrite,
  .zero               = ramcache_zero,
  .trim               = ramcache_trim,
  .flush              = ramcache_flush,
  .extents            = ramcache_extents,
};

NBDKIT_REGISTER_FILTER (filter)
