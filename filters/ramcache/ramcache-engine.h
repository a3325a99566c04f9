/* nbdkit-fleece: the ramcache engine, a bounded write-back RAM tier.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * One engine, two faces: the ramcache filter (ramcache.c) puts it in
 * front of the layer below, and the cbw filter (cbw-ram=SIZE) puts it
 * in front of its fleece store.  See the essay at the top of engine.c
 * for how it works.
 *
 * Every function below is thread safe and may be called concurrently
 * from any number of threads, except ramcache_new, ramcache_start and
 * ramcache_free, which the owner calls once each, with no other call
 * in flight.
 */

#ifndef NBDKIT_RAMCACHE_ENGINE_H
#define NBDKIT_RAMCACHE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/* The slower store below the tier.  Called from any thread,
 * including the engine's background writers; must be thread safe.
 * Each returns 0 on success, or -1 with *err set.  trim and flush may
 * be NULL (the engine then skips those calls).  The engine assumes
 * that nothing else writes to the store while it is in use.
 */
struct ramcache_below {
  int (*pread) (void *opaque, void *buf, uint32_t count, uint64_t offset,
                int *err);
  int (*pwrite) (void *opaque, const void *buf, uint32_t count,
                 uint64_t offset, int *err);
  int (*trim) (void *opaque, uint32_t count, uint64_t offset, int *err);
  int (*flush) (void *opaque, int *err);   /* may be NULL */
  void *opaque;
};

/* Counters, a consistent snapshot taken under the engine's lock. */
struct ramcache_stats {
  uint64_t limit;               /* the limit given to ramcache_new */
  uint64_t held_bytes;          /* data held in RAM (blocks x size) */
  uint64_t dirty_bytes;         /* held data not (yet) safely below */
  uint64_t written_below_bytes; /* written below by write-back */
  uint64_t dropped_bytes;       /* trimmed before ever reaching below */
  uint64_t read_hits;           /* blocks read from RAM */
  uint64_t read_misses;         /* blocks read from below */
  uint64_t writer_stalls;       /* times a writer waited for room */
};

struct ramcache;

/* Create a tier of at most LIMIT_BYTES (data plus metadata, see
 * engine.c) in blocks of BLOCK_SIZE (a power of 2, 512 to 64M) over a
 * store of DISK_SIZE bytes.  *BELOW is copied.  Returns NULL after
 * nbdkit_error on error.  Until ramcache_start is called, callers
 * that must wait for write-back do it themselves.
 */
extern struct ramcache *ramcache_new (uint64_t limit_bytes,
                                      uint32_t block_size,
                                      uint64_t disk_size,
                                      const struct ramcache_below *below)
  __attribute__ ((__nonnull__ (4)));

/* Start the background writers (call after nbdkit forks).  Returns
 * 0, or -1 after nbdkit_error.
 */
extern int ramcache_start (struct ramcache *rc)
  __attribute__ ((__nonnull__ (1)));

/* Stop the writers (waiting for writes below in flight) and free
 * everything.  Does NOT flush: dirty data is lost.  NULL is allowed.
 */
extern void ramcache_free (struct ramcache *rc);

/* Read.  Blocks held in RAM are copied from there, the rest is read
 * from below.
 */
extern int ramcache_pread (struct ramcache *rc, void *buf, uint32_t count,
                           uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 2, 5)));

/* Write into RAM (copying).  Partial blocks not held are first read
 * from below.  Waits only when the tier is full of dirty data.
 */
extern int ramcache_pwrite (struct ramcache *rc, const void *buf,
                            uint32_t count, uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 2, 5)));

/* The same, but fail with ETIMEDOUT if the tier is full and no room
 * is made before DEADLINE (CLOCK_MONOTONIC).  Blocks before the one
 * that found no room may have been written.
 */
extern int ramcache_pwrite_deadline (struct ramcache *rc, const void *buf,
                                     uint32_t count, uint64_t offset,
                                     const struct timespec *deadline,
                                     int *err)
  __attribute__ ((__nonnull__ (1, 2, 5, 6)));

/* Zero: like a write of zeroes; the range reads back as zero. */
extern int ramcache_zero (struct ramcache *rc, uint32_t count,
                          uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 4)));

/* Trim.  Blocks held in RAM and wholly inside the range are dropped
 * (counted in dropped_bytes if their data never reached below) and
 * the range is trimmed below except where it covered only such
 * never-written blocks.  A partial block held in RAM is left as it
 * is (trim is advisory).  Afterwards the range reads back as either
 * its old contents or whatever below returns for a trimmed range.
 */
extern int ramcache_trim (struct ramcache *rc, uint32_t count,
                          uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 4)));

/* Flush: every write completed before the call is written below,
 * then below->flush is called.  Fails if a write below fails while
 * it waits.
 */
extern int ramcache_flush (struct ramcache *rc, int *err)
  __attribute__ ((__nonnull__ (1, 2)));

/* Fill *ST with the current counters. */
extern void ramcache_get_stats (struct ramcache *rc,
                                struct ramcache_stats *st)
  __attribute__ ((__nonnull__ (1, 2)));

/* ---- Extras beyond the core API. ---- */

/* Whether the block holding OFFSET is in RAM (in any state).
 * Returns the number of bytes from OFFSET, at most COUNT, with the
 * same answer, and sets *CACHED.  The answer may be stale as soon as
 * the lock is dropped: callers must only rely on "cached" being
 * conservative (see ramcache_extents in ramcache.c).
 */
extern uint64_t ramcache_cached_run (struct ramcache *rc, uint64_t offset,
                                     uint64_t count, bool *cached)
  __attribute__ ((__nonnull__ (1, 4)));

/* Turn on verbose debug messages (write-back jobs, stalls). */
extern void ramcache_set_verbose (struct ramcache *rc, bool verbose)
  __attribute__ ((__nonnull__ (1)));

/* Write the counters with nbdkit_debug, prefixed by WHO. */
extern void ramcache_debug_stats (struct ramcache *rc, const char *who)
  __attribute__ ((__nonnull__ (1, 2)));

#endif /* NBDKIT_RAMCACHE_ENGINE_H */
