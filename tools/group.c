/* nbdkit-fleece: nbdkit-fleece-ctl group-snapshot, several disks at once.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * One nbdkit serves one disk, so a machine with several disks has
 * several control sockets, and separate snapshots would be taken at
 * different instants: a restore could then hold a later write on one
 * disk without an earlier one on another.  A group snapshot takes
 * one crash-consistent point in time for all of them:
 *
 *   1. check the arguments and that every socket exists;
 *   2. run --freeze-cmd (e.g. the guest agent's fsfreeze), if given;
 *   3. "freeze timeout=S" on every socket, in order: each holds new
 *      writes to its disk and drains those in flight;
 *   4. "snapshot ... freeze=ID" on every socket: the point in time of
 *      each disk is its frozen instant, and the server refuses the
 *      snapshot if that freeze is no longer in force;
 *   5. "thaw" on every socket;
 *   6. run --thaw-cmd, if given.
 *
 * Why this is one instant: a writer that waits for a write to finish
 * before it issues a later one (as a file system does for the writes
 * it orders) stops at the first disk it finds frozen, and every disk
 * keeps its frozen contents until its snapshot; so every disk's
 * snapshot holds exactly the writes issued before that stop.  Step 4
 * needs every freeze still in force when its snapshot is taken, which
 * is what freeze=ID checks; a freeze that expires afterwards does no
 * harm (thaw then reports it, and it is shown as a note).
 *
 * The hook runs before the freeze, not inside it: fsfreeze flushes
 * the guest's dirty data, which needs the very writes that a frozen
 * disk would hold, and would hang until the freeze expired.
 *
 * Every error path undoes what was done: snapshots already taken are
 * released with result=failed (so their pending checkpoints are
 * dropped), every disk this run froze -- or may have frozen, when a
 * freeze got no reply -- is thawed, and --thaw-cmd runs.  A freeze
 * held by someone else ("already frozen") is left alone.  If a thaw
 * cannot be sent (the server is gone, say), the freeze still ends by
 * itself after its timeout, and the error says so.
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
#include <sys/types.h>
#include <sys/wait.h>

#include <json-c/json.h>

#include "timespec.h"

#include "ctl.h"

#define MAX_FREEZE 3600

/* One disk of the group. */
struct disk {
  const char *socket;
  enum { NOT_FROZEN, FROZEN, MAYBE_FROZEN } frozen;
  uint64_t freeze;              /* the ID, when FROZEN */
  bool snapshot;                /* a snapshot was (or may have been)
                                 * taken */
  bool unsure;                  /* may have been: no reply came */
  struct json_object *reply;    /* the snapshot's reply */
};

/* The whole operation. */
struct group {
  struct disk *disks;
  size_t n;
  char *snapshot_line;          /* "snapshot [ARGS]" without freeze= */
  double freeze_timeout;
  const char *freeze_cmd, *thaw_cmd;
  double held;                  /* seconds from first freeze to thaw */
  bool expired;                 /* a freeze expired after its snapshot */
};

/* Run a hook through /bin/sh; returns 0 if it exited with status 0,
 * else prints why and returns -1.
 */
static int
run_hook (const char *option, const char *cmd)
{
  pid_t pid, r;
  int status;

  fflush (stdout);
  pid = fork ();
  if (pid == -1) {
    ctl_error ("%s: fork: %s", option, strerror (errno));
    return -1;
  }
  if (pid == 0) {
    execl ("/bin/sh", "sh", "-c", cmd, (char *) NULL);
    perror ("nbdkit-fleece-ctl: /bin/sh");
    _exit (127);
  }
  while ((r = waitpid (pid, &status, 0)) == -1 && errno == EINTR)
    ;
  if (r == -1) {
    ctl_error ("%s: waitpid: %s", option, strerror (errno));
    return -1;
  }
  if (WIFEXITED (status) && WEXITSTATUS (status) == 0)
    return 0;
  if (WIFEXITED (status))
    ctl_error ("%s=%s failed with exit status %d", option, cmd,
               WEXITSTATUS (status));
  else
    ctl_error ("%s=%s was killed by signal %d", option, cmd,
               WTERMSIG (status));
  return -1;
}

/* What became of a request. */
enum outcome { NOT_SENT, NO_REPLY, REFUSED, DONE };

/* Send command to disk d; returns DONE with *reply (ok), or else what
 * went wrong, after printing the error.
 */
static enum outcome
request (struct disk *d, const char *command, struct ctl_reply *reply)
{
  char err[1024];

  if (ctl_request (d->socket, command, reply, err, sizeof err) == -1) {
    ctl_error ("%s", err);
    return reply->connected ? NO_REPLY : NOT_SENT;
  }
  if (!reply->ok) {
    ctl_error ("%s: %s: %s", d->socket, command, reply->error);
    ctl_reply_free (reply);
    return REFUSED;
  }
  return DONE;
}

