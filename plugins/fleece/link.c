/* nbdkit-fleece: the fleece plugin's link to the live disk.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * The link is a pool of NBD connections to the live disk (see
 * common/nbdconn.c for one connection), replaced as a whole when one
 * of them dies.
 *
 * Outages
 * -------
 * When a request finds its connection dead (nbdconn_is_dead after a
 * failure), the link is "lost": the current pool is dropped and the
 * reconnect thread starts connecting again, with a back-off from
 * 0.1 s doubling up to 0.5 s between attempts.  Requests that arrive
 * while the link is lost, and those whose connection died under them,
 * wait until the link is back or until live-reconnect-delay seconds
 * after the loss, whichever comes first; then they are sent again on
 * the new pool, or fail with EIO.  Past the delay new requests fail
 * at once, and the thread keeps trying in the background.
 *
 * Sending a request again is safe because every request we send is
 * idempotent at a fixed offset (read, write, zero, trim, flush,
 * cache, block status), and nothing else writes to the live disk
 * while we are away from it: the fleece plugin is its only writer.
 *
 * A pool that comes back must be the same disk: the size, and every
 * capability we advertised to nbdkit at start-up, must be there
 * again (capabilities are read once, in link_get_ready, and never
 * change: nbdkit caches them per connection).  A different disk is
 * refused, reported, and the thread keeps trying.
 *
 * Lifetime of a pool: it holds one reference for being current and
 * one for each request using it; the last reference closes its
 * connections (without the lock).
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <pthread.h>

#include <libnbd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "cleanup.h"
#include "json.h"
#include "link.h"
#include "nbdconn.h"
#include "params.h"
#include "threadname.h"
#include "timespec.h"

/* Back-off between connection attempts, in seconds. */
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 0.5

/* live-connections: the most, and the default (at most one per CPU). */
#define MAX_CONNECTIONS 64
#define DEFAULT_CONNECTIONS 4

/* A request goes to the first connection of the pool with fewer than
 * this many requests in flight, else to the least busy one.  Filling
 * one connection before using the next keeps a light load on one
 * socket, where the servers on both ends batch replies and requests
 * (on 2 CPUs a QD16 writer costs the live disk's server a third less
 * CPU per request than when it is spread over two connections, see
 * bench/README.md); a heavy load, such as nbdcopy's connections,
 * still spreads over all of them.  nbdkit's default of 16 threads
 * per client makes one client at most about one connection's worth.
 * -D fleece.fill=N changes it (1 spreads even a light load: the
 * tests use it to send the requests of a few clients over every
 * connection).
 */
NBDKIT_DLL_PUBLIC int fleece_debug_fill = 16;

/* How often the reconnect thread looks at connections that are up. */
#define WATCH_INTERVAL 0.5

/* A set of connections, used together. */
struct pool {
  struct nbdconn **conns;       /* set at creation, never changed */
  unsigned n;
  unsigned refs;                /* protected by lock */
};

/* Settings, from .config; never changed after. */
static const char *live_uri;
static double reconnect_delay = 10;
static unsigned nconns_wanted;  /* live-connections, 0: default */
static unsigned nconns = 1;     /* connections per pool (get_ready) */
static int tls = -1;            /* LIBNBD_TLS_*, -1: libnbd's default */
static char *tls_certificates;  /* absolute paths */
static char *tls_psk;
static const char *tls_username;
static int tls_verify = -1;     /* -1: libnbd's default */
static char *status_file;       /* live-status-file, absolute */

/* Read in link_get_ready; never changed after. */
static struct link_caps caps;

/* The link's state.  The lock guards every variable below it, and
 * the refs field of every pool.  Never held across NBD
 * I/O or a connection attempt.
 */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct pool *cur;        /* NULL while the link is lost */
