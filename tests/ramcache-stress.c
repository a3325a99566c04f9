/* nbdkit-fleece: data integrity stress test for the ramcache filter.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Several threads, each with its own NBD connection, send random
 * writes, zeroes, trims, reads and flushes, at unaligned offsets and
 * lengths, and check every read against an in-memory model of the
 * disk.
 *
 * The disk is cut into regions of REGION bytes; region r belongs to
 * thread r % THREADS, and a thread only sends requests inside its own
 * regions.  So no two requests in flight overlap (NBD leaves the
 * result of overlapping concurrent requests open), while regions
 * smaller than a cache block make the threads share blocks: their
 * writes meet in the cache's read-modify-write, write-back and
 * eviction paths.  As each byte of the model belongs to one thread,
 * the model needs no lock.
 *
 * model[i] is the expected byte at i when known[i] is set; a trim
 * clears known (the contents of a trimmed range are unspecified), a
 * write or zero sets it again.
 *
 * After the threads finish: one flush, then the whole disk is read
 * back and checked, and with -c FILE the file holding the disk below
 * is read directly and checked too (everything must be below after
 * the flush).
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <libnbd.h>

#include "test-rand.h"

static const char *uri;
static unsigned nr_threads = 4;
static unsigned nr_ops = 2000;  /* per thread */
static uint64_t region = 3001;  /* bytes */
static unsigned seed = 1;
static const char *check_file;
static int64_t disk_size;

static uint8_t *model;          /* expected bytes */
static uint8_t *known;          /* 1 = model[i] is what must be read */

/* Counters, summed at the end (atomics: threads add to them). */
static uint64_t nr_reads, nr_writes, nr_zeroes, nr_trims, nr_flushes;
static uint64_t bytes_checked;

struct thread {
  unsigned id;
  pthread_t th;
  uint64_t rng;
  int failed;
};

/* Compare BUF (read at OFFSET) with the model. */
static int
check (const char *who, const uint8_t *buf, uint64_t count, uint64_t offset)
{
  uint64_t i;

  for (i = 0; i < count; ++i) {
    if (known[offset + i] && buf[i] != model[offset + i]) {
      fprintf (stderr,
               "%s: MISMATCH at offset %" PRIu64 " (read of %" PRIu64
               " bytes at %" PRIu64 "): expected 0x%02x, got 0x%02x\n",
               who, offset + i, count, offset, model[offset + i], buf[i]);
      return -1;
    }
  }
  __atomic_add_fetch (&bytes_checked, count, __ATOMIC_RELAXED);
  return 0;
}

/* A worker thread: its own connection, then random writes, zeroes,
 * trims, flushes and reads of its own regions, each read checked
 * against the thread's model.  Long for the same reason as
 * pit-torture's writer: one loop over the kinds of operation.
 */
static void *
worker (void *vp)
{
  struct thread *t = vp;
  struct nbd_handle *nbd;
  uint64_t nr_regions = (disk_size + region - 1) / region;
  uint8_t *buf;
  char who[32];
  unsigned op;

  snprintf (who, sizeof who, "thread %u", t->id);
  buf = malloc (region);
  nbd = nbd_create ();
  if (buf == NULL || nbd == NULL) {
    perror ("malloc/nbd_create");
    goto fail;
  }
  if (nbd_connect_uri (nbd, uri) == -1) {
    fprintf (stderr, "%s: %s\n", who, nbd_get_error ());
    goto fail;
  }

  for (op = 0; op < nr_ops; ++op) {
    uint64_t r, start, len, offset, count, i;
    unsigned kind;

    /* Pick one of our regions, and a range inside it. */
    r = next_rand (&t->rng) % nr_regions;
    r -= r % nr_threads;
    r += t->id;
    if (r >= nr_regions)
      continue;
    start = r * region;
    len = region;
    if (start + len > (uint64_t) disk_size)
      len = disk_size - start;
    offset = start + next_rand (&t->rng) % len;
    count = 1 + next_rand (&t->rng) % (start + len - offset);

    kind = next_rand (&t->rng) % 100;
    if (kind < 40) {              /* write, sometimes FUA */
      uint32_t flags = next_rand (&t->rng) % 20 == 0 ? LIBNBD_CMD_FLAG_FUA : 0;

      for (i = 0; i < count; ++i)
        buf[i] = next_rand (&t->rng);
      if (nbd_pwrite (nbd, buf, count, offset, flags) == -1) {
        fprintf (stderr, "%s: pwrite: %s\n", who, nbd_get_error ());
        goto fail;
      }
      memcpy (&model[offset], buf, count);
      memset (&known[offset], 1, count);
      __atomic_add_fetch (&nr_writes, 1, __ATOMIC_RELAXED);
    }
    else if (kind < 75) {         /* read */
      if (nbd_pread (nbd, buf, count, offset, 0) == -1) {
        fprintf (stderr, "%s: pread: %s\n", who, nbd_get_error ());
        goto fail;
      }
      if (check (who, buf, count, offset) == -1)
        goto fail;
      __atomic_add_fetch (&nr_reads, 1, __ATOMIC_RELAXED);
    }
    else if (kind < 85) {         /* zero */
      if (nbd_zero (nbd, count, offset, 0) == -1) {
        fprintf (stderr, "%s: zero: %s\n", who, nbd_get_error ());
        goto fail;
      }
      memset (&model[offset], 0, count);
      memset (&known[offset], 1, count);
      __atomic_add_fetch (&nr_zeroes, 1, __ATOMIC_RELAXED);
    }
    else if (kind < 97) {         /* trim */
      if (nbd_trim (nbd, count, offset, 0) == -1) {
        fprintf (stderr, "%s: trim: %s\n", who, nbd_get_error ());
        goto fail;
      }
      memset (&known[offset], 0, count);
      __atomic_add_fetch (&nr_trims, 1, __ATOMIC_RELAXED);
    }
    else {                        /* flush */
      if (nbd_flush (nbd, 0) == -1) {
        fprintf (stderr, "%s: flush: %s\n", who, nbd_get_error ());
        goto fail;
      }
      __atomic_add_fetch (&nr_flushes, 1, __ATOMIC_RELAXED);
    }
  }

  if (nbd_shutdown (nbd, 0) == -1) {
    fprintf (stderr, "%s: shutdown: %s\n", who, nbd_get_error ());
    goto fail;
  }
  nbd_close (nbd);
  free (buf);
  return NULL;

 fail:
  t->failed = 1;
  nbd_close (nbd);
  free (buf);
  return NULL;
}

