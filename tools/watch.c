/* nbdkit-fleece: nbdkit-fleece-ctl watch, the progress of a backup.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Polls status every --interval seconds and shows how far the
 * backup of the active snapshot has gone: of the bytes in scope, how
 * many the backup client has released (TRIMmed, or read with
 * bitmap-discard-on-read), how many cbw holds preserved, how big the
 * fleece store is, the release rate over the last samples and the
 * time left at that rate.  On a terminal one line is redrawn; else
 * one line is printed per update, for logs.  Ends, with status 0,
 * when the snapshot ends (released, or replaced by another); with 1
 * if it broke or status could not be read.
 */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "timespec.h"

#include "ctl.h"

#define SAMPLES 10              /* the rate is over this many polls */
#define BAR 20                  /* characters in the progress bar */

/* Released bytes at recent polls, for the rate. */
struct history {
  double t[SAMPLES];
  int64_t released[SAMPLES];
  unsigned n;                   /* samples taken so far */
};

/* Sleep secs seconds, or less if interrupted. */
static void
pause_for (double secs)
{
  struct timespec ts = { .tv_sec = (time_t) secs,
                         .tv_nsec = (secs - (time_t) secs) * 1e9 };

  while (!ctl_interrupted && nanosleep (&ts, &ts) == -1 && errno == EINTR)
    ;
}

/* Add a sample; return the rate in bytes/s over the kept ones. */
static double
add_sample (struct history *h, double t, int64_t released)
{
  unsigned newest = h->n % SAMPLES, oldest;

  h->t[newest] = t;
  h->released[newest] = released;
  h->n++;
  if (h->n < 2)
    return 0;
  oldest = h->n < SAMPLES ? 0 : h->n % SAMPLES;
  if (h->t[newest] <= h->t[oldest])
    return 0;
  return (h->released[newest] - h->released[oldest]) /
    (h->t[newest] - h->t[oldest]);
}

/* Format seconds as H:MM:SS. */
static const char *
format_eta (double secs, char *buf, size_t len)
{
  uint64_t s;

  if (!(secs >= 0 && secs < 1e8)) {
    snprintf (buf, len, "--:--");
    return buf;
  }
  s = secs + 0.5;
  snprintf (buf, len, "%" PRIu64 ":%02u:%02u", s / 3600,
            (unsigned) (s / 60 % 60), (unsigned) (s % 60));
  return buf;
}

/* Print one update from a status reply. */
static void
show_progress (struct json_object *st, double rate, bool tty)
{
  struct json_object *cbw = member_get (st, "cbw");
  int64_t scope = member_int (st, "scope_bytes", 0);
  int64_t released = member_int (st, "released_bytes", 0);
  int64_t remaining = member_int (st, "remaining_bytes", 0);
  int64_t store = member_int (cbw, "store_use_bytes", -1);
  int64_t limit = member_int (cbw, "store_limit_bytes", 0);
  double frac = scope > 0 ? (double) released / scope : 1;
  char bar[BAR + 1], b1[32], b2[32], b3[32], b4[40], b5[32], eta[32];
  int i;

  /* Older servers: the image's size, or the RAM tier's. */
  if (store < 0)
    store = member_int (cbw, "store_allocated_bytes", -1);
  if (store < 0)
    store = member_int (cbw, "ram_held_bytes", -1);
  human_size (store, b4, sizeof b4);
  if (limit > 0) {
    strcat (b4, " of ");
    human_size (limit, b4 + strlen (b4), sizeof b4 - strlen (b4));
  }
  for (i = 0; i < BAR; ++i)
    bar[i] = i < (int) (frac * BAR) ? '#' : '.';
  bar[BAR] = '\0';
  printf ("%s[%s] %3d%% released %s of %s, preserved %s, store %s, "
          "%s/s, ETA %s%s",
          tty ? "\r" : "", bar, (int) (frac * 100),
          human_size (released, b1, sizeof b1),
          human_size (scope, b2, sizeof b2),
          human_size (member_int (cbw, "preserved_bytes", -1), b3, sizeof b3),
          b4,
          human_size ((int64_t) rate, b5, sizeof b5),
          rate > 0 ? format_eta (remaining / rate, eta, sizeof eta)
          : "--:--", tty ? "\033[K" : "\n");
  fflush (stdout);
}

/* Poll until the snapshot of generation *gen ends.  Returns the exit
 * status.
 */
static int
watch_loop (const char *path, double interval, bool tty)
{
  struct history h = { .n = 0 };
  int64_t gen = -1;
  char err[1024];

  for (;;) {
    struct ctl_reply r;
    const char *state;
    bool ended, broken;
    int64_t g;

    if (ctl_request (path, "status", &r, err, sizeof err) == -1) {
      if (tty)
        printf ("\n");
      ctl_error ("%s", err);
      return EXIT_FAILED;
    }
    if (!r.ok) {
      ctl_error ("%s: status: %s", path, r.error);
      ctl_reply_free (&r);
      return EXIT_FAILED;
    }
    state = member_str (r.obj, "state");
    g = member_int (r.obj, "generation", 0);
    ended = state == NULL || strcmp (state, "active") != 0 ||
      (gen != -1 && g != gen);
    broken = member_bool (member_get (r.obj, "cbw"), "broken", false);
    if (gen == -1 && ended) {
      ctl_reply_free (&r);
      ctl_error ("%s: no snapshot is active", path);
      return EXIT_FAILED;
    }
    if (gen == -1)
      gen = g;
    if (ended || broken) {
      if (tty)
        printf ("\n");
      printf ("snapshot %" PRIi64 " %s%s\n", gen,
              broken ? "BROKEN: the backup cannot be completed: " : "ended",
              broken && member_str (member_get (r.obj, "cbw"),
                                    "broken_reason") ?
              member_str (member_get (r.obj, "cbw"), "broken_reason") :
              broken ? "see status" : "");
      ctl_reply_free (&r);
      return broken ? EXIT_FAILED : EXIT_SUCCESS;
    }
    if (ctl_opts.json)
      printf ("%s\n", r.line);
    else
      show_progress (r.obj,
                     add_sample (&h, ts_now_seconds (),
                                 member_int (r.obj, "released_bytes", 0)),
                     tty);
    fflush (stdout);
    ctl_reply_free (&r);
    pause_for (interval);
    if (ctl_interrupted) {
      if (tty)
        printf ("\n");
      return EXIT_FAILED;
    }
  }
}

int
ctl_watch (const char *path, int argc, char **argv)
{
  static const struct option long_options[] = {
    { "interval", required_argument, NULL, 'i' },
    { NULL, 0, NULL, 0 },
  };
  double interval = 1;
  int c;

  optind = 1;
  while ((c = getopt_long (argc, argv, "+i:", long_options, NULL)) != -1) {
    switch (c) {
    case 'i':
      if (!parse_seconds ("--interval", optarg, 3600, &interval))
        return EXIT_USAGE;
      break;
    default:
      ctl_error ("usage: watch [--interval=SECONDS]");
      return EXIT_USAGE;
    }
  }
  if (optind != argc) {
    ctl_error ("usage: watch [--interval=SECONDS]");
    return EXIT_USAGE;
  }
  ctl_catch_signals ();
  return watch_loop (path, interval, !ctl_opts.json && isatty (1));
}