static struct timespec lost_at; /* when it was lost (CLOCK_MONOTONIC) */
static uint64_t reconnects;     /* successful reconnections */
static char last_error[512];    /* latest failure, "" if none */
static bool stopping;           /* unloading: everyone gives up */
static pthread_cond_t up_cond = PTHREAD_COND_INITIALIZER;
                                /* cur set again, or stopping */
static pthread_cond_t lost_cond = PTHREAD_COND_INITIALIZER;
                                /* cur lost, or stopping */
static pthread_t reconnector;
static bool reconnector_started;

/* The text last written to the status file (owned by the reconnect
 * thread while it runs).  STATUS_MAX holds the members with
 * last_error at its worst (every byte escaped as \u00XX).
 */
#define STATUS_MAX (6 * sizeof last_error + 1024)
static char status_last[STATUS_MAX];

static void link_status_json (char *buf, size_t len);
static int status_write (char *last, size_t len);

/* The TLS keys: 1 if KEY is one of them, -1 on a bad value. */
static int
tls_config (const char *key, const char *value)
{
  bool b;

  if (strcmp (key, "tls") == 0) {
    if (strcmp (value, "require") == 0)
      tls = LIBNBD_TLS_REQUIRE;
    else if (param_bool ("fleece", key, value, &b) == 0)
      tls = b ? LIBNBD_TLS_ALLOW : LIBNBD_TLS_DISABLE;
    else {
      nbdkit_error ("fleece: tls=%s: expected off, on or require", value);
      return -1;
    }
    return 1;
  }
  if (strcmp (key, "tls-verify") == 0) {
    if (param_bool ("fleece", key, value, &b) == -1)
      return -1;
    tls_verify = b;
    return 1;
  }
  if (strcmp (key, "tls-username") == 0) {
    tls_username = value;
    return 1;
  }
  /* Files are opened again at each reconnection, after nbdkit has
   * changed directory: keep them absolute.
   */
  if (strcmp (key, "tls-certificates") == 0 || strcmp (key, "tls-psk") == 0) {
    char **p = key[4] == 'c' ? &tls_certificates : &tls_psk;

    free (*p);
    *p = nbdkit_absolute_path (value);
    return *p ? 1 : -1;
  }
  return 0;
}

/* Parse one of the link's parameters. */
int
link_config (const char *key, const char *value)
{
  if (strcmp (key, "live") == 0) {
    if (live_uri) {
      nbdkit_error ("fleece: live= given more than once");
      return -1;
    }
    live_uri = value;
    return 1;
  }
  if (strcmp (key, "live-reconnect-delay") == 0)
    return param_seconds ("fleece", key, value,
                          &reconnect_delay) == -1 ? -1 : 1;
  if (strcmp (key, "live-status-file") == 0) {
    free (status_file);
    status_file = nbdkit_absolute_path (value);
    return status_file ? 1 : -1;
  }
  if (strcmp (key, "live-connections") == 0) {
    if (nbdkit_parse_unsigned (key, value, &nconns_wanted) == -1)
      return -1;
    if (nconns_wanted < 1 || nconns_wanted > MAX_CONNECTIONS) {
      nbdkit_error ("fleece: live-connections=%s: expected 1 to %d",
                    value, MAX_CONNECTIONS);
      return -1;
    }
    return 1;
  }
  return tls_config (key, value);
}

/* Check a TLS file parameter: a directory or a regular file that we
 * can read.
 */
static int
tls_check_path (const char *key, const char *path, bool dir)
{
  struct stat st;

  if (stat (path, &st) == -1 || access (path, R_OK) == -1) {
    nbdkit_error ("fleece: %s=%s: %m", key, path);
    return -1;
  }
  if (dir ? !S_ISDIR (st.st_mode) : !S_ISREG (st.st_mode)) {
    nbdkit_error ("fleece: %s=%s: not a %s", key, path,
                  dir ? "directory" : "regular file");
    return -1;
  }
  return 0;
}