/* After the threads: flush, read everything back, check the file. */
static int
final_check (void)
{
  struct nbd_handle *nbd = nbd_create ();
  const uint64_t chunk = 1024 * 1024;
  uint8_t *buf = malloc (chunk);
  uint64_t offset, count;
  int fd;

  if (nbd == NULL || buf == NULL) {
    perror ("malloc/nbd_create");
    return -1;
  }
  if (nbd_connect_uri (nbd, uri) == -1 || nbd_flush (nbd, 0) == -1) {
    fprintf (stderr, "final: %s\n", nbd_get_error ());
    return -1;
  }
  for (offset = 0; offset < (uint64_t) disk_size; offset += count) {
    count = disk_size - offset < chunk ? disk_size - offset : chunk;
    if (nbd_pread (nbd, buf, count, offset, 0) == -1) {
      fprintf (stderr, "final: pread: %s\n", nbd_get_error ());
      return -1;
    }
    if (check ("final read", buf, count, offset) == -1)
      return -1;
  }

  if (check_file) {
    /* The flush above returned: the file must hold everything now,
     * while the server still runs.
     */
    fd = open (check_file, O_RDONLY);
    if (fd == -1) {
      perror (check_file);
      return -1;
    }
    for (offset = 0; offset < (uint64_t) disk_size; offset += count) {
      count = disk_size - offset < chunk ? disk_size - offset : chunk;
      if (pread (fd, buf, count, offset) != (ssize_t) count) {
        perror ("pread");
        return -1;
      }
      if (check ("file after flush", buf, count, offset) == -1)
        return -1;
    }
    close (fd);
  }

  nbd_shutdown (nbd, 0);
  nbd_close (nbd);
  free (buf);
  return 0;
}

static void
usage (void)
{
  fprintf (stderr,
           "usage: ramcache-stress [-t THREADS] [-n OPS] [-r REGION] "
           "[-S SEED] [-c FILE] URI\n");
  exit (2);
}

int
main (int argc, char *argv[])
{
  struct nbd_handle *nbd;
  struct thread *threads;
  unsigned i;
  int c, failed = 0;

  while ((c = getopt (argc, argv, "t:n:r:S:c:")) != -1) {
    switch (c) {
    case 't': nr_threads = atoi (optarg); break;
    case 'n': nr_ops = atoi (optarg); break;
    case 'r': region = strtoull (optarg, NULL, 0); break;
    case 'S': seed = atoi (optarg); break;
    case 'c': check_file = optarg; break;
    default: usage ();
    }
  }
  if (optind != argc - 1 || nr_threads < 1 || region < 1)
    usage ();
  uri = argv[optind];

  /* The disk starts all zero (memory plugin, or a new sparse file). */
  nbd = nbd_create ();
  if (nbd == NULL || nbd_connect_uri (nbd, uri) == -1 ||
      (disk_size = nbd_get_size (nbd)) == -1) {
    fprintf (stderr, "%s\n", nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  nbd_shutdown (nbd, 0);
  nbd_close (nbd);
  model = calloc (disk_size, 1);
  known = malloc (disk_size);
  threads = calloc (nr_threads, sizeof *threads);
  if (model == NULL || known == NULL || threads == NULL) {
    perror ("malloc");
    exit (EXIT_FAILURE);
  }
  memset (known, 1, disk_size);

  for (i = 0; i < nr_threads; ++i) {
    threads[i].id = i;
    threads[i].rng = (uint64_t) seed * 1000003 + i * 7919 + 1;
    if (pthread_create (&threads[i].th, NULL, worker, &threads[i]) != 0) {
      perror ("pthread_create");
      exit (EXIT_FAILURE);
    }
  }
  for (i = 0; i < nr_threads; ++i) {
    pthread_join (threads[i].th, NULL);
    failed |= threads[i].failed;
  }
  if (!failed && final_check () == -1)
    failed = 1;

  printf ("ramcache-stress: %u threads, region %" PRIu64 ", seed %u: "
          "%" PRIu64 " writes, %" PRIu64 " reads, %" PRIu64 " zeroes, "
          "%" PRIu64 " trims, %" PRIu64 " flushes, %" PRIu64
          " bytes checked: %s\n",
          nr_threads, region, seed, nr_writes, nr_reads, nr_zeroes,
          nr_trims, nr_flushes, bytes_checked, failed ? "FAILED" : "ok");
  free (model);
  free (known);
  free (threads);
  exit (failed ? EXIT_FAILURE : EXIT_SUCCESS);
}
