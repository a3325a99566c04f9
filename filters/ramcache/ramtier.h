/* nbdkit-fleece: the RAM tier, a bounded write-back cache engine.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * One engine, two users: the ramcache filter (ramcache.c) puts it in
 * front of the layer below, and the cbw filter (cbw-ram=SIZE) puts it
 * in front of its fleece store.  See the essay at the top of
 * ramtier.c for how it works.
 *
 * Every function below is thread safe and may be called concurrently
 * from any number of threads, except ramtier_new, ramtier_start and
 * ramtier_free, which the owner calls once each, with no other call
 * in flight.
 */

#ifndef NBDKIT_RAMTIER_H
#define NBDKIT_RAMTIER_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/* The slower store below the tier.  Called from any thread,
 * including the engine's background writers; must be thread safe.
 * Each returns 0 on success, or -1 with *err set.  trim and flush may
 * be NULL (the engine then skips those calls).  The engine assumes
 * that nothing else writes to the store while it is in use.
 */
struct ramtier_below {
  int (*pread) (void *opaque, void *buf, uint32_t count, uint64_t offset,
                int *err);
  int (*pwrite) (void *opaque, const void *buf, uint32_t count,
                 uint64_t offset, int *err);
  int (*trim) (void *opaque, uint32_t count, uint64_t offset, int *err);
  int (*flush) (void *opaque, int *err);   /* may be NULL */
  void *opaque;
};

/* Counters, a consistent snapshot taken under the engine's lock. */
struct ramtier_stats {
  uint64_t limit;               /* the limit given to ramtier_new */
  uint64_t held_bytes;          /* data held in RAM (blocks x size) */
  uint64_t dirty_bytes;         /* held data not (yet) safely below */
  uint64_t written_below_bytes; /* written below by write-back */
  uint64_t dropped_bytes;       /* trimmed before ever reaching below */
  uint64_t read_hits;           /* blocks read from RAM */
  uint64_t read_misses;         /* blocks read from below */
  uint64_t writer_stalls;       /* times a writer waited for room */
};

struct ramtier;

/* Create a tier of at most LIMIT_BYTES (data plus metadata, see
 * ramtier.c) in blocks of BLOCK_SIZE (a power of 2, 512 to 64M) over a
 * store of DISK_SIZE bytes.  *BELOW is copied.  Returns NULL after
 * nbdkit_error on error.  Until ramtier_start is called, callers
 * that must wait for write-back do it themselves.
 */
extern struct ramtier *ramtier_new (uint64_t limit_bytes,
                                    uint32_t block_size,
                                    uint64_t disk_size,
                                    const struct ramtier_below *below)
  __attribute__ ((__nonnull__ (4)));

/* Start the background writers (call after nbdkit forks).  Returns
 * 0, or -1 after nbdkit_error.
 */
extern int ramtier_start (struct ramtier *rt)
  __attribute__ ((__nonnull__ (1)));

/* Stop the writers (waiting for writes below in flight) and free
 * everything.  Does NOT flush: dirty data is lost.  NULL is allowed.
 */
extern void ramtier_free (struct ramtier *rt);

/* Read.  Blocks held in RAM are copied from there, the rest is read
 * from below.
 */
extern int ramtier_pread (struct ramtier *rt, void *buf, uint32_t count,
                          uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 2, 5)));

/* Write into RAM (copying).  Partial blocks not held are first read
 * from below.  Waits only when the tier is full of dirty data.
 */
extern int ramtier_pwrite (struct ramtier *rt, const void *buf,
                           uint32_t count, uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 2, 5)));

/* The same, but fail with ETIMEDOUT if the tier is full and no room
 * is made before DEADLINE (CLOCK_MONOTONIC).  Blocks before the one
 * that found no room may have been written.
 */
extern int ramtier_pwrite_deadline (struct ramtier *rt, const void *buf,
                                    uint32_t count, uint64_t offset,
                                    const struct timespec *deadline,
                                    int *err)
  __attribute__ ((__nonnull__ (1, 2, 5, 6)));

/* Zero: like a write of zeroes; the range reads back as zero. */
extern int ramtier_zero (struct ramtier *rt, uint32_t count,
                         uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 4)));

/* Trim.  Blocks held in RAM and wholly inside the range are dropped
 * (counted in dropped_bytes if their data never reached below) and
 * the range is trimmed below except where it covered only such
 * never-written blocks.  A partial block held in RAM is left as it
 * is (trim is advisory).  Afterwards the range reads back as either
 * its old contents or whatever below returns for a trimmed range.
 */
extern int ramtier_trim (struct ramtier *rt, uint32_t count,
                         uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 4)));

/* Flush: every write completed before the call is written below,
 * then below->flush is called.  Fails if a write below fails while
 * it waits.
 */
extern int ramtier_flush (struct ramtier *rt, int *err)
  __attribute__ ((__nonnull__ (1, 2)));

/* Fill *ST with the current counters. */
extern void ramtier_get_stats (struct ramtier *rt,
                               struct ramtier_stats *st)
  __attribute__ ((__nonnull__ (1, 2)));

/* ---- Extras beyond the core API. ---- */

/* Whether the block holding OFFSET is in RAM (in any state).
 * Returns the number of bytes from OFFSET, at most COUNT, with the
 * same answer, and sets *CACHED.  The answer may be stale as soon as
 * the lock is dropped: callers must only rely on "cached" being
 * conservative (see ramcache_extents in ramcache.c).
 */
extern uint64_t ramtier_cached_run (struct ramtier *rt, uint64_t offset,
                                    uint64_t count, bool *cached)
  __attribute__ ((__nonnull__ (1, 4)));

/* Turn on verbose debug messages (write-back jobs, stalls). */
extern void ramtier_set_verbose (struct ramtier *rt, bool verbose)
  __attribute__ ((__nonnull__ (1)));

/* Write the counters with nbdkit_debug, prefixed by WHO. */
extern void ramtier_debug_stats (struct ramtier *rt, const char *who)
  __attribute__ ((__nonnull__ (1, 2)));

#endif /* NBDKIT_RAMTIER_H */