/* TLS settings that need the others, and libnbd's support. */
static int
tls_config_complete (struct nbd_handle *h)
{
  bool uri_tls = strncmp (live_uri, "nbds", 4) == 0;
  bool want = tls > LIBNBD_TLS_DISABLE || (tls == -1 && uri_tls);
  bool extra = tls_certificates || tls_psk || tls_username ||
    tls_verify != -1;

  if (tls == LIBNBD_TLS_DISABLE && uri_tls) {
    nbdkit_error ("fleece: tls=off, but live=%s asks for TLS", live_uri);
    return -1;
  }
  if (extra && !want) {
    nbdkit_error ("fleece: tls-* parameters given but TLS is off: "
                  "add tls=require (or use an nbds URI)");
    return -1;
  }
  if (tls_certificates && tls_psk) {
    nbdkit_error ("fleece: tls-certificates and tls-psk cannot be "
                  "used together");
    return -1;
  }
  if (want && !nbd_supports_tls (h)) {
    nbdkit_error ("fleece: TLS was asked for, but this libnbd was "
                  "built without TLS support");
    return -1;
  }
  if (tls_certificates &&
      tls_check_path ("tls-certificates", tls_certificates, true) == -1)
    return -1;
  if (tls_psk && tls_check_path ("tls-psk", tls_psk, false) == -1)
    return -1;
  return 0;
}

/* Apply the TLS settings to a handle before it connects. */
static int
tls_setup (struct nbd_handle *h)
{
  if (tls != -1 && nbd_set_tls (h, tls) == -1)
    return -1;
  if (tls_certificates &&
      nbd_set_tls_certificates (h, tls_certificates) == -1)
    return -1;
  if (tls_psk && nbd_set_tls_psk_file (h, tls_psk) == -1)
    return -1;
  if (tls_username && nbd_set_tls_username (h, tls_username) == -1)
    return -1;
  if (tls_verify != -1 && nbd_set_tls_verify_peer (h, tls_verify) == -1)
    return -1;
  return 0;
}

/* Check the parameters together, before connecting. */
int
link_config_complete (void)
{
  struct nbd_handle *h;

  if (live_uri == NULL) {
    nbdkit_error ("fleece: the live=URI parameter is required, "
                  "e.g. live=nbd+unix:///?socket=/run/disk.sock");
    return -1;
  }
  /* Check the URI's form now, so a typo is reported as such rather
   * than as a connection failure.
   */
  h = nbd_create ();
  if (h == NULL) {
    nbdkit_error ("fleece: nbd_create: %s", nbd_get_error ());
    return -1;
  }
  if (!nbd_supports_uri (h)) {
    nbdkit_error ("fleece: this libnbd was built without URI support");
    nbd_close (h);
    return -1;
  }
  if (tls_config_complete (h) == -1) {
    nbd_close (h);
    return -1;
  }
  nbd_close (h);
  if (strstr (live_uri, "://") == NULL) {
    nbdkit_error ("fleece: live=%s is not an NBD URI "
                  "(nbd://, nbds://, nbd+unix://, nbds+unix://)",
                  live_uri);
    return -1;
  }
  return 0;
}

/* Close a pool's connections and free it. */
static void
pool_free (struct pool *p)
{
  unsigned i;

  if (p == NULL)
    return;
  for (i = 0; i < p->n; i++)
    nbdconn_close (p->conns[i]);
  free (p->conns);
  free (p);
}

/* Drop a reference to P. */
static void
pool_put (struct pool *p)
{
  bool last;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    last = --p->refs == 0;
  }
  if (last)
    pool_free (p);
}

/* Connect N connections.  On failure returns NULL with the reason in
 * MSG.
 */
