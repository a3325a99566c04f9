/* nbdkit-fleece: a load generator for the bitmap-discard tests.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 *   bitmap-discard-writer URI CTLDIR THREADS SEED [SECONDS BLOCKSIZE]
 *
 * THREADS threads, each with its own libnbd handle, write, zero and
 * trim the disk at URI at random offsets and sizes (straddling the
 * 64K granules) until the file CTLDIR/stop appears.  While the file
 * CTLDIR/pause exists the threads stop between requests; once all are
 * idle the program creates CTLDIR/paused (and removes it when pause
 * goes away), so a test can copy the live disk at a known instant.
 *
 * $BD_WRITER_DELAY_US (microseconds between a thread's requests) and
 * $BD_WRITER_MAX_LEN (largest request) slow it down;
 * $BD_WRITER_REGION confines it to the first bytes of the disk.
 *
 * With SECONDS and BLOCKSIZE it is a benchmark instead: aligned
 * BLOCKSIZE writes for SECONDS, then "iops=N" on stdout.
 *
 * Each request completes before the next one starts, so when the
 * threads are idle, the disk holds every write they made.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>

#include <libnbd.h>

static const char *uri;
static int64_t disk_size;
static double bench_seconds;
static unsigned delay_us;        /* $BD_WRITER_DELAY_US between requests */
static uint64_t max_len = 200 * 1024; /* $BD_WRITER_MAX_LEN */
static uint64_t region;          /* $BD_WRITER_REGION: only [0, region) */
static uint32_t bench_blocksize;

static atomic_bool stop;
static atomic_bool pause_req;
static atomic_uint idle;         /* threads parked by pause_req */
static atomic_uint_fast64_t requests;

struct thread {
  pthread_t tid;
  unsigned seed;
};

static uint64_t
rnd (unsigned *seed, uint64_t n)
{
  uint64_t r = ((uint64_t) rand_r (seed) << 31) ^ rand_r (seed);
  return n ? r % n : 0;
}

static void *
worker (void *arg)
{
  struct thread *t = arg;
  struct nbd_handle *h = nbd_create ();
  char *buf = malloc (256 * 1024);
  struct timespec t0, now;

  if (h == NULL || buf == NULL ||
      nbd_connect_uri (h, uri) == -1) {
    fprintf (stderr, "writer: %s\n", nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  clock_gettime (CLOCK_MONOTONIC, &t0);
  while (!stop) {
    uint64_t off, len, kind;
    int r;

    if (pause_req) {
      idle++;
      while (pause_req && !stop)
        usleep (1000);
      idle--;
      continue;
    }
    if (bench_seconds > 0) {
      clock_gettime (CLOCK_MONOTONIC, &now);
      if (now.tv_sec - t0.tv_sec + (now.tv_nsec - t0.tv_nsec) / 1e9 >=
          bench_seconds)
        break;
      len = bench_blocksize;
      off = rnd (&t->seed, disk_size / len) * len;
      memset (buf, rnd (&t->seed, 256), len);
      r = nbd_pwrite (h, buf, len, off, 0);
    }
    else {
      if (delay_us)
        usleep (delay_us);
      len = 1 + rnd (&t->seed, max_len);
      off = rnd (&t->seed, region - len + 1);
      kind = rnd (&t->seed, 10);
      if (kind < 8) {
        memset (buf, 1 + rnd (&t->seed, 255), len);
        r = nbd_pwrite (h, buf, len, off, 0);
      }
      else if (kind == 8)
        r = nbd_zero (h, len, off, 0);
      else
        r = nbd_trim (h, len, off, 0);
    }
    if (r == -1) {
      fprintf (stderr, "writer: request failed: %s\n", nbd_get_error ());
      exit (EXIT_FAILURE);
    }
    requests++;
  }
  nbd_shutdown (h, 0);
  nbd_close (h);
  free (buf);
  return NULL;
}

static bool
exists (const char *dir, const char *name)
{
  char path[4096];

  snprintf (path, sizeof path, "%s/%s", dir, name);
  return access (path, F_OK) == 0;
}

static void
touch (const char *dir, const char *name, bool create)
{
  char path[4096];
  FILE *fp;

  snprintf (path, sizeof path, "%s/%s", dir, name);
  if (create) {
    fp = fopen (path, "w");
    if (fp)
      fclose (fp);
  }
  else
    unlink (path);
}

/* Parse the arguments, connect, run the writer threads for the
 * time given, join them and report: straight-line, one phase after
 * the other.
 */
int
main (int argc, char *argv[])
{
  struct nbd_handle *h;
  const char *ctldir;
  unsigned nthreads, i;
  struct thread *threads;
  struct timespec t0, t1;
  double secs;

  if (argc != 5 && argc != 7) {
    fprintf (stderr, "usage: %s URI CTLDIR THREADS SEED "
             "[SECONDS BLOCKSIZE]\n", argv[0]);
    exit (EXIT_FAILURE);
  }
  uri = argv[1];
  if (getenv ("BD_WRITER_DELAY_US"))
    delay_us = atoi (getenv ("BD_WRITER_DELAY_US"));
  if (getenv ("BD_WRITER_MAX_LEN"))
    max_len = atoi (getenv ("BD_WRITER_MAX_LEN"));
  if (getenv ("BD_WRITER_REGION"))
    region = strtoull (getenv ("BD_WRITER_REGION"), NULL, 0);
  ctldir = argv[2];
  nthreads = atoi (argv[3]);
  if (argc == 7) {
    bench_seconds = atof (argv[5]);
    bench_blocksize = atoi (argv[6]);
  }

  h = nbd_create ();
  if (h == NULL || nbd_connect_uri (h, uri) == -1 ||
      (disk_size = nbd_get_size (h)) == -1) {
    fprintf (stderr, "writer: %s\n", nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  nbd_shutdown (h, 0);
  nbd_close (h);
  if (region == 0 || region > (uint64_t) disk_size)
    region = disk_size;
  if (max_len > region)
    max_len = region;

  threads = calloc (nthreads, sizeof *threads);
  clock_gettime (CLOCK_MONOTONIC, &t0);
  for (i = 0; i < nthreads; ++i) {
    threads[i].seed = atoi (argv[4]) * 1000 + i;
    pthread_create (&threads[i].tid, NULL, worker, &threads[i]);
  }

  if (bench_seconds == 0) {
    touch (ctldir, "running", true);
    while (!exists (ctldir, "stop")) {
      if (exists (ctldir, "pause") && !pause_req) {
        pause_req = true;
        while (idle < nthreads)
          usleep (1000);
        touch (ctldir, "paused", true);
      }
      else if (!exists (ctldir, "pause") && pause_req) {
        touch (ctldir, "paused", false);
        pause_req = false;
      }
      usleep (5000);
    }
    stop = true;
  }
  for (i = 0; i < nthreads; ++i)
    pthread_join (threads[i].tid, NULL);
  clock_gettime (CLOCK_MONOTONIC, &t1);
  secs = t1.tv_sec - t0.tv_sec + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf ("requests=%" PRIu64 " seconds=%.2f iops=%.0f\n",
          (uint64_t) requests, secs, requests / secs);
  free (threads);
  return 0;
}
