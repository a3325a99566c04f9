/* nbdkit-fleece: the RAM tier, a bounded write-back cache engine.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * HOW IT WORKS
 *
 * The disk below is cut into blocks of block_size bytes (the last
 * one may be short).  The tier holds at most max_blocks of them in
 * RAM, each in a buffer of its own, found through a hash table keyed
 * by block number.  A block that is not in the table is "absent": its
 * newest data is below.  A held block is in one of five states:
 *
 *   state       RAM data             below             list    writable
 *   ----------  -------------------  ----------------  ------  --------
 *   FILLING     being read from      older or same     none    wait
 *               below (no data yet)
 *   DIRTY       newest               older             dirty   yes
 *   WRITING     newest, a copy of    being written     none    yes, ->
 *               it is being written  from the copy             REDIRTIED
 *   REDIRTIED   newest               being written     none    yes
 *                                    (an older copy)
 *   CLEAN       newest               same              clean   yes, ->
 *                                                              DIRTY
 *
 * Transitions (all under the lock):
 *
 *   absent    --write whole block------------------------> DIRTY
 *   absent    --write part of a block--> FILLING --read--> DIRTY
 *                                           \--read fails--> absent
 *   DIRTY     --writer picks it (copy to its buffer)-----> WRITING
 *   WRITING   --written below----------------------------> CLEAN
 *   WRITING   --write/zero------------------------------> REDIRTIED
 *   REDIRTIED --written below (old copy)-----------------> DIRTY
 *   WRITING, REDIRTIED --write below fails---------------> DIRTY
 *   CLEAN     --write/zero-------------------------------> DIRTY
 *   CLEAN     --evicted to make room---------------------> absent
 *   DIRTY, CLEAN --trim covering the whole block---------> absent
 *
 * Readers copy out of any held block except a FILLING one (they wait
 * for it) and read absent blocks from below.  There is no read
 * caching: only writes bring blocks in.
 *
 * Because the writers always write from a private copy (their own
 * buffer, filled under the lock), nobody ever modifies a buffer while
 * it is being written below, and a block re-dirtied during its
 * write-back simply goes back to DIRTY when that write-back ends, to
 * be written again.  A block in WRITING or REDIRTIED is never on the
 * dirty list, so two write-backs of one block are never in flight
 * together: writes below of one block land in order.  A block leaves
 * RAM only when CLEAN (eviction) or by trim, and trim waits for any
 * write-back of the blocks it drops: so whenever a block is absent,
 * below holds its newest data, and a reader that finds it absent may
 * read below without further locking.
 *
 * Order and flush.  Each transition into DIRTY or REDIRTIED takes a
 * new sequence number, and the dirty list is kept in sequence order
 * (almost always by appending), so its head is the oldest dirty data:
 * that is what the writers take first, extended to the adjacent dirty
 * blocks on both sides so that one write below covers up to
 * wb_max_blocks blocks.  A flush notes the last sequence number
 * handed out and waits until no dirty block and no write-back in
 * flight carries a number at or below it.  Writes that complete
 * later do not delay it.
 *
 * When to write back.  The writers start when more than high_water
 * blocks (7/8 of the tier) are dirty, and then go on until no more
 * than low_water (1/16 of the tier less) are ("draining"), so that
 * they wake once per batch rather than once per new dirty block;
 * also when somebody waits for room, or when somebody flushes.  Only
 * one idle writer is woken at a time, and a writer that takes a job
 * wakes the next one if there is more to do: the number of writers
 * at work follows the work, and a new dirty block never wakes the
 * whole pool.  Data therefore stays in RAM as long as there is
 * room, which gives a trim the best chance of dropping it before it
 * ever reaches below (cbw: clusters the backup read and released
 * while still in RAM).  A write that needs a new block when
 * the tier is full evicts the least recently used CLEAN block; if
 * there is none it waits ("writer stall") for the writers.  A failed
 * write below puts the blocks back on the dirty list, records the
 * error, and the writers retry after 100 ms; anybody waiting for room
 * or flushing when a write below fails gets the error, so a dead
 * store cannot hang requests forever.
 *
 * Trim.  A block wholly inside the range is dropped (after waiting
 * for its write-back, if any); if it never reached below in its
 * current stay in RAM (on_below false) its bytes count as dropped and
 * below is not trimmed there, otherwise below is trimmed.  Absent
 * blocks are trimmed below.  A partial block that is held is left
 * alone: NBD allows trim to do nothing.
 *
 * Memory.  The limit covers: the data buffers (block_size each) and
 * each block's metadata (struct block, its malloc header and its
 * share of the hash table, BLOCK_OVERHEAD), the writers' private
 * buffers (nr_writers x wb_max_blocks blocks, at most 1/16 of the
 * limit) and struct ramtier.  Thread stacks and the malloc arena's
 * own slack are not counted.  max_blocks is what remains divided by
 * the cost of a block, but never less than 1: with a limit of one
 * block the tier really uses two blocks (one held, one writer
 * buffer).  Data buffers are recycled through a free list and never
 * returned to malloc before ramtier_free, so fragmentation cannot
 * make the footprint grow.
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
#include <time.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include "cleanup.h"
#include "rounding.h"
#include "threadname.h"
#include "timespec.h"

#include "ramtier.h"

/* Most blocks one write below may cover, in bytes. */
#define WB_MAX_BYTES (2 * 1024 * 1024)

/* Most background writers.  Writes below run in parallel: over a slow
 * store with scattered dirty blocks (little to coalesce), the number
 * of writers is the write-back's queue depth, so it should not fall
 * far below the queue depth of the clients filling the tier.
 */