static struct pool *
pool_connect (unsigned n, char *msg, size_t len)
{
  struct pool *p;

  p = calloc (1, sizeof *p);
  if (p)
    p->conns = calloc (n, sizeof *p->conns);
  if (p == NULL || p->conns == NULL) {
    snprintf (msg, len, "calloc: %s", strerror (errno));
    free (p);
    return NULL;
  }
  p->refs = 1;
  for (p->n = 0; p->n < n; p->n++) {
    struct nbdconn *c = nbdconn_new ("fleece: live disk");

    if (c == NULL) {
      snprintf (msg, len, "cannot create a connection");
      goto err;
    }
    p->conns[p->n] = c;
    if (tls_setup (nbdconn_handle (c)) == -1 ||
        nbdconn_try_connect_uri (c, live_uri) == -1) {
      snprintf (msg, len, "cannot connect to %s: %s",
                live_uri, nbd_get_error ());
      p->n++;
      goto err;
    }
  }
  return p;

 err:
  pool_free (p);
  return NULL;
}

/* Start the pool's reader threads. */
static int
pool_start (struct pool *p)
{
  unsigned i;

  for (i = 0; i < p->n; i++)
    if (nbdconn_start (p->conns[i], "fleece-live") == -1)
      return -1;
  return 0;
}

/* Read the capabilities of a connected handle. */
static int
caps_read (struct nbd_handle *h, struct link_caps *c)
{
  int64_t min = nbd_get_block_size (h, LIBNBD_SIZE_MINIMUM);
  int64_t pref = nbd_get_block_size (h, LIBNBD_SIZE_PREFERRED);
  int64_t max = nbd_get_block_size (h, LIBNBD_SIZE_MAXIMUM);

  memset (c, 0, sizeof *c);
  c->size = nbd_get_size (h);
  if (c->size == -1)
    return -1;
  /* 0 means the server did not say: so do we. */
  if (min > 0 && pref > 0 && max > 0) {
    c->block_min = min;
    c->block_pref = pref;
    c->block_max = max;
  }
  c->read_only = nbd_is_read_only (h) > 0;
  c->flush = nbd_can_flush (h) > 0;
  c->rotational = nbd_is_rotational (h) > 0;
  c->trim = nbd_can_trim (h) > 0;
  c->zero = nbd_can_zero (h) > 0;
  c->fast_zero = nbd_can_fast_zero (h) > 0;
  c->fua = nbd_can_fua (h) > 0;
  c->multi_conn = nbd_can_multi_conn (h) > 0;
  c->cache = nbd_can_cache (h) > 0;
  c->extents = nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) > 0;
  return 0;
}

/* Is NOW (a disk that came back) the disk we started with?  Its size
 * must be the same, and every capability we advertised still there
 * (nbdkit clients rely on them).  If not, say why in MSG.
 */
static bool
caps_same_disk (const struct link_caps *now, char *msg, size_t len)
{
  const char *lost = NULL;

  if (now->size != caps.size) {
    snprintf (msg, len, "a different disk answers at %s: size %" PRIi64
              ", expected %" PRIi64 ": refusing it",
              live_uri, now->size, caps.size);
    return false;
  }
  if (now->read_only && !caps.read_only) lost = "write";
  else if (caps.flush && !now->flush) lost = "flush";
  else if (caps.trim && !now->trim) lost = "trim";
  else if (caps.zero && !now->zero) lost = "write zeroes";
  else if (caps.fast_zero && !now->fast_zero) lost = "fast zero";
  else if (caps.fua && !now->fua) lost = "FUA";
  else if (caps.cache && !now->cache) lost = "cache";
  else if (caps.extents && !now->extents) lost = "base:allocation";
  else if (nconns > 1 && !now->multi_conn) lost = "multi-conn";
  else if (now->block_min > caps.block_min ||
           (caps.block_max && now->block_max < caps.block_max))
    lost = "the block sizes";
  if (lost) {
    snprintf (msg, len, "a different disk answers at %s: it no longer "
              "has %s: refusing it", live_uri, lost);
    return false;
  }
  return true;
}

/* How many connections to use: several only if the live disk says
 * that they see each other's writes at once (multi-conn).
 */
