/* nbdkit-fleece: point-in-time torture test for the cbw filter.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Usage:
 *
 *   pit-torture -F [-S SEED] WRITER-URI
 *     Fill the disk behind WRITER-URI with seeded random data, then
 *     zero and trim some random ranges.  Run before the snapshot, so
 *     that the test script can save a reference copy of the disk.
 *
 *   pit-torture [options] WRITER-URI SNAPSHOT-URI REFERENCE-FILE
 *     Check that the snapshot is the point in time (PIT) saved in
 *     REFERENCE-FILE, an independent copy of the disk made by the
 *     script before the snapshot was taken, while writers change the
 *     disk.
 *
 * The run:
 *
 * 1. A holder connection opens SNAPSHOT-URI: with the cbw filter
 *    this takes the PIT.  Then every reader opens its own connection
 *    to SNAPSHOT-URI and every writer its own to WRITER-URI.
 *
 * 2. Writer threads send random writes, zeroes, trims, fast zeroes
 *    (which may fail with ENOTSUP, nothing else) and flushes at
 *    unaligned offsets, with lengths from 1 byte to -m bytes, biased
 *    towards cluster boundaries so that most requests straddle
 *    clusters.  Writers never have overlapping requests in flight
 *    (a byte-range lock among them), but two writers often touch the
 *    same cluster at once.  So the expected contents of the live disk
 *    are known exactly: 'model'/'known'.
 *
 *    Reader threads read random unaligned ranges of the snapshot and
 *    compare each byte with the reference.  By default the readers
 *    start once the writers have done half of their requests (so that
 *    many clusters are already preserved in the store); with -i every
 *    thread starts at once, right after the PIT.
 *
 *    With -T the readers also TRIM the snapshot: a reader verifies a
 *    range, then trims it; the whole clusters inside (-c must be the
 *    filter's cluster size) are released.  From then on a read
 *    touching a released cluster must fail with EINVAL, a read of
 *    clusters no trim has touched must succeed with the PIT data, and
 *    a read racing with a trim of its clusters may do either (but if
 *    it succeeds, its data must still be right).
 *
 * 3. After the threads: the whole snapshot is read cluster by cluster
 *    (released clusters must fail with EINVAL, the others must be the
 *    reference), the whole live disk is read and checked against the
 *    writers' model, and with -x CMD the shell command CMD is run
 *    while the holder still keeps the PIT (the script uses it to copy
 *    the snapshot with nbdcopy and compare).
 *
 * Every request is synchronous, one handle per thread, so nothing is
 * in flight when a connection closes.  Any mismatch prints the offset
 * and length and the program exits with status 1.
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
#include <sys/mman.h>
#include <sys/stat.h>

#include <pthread.h>

#include <libnbd.h>

#include "test-rand.h"

#include "rounding.h"

/* Options. */
static unsigned seed = 1;
static unsigned nr_writers = 3;
static unsigned nr_readers = 3;
static unsigned nr_ops = 1000;          /* per writer */
static unsigned min_reads = 200;        /* per reader */
static uint64_t max_len;                /* longest request, bytes */
static uint64_t cluster = 65536;        /* the filter's cluster size */
static bool immediate;                  /* -i */
static bool snapshot_trims;             /* -T */
static const char *run_cmd;             /* -x */
static const char *writer_uri, *snapshot_uri, *ref_file;

static int64_t disk_size;
static uint64_t nr_clusters;
static const uint8_t *ref;              /* the reference (mmap) */

/* The writers' model of the live disk: model[i] is what byte i must
 * hold when known[i] is set (trims make it unknown).  Each byte is
 * only touched by the writer holding the range lock on it.
 */
static uint8_t *model;
static uint8_t *known;

/* The writers' byte-range lock: 'inflight' has one slot per writer
 * ([start, end), or end == 0 when free).  Protected by range_lock.
 */
static pthread_mutex_t range_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t range_cond = PTHREAD_COND_INITIALIZER;
static struct { uint64_t start, end; } *inflight;

/* Readers wait here until the writers are half done (unless -i). */
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cond = PTHREAD_COND_INITIALIZER;
static unsigned writers_half_done;      /* protected by start_lock */

/* Set when every writer has finished (atomic). */
static int writers_done;

/* Released clusters of the snapshot (-T).  Protected by rel_lock.
 * 0 = untouched, 1 = a trim is in flight, 2 = released.
 */