#define MAX_WRITERS 16

/* How long writers wait before retrying after a failed write below. */
#define RETRY_SECONDS 0.1

enum block_state {
  BLOCK_FILLING,
  BLOCK_DIRTY,
  BLOCK_WRITING,
  BLOCK_REDIRTIED,
  BLOCK_CLEAN,
};

/* A block held in RAM.  Every field is protected by rt->lock, except
 * data while FILLING, which only the filling thread touches.
 */
struct block {
  uint64_t blknum;              /* block number */
  uint64_t seq;                 /* when it last became (re)dirty */
  struct block *hnext;          /* hash chain */
  struct block *prev, *next;    /* dirty or clean list, by state */
  char *data;                   /* block_size bytes */
  enum block_state state;
  bool on_below;                /* written below during this stay */
};

/* Accounted cost of a block besides its data: the struct, its malloc
 * header, and up to two hash table slots (the table has between 1 and
 * 2 slots per block).  The data buffer's malloc header is the last 16.
 */
#define BLOCK_OVERHEAD (sizeof (struct block) + 16 + \
                        2 * sizeof (struct block *) + 16)

/* A doubly linked list of blocks. */
struct list {
  struct block *head, *tail;
  uint64_t n;
};

/* A background writer, or a slot that a caller uses to write back
 * inline before ramtier_start.  buf and blocks are allocated once;
 * the other fields are protected by rt->lock.
 */
struct writer {
  struct ramtier *rt;
  pthread_t thread;
  bool thread_running;          /* thread was created */
  char *buf;                    /* private copy being written below */
  struct block **blocks;        /* the blocks of the job in flight */
  uint32_t nr_blocks;           /* 0 when no job in flight */
  bool busy;                    /* someone is running a job with it */
  uint64_t minseq;              /* lowest seq in the job in flight */
};

struct ramtier {
  /* Set in ramtier_new and never changed. */
  uint64_t limit;               /* bytes, as given */
  uint32_t block_size;
  uint64_t disk_size;
  uint64_t nr_disk_blocks;      /* blocks covering the disk */
  struct ramtier_below below;
  uint64_t max_blocks;          /* blocks the tier may hold */
  uint64_t high_water;          /* dirty blocks that start writers */
  uint64_t low_water;           /* ... and where they stop */
  uint32_t wb_max_blocks;       /* most blocks in one write below */
  unsigned nr_writers;
  uint64_t nbuckets;            /* power of 2 */
  uint64_t fixed_bytes;         /* accounted fixed cost */

  /* The lock protects everything below it, including every struct
   * block (see there) and the non-constant fields of the writers.
   * It is never held across a call below.
   */
  pthread_mutex_t lock;
  /* Broadcast on every change that may let a waiter go on: a block
   * leaves FILLING, a write-back ends, a buffer is freed.
   */
  pthread_cond_t cond;
  /* Wakes the background writers: dirty data past high_water, a
   * stall, a flush, ramtier_free.
   */
  pthread_cond_t writer_cond;

  struct block **buckets;       /* hash table: nbuckets chains */
  struct list dirty;            /* DIRTY blocks, by seq (oldest first) */
  struct list clean;            /* CLEAN blocks, least recently used first */
  uint64_t nr_blocks;           /* blocks held, any state */
  uint64_t nr_unclean;          /* DIRTY + WRITING + REDIRTIED */
  void *free_bufs;              /* free data buffers, linked through
                                 * their first bytes */
  uint64_t next_seq;            /* next sequence number, from 1 */
  bool draining;                /* past high_water, not yet low_water */
  unsigned idle_writers;        /* writers waiting on writer_cond */
  unsigned waking;              /* of those, signalled, not yet up */
  unsigned stalled;             /* callers waiting for room */
  unsigned flushers;            /* callers in ramtier_flush */
  uint64_t wb_failures;         /* failed writes below, ever */
  int wb_errno;                 /* errno of the last failure */
  struct timespec retry_at;     /* no write-back before (after failure) */
  bool started;                 /* writer threads running */
  bool stopping;                /* ramtier_free: writers must exit */
  bool verbose;                 /* extra debug messages */
  struct writer *writers;       /* nr_writers of them */
  struct ramtier_stats stats;  /* limit, held, dirty filled on demand */
};

/* --------------------------------------------------------------
 * The lock must be held when calling any function below this line.
 */

static inline uint64_t
hash_blknum (const struct ramtier *rt, uint64_t blknum)
{
  /* Fibonacci hashing: consecutive blocks spread well. */
  return (blknum * UINT64_C (0x9E3779B97F4A7C15)) >>
    (64 - __builtin_ctzll (rt->nbuckets)) & (rt->nbuckets - 1);
}

static struct block *
lookup (const struct ramtier *rt, uint64_t blknum)
{
  struct block *b;

  for (b = rt->buckets[hash_blknum (rt, blknum)]; b; b = b->hnext)
    if (b->blknum == blknum)
      return b;
  return NULL;
}

static void
hash_insert (struct ramtier *rt, struct block *b)
{
  uint64_t h = hash_blknum (rt, b->blknum);

  assert (lookup (rt, b->blknum) == NULL);
  b->hnext = rt->buckets[h];
  rt->buckets[h] = b;
}

static void
hash_remove (struct ramtier *rt, struct block *b)
{
  struct block **p;

  for (p = &rt->buckets[hash_blknum (rt, b->blknum)]; *p; p = &(*p)->hnext)
    if (*p == b) {
      *p = b->hnext;
      return;
    }
  abort ();
}