static unsigned
choose_connections (void)
{
  long cpus = sysconf (_SC_NPROCESSORS_ONLN);
  unsigned n = nconns_wanted;

  if (n == 0)
    n = cpus > 0 && cpus < DEFAULT_CONNECTIONS ? cpus : DEFAULT_CONNECTIONS;
  if (n > 1 && !caps.multi_conn) {
    nbdkit_debug ("fleece: the live disk does not advertise multi-conn: "
                  "one connection%s",
                  nconns_wanted > 1 ? " (live-connections ignored)" : "");
    n = 1;
  }
  nbdkit_debug ("fleece: %u connection(s) to the live disk", n);
  return n;
}

/* Connect, read the capabilities and open the pool. */
int
link_get_ready (void)
{
  struct pool *p;
  char msg[sizeof last_error];

  p = pool_connect (1, msg, sizeof msg);
  if (p == NULL) {
    /* gnutls' messages do not say which setting is wrong. */
    bool tls_failed = strstr (msg, "gnutls") || strstr (msg, "TLS");

    nbdkit_error ("fleece: live disk: %s%s", msg,
                  tls_failed ? " (check tls, tls-psk, tls-username, "
                  "tls-certificates and the server's TLS settings)" : "");
    return -1;
  }
  if (caps_read (nbdconn_handle (p->conns[0]), &caps) == -1) {
    nbdkit_error ("fleece: live disk: cannot get size: %s",
                  nbd_get_error ());
    pool_free (p);
    return -1;
  }
  nbdkit_debug ("fleece: connected to %s, size %" PRIi64,
                live_uri, caps.size);
  nconns = choose_connections ();
  if (nconns > 1) {
    pool_free (p);
    p = pool_connect (nconns, msg, sizeof msg);
    if (p == NULL) {
      nbdkit_error ("fleece: live disk: %s", msg);
      return -1;
    }
  }
  cur = p;
  /* Before nbdkit forks: an unwritable status file stops it. */
  return status_write (status_last, sizeof status_last);
}

/* A connection of pool P died: the link is lost, unless it was lost
 * (or replaced) already.  The caller holds a reference to P besides
 * the current one, which this drops.
 */
static void
lost_locked (struct pool *p)
{
  if (cur != p)
    return;
  cur = NULL;
  lost_at = ts_now ();
  p->refs--;
  snprintf (last_error, sizeof last_error, "connection lost");
  pthread_cond_broadcast (&lost_cond);
  nbdkit_error ("fleece: live disk: connection lost, reconnecting "
                "(requests wait up to %g s)", reconnect_delay);
}

/* True if a connection of P has died. */
static bool
pool_any_dead (struct pool *p)
{
  unsigned i;

  for (i = 0; i < p->n; i++)
    if (nbdconn_is_dead (p->conns[i]))
      return true;
  return false;
}

/* Record a failure and report it when it is news. */
static void
note_error_locked (const char *msg)
{
  if (strncmp (last_error, msg, sizeof last_error - 1) != 0)
    nbdkit_error ("fleece: live disk: %s", msg);
  snprintf (last_error, sizeof last_error, "%s", msg);
}

/* One attempt to bring the link back: a new pool of the same disk. */
static struct pool *
try_reconnect (char *msg, size_t len)
{
  struct pool *p;
  struct link_caps now;

  p = pool_connect (nconns, msg, len);
  if (p == NULL)
    return NULL;
  if (caps_read (nbdconn_handle (p->conns[0]), &now) == -1) {
    snprintf (msg, len, "cannot get size: %s", nbd_get_error ());
    pool_free (p);
    return NULL;
  }
  if (!caps_same_disk (&now, msg, len) || pool_start (p) == -1) {
    pool_free (p);
    return NULL;
  }
  return p;
}

/* Write the status file (if any) when its text has changed: to a
 * temporary file renamed over it, so that readers see either the old
 * or the new text.  Only the thread that owns LAST (the reconnect
 * thread, or start-up and unload before and after it) calls this.
 */