static pthread_mutex_t rel_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *rel;
static uint64_t nr_released;    /* clusters with rel[c] != 0 */

/* Counters (atomic). */
static uint64_t nr_writes, nr_zeroes, nr_trims, nr_fast_zeroes,
  nr_fast_zero_enotsup, nr_flushes, nr_reads, nr_read_einval,
  nr_snap_trims, bytes_verified;

/* Any thread failed (atomic). */
static int failed;

struct thread {
  unsigned id;
  pthread_t th;
  uint64_t rng;
  struct nbd_handle *nbd;
};

/* A random request [*offset, *offset + *count) of 1..MAX bytes inside
 * the disk.  Half the time it starts a few bytes before or after a
 * cluster boundary, so that it straddles clusters.
 */
static void
random_range (uint64_t *rng, uint64_t max, uint64_t *offset,
              uint64_t *count)
{
  uint64_t off, len;

  len = 1 + next_rand (rng) % max;
  switch (next_rand (rng) % 4) {
  case 0: case 1:               /* anywhere */
    off = next_rand (rng) % disk_size;
    break;
  case 2: {                     /* near a cluster boundary */
    uint64_t c = next_rand (rng) % (nr_clusters + 1);
    int64_t delta = (int64_t) (next_rand (rng) % 1025) - 512;

    off = c * cluster;
    if (delta < 0 && (uint64_t) -delta > off)
      off = 0;
    else
      off += delta;
    break;
  }
  default:                      /* the last clusters of the disk */
    off = disk_size - 1 -
      next_rand (rng) % MIN ((uint64_t) disk_size, 3 * cluster);
  }
  if (off >= (uint64_t) disk_size)
    off = disk_size - 1;
  if (len > disk_size - off)
    len = disk_size - off;
  *offset = off;
  *count = len;
}

static void
fail (void)
{
  __atomic_store_n (&failed, 1, __ATOMIC_SEQ_CST);
}

static bool
has_failed (void)
{
  return __atomic_load_n (&failed, __ATOMIC_SEQ_CST);
}

/* Take the writers' range lock on [start, end) for writer ID. */
static void
range_acquire (unsigned id, uint64_t start, uint64_t end)
{
  unsigned i;
  bool busy;

  pthread_mutex_lock (&range_lock);
  do {
    busy = false;
    for (i = 0; i < nr_writers; ++i)
      if (i != id && inflight[i].end != 0 &&
          inflight[i].start < end && start < inflight[i].end)
        busy = true;
    if (busy)
      pthread_cond_wait (&range_cond, &range_lock);
  } while (busy);
  inflight[id].start = start;
  inflight[id].end = end;
  pthread_mutex_unlock (&range_lock);
}

static void
range_release (unsigned id)
{
  pthread_mutex_lock (&range_lock);
  inflight[id].start = inflight[id].end = 0;
  pthread_cond_broadcast (&range_cond);
  pthread_mutex_unlock (&range_lock);
}

/* Compare BUF, read from the snapshot at OFFSET, with the reference. */
static int
check_pit (const char *who, const uint8_t *buf, uint64_t count,
           uint64_t offset)
{
  uint64_t i;

  if (memcmp (buf, ref + offset, count) == 0) {
    __atomic_add_fetch (&bytes_verified, count, __ATOMIC_RELAXED);
    return 0;
  }
  for (i = 0; i < count; ++i)
    if (buf[i] != ref[offset + i])
      break;
  fprintf (stderr,
           "%s: SNAPSHOT MISMATCH: read of %" PRIu64 " bytes at offset %"
           PRIu64 " differs from the point in time at offset %" PRIu64
           " (cluster %" PRIu64 "): expected 0x%02x, got 0x%02x\n",
           who, count, offset, offset + i, (offset + i) / cluster,
           ref[offset + i], buf[i]);
  return -1;
}

/* Clusters touched by [offset, offset+count): [*first, *end). */
static void
clusters_touched (uint64_t offset, uint64_t count,
                  uint64_t *first, uint64_t *end)
{
  *first = offset / cluster;
  *end = (offset + count - 1) / cluster + 1;
}

/* Whole clusters inside [offset, offset+count): [*first, *end), where
 * the short last cluster counts as whole if the range reaches the end
 * of the disk.
 */