/* Step 3: freeze every disk. */
static int
freeze_all (struct group *g)
{
  char command[64];
  size_t i;

  snprintf (command, sizeof command, "freeze timeout=%.6g",
            g->freeze_timeout);
  for (i = 0; i < g->n; ++i) {
    struct disk *d = &g->disks[i];
    struct ctl_reply r;
    enum outcome o = request (d, command, &r);

    if (o != DONE) {
      /* Refused: not ours.  No reply: it may have taken effect. */
      if (o == NO_REPLY)
        d->frozen = MAYBE_FROZEN;
      return -1;
    }
    d->frozen = FROZEN;
    d->freeze = member_int (r.obj, "freeze", 0);
    ctl_reply_free (&r);
    if (d->freeze <= 0) {
      ctl_error ("%s: freeze: the reply has no freeze ID", d->socket);
      return -1;
    }
  }
  return 0;
}

/* Step 4: snapshot every disk at its frozen instant. */
static int
snapshot_all (struct group *g)
{
  size_t i;

  for (i = 0; i < g->n; ++i) {
    struct disk *d = &g->disks[i];
    struct ctl_reply r;
    enum outcome o;
    char *command;

    if (asprintf (&command, "%s freeze=%" PRIu64, g->snapshot_line,
                  d->freeze) == -1) {
      ctl_error ("asprintf: %s", strerror (errno));
      return -1;
    }
    o = request (d, command, &r);
    if (o != DONE) {
      /* Without a reply it may have been taken: release it too. */
      d->snapshot = d->unsure = o == NO_REPLY;
      free (command);
      ctl_error ("%s: the group snapshot is abandoned", d->socket);
      return -1;
    }
    free (command);
    d->snapshot = true;
    d->reply = json_object_get (r.obj);
    ctl_reply_free (&r);
  }
  return 0;
}

/* Step 5, and on error paths: thaw every disk this run froze or may
 * have frozen.  Returns -1 if any thaw failed.
 */
static int
thaw_all (struct group *g)
{
  int ret = 0;
  size_t i;

  for (i = 0; i < g->n; ++i) {
    struct disk *d = &g->disks[i];
    struct ctl_reply r;

    if (d->frozen == NOT_FROZEN)
      continue;
    if (request (d, "thaw", &r) != DONE) {
      ctl_error ("%s: could not thaw: its writes resume by themselves "
                 "when the freeze times out (%g s after it began)",
                 d->socket, g->freeze_timeout);
      ret = -1;
      continue;
    }
    if (member_bool (r.obj, "expired", false))
      g->expired = true;
    d->frozen = NOT_FROZEN;
    ctl_reply_free (&r);
  }
  return ret;
}

/* On an error path: release the snapshots already taken, marking the
 * backup failed so that their pending checkpoints are dropped.
 */
static void
release_taken (struct group *g)
{
  size_t i;

  for (i = 0; i < g->n; ++i) {
    struct disk *d = &g->disks[i];
    struct ctl_reply r;
    char err[1024];

    if (!d->snapshot)
      continue;
    if (ctl_request (d->socket, "release result=failed", &r, err,
                     sizeof err) == 0 && !r.ok && r.error &&
        strstr (r.error, "unknown argument")) {
      /* A server without commit-on-success. */
      ctl_reply_free (&r);
      ctl_request (d->socket, "release", &r, err, sizeof err);
    }
    if (r.line == NULL)
      ctl_error ("%s: could not release the snapshot: %s", d->socket, err);
    else if (!r.ok && !d->unsure)
      ctl_error ("%s: release: %s", d->socket, r.error);
    else
      d->snapshot = false;
    ctl_reply_free (&r);
  }
}

