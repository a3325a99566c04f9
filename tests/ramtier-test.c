/* nbdkit-fleece: tests of the RAM tier (ramtier.c) itself, over a fake
 * store in memory.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * The engine is linked in directly (libramtier.la); nbdkit_error and
 * nbdkit_debug, which nbdkit would provide, are defined here.  The
 * fake store can fail writes on demand, sleep to widen races, and
 * hold a write at a gate, so that states which the filter tests only
 * reach by chance are reached every time:
 *
 *  1. before ramtier_start (callers write back themselves), one
 *     block: reads, writes, zeroes across blocks; flush;
 *  2. trim: dropped before write-back (never below), trimmed below
 *     after; partial blocks kept;
 *  3. a block re-dirtied while its write-back is in flight: reads
 *     see the newest data, and it is written again; a read of a
 *     block being filled for a partial write waits for the fill;
 *  4. writes below fail: flush fails, waiting writers fail rather than
 *     hang, and after the store recovers a flush writes everything;
 *  5. concurrency: threads over shared blocks with a slow store, at
 *     limits of 1, 3 and 64 blocks, checked against a model, and the
 *     store checked after the final flush.
 */

#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include "ramtier.h"

/* ---- What nbdkit would provide. ---- */

void
nbdkit_error (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  fprintf (stderr, "error: ");
  vfprintf (stderr, fs, args);
  fprintf (stderr, "\n");
  va_end (args);
}

void
nbdkit_debug (const char *fs, ...)
{
  va_list args;

  if (getenv ("RAMCACHE_ENGINE_DEBUG") == NULL)
    return;
  va_start (args, fs);
  vfprintf (stderr, fs, args);
  fprintf (stderr, "\n");
  va_end (args);
}

/* ---- The fake store. ---- */

#define DISK_MAX (4 * 1024 * 1024)

static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t store_cond = PTHREAD_COND_INITIALIZER;
static uint8_t store[DISK_MAX];       /* the data below */
static uint64_t store_writes, store_written, store_trims;
static bool fail_writes;              /* pwrite fails with EIO */
static unsigned max_delay_us;         /* random sleep in each call */
static bool gate_closed;              /* pwrite waits at the gate */
static bool gate_waiting;             /* a pwrite is at the gate */
static bool read_gate_closed;         /* pread waits at its gate */
static bool read_gate_waiting;        /* a pread is at its gate */

static void
maybe_sleep (void)
{
  if (max_delay_us)
    usleep (random () % max_delay_us);
}

/* A byte of the store, read under its lock: the engine's writers may
 * still be writing below while the test looks.
 */
static uint8_t
store_at (uint64_t offset)
{
  uint8_t v;

  pthread_mutex_lock (&store_lock);
  v = store[offset];
  pthread_mutex_unlock (&store_lock);
  return v;
}

static int
fake_pread (void *opaque, void *buf, uint32_t count, uint64_t offset,
            int *err)
{
  maybe_sleep ();
  pthread_mutex_lock (&store_lock);
  while (read_gate_closed) {
    read_gate_waiting = true;
    pthread_cond_broadcast (&store_cond);
    pthread_cond_wait (&store_cond, &store_lock);
  }
  read_gate_waiting = false;
  memcpy (buf, store + offset, count);
  pthread_mutex_unlock (&store_lock);
  return 0;
}

static int
fake_pwrite (void *opaque, const void *buf, uint32_t count, uint64_t offset,
             int *err)
{
  maybe_sleep ();
  pthread_mutex_lock (&store_lock);
  while (gate_closed) {
    gate_waiting = true;
    pthread_cond_broadcast (&store_cond);
    pthread_cond_wait (&store_cond, &store_lock);
  }
  gate_waiting = false;
  if (fail_writes) {
    pthread_mutex_unlock (&store_lock);
    *err = EIO;
    return -1;
  }
  memcpy (store + offset, buf, count);
  store_writes++;
  store_written += count;
  pthread_mutex_unlock (&store_lock);
  return 0;
}