static void
clusters_inside (uint64_t offset, uint64_t count,
                 uint64_t *first, uint64_t *end)
{
  *first = (offset + cluster - 1) / cluster;
  if (offset + count == (uint64_t) disk_size)
    *end = nr_clusters;
  else
    *end = (offset + count) / cluster;
  if (*end < *first)
    *end = *first;
}

/* Highest release state of clusters [first, end). */
static uint8_t
rel_max (uint64_t first, uint64_t end)
{
  uint64_t c;
  uint8_t m = 0;

  if (!snapshot_trims)
    return 0;
  pthread_mutex_lock (&rel_lock);
  for (c = first; c < end; ++c)
    if (rel[c] > m)
      m = rel[c];
  pthread_mutex_unlock (&rel_lock);
  return m;
}

/* Clusters released so far (or being released). */
static uint64_t
rel_count (void)
{
  uint64_t n;

  pthread_mutex_lock (&rel_lock);
  n = nr_released;
  pthread_mutex_unlock (&rel_lock);
  return n;
}

/* Read [offset, offset+count) of the snapshot and check it. */
static int
snapshot_read (const char *who, struct nbd_handle *nbd, uint8_t *buf,
               uint64_t count, uint64_t offset)
{
  uint64_t first, end;
  uint8_t before, after;
  int r, e;

  clusters_touched (offset, count, &first, &end);
  before = rel_max (first, end);
  r = nbd_pread (nbd, buf, count, offset, 0);
  e = nbd_get_errno ();
  if (r == 0) {
    if (before == 2) {
      fprintf (stderr, "%s: read of %" PRIu64 " bytes at %" PRIu64
               " succeeded, but it touches a released cluster "
               "(expected EINVAL)\n", who, count, offset);
      return -1;
    }
    __atomic_add_fetch (&nr_reads, 1, __ATOMIC_RELAXED);
    return check_pit (who, buf, count, offset);
  }
  after = rel_max (first, end);
  if (e == EINVAL && after >= 1) {
    __atomic_add_fetch (&nr_read_einval, 1, __ATOMIC_RELAXED);
    return 0;
  }
  fprintf (stderr, "%s: read of %" PRIu64 " bytes at %" PRIu64
           " (clusters %" PRIu64 "..%" PRIu64 ", %s) failed: %s "
           "(errno %d)\n", who, count, offset, first, end - 1,
           after ? "some released" : "none released",
           nbd_get_error (), e);
  return -1;
}

/* Trim [offset, offset+count) of the snapshot (-T). */
static int
snapshot_trim (const char *who, struct nbd_handle *nbd,
               uint64_t count, uint64_t offset)
{
  uint64_t first, end, c;

  clusters_inside (offset, count, &first, &end);
  pthread_mutex_lock (&rel_lock);
  for (c = first; c < end; ++c)
    if (rel[c] == 0) {
      rel[c] = 1;
      nr_released++;
    }
  pthread_mutex_unlock (&rel_lock);
  if (nbd_trim (nbd, count, offset, 0) == -1) {
    fprintf (stderr, "%s: snapshot trim of %" PRIu64 " bytes at %" PRIu64
             " failed: %s\n", who, count, offset, nbd_get_error ());
    return -1;
  }
  pthread_mutex_lock (&rel_lock);
  for (c = first; c < end; ++c)
    rel[c] = 2;
  pthread_mutex_unlock (&rel_lock);
  __atomic_add_fetch (&nr_snap_trims, 1, __ATOMIC_RELAXED);
  return 0;
}

/* A writer thread: each operation picks a kind (write, zero, trim,
 * fast zero, flush), sends it, and records what the live disk must
 * now hold.  Long because the kinds share the bookkeeping of one
 * operation and reading them side by side is how the checker is
 * reviewed; each kind is a few lines.
 */
