/* nbdkit-fleece benchmarks
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * nbd-load: a small libnbd load generator for the fleece benchmarks.
 *
 * Usage: nbd-load MODE [OPTIONS] URI
 *
 * Modes:
 *   write          one write of --block-size bytes per --stride bytes
 *                  of the disk, in a seeded random order of strides
 *                  (so with stride = cluster size, a first pass under
 *                  a new snapshot makes every request pay a CBW)
 *   fill           sequential writes of pseudo-random data over the
 *                  whole disk (prepares a live disk that is not zero)
 *   read           sequential reads of --block-size bytes
 *   read-and-trim  sequential reads, each chunk TRIMmed as soon as it
 *                  has been read (a backup client releasing what it
 *                  has copied); chunks are aligned to --block-size so
 *                  the TRIMs are cluster aligned
 *   trim           sequential TRIMs of --block-size bytes
 *   hold           connect, print a line, and stay connected until
 *                  SIGTERM or SIGINT (a snapshot holder)
 *   cat            print the first --block-size bytes (default 4096)
 *                  of the export, trailing spaces removed
 *
 * Options:
 *   --block-size=N   request size (default 65536; 1M for fill, read,
 *                    read-and-trim and trim; 4096 for cat)
 *   --stride=N       write mode: one request per N bytes (default
 *                    65536, at least --block-size); the request lies
 *                    at a seeded random aligned place inside its stride
 *   --size=N         only use the first N bytes of the export
 *   --count=N        at most N requests
 *   --qd=N           requests in flight in total (default 16)
 *   --conns=N        connections (default 1); the queue depth is
 *                    shared out among them
 *   --seed=N         seed of the random order (default 1)
 *   --label=STR      copied into the JSON output
 *
 * Sizes accept a K, M, G or T suffix (powers of 1024).
 *
 * Output: one line of JSON on stdout, e.g.
 *   {"mode":"write","label":"x","block_size":4096,"ops":4096,
 *    "bytes":16777216,"errors":0,"seconds":0.52,"ops_per_sec":7876.9,
 *    "mib_per_sec":30.77}
 * The exit status is 1 if any request failed.
 *
 * Every connection drains all its requests before it disconnects
 * (NBD_CMD_DISC is only sent with nothing in flight).
 */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>

#include <libnbd.h>

#define MAX_QD 256
#define MAX_CONNS 16

enum mode {
  MODE_WRITE, MODE_FILL, MODE_READ, MODE_READ_TRIM, MODE_TRIM,
  MODE_HOLD, MODE_CAT,
};

static const char *mode_names[] = {
  "write", "fill", "read", "read-and-trim", "trim", "hold", "cat",
};

/* Settings, fixed after option parsing. */
static enum mode mode;
static uint64_t block_size;     /* bytes per request */
static uint64_t stride;         /* write mode: bytes per request slot */
static uint64_t size_limit;     /* 0 = whole export */
static uint64_t count_limit;    /* 0 = no limit */
static unsigned qd = 16;
static unsigned nconns = 1;
static uint64_t seed = 1;
static const char *label = "";
static const char *uri;

/* Derived from the export, fixed before the workers start. */
static uint64_t disk_size;      /* bytes used (export size or --size) */
static uint64_t nops;           /* requests to issue */
static uint64_t nslots_total;   /* write mode: number of strides */
static uint32_t *order;         /* write mode: permutation, or NULL */
static uint64_t affine_a, affine_b; /* write mode without a table */
static char *write_buf;         /* read-only pattern, shared */

/* The next request index to issue, shared by the workers. */
static uint64_t next_op;        /* atomic */

/* One request in flight. */
struct slot {
  int64_t cookie;               /* 0 = slot free */
  uint64_t offset;
  uint64_t length;
  bool trimming;                /* read-and-trim: the TRIM phase */
  char *buf;                    /* read buffer */
};

/* One connection and its worker thread. */
struct conn {
  struct nbd_handle *h;
  pthread_t thread;
  unsigned qd;                  /* requests in flight at most */
  struct slot slots[MAX_QD];
  uint64_t ops_done;            /* requests completed successfully */
  uint64_t bytes_done;          /* bytes read or written */
  uint64_t errors;              /* requests that failed */
  char first_error[256];
};

static struct conn conns[MAX_CONNS];