static void
list_append (struct list *l, struct block *b)
{
  b->next = NULL;
  b->prev = l->tail;
  if (l->tail)
    l->tail->next = b;
  else
    l->head = b;
  l->tail = b;
  l->n++;
}

static void
list_remove (struct list *l, struct block *b)
{
  if (b->prev)
    b->prev->next = b->next;
  else
    l->head = b->next;
  if (b->next)
    b->next->prev = b->prev;
  else
    l->tail = b->prev;
  b->prev = b->next = NULL;
  assert (l->n > 0);
  l->n--;
}

/* Insert into the dirty list keeping it sorted by seq.  Walks from
 * the tail: usually the block is the newest, or nearly.
 */
static void
dirty_insert_sorted (struct ramtier *rt, struct block *b)
{
  struct list *l = &rt->dirty;
  struct block *after = l->tail;

  while (after && after->seq > b->seq)
    after = after->prev;
  if (after == l->tail) {
    list_append (l, b);
    return;
  }
  b->prev = after;
  b->next = after ? after->next : l->head;
  b->next->prev = b;
  if (after)
    after->next = b;
  else
    l->head = b;
  l->n++;
}

/* Bytes of block BLKNUM that lie on the disk. */
static inline uint32_t
block_len (const struct ramtier *rt, uint64_t blknum)
{
  uint64_t start = blknum * rt->block_size;

  assert (start < rt->disk_size);
  return MIN ((uint64_t) rt->block_size, rt->disk_size - start);
}

static bool want_writeback (struct ramtier *rt);

/* Wake one idle writer if there is a reason to write back and no
 * writer is on its way up already.
 */
static void
kick_writers (struct ramtier *rt)
{
  if (rt->dirty.n > rt->high_water)
    rt->draining = true;
  if (rt->idle_writers > rt->waking && rt->waking == 0 &&
      want_writeback (rt)) {
    rt->waking++;
    pthread_cond_signal (&rt->writer_cond);
  }
}

/* Block B (new, FILLING or CLEAN and off every list) becomes DIRTY. */
static void
make_dirty (struct ramtier *rt, struct block *b)
{
  b->state = BLOCK_DIRTY;
  b->seq = rt->next_seq++;
  list_append (&rt->dirty, b);
  rt->nr_unclean++;
  kick_writers (rt);
}

/* Give back a data buffer that get_buffer handed out. */
static void
put_buffer (struct ramtier *rt, char *data)
{
  *(void **) data = rt->free_bufs;
  rt->free_bufs = data;
  assert (rt->nr_blocks > 0);
  rt->nr_blocks--;
}

/* Give a data buffer back and forget the block. */
static void
release_block (struct ramtier *rt, struct block *b)
{
  hash_remove (rt, b);
  put_buffer (rt, b->data);
  free (b);
  pthread_cond_broadcast (&rt->cond);
}

/* Are the writers waiting after a failed write below? */
static bool
in_retry_delay (struct ramtier *rt)
{
  if (rt->wb_failures == 0)
    return false;
  return !deadline_reached (rt->retry_at);
}

/* Is write-back wanted now?  Ends draining at low_water. */
static bool
want_writeback (struct ramtier *rt)
{
  if (rt->draining && rt->dirty.n <= rt->low_water)
    rt->draining = false;
  if (rt->dirty.n == 0 || rt->stopping || in_retry_delay (rt))
    return false;
  return rt->draining || rt->stalled || rt->flushers;
}

/* The job at the head of the dirty list: the oldest dirty block and
 * its adjacent DIRTY neighbours, backwards then forwards, at most
 * wb_max_blocks in all.  Sets [*LO, *HI].
 */
static void
job_extent (struct ramtier *rt, uint64_t *lo, uint64_t *hi)
{
  const struct block *first = rt->dirty.head, *b;

  assert (first && first->state == BLOCK_DIRTY);
  *lo = *hi = first->blknum;
  while (*hi - *lo + 1 < rt->wb_max_blocks && *lo > 0 &&
         (b = lookup (rt, *lo - 1)) != NULL && b->state == BLOCK_DIRTY)
    (*lo)--;
  while (*hi - *lo + 1 < rt->wb_max_blocks && *hi + 1 < rt->nr_disk_blocks &&
         (b = lookup (rt, *hi + 1)) != NULL && b->state == BLOCK_DIRTY)
    (*hi)++;
}

/* Claim blocks [LO, HI] for writer W: each goes DIRTY -> WRITING and
 * is copied into w->buf.  Returns the bytes to write.
 */
static uint32_t
claim_job (struct ramtier *rt, struct writer *w, uint64_t lo, uint64_t hi)
{
  struct block *b;
  uint32_t count = 0;
  uint64_t i;

  w->minseq = UINT64_MAX;
  for (i = lo; i <= hi; ++i) {
    b = lookup (rt, i);
    assert (b && b->state == BLOCK_DIRTY);
    list_remove (&rt->dirty, b);
    b->state = BLOCK_WRITING;
    memcpy (w->buf + count, b->data, block_len (rt, i));
    count += block_len (rt, i);
    w->minseq = MIN (w->minseq, b->seq);
    w->blocks[i - lo] = b;
  }
  w->nr_blocks = hi - lo + 1;
  return count;
}

/* The write below of writer W's job ended (R == 0: it worked): each
 * block goes CLEAN, or back to DIRTY if it failed or was re-dirtied
 * meanwhile.  A failure is recorded for the waiters and delays the
 * writers (see the essay).
 */