static void *
writer (void *vp)
{
  struct thread *t = vp;
  struct nbd_handle *nbd = t->nbd;
  bool fast_zero_ok = nbd_can_fast_zero (nbd) == 1;
  uint8_t *buf = malloc (max_len);
  char who[32];
  unsigned op, i;

  snprintf (who, sizeof who, "writer %u", t->id);
  if (buf == NULL) {
    perror ("malloc");
    fail ();
    return NULL;
  }

  for (op = 0; op < nr_ops && !has_failed (); ++op) {
    uint64_t offset, count, kind;

    if (op == nr_ops / 2) {
      pthread_mutex_lock (&start_lock);
      writers_half_done++;
      pthread_cond_broadcast (&start_cond);
      pthread_mutex_unlock (&start_lock);
    }

    random_range (&t->rng, max_len, &offset, &count);
    kind = next_rand (&t->rng) % 100;
    range_acquire (t->id, offset, offset + count);

    if (kind < 55) {                    /* write, sometimes FUA */
      uint32_t flags = kind < 3 ? LIBNBD_CMD_FLAG_FUA : 0;

      for (i = 0; i < count; ++i)
        buf[i] = next_rand (&t->rng);
      if (nbd_pwrite (nbd, buf, count, offset, flags) == -1) {
        fprintf (stderr, "%s: write of %" PRIu64 " bytes at %" PRIu64
                 " failed: %s\n", who, count, offset, nbd_get_error ());
        goto fail;
      }
      memcpy (&model[offset], buf, count);
      memset (&known[offset], 1, count);
      __atomic_add_fetch (&nr_writes, 1, __ATOMIC_RELAXED);
    }
    else if (kind < 72) {               /* zero, sometimes NO_HOLE */
      uint32_t flags = kind & 1 ? LIBNBD_CMD_FLAG_NO_HOLE : 0;

      if (nbd_zero (nbd, count, offset, flags) == -1) {
        fprintf (stderr, "%s: zero of %" PRIu64 " bytes at %" PRIu64
                 " failed: %s\n", who, count, offset, nbd_get_error ());
        goto fail;
      }
      memset (&model[offset], 0, count);
      memset (&known[offset], 1, count);
      __atomic_add_fetch (&nr_zeroes, 1, __ATOMIC_RELAXED);
    }
    else if (kind < 84) {               /* trim */
      if (nbd_trim (nbd, count, offset, 0) == -1) {
        fprintf (stderr, "%s: trim of %" PRIu64 " bytes at %" PRIu64
                 " failed: %s\n", who, count, offset, nbd_get_error ());
        goto fail;
      }
      memset (&known[offset], 0, count);
      __atomic_add_fetch (&nr_trims, 1, __ATOMIC_RELAXED);
    }
    else if (kind < 94 && fast_zero_ok) { /* fast zero */
      if (nbd_zero (nbd, count, offset, LIBNBD_CMD_FLAG_FAST_ZERO) == -1) {
        if (nbd_get_errno () != ENOTSUP) {
          fprintf (stderr, "%s: fast zero of %" PRIu64 " bytes at %"
                   PRIu64 " failed with %s, expected success or "
                   "ENOTSUP\n", who, count, offset, nbd_get_error ());
          goto fail;
        }
        /* Refused: the disk is unchanged. */
        __atomic_add_fetch (&nr_fast_zero_enotsup, 1, __ATOMIC_RELAXED);
      }
      else {
        memset (&model[offset], 0, count);
        memset (&known[offset], 1, count);
      }
      __atomic_add_fetch (&nr_fast_zeroes, 1, __ATOMIC_RELAXED);
    }
    else {                              /* flush */
      if (nbd_flush (nbd, 0) == -1) {
        fprintf (stderr, "%s: flush failed: %s\n", who, nbd_get_error ());
        goto fail;
      }
      __atomic_add_fetch (&nr_flushes, 1, __ATOMIC_RELAXED);
    }
    range_release (t->id);
  }

  pthread_mutex_lock (&start_lock);
  if (op <= nr_ops / 2)         /* tiny -n, or failed early */
    writers_half_done++;
  pthread_cond_broadcast (&start_cond);
  pthread_mutex_unlock (&start_lock);
  free (buf);
  return NULL;

 fail:
  range_release (t->id);
  fail ();
  pthread_mutex_lock (&start_lock);
  writers_half_done = nr_writers;
  pthread_cond_broadcast (&start_cond);
  pthread_mutex_unlock (&start_lock);
  free (buf);
  return NULL;
}