/* splitmix64: a small, good 64 bit mixer for seeded pseudo-random
 * numbers.
 */
static uint64_t
mix64 (uint64_t x)
{
  x += UINT64_C (0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C (0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C (0x94d049bb133111eb);
  return x ^ (x >> 31);
}

static uint64_t
gcd64 (uint64_t a, uint64_t b)
{
  while (b) {
    uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Parse a size with an optional K/M/G/T suffix. */
static uint64_t
parse_size (const char *opt, const char *s)
{
  char *end;
  unsigned long long v;
  unsigned shift = 0;

  errno = 0;
  v = strtoull (s, &end, 10);
  if (errno || end == s)
    goto bad;
  switch (*end) {
  case '\0': break;
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  case 't': case 'T': shift = 40; end++; break;
  default: goto bad;
  }
  if (*end == 'i' || *end == 'b' || *end == 'B')
    end++;
  if (*end != '\0' || v > (UINT64_MAX >> shift))
    goto bad;
  return (uint64_t) v << shift;

 bad:
  fprintf (stderr, "nbd-load: --%s: cannot parse size: %s\n", opt, s);
  exit (EXIT_FAILURE);
}

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Where request number I goes. */
static void
op_place (uint64_t i, uint64_t *offset, uint64_t *length)
{
  uint64_t s, inner, within;

  switch (mode) {
  case MODE_WRITE:
    if (order)
      s = order[i];
    else
      s = (affine_a * i + affine_b) % nslots_total;
    within = stride / block_size;
    inner = within > 1 ? (mix64 (seed ^ (s * 2 + 1)) % within) : 0;
    *offset = s * stride + inner * block_size;
    *length = block_size;
    break;
  case MODE_FILL:
  case MODE_READ:
  case MODE_READ_TRIM:
  case MODE_TRIM:
    *offset = i * block_size;
    *length = block_size;
    break;
  case MODE_HOLD:
  case MODE_CAT:
  default:
    abort ();
  }
  if (*offset + *length > disk_size)
    *length = disk_size - *offset;
}

/* Build the seeded random order of strides for write mode: a full
 * Fisher-Yates shuffle when the table is small, otherwise an affine
 * permutation i -> (a*i + b) mod n with gcd (a, n) = 1 (for the huge
 * sparse disks of the RSS measurement).
 */
static void
make_order (void)
{
  uint64_t i, r;

  if (nslots_total <= (UINT64_C (1) << 24)) {
    order = malloc (nslots_total * sizeof *order);
    if (order == NULL) {
      perror ("nbd-load: malloc");
      exit (EXIT_FAILURE);
    }
    for (i = 0; i < nslots_total; ++i)
      order[i] = i;
    r = seed;
    for (i = nslots_total - 1; i > 0; --i) {
      uint64_t j, t;
      r = mix64 (r);
      j = r % (i + 1);
      t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
  }
  else {
    affine_a = mix64 (seed) % nslots_total;
    if (affine_a < 2)
      affine_a = 2;
    while (gcd64 (affine_a, nslots_total) != 1)
      affine_a++;
    affine_b = mix64 (seed + 1) % nslots_total;
  }
}

static void
record_error (struct conn *c, const char *what, uint64_t offset, int err)
{
  c->errors++;
  if (c->first_error[0] == '\0')
    snprintf (c->first_error, sizeof c->first_error,
              "%s at offset %" PRIu64 ": %s", what, offset,
              err ? strerror (err) : nbd_get_error ());
}

/* Start the main request of slot S.  Returns false on a submit error
 * (counted; the slot stays free).
 */
static bool
issue (struct conn *c, struct slot *s, uint64_t offset, uint64_t length)
{
  int64_t cookie = -1;

  s->offset = offset;
  s->length = length;
  s->trimming = false;
  switch (mode) {
  case MODE_WRITE:
  case MODE_FILL:
    cookie = nbd_aio_pwrite (c->h, write_buf, length, offset,
                             NBD_NULL_COMPLETION, 0);
    break;
  case MODE_READ:
  case MODE_READ_TRIM:
    cookie = nbd_aio_pread (c->h, s->buf, length, offset,
                            NBD_NULL_COMPLETION, 0);
    break;
  case MODE_TRIM:
    s->trimming = true;
    cookie = nbd_aio_trim (c->h, length, offset, NBD_NULL_COMPLETION, 0);
    break;
  case MODE_HOLD:
  case MODE_CAT:
  default:
    abort ();
  }
  if (cookie == -1) {
    record_error (c, "submit", offset, 0);
    return false;
  }
  s->cookie = cookie;
  return true;
}

/* One worker per connection: keep c->qd requests in flight until the
 * shared work runs out, then drain.
 */
static void *
worker (void *arg)
{
  struct conn *c = arg;
  unsigned inflight = 0, k;
  bool exhausted = false;

  for (;;) {
    /* Fill the queue. */
    for (k = 0; !exhausted && inflight < c->qd && k < c->qd; ++k) {
      struct slot *s = &c->slots[k];
      uint64_t i, offset, length;

      if (s->cookie != 0)
        continue;
      i = __atomic_fetch_add (&next_op, 1, __ATOMIC_RELAXED);
      if (i >= nops) {
        exhausted = true;
        break;
      }
      op_place (i, &offset, &length);
      if (issue (c, s, offset, length))
        inflight++;
    }
    if (inflight == 0)
      break;

    if (nbd_poll (c->h, -1) == -1) {
      record_error (c, "poll", 0, 0);
      break;
    }

    /* Retire what completed. */
    for (k = 0; k < c->qd; ++k) {
      struct slot *s = &c->slots[k];
      int r;

      if (s->cookie == 0)
        continue;
      r = nbd_aio_command_completed (c->h, s->cookie);
      if (r == 0)
        continue;
      if (r == -1) {
        record_error (c, s->trimming ? "trim" : mode_names[mode],
                      s->offset, nbd_get_errno ());
        s->cookie = 0;
        inflight--;
        continue;
      }
      if (mode == MODE_READ_TRIM && !s->trimming) {
        int64_t cookie;

        c->bytes_done += s->length;
        cookie = nbd_aio_trim (c->h, s->length, s->offset,
                               NBD_NULL_COMPLETION, 0);
        if (cookie == -1) {
          record_error (c, "submit trim", s->offset, 0);
          s->cookie = 0;
          inflight--;
        }
        else {
          s->cookie = cookie;
          s->trimming = true;
        }
        continue;
      }
      if (mode != MODE_READ_TRIM && mode != MODE_TRIM)
        c->bytes_done += s->length;
      if (mode == MODE_TRIM)
        c->bytes_done += s->length;
      c->ops_done++;
      s->cookie = 0;
      inflight--;
    }
  }

  /* A poll failure leaves requests behind: the connection is dead
   * anyway, so only count them.
   */
  for (k = 0; k < c->qd; ++k)
    if (c->slots[k].cookie != 0)
      c->errors++;
  return NULL;
}

static struct nbd_handle *
connect_one (void)
{
  struct nbd_handle *h = nbd_create ();

  if (h == NULL) {
    fprintf (stderr, "nbd-load: nbd_create: %s\n", nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  if (nbd_connect_uri (h, uri) == -1) {
    fprintf (stderr, "nbd-load: %s: %s\n", uri, nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  return h;
}

static void
disconnect_one (struct nbd_handle *h)
{
  /* Nothing is in flight here: every worker drained its queue. */
  if (nbd_aio_in_flight (h) > 0)
    fprintf (stderr, "nbd-load: warning: requests still in flight\n");
  if (nbd_shutdown (h, 0) == -1)
    fprintf (stderr, "nbd-load: nbd_shutdown: %s\n", nbd_get_error ());
  nbd_close (h);
}

/* Mode hold: stay connected until SIGTERM or SIGINT. */
static int
do_hold (void)
{
  sigset_t set;
  int sig;
  struct nbd_handle *h;

  sigemptyset (&set);
  sigaddset (&set, SIGTERM);
  sigaddset (&set, SIGINT);
  sigprocmask (SIG_BLOCK, &set, NULL);

  h = connect_one ();
  printf ("{\"mode\":\"hold\",\"label\":\"%s\",\"ready\":true}\n", label);
  fflush (stdout);
  sigwait (&set, &sig);
  disconnect_one (h);
  return EXIT_SUCCESS;
}

/* Mode cat: print the start of the export (e.g. cbw-status). */
static int
do_cat (void)
{
  struct nbd_handle *h = connect_one ();
  int64_t sz = nbd_get_size (h);
  uint64_t len = block_size;
  char *buf;

  if (sz == -1) {
    fprintf (stderr, "nbd-load: nbd_get_size: %s\n", nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  if (len > (uint64_t) sz)
    len = sz;
  buf = malloc (len + 1);
  if (buf == NULL) {
    perror ("nbd-load: malloc");
    exit (EXIT_FAILURE);
  }
  if (nbd_pread (h, buf, len, 0, 0) == -1) {
    fprintf (stderr, "nbd-load: pread: %s\n", nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  while (len > 0 && (buf[len-1] == ' ' || buf[len-1] == '\n' ||
                     buf[len-1] == '\0'))
    len--;
  buf[len] = '\0';
  printf ("%s\n", buf);
  free (buf);
  disconnect_one (h);
  return EXIT_SUCCESS;
}

static void
usage (FILE *fp)
{
  fprintf (fp,
           "usage: nbd-load write|fill|read|read-and-trim|trim|hold|cat\n"
           "         [--block-size=N] [--stride=N] [--size=N] [--count=N]\n"
           "         [--qd=N] [--conns=N] [--seed=N] [--label=STR] URI\n");
}

int
main (int argc, char *argv[])
{
  static const struct option long_options[] = {
    { "block-size", required_argument, NULL, 'b' },
    { "stride",     required_argument, NULL, 's' },
    { "size",       required_argument, NULL, 'S' },
    { "count",      required_argument, NULL, 'c' },
    { "qd",         required_argument, NULL, 'q' },
    { "conns",      required_argument, NULL, 'n' },
    { "seed",       required_argument, NULL, 'r' },
    { "label",      required_argument, NULL, 'l' },
    { "help",       no_argument,       NULL, 'h' },
    { NULL }
  };
  const char *m;
  unsigned i, k;
  int c;
  int64_t sz;
  double t0, t1, secs;
  uint64_t ops = 0, bytes = 0, errors = 0;
  const char *first_error = NULL;

  if (argc < 2) {
    usage (stderr);
    exit (EXIT_FAILURE);
  }
  m = argv[1];
  for (i = 0; i < sizeof mode_names / sizeof mode_names[0]; ++i)
    if (strcmp (m, mode_names[i]) == 0)
      break;
  if (i == sizeof mode_names / sizeof mode_names[0]) {
    if (strcmp (m, "--help") == 0 || strcmp (m, "-h") == 0) {
      usage (stdout);
      exit (EXIT_SUCCESS);
    }
    fprintf (stderr, "nbd-load: unknown mode: %s\n", m);
    usage (stderr);
    exit (EXIT_FAILURE);
  }
  mode = i;
  switch (mode) {
  case MODE_WRITE: block_size = 65536; break;
  case MODE_CAT: block_size = 4096; break;
  case MODE_HOLD: break;
  case MODE_FILL: case MODE_READ: case MODE_READ_TRIM: case MODE_TRIM:
    block_size = 1024 * 1024;
    break;
  default: abort ();
  }

  optind = 2;
  while ((c = getopt_long (argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case 'b': block_size = parse_size ("block-size", optarg); break;
    case 's': stride = parse_size ("stride", optarg); break;
    case 'S': size_limit = parse_size ("size", optarg); break;
    case 'c': count_limit = parse_size ("count", optarg); break;
    case 'q': qd = parse_size ("qd", optarg); break;
    case 'n': nconns = parse_size ("conns", optarg); break;
    case 'r': seed = parse_size ("seed", optarg); break;
    case 'l': label = optarg; break;
    case 'h': usage (stdout); exit (EXIT_SUCCESS);
    default: usage (stderr); exit (EXIT_FAILURE);
    }
  }
  if (optind != argc - 1) {
    usage (stderr);
    exit (EXIT_FAILURE);
  }
  uri = argv[optind];

  if (mode == MODE_HOLD)
    return do_hold ();
  if (mode == MODE_CAT)
    return do_cat ();

  if (block_size == 0 || block_size > 64 * 1024 * 1024) {
    fprintf (stderr, "nbd-load: --block-size must be 1..64M\n");
    exit (EXIT_FAILURE);
  }
  if (stride == 0)
    stride = block_size > 65536 ? block_size : 65536;
  if (stride < block_size || stride % block_size != 0) {
    fprintf (stderr, "nbd-load: --stride must be a multiple of "
             "--block-size\n");
    exit (EXIT_FAILURE);
  }
  if (nconns < 1 || nconns > MAX_CONNS) {
    fprintf (stderr, "nbd-load: --conns must be 1..%d\n", MAX_CONNS);
    exit (EXIT_FAILURE);
  }
  if (qd < nconns || qd > MAX_QD * nconns) {
    fprintf (stderr, "nbd-load: --qd must be %u..%u\n",
             nconns, MAX_QD * nconns);
    exit (EXIT_FAILURE);
  }

  for (i = 0; i < nconns; ++i) {
    conns[i].h = connect_one ();
    conns[i].qd = qd / nconns + (i < qd % nconns ? 1 : 0);
  }
  sz = nbd_get_size (conns[0].h);
  if (sz == -1) {
    fprintf (stderr, "nbd-load: nbd_get_size: %s\n", nbd_get_error ());
    exit (EXIT_FAILURE);
  }
  disk_size = sz;
  if (size_limit && size_limit < disk_size)
    disk_size = size_limit;

  if (mode == MODE_WRITE) {
    nslots_total = disk_size / stride;  /* whole strides only */
    if (nslots_total == 0) {
      fprintf (stderr, "nbd-load: disk smaller than one stride\n");
      exit (EXIT_FAILURE);
    }
    nops = nslots_total;
    make_order ();
  }
  else
    nops = (disk_size + block_size - 1) / block_size;
  if (count_limit && count_limit < nops)
    nops = count_limit;

  if (mode == MODE_WRITE || mode == MODE_FILL) {
    uint64_t x = seed;

    write_buf = malloc (block_size);
    if (write_buf == NULL) {
      perror ("nbd-load: malloc");
      exit (EXIT_FAILURE);
    }
    /* Pseudo-random bytes: never zero, never compressible. */
    for (uint64_t j = 0; j < block_size; j += 8) {
      x = mix64 (x);
      memcpy (&write_buf[j], &x, block_size - j < 8 ? block_size - j : 8);
    }
  }
  if (mode == MODE_READ || mode == MODE_READ_TRIM) {
    for (i = 0; i < nconns; ++i)
      for (k = 0; k < conns[i].qd; ++k) {
        conns[i].slots[k].buf = malloc (block_size);
        if (conns[i].slots[k].buf == NULL) {
          perror ("nbd-load: malloc");
          exit (EXIT_FAILURE);
        }
      }
  }

  t0 = now ();
  for (i = 0; i < nconns; ++i) {
    int err = pthread_create (&conns[i].thread, NULL, worker, &conns[i]);
    if (err) {
      errno = err;
      perror ("nbd-load: pthread_create");
      exit (EXIT_FAILURE);
    }
  }
  for (i = 0; i < nconns; ++i)
    pthread_join (conns[i].thread, NULL);
  t1 = now ();

  for (i = 0; i < nconns; ++i) {
    ops += conns[i].ops_done;
    bytes += conns[i].bytes_done;
    errors += conns[i].errors;
    if (first_error == NULL && conns[i].first_error[0])
      first_error = conns[i].first_error;
    disconnect_one (conns[i].h);
    for (k = 0; k < conns[i].qd; ++k)
      free (conns[i].slots[k].buf);
  }
  free (order);
  free (write_buf);

  secs = t1 - t0;
  if (secs <= 0)
    secs = 1e-9;
  printf ("{\"mode\":\"%s\",\"label\":\"%s\",\"block_size\":%" PRIu64 ","
          "\"stride\":%" PRIu64 ",\"qd\":%u,\"conns\":%u,"
          "\"ops\":%" PRIu64 ",\"bytes\":%" PRIu64 ","
          "\"errors\":%" PRIu64 ",\"seconds\":%.6f,"
          "\"ops_per_sec\":%.1f,\"mib_per_sec\":%.2f}\n",
          mode_names[mode], label, block_size,
          mode == MODE_WRITE ? stride : block_size, qd, nconns,
          ops, bytes, errors, secs,
          ops / secs, bytes / secs / (1024.0 * 1024.0));
  if (errors) {
    fprintf (stderr, "nbd-load: %" PRIu64 " request(s) failed; first: %s\n",
             errors, first_error ? first_error : "?");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