static void
finish_job (struct ramtier *rt, struct writer *w, uint32_t count,
            uint64_t offset, int r, int err)
{
  struct block *b;
  uint32_t i;

  for (i = 0; i < w->nr_blocks; ++i) {
    b = w->blocks[i];
    if (r == 0)
      b->on_below = true;
    if (b->state == BLOCK_WRITING && r == 0) {
      b->state = BLOCK_CLEAN;
      list_append (&rt->clean, b);
      rt->nr_unclean--;
    }
    else {
      /* Failed, or newer data arrived meanwhile: write it again. */
      assert (b->state == BLOCK_WRITING || b->state == BLOCK_REDIRTIED);
      b->state = BLOCK_DIRTY;
      dirty_insert_sorted (rt, b);
    }
  }
  w->nr_blocks = 0;
  if (r == 0)
    rt->stats.written_below_bytes += count;
  else {
    rt->wb_failures++;
    rt->wb_errno = err;
    rt->retry_at = deadline_after (RETRY_SECONDS);
    nbdkit_debug ("ramcache: write-back of %" PRIu32 " bytes at %" PRIu64
                  " failed: %s (will retry)", count, offset, strerror (err));
  }
  pthread_cond_broadcast (&rt->cond);
}

/* Write back the oldest dirty block and its dirty neighbours, using
 * writer W (busy, no job in flight): claim under the lock, write
 * below without it, finish under it.  Returns with the lock held.
 */
static void
run_job (struct ramtier *rt, struct writer *w)
{
  uint64_t lo, hi, offset;
  uint32_t count;
  int r, err = 0;

  assert (w->busy && w->nr_blocks == 0);
  job_extent (rt, &lo, &hi);
  count = claim_job (rt, w, lo, hi);
  offset = lo * rt->block_size;
  /* More to do: the next writer takes it while this one writes. */
  if (rt->started)
    kick_writers (rt);

  pthread_mutex_unlock (&rt->lock);
  r = rt->below.pwrite (rt->below.opaque, w->buf, count, offset, &err);
  pthread_mutex_lock (&rt->lock);
  if (r == -1 && err == 0)
    err = EIO;

  if (rt->verbose)
    nbdkit_debug ("ramcache: write-back of %" PRIu32 " bytes at %" PRIu64
                  " (%" PRIu32 " blocks): %s", count, offset, w->nr_blocks,
                  r == 0 ? "ok" : strerror (err));
  finish_job (rt, w, count, offset, r, err);
}

/* Before ramtier_start, a caller that must wait for write-back does
 * it itself.  Returns true if it wrote something (the lock was
 * dropped), false if it could not (the caller should wait on cond).
 */
static bool
writeback_inline (struct ramtier *rt)
{
  unsigned i;

  if (rt->started || rt->dirty.n == 0)
    return false;
  for (i = 0; i < rt->nr_writers; ++i) {
    struct writer *w = &rt->writers[i];

    if (!w->busy) {
      w->busy = true;
      run_job (rt, w);
      w->busy = false;
      return true;
    }
  }
  return false;
}

/* Get a data buffer for a new block, making room if needed: evict a
 * clean block, else wait for the writers (until DEADLINE, on
 * CLOCK_MONOTONIC, if not NULL).  May drop the lock, so the caller
 * must look the block up again.  Returns NULL with *err set if a
 * write below failed meanwhile, the deadline passed (ETIMEDOUT) or
 * malloc failed.
 */
static char *
get_buffer (struct ramtier *rt, const struct timespec *deadline, int *err)
{
  const uint64_t failures = rt->wb_failures;
  bool stalled = false;
  char *buf;

  while (rt->nr_blocks >= rt->max_blocks) {
    if (rt->clean.head) {
      struct block *b = rt->clean.head;

      list_remove (&rt->clean, b);
      release_block (rt, b);
      continue;
    }
    if (rt->wb_failures != failures) {
      if (stalled)
        rt->stalled--;
      *err = rt->wb_errno;
      nbdkit_error ("ramcache: the tier is full and writing below "
                    "failed: %s", strerror (rt->wb_errno));
      return NULL;
    }
    if (!stalled) {
      stalled = true;
      rt->stalled++;
      rt->stats.writer_stalls++;
      if (rt->verbose)
        nbdkit_debug ("ramcache: tier full, waiting for write-back");
      kick_writers (rt);
    }
    if (!writeback_inline (rt)) {
      if (deadline == NULL)
        pthread_cond_wait (&rt->cond, &rt->lock);
      else if (pthread_cond_clockwait (&rt->cond, &rt->lock,
                                       CLOCK_MONOTONIC,
                                       deadline) == ETIMEDOUT &&
               rt->nr_blocks >= rt->max_blocks && !rt->clean.head) {
        rt->stalled--;
        *err = ETIMEDOUT;
        nbdkit_error ("ramcache: the tier is full and write-back did "
                      "not make room before the deadline");
        return NULL;
      }
    }
  }
  if (stalled)
    rt->stalled--;

  if (rt->free_bufs) {
    buf = rt->free_bufs;
    rt->free_bufs = *(void **) buf;
  }
  else {
    buf = malloc (rt->block_size);
    if (buf == NULL) {
      *err = errno;
      nbdkit_error ("malloc: %m");
      return NULL;
    }
  }
  rt->nr_blocks++;
  return buf;
}

/* Fill new block B (FILLING, in the table) with its LEN bytes from
 * below, dropping the lock meanwhile: readers and writers of the block
 * wait for the fill.  On error the block is dropped again.
 */