static void *
reader (void *vp)
{
  struct thread *t = vp;
  struct nbd_handle *nbd = t->nbd;
  uint64_t max_read = MAX (max_len, 4 * cluster);
  uint8_t *buf = malloc (max_read);
  char who[32];
  unsigned n;

  snprintf (who, sizeof who, "reader %u", t->id);
  if (buf == NULL) {
    perror ("malloc");
    fail ();
    return NULL;
  }

  if (!immediate) {
    pthread_mutex_lock (&start_lock);
    while (writers_half_done < nr_writers)
      pthread_cond_wait (&start_cond, &start_lock);
    pthread_mutex_unlock (&start_lock);
  }

  for (n = 0;
       !has_failed () &&
         (n < min_reads || !__atomic_load_n (&writers_done, __ATOMIC_SEQ_CST));
       ++n) {
    uint64_t offset, count;

    random_range (&t->rng, max_read, &offset, &count);
    if (snapshot_read (who, nbd, buf, count, offset) == -1)
      goto fail;
    /* Now and then release what was just verified, but keep at least
     * half of the snapshot to read.
     */
    if (snapshot_trims && next_rand (&t->rng) % 16 == 0 &&
        rel_count () < nr_clusters / 2) {
      if (snapshot_trim (who, nbd, count, offset) == -1)
        goto fail;
      /* Whatever it released must now fail with EINVAL. */
      if (snapshot_read (who, nbd, buf, count, offset) == -1)
        goto fail;
    }
  }
  free (buf);
  return NULL;

 fail:
  fail ();
  free (buf);
  return NULL;
}

/* Read the whole snapshot cluster by cluster. */
static int
final_snapshot_check (struct nbd_handle *nbd)
{
  uint8_t *buf = malloc (cluster);
  uint64_t c, offset, count, released = 0;

  if (buf == NULL) {
    perror ("malloc");
    return -1;
  }
  for (c = 0; c < nr_clusters; ++c) {
    offset = c * cluster;
    count = MIN (cluster, disk_size - offset);
    if (snapshot_trims && rel[c] == 2)
      released++;
    if (snapshot_read ("final snapshot check", nbd, buf, count,
                       offset) == -1) {
      free (buf);
      return -1;
    }
  }
  printf ("pit-torture: final check: %" PRIu64 " clusters verified, %"
          PRIu64 " released\n", nr_clusters - released, released);
  free (buf);
  return 0;
}

/* Read the whole live disk and check it against the writers' model. */
static int
final_live_check (struct nbd_handle *nbd)
{
  const uint64_t chunk = 1024 * 1024;
  uint8_t *buf = malloc (chunk);
  uint64_t offset, count, i, nr_known = 0, nr_changed = 0;

  if (buf == NULL) {
    perror ("malloc");
    return -1;
  }
  for (offset = 0; offset < (uint64_t) disk_size; offset += count) {
    count = MIN (chunk, disk_size - offset);
    if (nbd_pread (nbd, buf, count, offset, 0) == -1) {
      fprintf (stderr, "final live check: read at %" PRIu64 ": %s\n",
               offset, nbd_get_error ());
      free (buf);
      return -1;
    }
    for (i = 0; i < count; ++i) {
      if (buf[i] != ref[offset + i])
        nr_changed++;
      if (!known[offset + i])
        continue;
      nr_known++;
      if (buf[i] != model[offset + i]) {
        fprintf (stderr, "final live check: LIVE DISK MISMATCH at offset %"
                 PRIu64 ": the writers wrote 0x%02x, the disk has 0x%02x\n",
                 offset + i, model[offset + i], buf[i]);
        free (buf);
        return -1;
      }
    }
  }
  printf ("pit-torture: final check: live disk has the writers' data "
          "(%" PRIu64 " bytes known, %" PRIu64 " bytes differ from the "
          "point in time)\n", nr_known, nr_changed);
  free (buf);
  if (nr_ops > 0 && nr_changed == 0) {
    fprintf (stderr, "final live check: the live disk never changed\n");
    return -1;
  }
  return 0;
}

/* -F: fill the disk with seeded random data, then zero and trim some
 * ranges.
 */