static int
status_write (char *last, size_t len)
{
  char text[STATUS_MAX], tmpname[PATH_MAX];
  FILE *fp;

  if (status_file == NULL)
    return 0;
  link_status_json (text, sizeof text);
  if (strcmp (text, last) == 0)
    return 0;
  snprintf (tmpname, sizeof tmpname, "%s.tmp", status_file);
  fp = fopen (tmpname, "w");
  if (fp == NULL ||
      fprintf (fp, "{%s}\n", text) < 0 ||
      fclose (fp) == EOF ||
      rename (tmpname, status_file) == -1) {
    nbdkit_error ("fleece: live-status-file=%s: %m", status_file);
    return -1;
  }
  snprintf (last, len, "%s", text);
  return 0;
}

/* The reconnect thread: sleeps while the link is up; while it is
 * lost, tries to connect again with back-off.  It also keeps the
 * status file up to date.
 */
static void *
reconnect_thread (void *arg)
{
  double backoff = BACKOFF_MIN;
  char msg[sizeof last_error];
  struct pool *p;
  struct timespec t;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  for (;;) {
    /* The status file, without the lock (link_status_json takes it). */
    pthread_mutex_unlock (&lock);
    status_write (status_last, sizeof status_last);
    pthread_mutex_lock (&lock);

    while (cur != NULL && !stopping) {
      /* Look at the connections now and then, so that an outage
       * starts reconnection (and shows in the status) even when no
       * request runs into it.
       */
      t = ts_add (ts_now (), WATCH_INTERVAL);
      pthread_cond_clockwait (&lost_cond, &lock, CLOCK_MONOTONIC, &t);
      if (cur && pool_any_dead (cur))
        lost_locked (cur);
      backoff = BACKOFF_MIN;
    }
    if (stopping)
      break;

    /* Connect without the lock. */
    pthread_mutex_unlock (&lock);
    status_write (status_last, sizeof status_last);
    p = try_reconnect (msg, sizeof msg);
    pthread_mutex_lock (&lock);

    if (p) {
      cur = p;
      reconnects++;
      nbdkit_debug ("fleece: live disk: reconnected to %s", live_uri);
      pthread_cond_broadcast (&up_cond);
      continue;
    }
    note_error_locked (msg);
    t = ts_add (ts_now (), backoff);
    pthread_cond_clockwait (&lost_cond, &lock, CLOCK_MONOTONIC, &t);
    backoff = backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2;
  }
  return NULL;
}

/* Start the readers and the reconnect thread. */
int
link_after_fork (void)
{
  int r;

  if (pool_start (cur) == -1)
    return -1;
  r = pthread_create (&reconnector, NULL, reconnect_thread, NULL);
  if (r != 0) {
    errno = r;
    nbdkit_error ("fleece: pthread_create: %m");
    return -1;
  }
  thread_name (reconnector, "fleece-reconn");
  reconnector_started = true;
  return 0;
}

/* Stop the reconnect thread, drop the pool, free settings. */
void
link_unload (void)
{
  struct pool *p;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    stopping = true;
    pthread_cond_broadcast (&lost_cond);
    pthread_cond_broadcast (&up_cond);
  }
  if (reconnector_started)
    pthread_join (reconnector, NULL);
  if (status_file)
    unlink (status_file);
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);
    p = cur;
    cur = NULL;
  }
  if (p)
    pool_put (p);
  free (tls_certificates);
  free (tls_psk);
  free (status_file);
}

/* The capabilities read at start-up. */
const struct link_caps *
link_caps (void)
{
  return &caps;
}

/* Take a reference to the current pool, waiting while the link is
 * lost, until the delay after the loss or *DEADLINE (if set) passes.
 * NULL if the wait ran out.
 */