static int
fill_block (struct ramtier *rt, struct block *b, uint32_t len, int *err)
{
  int r;

  b->state = BLOCK_FILLING;
  pthread_mutex_unlock (&rt->lock);
  r = rt->below.pread (rt->below.opaque, b->data, len,
                       b->blknum * rt->block_size, err);
  pthread_mutex_lock (&rt->lock);
  assert (b->state == BLOCK_FILLING);
  pthread_cond_broadcast (&rt->cond);
  if (r == -1) {
    release_block (rt, b);
    return -1;
  }
  return 0;
}

/* Bring absent block BLKNUM into RAM, DIRTY, for a write that covers
 * it wholly (WHOLE) or in part (then its old data is read from below
 * first).  Sets *BP.  Returns 0, -1 with *err set, or 1 if the lock
 * was dropped while making room and someone else brought the block
 * in meanwhile: look it up again.
 */
static int
add_block (struct ramtier *rt, uint64_t blknum, bool whole,
           const struct timespec *deadline, struct block **bp, int *err)
{
  const uint32_t len = block_len (rt, blknum);
  char *data = get_buffer (rt, deadline, err);
  struct block *b;

  if (data == NULL)
    return -1;
  if (lookup (rt, blknum) != NULL) {
    put_buffer (rt, data);
    return 1;
  }
  b = calloc (1, sizeof *b);
  if (b == NULL) {
    *err = errno;
    nbdkit_error ("calloc: %m");
    put_buffer (rt, data);
    return -1;
  }
  b->blknum = blknum;
  b->data = data;
  hash_insert (rt, b);
  if (!whole && fill_block (rt, b, len, err) == -1)
    return -1;
  memset (data + len, 0, rt->block_size - len);
  make_dirty (rt, b);
  *bp = b;
  return 0;
}

/* Held block B is about to be written: make it DIRTY (or REDIRTIED if
 * a write-back of it is in flight).  Returns false if it had to wait
 * for B to be filled (the lock was dropped: look B up again).
 */
static bool
redirty_block (struct ramtier *rt, struct block *b)
{
  switch (b->state) {
  case BLOCK_FILLING:
    pthread_cond_wait (&rt->cond, &rt->lock);
    return false;
  case BLOCK_CLEAN:
    list_remove (&rt->clean, b);
    make_dirty (rt, b);
    return true;
  case BLOCK_DIRTY:
  case BLOCK_REDIRTIED:
    return true;
  case BLOCK_WRITING:
    /* The writer has its own copy; this one must be written again
     * when it is done.
     */
    b->state = BLOCK_REDIRTIED;
    b->seq = rt->next_seq++;
    return true;
  default:
    abort ();
  }
}

/* Write COUNT bytes of BUF (zeroes if BUF is NULL) at OFFSET,
 * waiting for room no later than DEADLINE if it is not NULL.
 */
static int
write_range (struct ramtier *rt, const char *buf, uint32_t count,
             uint64_t offset, const struct timespec *deadline, int *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&rt->lock);

  while (count > 0) {
    const uint64_t blknum = offset / rt->block_size;
    const uint32_t blkoff = offset % rt->block_size; /* within the block */
    const uint32_t len = block_len (rt, blknum);
    const uint32_t n = MIN (count, len - blkoff);
    struct block *b = lookup (rt, blknum);

    if (b == NULL) {
      const int r = add_block (rt, blknum, blkoff == 0 && n == len,
                               deadline, &b, err);

      if (r == -1)
        return -1;
      if (r == 1)
        continue;
    }
    else if (!redirty_block (rt, b))
      continue;

    if (buf) {
      memcpy (b->data + blkoff, buf, n);
      buf += n;
    }
    else
      memset (b->data + blkoff, 0, n);
    count -= n;
    offset += n;
  }
  return 0;
}

/* Check a request against the disk size. */
static int
check_range (struct ramtier *rt, uint32_t count, uint64_t offset, int *err)
{
  if (offset > rt->disk_size || count > rt->disk_size - offset) {
    nbdkit_error ("ramcache: request of %" PRIu32 " bytes at %" PRIu64
                  " is beyond the end of the disk (%" PRIu64 " bytes)",
                  count, offset, rt->disk_size);
    *err = EINVAL;
    return -1;
  }
  return 0;
}

/* Background writer thread. */
static void *
writer_thread (void *vp)
{
  struct writer *w = vp;
  struct ramtier *rt = w->rt;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&rt->lock);

  while (!rt->stopping) {
    if (want_writeback (rt)) {
      w->busy = true;
      run_job (rt, w);
      w->busy = false;
    }
    else {
      rt->idle_writers++;
      if (in_retry_delay (rt))
        /* Look again when the delay ends. */
        pthread_cond_clockwait (&rt->writer_cond, &rt->lock,
                                CLOCK_MONOTONIC, &rt->retry_at);
      else
        pthread_cond_wait (&rt->writer_cond, &rt->lock);
      rt->idle_writers--;
      /* Whoever woke (signalled or not) is up: the next kick may
       * signal again.
       */
      if (rt->waking > 0)
        rt->waking--;
    }
  }
  return NULL;
}

/* --------------------------------------------------------------
 * Creating and freeing the tier: no other thread is about yet.
 */

/* Share LIMIT_BYTES out between the writers' buffers, the fixed cost
 * and the blocks (see "Memory" in the essay), and set the water marks
 * and the size of the hash table.
 */