static int
fill (void)
{
  struct nbd_handle *nbd = nbd_create ();
  const uint64_t chunk = 1024 * 1024;
  uint64_t rng = (uint64_t) seed * UINT64_C (6364136223846793005) +
    UINT64_C (1442695040888963407);
  uint64_t offset, count, i;
  uint8_t *buf = malloc (chunk);
  unsigned n;

  if (nbd == NULL || buf == NULL) {
    perror ("malloc/nbd_create");
    return -1;
  }
  if (nbd_connect_uri (nbd, writer_uri) == -1 ||
      (disk_size = nbd_get_size (nbd)) == -1)
    goto err;
  nr_clusters = (disk_size + cluster - 1) / cluster;
  for (offset = 0; offset < (uint64_t) disk_size; offset += count) {
    count = MIN (chunk, disk_size - offset);
    for (i = 0; i + 8 <= count; i += 8) {
      uint64_t r = next_rand (&rng);
      memcpy (&buf[i], &r, 8);
    }
    for (; i < count; ++i)
      buf[i] = next_rand (&rng);
    if (nbd_pwrite (nbd, buf, count, offset, 0) == -1)
      goto err;
  }
  for (n = 0; n < 24; ++n) {
    random_range (&rng, 4 * cluster, &offset, &count);
    if ((n & 1 ? nbd_trim (nbd, count, offset, 0) :
         nbd_zero (nbd, count, offset, 0)) == -1)
      goto err;
  }
  if (nbd_flush (nbd, 0) == -1 || nbd_shutdown (nbd, 0) == -1)
    goto err;
  nbd_close (nbd);
  free (buf);
  return 0;

 err:
  fprintf (stderr, "pit-torture: fill: %s\n", nbd_get_error ());
  nbd_close (nbd);
  free (buf);
  return -1;
}