static struct pool *
acquire (const struct timespec *deadline)
{
  struct timespec until;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  while (cur == NULL && !stopping) {
    until = ts_add (lost_at, reconnect_delay);
    if (deadline && ts_before (*deadline, until))
      until = *deadline;
    if (!ts_before (ts_now (), until))
      return NULL;
    pthread_cond_clockwait (&up_cond, &lock, CLOCK_MONOTONIC, &until);
  }
  if (cur == NULL)
    return NULL;
  cur->refs++;
  return cur;
}


/* The connection of P a request goes to (see fleece_debug_fill).  The
 * counts move meanwhile: this is a hint, not a reservation.
 */
static struct nbdconn *
pick (const struct pool *p)
{
  const uint64_t fill = fleece_debug_fill > 0 ? fleece_debug_fill : 1;
  unsigned i, best = 0;
  uint64_t best_n = UINT64_MAX;

  for (i = 0; i < p->n; ++i) {
    uint64_t n = nbdconn_inflight (p->conns[i]);

    if (n < fill)
      return p->conns[i];
    if (n < best_n) {
      best = i;
      best_n = n;
    }
  }
  return p->conns[best];
}

/* Send R on connection C. */
static int
send_one (struct nbdconn *c, const struct link_req *r, int *err)
{
  switch (r->kind) {
  case LINK_READ:
    return nbdconn_pread (c, r->buf, r->count, r->offset, r->flags, err);
  case LINK_WRITE:
    return nbdconn_pwrite (c, r->buf, r->count, r->offset, r->flags, err);
  case LINK_ZERO:
    return nbdconn_zero (c, r->count, r->offset, r->flags, err);
  case LINK_TRIM:
    return nbdconn_trim (c, r->count, r->offset, r->flags, err);
  case LINK_FLUSH:
    return nbdconn_flush (c, r->flags, err);
  case LINK_CACHE:
    return nbdconn_cache (c, r->count, r->offset, r->flags, err);
  case LINK_EXTENTS:
    return nbdconn_extents (c, r->count, r->offset, r->flags,
                            r->extents, err);
  }
  abort ();
}

/* A connection of pool P died: the pool is lost (see lost_locked). */
static void
pool_lost (struct pool *p)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  lost_locked (p);
}

/* Note: an extents request whose connection died after some extents
 * were added cannot be sent again (nbdkit takes extents only in
 * order); nbdkit_add_extent then fails it, which is the EIO it would
 * have had without reconnection.
 */
int
link_request (const struct link_req *r, int *err)
{
  struct timespec deadline;
  bool retrying = false;

  for (;;) {
    struct pool *p = acquire (retrying ? &deadline : NULL);
    struct nbdconn *c;
    bool dead;
    int ret;

    if (p == NULL) {
      nbdkit_error ("fleece: live disk: not connected: %s", last_error);
      *err = EIO;
      return -1;
    }
    c = pick (p);
    ret = send_one (c, r, err);
    dead = ret == -1 && nbdconn_is_dead (c);
    if (dead)
      pool_lost (p);
    pool_put (p);
    if (!dead)
      return ret;
    /* Its connection died: send it again, within the delay. */
    if (!retrying)
      deadline = ts_add (ts_now (), reconnect_delay);
    retrying = true;
  }
}

/* The link's state as JSON members (no braces), into BUF. */
static void
link_status_json (char *buf, size_t len)
{
  struct json_writer w;
  FILE *fp = json_buffer_open (buf, len);
  const char *state;
  double down = 0;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&lock);

  if (fp == NULL)
    return;
  if (cur)
    state = "up";
  else {
    down = ts_seconds_between (lost_at, ts_now ());
    state = down < reconnect_delay ? "reconnecting" : "down";
  }
  json_init (&w, fp, false);
  json_member_string (&w, "live_state", state);
  json_member_uint (&w, "live_reconnects", reconnects);
  json_member_fixed (&w, "live_down_seconds", 1, down);
  json_member_string (&w, "live_last_error", last_error);
  json_member_uint (&w, "live_connections", nconns);
  json_member_double (&w, "live_reconnect_delay", reconnect_delay);
  json_buffer_close (fp, buf, len);
}