static void
share_out_limit (struct ramtier *rt, uint64_t limit_bytes)
{
  const uint32_t block_size = rt->block_size;
  const uint64_t per_block = block_size + BLOCK_OVERHEAD;
  const uint64_t nominal = limit_bytes / per_block;
  uint64_t wb_bytes;

  /* One writer per 16 blocks of tier, so the writers' buffers (at
   * least one block each) stay within 1/16 of the limit.
   */
  rt->nr_writers = MIN (MAX (nominal / 16, 1u), (uint64_t) MAX_WRITERS);
  rt->wb_max_blocks = nominal / 16 / rt->nr_writers;
  rt->wb_max_blocks = MIN (rt->wb_max_blocks,
                           MAX (1u, WB_MAX_BYTES / block_size));
  rt->wb_max_blocks = MAX (1u, rt->wb_max_blocks);
  wb_bytes = (uint64_t) rt->wb_max_blocks *
    (block_size + sizeof (struct block *));
  rt->fixed_bytes = sizeof *rt +
    rt->nr_writers * (sizeof (struct writer) + wb_bytes);
  if (limit_bytes > rt->fixed_bytes)
    rt->max_blocks = (limit_bytes - rt->fixed_bytes) / per_block;
  if (rt->max_blocks == 0) {
    nbdkit_debug ("ramcache: limit %" PRIu64 " is below the cost of one "
                  "block: holding one block anyway", limit_bytes);
    rt->max_blocks = 1;
  }
  rt->high_water = rt->max_blocks - MAX ((uint64_t) 1, rt->max_blocks / 8);
  rt->low_water = rt->high_water - MIN (rt->high_water,
                                        MAX ((uint64_t) 1,
                                             rt->max_blocks / 16));
  rt->nbuckets = 64;
  while (rt->nbuckets < rt->max_blocks)
    rt->nbuckets <<= 1;

  nbdkit_debug ("ramcache: limit %" PRIu64 " bytes: %" PRIu64 " blocks of %"
                PRIu32 " (%" PRIu64 " bytes each with metadata), %u "
                "writers writing up to %" PRIu32 " blocks at once, "
                "fixed cost %" PRIu64 " bytes; write-back starts past %"
                PRIu64 " dirty blocks",
                limit_bytes, rt->max_blocks, block_size, per_block,
                rt->nr_writers, rt->wb_max_blocks, rt->fixed_bytes,
                rt->high_water);
}

/* Allocate the hash table and the writers' buffers.  Returns -1
 * after nbdkit_error (the caller frees what was allocated).
 */
static int
alloc_tables (struct ramtier *rt)
{
  unsigned i;

  rt->buckets = calloc (rt->nbuckets, sizeof (struct block *));
  rt->writers = calloc (rt->nr_writers, sizeof (struct writer));
  if (rt->buckets == NULL || rt->writers == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  for (i = 0; i < rt->nr_writers; ++i) {
    struct writer *w = &rt->writers[i];

    w->rt = rt;
    w->buf = malloc ((size_t) rt->wb_max_blocks * rt->block_size);
    w->blocks = calloc (rt->wb_max_blocks, sizeof (struct block *));
    if (w->buf == NULL || w->blocks == NULL) {
      nbdkit_error ("malloc: %m");
      return -1;
    }
  }
  return 0;
}

struct ramtier *
ramtier_new (uint64_t limit_bytes, uint32_t block_size, uint64_t disk_size,
             const struct ramtier_below *below)
{
  struct ramtier *rt;

  if (!is_power_of_2 (block_size) || block_size < 512 ||
      block_size > (64 << 20)) {
    nbdkit_error ("ramcache: block size %" PRIu32 " must be a power of 2 "
                  "between 512 and 64M", block_size);
    return NULL;
  }
  if (below->pread == NULL || below->pwrite == NULL) {
    nbdkit_error ("ramcache: the store below must have pread and pwrite");
    return NULL;
  }

  rt = calloc (1, sizeof *rt);
  if (rt == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  rt->limit = limit_bytes;
  rt->block_size = block_size;
  rt->disk_size = disk_size;
  rt->nr_disk_blocks = (disk_size + block_size - 1) / block_size;
  rt->below = *below;
  rt->next_seq = 1;
  share_out_limit (rt, limit_bytes);

  pthread_mutex_init (&rt->lock, NULL);
  pthread_cond_init (&rt->cond, NULL);
  pthread_cond_init (&rt->writer_cond, NULL);
  if (alloc_tables (rt) == -1) {
    ramtier_free (rt);
    return NULL;
  }
  return rt;
}

/* The first writer thread runs: write-back is its job from now on. */
static void
set_started (struct ramtier *rt)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&rt->lock);

  rt->started = true;
}

int
ramtier_start (struct ramtier *rt)
{
  unsigned i;
  int r;

  assert (!rt->started);
  for (i = 0; i < rt->nr_writers; ++i) {
    r = pthread_create (&rt->writers[i].thread, NULL, writer_thread,
                        &rt->writers[i]);
    if (r != 0) {
      errno = r;
      nbdkit_error ("ramcache: pthread_create: %m");
      return -1;
    }
    thread_name (rt->writers[i].thread, "ramtier-wb");
    rt->writers[i].thread_running = true;
    /* From the first thread on, callers leave write-back to the
     * threads.
     */
    if (i == 0)
      set_started (rt);
  }
  return 0;
}