static struct nbd_handle *
connect_to (const char *uri)
{
  struct nbd_handle *nbd = nbd_create ();

  if (nbd == NULL || nbd_connect_uri (nbd, uri) == -1) {
    fprintf (stderr, "pit-torture: %s: %s\n", uri, nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  return nbd;
}

static void
disconnect (struct nbd_handle *nbd)
{
  if (nbd_shutdown (nbd, 0) == -1) {
    fprintf (stderr, "pit-torture: shutdown: %s\n", nbd_get_error ());
    fail ();
  }
  nbd_close (nbd);
}

static void
usage (void)
{
  fprintf (stderr,
           "usage: pit-torture -F [-S SEED] [-c CLUSTER] WRITER-URI\n"
           "       pit-torture [-S SEED] [-w WRITERS] [-r READERS] "
           "[-n OPS] [-R MIN-READS]\n"
           "                   [-m MAX-LEN] [-c CLUSTER] [-i] [-T] "
           "[-x CMD]\n"
           "                   WRITER-URI SNAPSHOT-URI REFERENCE-FILE\n");
  exit (2);
}

/* Parse the options, fill or take the point in time, run the
 * threads, then the final checks.  Long but straight-line: each phase
 * follows the previous one, in the order the usage text gives.
 */
int
main (int argc, char *argv[])
{
  struct nbd_handle *holder;
  struct thread *writers, *readers;
  struct stat st;
  bool do_fill = false;
  unsigned i;
  int c, fd;

  while ((c = getopt (argc, argv, "FS:w:r:n:R:m:c:iTx:")) != -1) {
    switch (c) {
    case 'F': do_fill = true; break;
    case 'S': seed = strtoul (optarg, NULL, 0); break;
    case 'w': nr_writers = strtoul (optarg, NULL, 0); break;
    case 'r': nr_readers = strtoul (optarg, NULL, 0); break;
    case 'n': nr_ops = strtoul (optarg, NULL, 0); break;
    case 'R': min_reads = strtoul (optarg, NULL, 0); break;
    case 'm': max_len = strtoull (optarg, NULL, 0); break;
    case 'c': cluster = strtoull (optarg, NULL, 0); break;
    case 'i': immediate = true; break;
    case 'T': snapshot_trims = true; break;
    case 'x': run_cmd = optarg; break;
    default: usage ();
    }
  }
  if (cluster == 0 || (cluster & (cluster - 1)) != 0)
    usage ();
  if (max_len == 0)
    max_len = 3 * cluster;

  if (do_fill) {
    if (optind != argc - 1)
      usage ();
    writer_uri = argv[optind];
    exit (fill () == 0 ? EXIT_SUCCESS : EXIT_FAILURE);
  }

  if (optind != argc - 3 || nr_writers < 1)
    usage ();
  writer_uri = argv[optind];
  snapshot_uri = argv[optind+1];
  ref_file = argv[optind+2];

  /* 1. Take the PIT: the holder connects first. */
  holder = connect_to (snapshot_uri);
  disk_size = nbd_get_size (holder);
  if (disk_size <= 0) {
    fprintf (stderr, "pit-torture: bad snapshot size: %s\n",
             nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  nr_clusters = (disk_size + cluster - 1) / cluster;

  fd = open (ref_file, O_RDONLY);
  if (fd == -1 || fstat (fd, &st) == -1) {
    perror (ref_file);
    exit (EXIT_FAILURE);
  }
  if (st.st_size != disk_size) {
    fprintf (stderr, "pit-torture: %s has %" PRIi64 " bytes, the snapshot "
             "%" PRIi64 "\n", ref_file, (int64_t) st.st_size, disk_size);
    exit (EXIT_FAILURE);
  }
  ref = mmap (NULL, disk_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (ref == MAP_FAILED) {
    perror ("mmap");
    exit (EXIT_FAILURE);
  }
  close (fd);

  model = malloc (disk_size);
  known = calloc (disk_size, 1);
  rel = calloc (nr_clusters, 1);
  inflight = calloc (nr_writers, sizeof *inflight);
  writers = calloc (nr_writers, sizeof *writers);
  readers = calloc (nr_readers + 1, sizeof *readers);
  if (model == NULL || known == NULL || rel == NULL || inflight == NULL ||
      writers == NULL || readers == NULL) {
    perror ("malloc");
    exit (EXIT_FAILURE);
  }

  /* Every connection before any thread starts. */
  for (i = 0; i < nr_readers; ++i)
    readers[i].nbd = connect_to (snapshot_uri);
  for (i = 0; i < nr_writers; ++i)
    writers[i].nbd = connect_to (writer_uri);
  if (nbd_get_size (writers[0].nbd) != disk_size) {
    fprintf (stderr, "pit-torture: the writer and snapshot exports "
             "differ in size\n");
    exit (EXIT_FAILURE);
  }

  /* 2. The load. */
  for (i = 0; i < nr_writers; ++i) {
    writers[i].id = i;
    writers[i].rng = (uint64_t) seed * 1000003 + i * 7919 + 1;
    if (pthread_create (&writers[i].th, NULL, writer, &writers[i]) != 0) {
      perror ("pthread_create");
      exit (EXIT_FAILURE);
    }
  }
  for (i = 0; i < nr_readers; ++i) {
    readers[i].id = i;
    readers[i].rng = (uint64_t) seed * 2000003 + i * 104729 + 7;
    if (pthread_create (&readers[i].th, NULL, reader, &readers[i]) != 0) {
      perror ("pthread_create");
      exit (EXIT_FAILURE);
    }
  }
  for (i = 0; i < nr_writers; ++i)
    pthread_join (writers[i].th, NULL);
  __atomic_store_n (&writers_done, 1, __ATOMIC_SEQ_CST);
  for (i = 0; i < nr_readers; ++i)
    pthread_join (readers[i].th, NULL);

  /* 3. Final checks, while the holder keeps the PIT. */
  if (!has_failed () && final_snapshot_check (holder) == -1)
    fail ();
  if (!has_failed () && final_live_check (writers[0].nbd) == -1)
    fail ();

  for (i = 0; i < nr_readers; ++i)
    disconnect (readers[i].nbd);
  for (i = 0; i < nr_writers; ++i)
    disconnect (writers[i].nbd);

  if (!has_failed () && run_cmd) {
    int r;

    fflush (stdout);
    r = system (run_cmd);
    if (r != 0) {
      fprintf (stderr, "pit-torture: -x command failed (status %d): %s\n",
               r, run_cmd);
      fail ();
    }
  }
  disconnect (holder);

  printf ("pit-torture: seed %u, %u writers, %u readers, cluster %" PRIu64
          ", max %" PRIu64 "%s%s: %" PRIu64 " writes, %" PRIu64
          " zeroes, %" PRIu64 " trims, %" PRIu64 " fast zeroes (%" PRIu64
          " ENOTSUP), %" PRIu64 " flushes; %" PRIu64 " snapshot reads (%"
          PRIu64 " bytes verified), %" PRIu64 " EINVAL, %" PRIu64
          " snapshot trims: %s\n",
          seed, nr_writers, nr_readers, cluster, max_len,
          immediate ? ", immediate" : "", snapshot_trims ? ", trims" : "",
          nr_writes, nr_zeroes, nr_trims, nr_fast_zeroes,
          nr_fast_zero_enotsup, nr_flushes, nr_reads, bytes_verified,
          nr_read_einval, nr_snap_trims, has_failed () ? "FAILED" : "ok");
  free (writers);
  free (readers);
  exit (has_failed () ? EXIT_FAILURE : EXIT_SUCCESS);
}