/* Print the result of a group snapshot that succeeded. */
static void
report (struct group *g)
{
  size_t i;

  if (ctl_opts.json) {
    struct json_object *o = json_object_new_object ();
    struct json_object *a = json_object_new_array ();

    json_object_object_add (o, "ok", json_object_new_boolean (1));
    json_object_object_add (o, "held_seconds",
                            json_object_new_double (g->held));
    json_object_object_add (o, "freeze_expired",
                            json_object_new_boolean (g->expired));
    for (i = 0; i < g->n; ++i) {
      struct json_object *d = json_object_new_object ();
      json_object_object_add (d, "socket",
                              json_object_new_string (g->disks[i].socket));
      json_object_object_add (d, "snapshot",
                              json_object_get (g->disks[i].reply));
      json_object_array_add (a, d);
    }
    json_object_object_add (o, "disks", a);
    printf ("%s\n",
            json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN |
                                            JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put (o);
    return;
  }
  for (i = 0; i < g->n; ++i) {
    printf ("%s: ", g->disks[i].socket);
    show_reply ("snapshot", g->disks[i].reply);
  }
  printf ("group snapshot of %zu disk%s at one instant; writes were held "
          "for %.3f s\n", g->n, g->n == 1 ? "" : "s", g->held);
  if (g->expired)
    printf ("note: a freeze expired after its snapshot was taken (no "
            "harm done; --freeze-timeout may be short)\n");
}

/* Steps 2 to 6; every error path thaws, and on failure no snapshot
 * is left behind either.  Returns the exit status.
 */
static int
run_group (struct group *g)
{
  bool ok = false;
  double t0;
  int sig;

  if (g->freeze_cmd == NULL ||
      run_hook ("--freeze-cmd", g->freeze_cmd) == 0) {
    t0 = ts_now_seconds ();
    ok = freeze_all (g) == 0 && snapshot_all (g) == 0;
    /* Interrupted (Ctrl-C): clean up first, then say so. */
    sig = ctl_interrupted;
    ctl_interrupted = 0;
    if (thaw_all (g) == -1)
      ok = false;
    g->held = ts_now_seconds () - t0;
    if (sig) {
      ctl_error ("interrupted by signal %d", sig);
      ok = false;
    }
  }
  if (g->thaw_cmd && run_hook ("--thaw-cmd", g->thaw_cmd) == -1)
    ok = false;
  if (!ok) {
    release_taken (g);
    if (ctl_opts.json)
      printf ("{\"ok\":false,\"error\":\"group snapshot failed (see "
              "stderr)\"}\n");
    ctl_error ("group snapshot failed: every disk it froze was thawed "
               "and every snapshot it took released%s",
               g->n > 1 ? ", unless said otherwise above" : "");
    return EXIT_FAILED;
  }
  report (g);
  return EXIT_SUCCESS;
}

/* Parse the group options; returns optind, or -1 (usage error). */
static int
parse_group_options (int argc, char **argv, struct group *g)
{
  static const struct option long_options[] = {
    { "freeze-timeout", required_argument, NULL, 'T' },
    { "freeze-cmd", required_argument, NULL, 'F' },
    { "thaw-cmd", required_argument, NULL, 'H' },
    { NULL, 0, NULL, 0 },
  };
  const char *last_arg = NULL;
  int c;

  optind = 1;
  while ((c = getopt_long (argc, argv, "+", long_options, NULL)) != -1) {
    last_arg = optarg;
    switch (c) {
    case 'T':
      if (!parse_seconds ("--freeze-timeout", optarg, MAX_FREEZE,
                          &g->freeze_timeout))
        return -1;
      break;
    case 'F':
      g->freeze_cmd = optarg;
      break;
    case 'H':
      g->thaw_cmd = optarg;
      break;
    default:
      return -1;
    }
  }
  /* getopt takes a "--" that ends the options, but here it separates
   * the sockets from the snapshot arguments: give it back.
   */
  if (optind > 1 && argv[optind - 1] != last_arg &&
      strcmp (argv[optind - 1], "--") == 0)
    optind--;
  return optind;
}

/* The sockets (up to "--") and the snapshot arguments (after it). */
static int
parse_group_words (int argc, char **argv, struct group *g)
{
  int i, j, end;

  for (end = 0; end < argc && strcmp (argv[end], "--") != 0; ++end)
    ;
  if (end == 0) {
    ctl_error ("group-snapshot: no sockets given");
    return -1;
  }
  for (i = end + 1; i < argc; ++i)
    if (strncmp (argv[i], "freeze=", 7) == 0) {
      ctl_error ("group-snapshot: freeze= is chosen by the tool");
      return -1;
    }
  g->snapshot_line = join_command ("snapshot", end < argc ? argc - end - 1
                                   : 0, argv + end + 1);
  g->disks = calloc (end, sizeof *g->disks);
  if (g->snapshot_line == NULL || g->disks == NULL)
    return -1;
  for (i = 0; i < end; ++i) {
    for (j = 0; j < i; ++j)
      if (strcmp (argv[i], argv[j]) == 0) {
        ctl_error ("group-snapshot: %s given twice", argv[i]);
        return -1;
      }
    g->disks[i].socket = argv[i];
  }
  g->n = end;
  return 0;
}

/* Free the group. */
static void
free_group (struct group *g)
{
  size_t i;

  for (i = 0; g->disks && i < g->n; ++i)
    if (g->disks[i].reply)
      json_object_put (g->disks[i].reply);
  free (g->disks);
  free (g->snapshot_line);
}

int
ctl_group_snapshot (int argc, char **argv)
{
  struct group g = { .freeze_timeout = 10 };
  char err[1024];
  int i, status = EXIT_USAGE;
  size_t k;

  i = parse_group_options (argc, argv, &g);
  if (i == -1 || parse_group_words (argc - i, argv + i, &g) == -1) {
    ctl_error ("usage: group-snapshot [--freeze-timeout=SECONDS] "
               "[--freeze-cmd=CMD] [--thaw-cmd=CMD] SOCKET... "
               "[-- [since=NAME] [checkpoint=NAME]]");
    goto out;
  }
  /* Step 1: every socket must be there before anything is done. */
  status = EXIT_FAILED;
  for (k = 0; k < g.n; ++k)
    if (ctl_check_socket (g.disks[k].socket, err, sizeof err) == -1) {
      ctl_error ("%s", err);
      ctl_error ("group snapshot not started: nothing was changed");
      goto out;
    }
  ctl_catch_signals ();
  status = run_group (&g);
 out:
  free_group (&g);
  return status;
}