void
ramtier_free (struct ramtier *rt)
{
  unsigned i;
  uint64_t h;

  if (rt == NULL)
    return;

  pthread_mutex_lock (&rt->lock);
  rt->stopping = true;
  pthread_cond_broadcast (&rt->writer_cond);
  pthread_mutex_unlock (&rt->lock);
  if (rt->writers) {
    for (i = 0; i < rt->nr_writers; ++i) {
      if (rt->writers[i].thread_running)
        pthread_join (rt->writers[i].thread, NULL);
      free (rt->writers[i].buf);
      free (rt->writers[i].blocks);
    }
  }
  if (rt->dirty.n || rt->nr_unclean)
    nbdkit_debug ("ramcache: freed with %" PRIu64 " dirty blocks: "
                  "their data is lost", rt->nr_unclean);

  if (rt->buckets) {
    for (h = 0; h < rt->nbuckets; ++h) {
      struct block *b = rt->buckets[h], *next;

      for (; b; b = next) {
        next = b->hnext;
        free (b->data);
        free (b);
      }
    }
  }
  while (rt->free_bufs) {
    void *buf = rt->free_bufs;

    rt->free_bufs = *(void **) buf;
    free (buf);
  }
  pthread_cond_destroy (&rt->writer_cond);
  pthread_cond_destroy (&rt->cond);
  pthread_mutex_destroy (&rt->lock);
  free (rt->buckets);
  free (rt->writers);
  free (rt);
}

/* --------------------------------------------------------------
 * I/O: these take the lock themselves.
 */

/* Copy up to COUNT bytes at BLKOFF out of held block B (not FILLING)
 * into BUF.  Returns the bytes copied.  Called with the lock held.
 */
static uint32_t
read_held (struct ramtier *rt, struct block *b, char *buf,
           uint32_t blkoff, uint32_t count)
{
  const uint32_t n = MIN (count, rt->block_size - blkoff);

  memcpy (buf, b->data + blkoff, n);
  rt->stats.read_hits++;
  if (b->state == BLOCK_CLEAN) {
    list_remove (&rt->clean, b);
    list_append (&rt->clean, b);
  }
  return n;
}

/* Read up to COUNT bytes at OFFSET, in absent block BLKNUM and the
 * absent blocks after it, from below.  Below has their newest data
 * (see the essay), so the lock is dropped for the read.  Returns the
 * bytes read, or 0 with *err set.  Called with the lock held.
 */
static uint32_t
read_absent (struct ramtier *rt, uint64_t blknum, char *buf,
             uint64_t offset, uint32_t count, int *err)
{
  uint64_t end = blknum + 1;
  uint32_t n = MIN ((uint64_t) count, end * rt->block_size - offset);
  int r;

  while (n < count && lookup (rt, end) == NULL) {
    n = MIN ((uint64_t) count, (end + 1) * rt->block_size - offset);
    end++;
  }
  rt->stats.read_misses += end - blknum;
  pthread_mutex_unlock (&rt->lock);
  r = rt->below.pread (rt->below.opaque, buf, n, offset, err);
  pthread_mutex_lock (&rt->lock);
  return r == -1 ? 0 : n;
}

int
ramtier_pread (struct ramtier *rt, void *vbuf, uint32_t count,
               uint64_t offset, int *err)
{
  char *buf = vbuf;

  if (check_range (rt, count, offset, err) == -1)
    return -1;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&rt->lock);
  while (count > 0) {
    const uint64_t blknum = offset / rt->block_size;
    const uint32_t blkoff = offset % rt->block_size; /* within the block */
    struct block *b = lookup (rt, blknum);
    uint32_t n;

    if (b && b->state == BLOCK_FILLING) {
      pthread_cond_wait (&rt->cond, &rt->lock);
      continue;
    }
    if (b)
      n = read_held (rt, b, buf, blkoff, count);
    else if ((n = read_absent (rt, blknum, buf, offset, count, err)) == 0)
      return -1;
    buf += n;
    count -= n;
    offset += n;
  }
  return 0;
}

int
ramtier_pwrite (struct ramtier *rt, const void *buf, uint32_t count,
                uint64_t offset, int *err)
{
  if (check_range (rt, count, offset, err) == -1)
    return -1;
  return write_range (rt, buf, count, offset, NULL, err);
}

int
ramtier_pwrite_deadline (struct ramtier *rt, const void *buf,
                         uint32_t count, uint64_t offset,
                         const struct timespec *deadline, int *err)
{
  if (check_range (rt, count, offset, err) == -1)
    return -1;
  return write_range (rt, buf, count, offset, deadline, err);
}

int
ramtier_zero (struct ramtier *rt, uint32_t count, uint64_t offset,
              int *err)
{
  if (check_range (rt, count, offset, err) == -1)
    return -1;
  return write_range (rt, NULL, count, offset, NULL, err);
}

/* Trim below the range [start, end) if not empty.  Called without
 * the lock.
 */
static int
trim_below (struct ramtier *rt, uint64_t start, uint64_t end, int *err)
{
  if (start == end || rt->below.trim == NULL)
    return 0;
  assert (end - start <= UINT32_MAX);
  return rt->below.trim (rt->below.opaque, end - start, start, err);
}

/* What a trim does with one piece of its range. */
enum trim_piece {
  TRIM_BELOW,                   /* trim it below */
  TRIM_KEEP,                    /* leave it alone (held in part, or
                                 * dropped before it reached below) */
  TRIM_WAITED,                  /* waited for its block: look again */
};

/* Trim the piece [BLKOFF, BLKOFF + N) of block BLKNUM from RAM: a
 * held block wholly inside is dropped, after waiting for any fill or
 * write-back of it in flight.  Called with the lock held.
 */