static int
fake_trim (void *opaque, uint32_t count, uint64_t offset, int *err)
{
  maybe_sleep ();
  pthread_mutex_lock (&store_lock);
  memset (store + offset, 0xdd, count); /* "unspecified" */
  store_trims++;
  pthread_mutex_unlock (&store_lock);
  return 0;
}

static int
fake_flush (void *opaque, int *err)
{
  return 0;
}

static const struct ramtier_below fake = {
  .pread = fake_pread,
  .pwrite = fake_pwrite,
  .trim = fake_trim,
  .flush = fake_flush,
};

static void
reset_store (void)
{
  pthread_mutex_lock (&store_lock);
  memset (store, 0, sizeof store);
  store_writes = store_written = store_trims = 0;
  fail_writes = gate_closed = gate_waiting = false;
  read_gate_closed = read_gate_waiting = false;
  max_delay_us = 0;
  pthread_mutex_unlock (&store_lock);
}

#define CHECK(expr)                                                     \
  do {                                                                  \
    if (!(expr)) {                                                      \
      fprintf (stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #expr); \
      exit (EXIT_FAILURE);                                              \
    }                                                                   \
  } while (0)

/* ---- 1. Before ramtier_start, one block. ---- */

static void
test_inline (void)
{
  const uint32_t bs = 4096;
  struct ramtier *tier = ramtier_new (bs, bs, 65536 + 100, &fake);
  uint8_t buf[20000], out[20000];
  int err = 0;
  size_t i;

  CHECK (tier != NULL);
  for (i = 0; i < sizeof buf; ++i)
    buf[i] = i * 7 + 1;
  CHECK (ramtier_pwrite (tier, buf, sizeof buf, 1000, &err) == 0);
  CHECK (ramtier_pread (tier, out, sizeof out, 1000, &err) == 0);
  CHECK (memcmp (buf, out, sizeof buf) == 0);
  CHECK (ramtier_zero (tier, 5000, 3000, &err) == 0);
  memset (buf + 2000, 0, 5000);
  /* The short last block. */
  CHECK (ramtier_pwrite (tier, buf, 150, 65536 - 50, &err) == 0);
  CHECK (ramtier_pread (tier, out, sizeof out, 1000, &err) == 0);
  CHECK (memcmp (buf, out, sizeof buf) == 0);
  CHECK (ramtier_flush (tier, &err) == 0);
  CHECK (memcmp (store + 1000, buf, sizeof buf) == 0);
  CHECK (memcmp (store + 65536 - 50, buf, 150) == 0);
  ramtier_free (tier);
  printf ("inline write-back with one block: ok\n");
}

/* ---- 2. Trim. ---- */

static void
test_trim (void)
{
  const uint32_t bs = 4096;
  struct ramtier *tier = ramtier_new (1 << 20, bs, 65536, &fake);
  struct ramtier_stats st;
  uint8_t buf[4 * 4096], out[100];
  int err = 0;

  reset_store ();
  CHECK (tier != NULL && ramtier_start (tier) == 0);
  memset (buf, 0xab, sizeof buf);
  CHECK (ramtier_pwrite (tier, buf, sizeof buf, 0, &err) == 0);
  /* Blocks 0 and 1 wholly inside, block 2 partly: 0, 1 dropped. */
  CHECK (ramtier_trim (tier, 2 * bs + 100, 0, &err) == 0);
  ramtier_get_stats (tier, &st);
  CHECK (st.dropped_bytes == 2 * bs);
  CHECK (store_trims == 0);
  CHECK (ramtier_pread (tier, out, 100, 2 * bs, &err) == 0);
  CHECK (out[0] == 0xab && out[99] == 0xab);      /* partial: kept */
  CHECK (ramtier_flush (tier, &err) == 0);
  CHECK (store_written == 2 * bs);                /* blocks 2, 3 only */
  CHECK (store_at (0) == 0 && store_at (2 * bs) == 0xab);
  /* Now below: trimmed below too, not dropped. */
  CHECK (ramtier_trim (tier, bs, 3 * bs, &err) == 0);
  CHECK (store_trims == 1 && store_at (3 * bs) == 0xdd);
  ramtier_get_stats (tier, &st);
  CHECK (st.dropped_bytes == 2 * bs);
  /* Absent blocks are trimmed below, in one request. */
  CHECK (ramtier_trim (tier, 4 * bs, 8 * bs, &err) == 0);
  CHECK (store_trims == 2);
  ramtier_free (tier);
  printf ("trim: ok\n");
}

/* ---- 3. Re-dirtied during write-back. ---- */

struct flush_arg {
  struct ramtier *tier;
  int r;
};

static void *
flush_thread (void *vp)
{
  struct flush_arg *a = vp;
  int err = 0;

  a->r = ramtier_flush (a->tier, &err);
  return NULL;
}

static void
test_redirty (void)
{
  const uint32_t bs = 4096;
  struct ramtier *tier = ramtier_new (1 << 20, bs, 65536, &fake);
  uint8_t a[4096], b[4096], out[4096], c0;
  struct flush_arg fa;
  pthread_t th;
  int err = 0;

  reset_store ();
  CHECK (tier != NULL && ramtier_start (tier) == 0);
  memset (a, 'a', bs);
  memset (b, 'b', bs);
  CHECK (ramtier_pwrite (tier, a, bs, 0, &err) == 0);

  /* Hold the write-back of 'a' at the gate. */
  pthread_mutex_lock (&store_lock);
  gate_closed = true;
  pthread_mutex_unlock (&store_lock);
  fa.tier = tier;
  CHECK (pthread_create (&th, NULL, flush_thread, &fa) == 0);
  pthread_mutex_lock (&store_lock);
  while (!gate_waiting)
    pthread_cond_wait (&store_cond, &store_lock);
  pthread_mutex_unlock (&store_lock);

  /* The block is being written; overwrite it and read it back. */
  CHECK (ramtier_pwrite (tier, b, 100, 0, &err) == 0);
  CHECK (ramtier_pread (tier, out, bs, 0, &err) == 0);
  CHECK (out[0] == 'b' && out[99] == 'b' && out[100] == 'a');

  pthread_mutex_lock (&store_lock);
  gate_closed = false;
  pthread_cond_broadcast (&store_cond);
  pthread_mutex_unlock (&store_lock);
  pthread_join (th, NULL);
  CHECK (fa.r == 0);
  /* The old copy is below; the new one may be too already (the
   * writers go on while the flush is still waking up).
   */
  c0 = store_at (0);
  CHECK (c0 == 'a' || c0 == 'b');
  CHECK (store_at (100) == 'a');

  /* The new data must be written again. */
  CHECK (ramtier_flush (tier, &err) == 0);
  CHECK (store_at (0) == 'b' && store_at (99) == 'b' &&
         store_at (100) == 'a');
  CHECK (ramtier_pread (tier, out, bs, 0, &err) == 0);
  CHECK (out[0] == 'b' && out[100] == 'a');
  ramtier_free (tier);
  printf ("re-dirtied during write-back: ok\n");
}

/* A read of another part of a block being filled from below (for a
 * partial write) must wait for the fill and return the store's data.
 */
struct io_arg {
  struct ramtier *tier;
  uint8_t buf[100];
  uint64_t offset;
  bool write;
  int r;
};

static void *
io_thread (void *vp)
{
  struct io_arg *a = vp;
  int err = 0;

  if (a->write)
    a->r = ramtier_pwrite (a->tier, a->buf, sizeof a->buf, a->offset, &err);
  else
    a->r = ramtier_pread (a->tier, a->buf, sizeof a->buf, a->offset, &err);
  return NULL;
}

static void
test_read_while_filling (void)
{
  struct ramtier *tier = ramtier_new (1 << 20, 4096, 65536, &fake);
  struct io_arg w = { .offset = 0, .write = true };
  struct io_arg r = { .offset = 200, .write = false };
  pthread_t wt, rt;
  int err = 0;

  reset_store ();
  CHECK (tier != NULL && ramtier_start (tier) == 0);
  memset (store, 's', 4096);
  memset (w.buf, 'w', sizeof w.buf);
  w.tier = r.tier = tier;

  pthread_mutex_lock (&store_lock);
  read_gate_closed = true;
  pthread_mutex_unlock (&store_lock);
  CHECK (pthread_create (&wt, NULL, io_thread, &w) == 0);
  pthread_mutex_lock (&store_lock);
  while (!read_gate_waiting)
    pthread_cond_wait (&store_cond, &store_lock);
  pthread_mutex_unlock (&store_lock);
  /* The writer's block is FILLING, its read held at the gate. */
  CHECK (pthread_create (&rt, NULL, io_thread, &r) == 0);
  usleep (50000);
  pthread_mutex_lock (&store_lock);
  read_gate_closed = false;
  pthread_cond_broadcast (&store_cond);
  pthread_mutex_unlock (&store_lock);
  pthread_join (wt, NULL);
  pthread_join (rt, NULL);
  CHECK (w.r == 0 && r.r == 0);
  CHECK (r.buf[0] == 's' && r.buf[99] == 's');
  CHECK (ramtier_pread (tier, r.buf, 100, 50, &err) == 0);
  CHECK (r.buf[0] == 'w' && r.buf[49] == 'w' && r.buf[50] == 's');
  ramtier_free (tier);
  printf ("read while filling: ok\n");
}

/* ---- 4. Failing store. ---- */

static void
test_failures (void)
{
  const uint32_t bs = 4096;
  struct ramtier *tier = ramtier_new (bs, bs, 65536, &fake);
  uint8_t buf[4096], out[4096];
  int err = 0;

  reset_store ();
  CHECK (tier != NULL && ramtier_start (tier) == 0);
  memset (buf, 'x', bs);
  fail_writes = true;
  CHECK (ramtier_pwrite (tier, buf, bs, 0, &err) == 0);  /* into RAM */
  err = 0;
  CHECK (ramtier_flush (tier, &err) == -1 && err == EIO);
  /* The one block is dirty and cannot be written: a write needing a
   * new block must fail, not hang.
   */
  err = 0;
  CHECK (ramtier_pwrite (tier, buf, bs, bs, &err) == -1 && err == EIO);
  /* The data is still there. */
  CHECK (ramtier_pread (tier, out, bs, 0, &err) == 0);
  CHECK (memcmp (out, buf, bs) == 0);

  pthread_mutex_lock (&store_lock);
  fail_writes = false;
  pthread_mutex_unlock (&store_lock);
  CHECK (ramtier_flush (tier, &err) == 0);
  CHECK (memcmp (store, buf, bs) == 0);
  CHECK (ramtier_pwrite (tier, buf, bs, bs, &err) == 0);
  CHECK (ramtier_flush (tier, &err) == 0);
  CHECK (memcmp (store + bs, buf, bs) == 0);
  ramtier_free (tier);
  printf ("failing store: ok\n");
}

/* ---- 5. Concurrency against a model. ---- */

#define NTHREADS 8
#define REGION_MAX 20000
#define CDISK (256 * 1024 + 333)

static uint8_t model[CDISK], known[CDISK];
static struct ramtier *crc;
static unsigned nr_ops;
static uint64_t region;          /* bytes owned in a row by one thread */

struct worker {
  unsigned id;
  uint64_t rng;
  int failed;
};

static uint64_t
rnd (uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void *
worker (void *vp)
{
  struct worker *w = vp;
  const uint64_t nr_regions = (CDISK + region - 1) / region;
  static __thread uint8_t buf[REGION_MAX];
  unsigned op;
  int err = 0;

  for (op = 0; op < nr_ops; ++op) {
    uint64_t r = rnd (&w->rng) % nr_regions, start, len, offset, count, i;
    unsigned kind = rnd (&w->rng) % 100;

    r -= r % NTHREADS;
    r += w->id;
    if (r >= nr_regions)
      continue;
    start = r * region;
    len = start + region > CDISK ? CDISK - start : region;
    offset = start + rnd (&w->rng) % len;
    count = 1 + rnd (&w->rng) % (start + len - offset);

    if (kind < 40) {
      for (i = 0; i < count; ++i)
        buf[i] = rnd (&w->rng);
      if (ramtier_pwrite (crc, buf, count, offset, &err) == -1)
        goto fail;
      memcpy (model + offset, buf, count);
      memset (known + offset, 1, count);
    }
    else if (kind < 80) {
      if (ramtier_pread (crc, buf, count, offset, &err) == -1)
        goto fail;
      for (i = 0; i < count; ++i)
        if (known[offset + i] && buf[i] != model[offset + i]) {
          fprintf (stderr, "thread %u: mismatch at %" PRIu64 "\n",
                   w->id, offset + i);
          goto fail;
        }
    }
    else if (kind < 88) {
      if (ramtier_zero (crc, count, offset, &err) == -1)
        goto fail;
      memset (model + offset, 0, count);
      memset (known + offset, 1, count);
    }
    else if (kind < 98) {
      if (ramtier_trim (crc, count, offset, &err) == -1)
        goto fail;
      memset (known + offset, 0, count);
    }
    else if (ramtier_flush (crc, &err) == -1)
      goto fail;
  }
  return NULL;

 fail:
  w->failed = 1;
  return NULL;
}

static void
test_concurrency (uint64_t limit, uint64_t reg, unsigned delay_us,
                  unsigned ops)
{
  struct worker ws[NTHREADS];
  struct ramtier_stats st;
  int err = 0, i;
  uint64_t j;

  reset_store ();
  max_delay_us = delay_us;
  nr_ops = ops;
  region = reg;
  assert (region <= REGION_MAX);
  memset (model, 0, sizeof model);
  memset (known, 1, sizeof known);
  crc = ramtier_new (limit, 4096, CDISK, &fake);
  CHECK (crc != NULL && ramtier_start (crc) == 0);

  pthread_t th[NTHREADS];
  for (i = 0; i < NTHREADS; ++i) {
    ws[i].id = i;
    ws[i].rng = 88172645463325252ULL + i * 7919;
    ws[i].failed = 0;
    CHECK (pthread_create (&th[i], NULL, worker, &ws[i]) == 0);
  }
  for (i = 0; i < NTHREADS; ++i) {
    pthread_join (th[i], NULL);
    CHECK (!ws[i].failed);
  }
  CHECK (ramtier_flush (crc, &err) == 0);
  for (j = 0; j < CDISK; ++j)
    if (known[j] && store[j] != model[j]) {
      fprintf (stderr, "store mismatch after flush at %" PRIu64 "\n", j);
      exit (EXIT_FAILURE);
    }
  ramtier_get_stats (crc, &st);
  CHECK (st.dirty_bytes == 0);
  CHECK (st.held_bytes <= limit || st.held_bytes == 4096);
  printf ("concurrency, limit %" PRIu64 ", region %" PRIu64 ", delay %u us: "
          "ok (written below "
          "%" PRIu64 ", dropped %" PRIu64 ", stalls %" PRIu64 ", hits %"
          PRIu64 ", misses %" PRIu64 ")\n", limit, region, delay_us,
          st.written_below_bytes, st.dropped_bytes, st.writer_stalls,
          st.read_hits, st.read_misses);
  ramtier_free (crc);
}

int
main (int argc, char *argv[])
{
  srandom (1);
  test_inline ();
  test_trim ();
  test_redirty ();
  test_read_while_filling ();
  test_failures ();
  /* Small regions: threads share blocks. */
  test_concurrency (4096, 1000, 0, 5000);
  test_concurrency (4096, 1000, 200, 1500);
  test_concurrency (3 * 4096, 1000, 100, 3000);
  test_concurrency (3 * 4096 + 20000, 1000, 50, 5000);
  test_concurrency (64 * 4096, 1000, 50, 5000);
  test_concurrency (64 << 20, 1000, 0, 20000);
  /* Large regions: whole blocks are trimmed, also while being
   * written back.
   */
  test_concurrency (4096, 20000, 50, 3000);
  test_concurrency (8 * 4096, 20000, 50, 3000);
  test_concurrency (64 * 4096, 20000, 20, 5000);
  test_concurrency (64 << 20, 20000, 0, 5000);
  exit (EXIT_SUCCESS);
}