static enum trim_piece
trim_held (struct ramtier *rt, uint64_t blknum, uint32_t blkoff,
           uint32_t n)
{
  const uint32_t len = block_len (rt, blknum);
  struct block *b = lookup (rt, blknum);
  bool below;

  if (b == NULL)
    return TRIM_BELOW;
  if (blkoff != 0 || n != len)
    return TRIM_KEEP;           /* partial block held: left alone */
  switch (b->state) {
  case BLOCK_FILLING:
  case BLOCK_WRITING:
  case BLOCK_REDIRTIED:
    /* Dropping it now would let the write below in flight land after
     * our trim below: wait for it.
     */
    pthread_cond_wait (&rt->cond, &rt->lock);
    return TRIM_WAITED;
  case BLOCK_DIRTY:
    list_remove (&rt->dirty, b);
    rt->nr_unclean--;
    if (!b->on_below)
      rt->stats.dropped_bytes += len;
    break;
  case BLOCK_CLEAN:
    list_remove (&rt->clean, b);
    break;
  default:
    abort ();
  }
  below = b->on_below;
  release_block (rt, b);
  return below ? TRIM_BELOW : TRIM_KEEP;
}

/* Send the range [*TSTART, *TEND) that a trim has built up so far
 * below (without the lock), and start a new one at NEXT.  Called with
 * the lock held; returns with it held.
 */
static int
send_trim (struct ramtier *rt, uint64_t *tstart, uint64_t *tend,
           uint64_t next, int *err)
{
  const uint64_t s = *tstart, e = *tend;
  int r;

  *tstart = *tend = next;
  if (s == e)
    return 0;
  pthread_mutex_unlock (&rt->lock);
  r = trim_below (rt, s, e, err);
  pthread_mutex_lock (&rt->lock);
  return r;
}

int
ramtier_trim (struct ramtier *rt, uint32_t count, uint64_t offset,
              int *err)
{
  /* The range to trim below, built up as we go and sent when it
   * cannot grow any more.
   */
  uint64_t tstart = offset, tend = offset;

  if (check_range (rt, count, offset, err) == -1)
    return -1;

  pthread_mutex_lock (&rt->lock);
  while (count > 0) {
    const uint64_t blknum = offset / rt->block_size;
    const uint32_t blkoff = offset % rt->block_size; /* within the block */
    const uint32_t n = MIN (count, block_len (rt, blknum) - blkoff);

    switch (trim_held (rt, blknum, blkoff, n)) {
    case TRIM_WAITED:
      continue;
    case TRIM_BELOW:
      /* Pieces are consecutive, so tend == offset here. */
      assert (tend == offset);
      tend = offset + n;
      break;
    case TRIM_KEEP:
      /* Send what we have; start again after this piece. */
      if (send_trim (rt, &tstart, &tend, offset + n, err) == -1) {
        pthread_mutex_unlock (&rt->lock);
        return -1;
      }
      break;
    default:
      abort ();
    }
    count -= n;
    offset += n;
  }
  pthread_mutex_unlock (&rt->lock);
  return trim_below (rt, tstart, tend, err);
}

/* Has everything up to sequence number TARGET reached below? */
static bool
flushed (struct ramtier *rt, uint64_t target)
{
  unsigned i;

  if (rt->dirty.head && rt->dirty.head->seq <= target)
    return false;
  for (i = 0; i < rt->nr_writers; ++i)
    if (rt->writers[i].nr_blocks && rt->writers[i].minseq <= target)
      return false;
  return true;
}

int
ramtier_flush (struct ramtier *rt, int *err)
{
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&rt->lock);
    const uint64_t target = rt->next_seq - 1;
    const uint64_t failures = rt->wb_failures;

    rt->flushers++;
    kick_writers (rt);
    while (!flushed (rt, target)) {
      if (rt->wb_failures != failures) {
        rt->flushers--;
        *err = rt->wb_errno;
        nbdkit_error ("ramcache: flush: writing below failed: %s",
                      strerror (rt->wb_errno));
        return -1;
      }
      if (!writeback_inline (rt))
        pthread_cond_wait (&rt->cond, &rt->lock);
    }
    rt->flushers--;
  }

  if (rt->below.flush)
    return rt->below.flush (rt->below.opaque, err);
  return 0;
}

void
ramtier_get_stats (struct ramtier *rt, struct ramtier_stats *st)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&rt->lock);

  *st = rt->stats;
  st->limit = rt->limit;
  st->held_bytes = rt->nr_blocks * rt->block_size;
  st->dirty_bytes = rt->nr_unclean * rt->block_size;
}

uint64_t
ramtier_cached_run (struct ramtier *rt, uint64_t offset, uint64_t count,
                    bool *cached)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&rt->lock);
  uint64_t blknum = offset / rt->block_size;
  uint64_t n = 0;

  assert (offset < rt->disk_size);
  *cached = lookup (rt, blknum) != NULL;
  while (n < count) {
    n = MIN (count, (blknum + 1) * rt->block_size - offset);
    blknum++;
    if (blknum >= rt->nr_disk_blocks ||
        (lookup (rt, blknum) != NULL) != *cached)
      break;
  }
  return n;
}

void
ramtier_set_verbose (struct ramtier *rt, bool verbose)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&rt->lock);

  rt->verbose = verbose;
}

void
ramtier_debug_stats (struct ramtier *rt, const char *who)
{
  struct ramtier_stats st;

  ramtier_get_stats (rt, &st);
  nbdkit_debug ("%s: ramcache: limit=%" PRIu64 " held=%" PRIu64
                " dirty=%" PRIu64 " written_below=%" PRIu64
                " dropped=%" PRIu64 " read_hits=%" PRIu64
                " read_misses=%" PRIu64 " writer_stalls=%" PRIu64,
                who, st.limit, st.held_bytes, st.dirty_bytes,
                st.written_below_bytes, st.dropped_bytes, st.read_hits,
                st.read_misses, st.writer_stalls);
}
