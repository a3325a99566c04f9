/* nbdkit-fleece: nbdkit-fleece-ctl, drive bitmap-discard's control socket.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 *   nbdkit-fleece-ctl [OPTIONS] SOCKET COMMAND [ARGS...]
 *   nbdkit-fleece-ctl [OPTIONS] -s SOCKET COMMAND [ARGS...]
 *   nbdkit-fleece-ctl [OPTIONS] group-snapshot [...] SOCKET... [-- ARGS]
 *
 * One command per invocation.  The arguments of a control command
 * are checked here first, as the server would check them, so that a
 * typing mistake is caught before anything is sent; sizes may carry
 * a suffix (1M), which is sent as a number of bytes.  The reply is
 * parsed with json-c.  The exit status is 0 when the server said
 * "ok": true, 1 when it refused or could not be reached (the reason
 * on stderr), 2 for a bad command line.
 *
 * Files: conn.c (one request on a socket), show.c (human summaries),
 * watch.c (the progress display), group.c (group snapshots).
 */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "ctl.h"

#define MAX_NAME 63             /* checkpoint names, as the server */
#define MAX_FREEZE 3600         /* freeze timeout=, as the server */

struct ctl_options ctl_opts = { .json = false, .timeout = 60 };
volatile int ctl_interrupted;

/* The kinds of value a KEY=VALUE argument takes. */
enum value_kind { V_NAME, V_ID, V_SECONDS, V_RESULT, V_SIZE };

struct key {
  const char *key;
  enum value_kind kind;
};

/* The control commands: what they take. */
struct command {
  const char *name;
  const char *usage;
  bool takes_name;              /* one NAME word after the command */
  struct key keys[4];           /* KEY=VALUE arguments, ended by NULL */
};

static const struct command commands[] = {
  { "snapshot", "snapshot [since=NAME] [checkpoint=NAME] [freeze=ID]",
    false, { { "since", V_NAME }, { "checkpoint", V_NAME },
             { "freeze", V_ID }, { NULL } } },
  { "release", "release [result=ok|failed]", false,
    { { "result", V_RESULT }, { NULL } } },
  { "status", "status", false, { { NULL } } },
  { "checkpoints", "checkpoints", false, { { NULL } } },
  { "checkpoint", "checkpoint NAME", true, { { NULL } } },
  { "delete-checkpoint", "delete-checkpoint NAME", true, { { NULL } } },
  { "freeze", "freeze timeout=SECONDS", false,
    { { "timeout", V_SECONDS }, { NULL } } },
  { "thaw", "thaw", false, { { NULL } } },
  { "map", "map [offset=SIZE] [length=SIZE]", false,
    { { "offset", V_SIZE }, { "length", V_SIZE }, { NULL } } },
};
#define NR_COMMANDS (sizeof commands / sizeof commands[0])

void
ctl_error (const char *fs, ...)
{
  va_list args;

  fputs ("nbdkit-fleece-ctl: ", stderr);
  va_start (args, fs);
  vfprintf (stderr, fs, args);
  va_end (args);
  fputc ('\n', stderr);
}

/* Signal handler: note it; the request in progress gives up. */
static void
on_signal (int sig)
{
  ctl_interrupted = sig;
}

void
ctl_catch_signals (void)
{
  struct sigaction sa = { .sa_handler = on_signal };

  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGHUP, &sa, NULL);
}

/* Print the usage. */
static void
usage (FILE *fp)
{
  size_t i;

  fprintf (fp,
"Usage: nbdkit-fleece-ctl [OPTIONS] SOCKET COMMAND [ARGS...]\n"
"       nbdkit-fleece-ctl [OPTIONS] -s SOCKET COMMAND [ARGS...]\n"
"       nbdkit-fleece-ctl [OPTIONS] group-snapshot [GROUP OPTIONS]\n"
"                         SOCKET... [-- SNAPSHOT ARGS...]\n"
"\n"
"Drive the control socket (bitmap-discard-control=SOCKET) of nbdkit's\n"
"bitmap-discard filter.  Commands:\n");
  for (i = 0; i < NR_COMMANDS; ++i)
    fprintf (fp, "  %s\n", commands[i].usage);
  fprintf (fp,
"  watch [--interval=SECONDS]\n"
"\n"
"Options:\n"
"  -j, --json             print the server's replies as they are\n"
"  -s, --socket=SOCKET    the control socket\n"
"  -t, --timeout=SECONDS  give up on a request after SECONDS (60)\n"
"  -h, --help             print this help\n"
"  -V, --version          print the version\n"
"\n"
"Group options (before the sockets):\n"
"  --freeze-timeout=SECONDS  writes resume by themselves after this (10)\n"
"  --freeze-cmd=CMD          run before the disks are frozen\n"
"  --thaw-cmd=CMD            run after they are thawed, on every path\n"
"\n"
"Exit status: 0 on success, 1 if a command failed, 2 on bad usage.\n"
"See nbdkit-fleece-ctl(1).\n");
}

/* Is name a valid checkpoint name? */
static bool
valid_name (const char *name)
{
  size_t len = strlen (name);

  return len >= 1 && len <= MAX_NAME && name[0] != '.' && name[0] != '-' &&
    strspn (name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
            "0123456789._-") == len;
}

bool
parse_seconds (const char *option, const char *s, double max, double *secs)
{
  size_t digits = strspn (s, "0123456789"), frac = 0;
  char *end;

  if (s[digits] == '.')
    frac = strspn (s + digits + 1, "0123456789");
  errno = 0;
  *secs = strtod (s, &end);
  if (digits + frac == 0 || *end != '\0' || errno != 0 ||
      (size_t) (end - s) != digits + (s[digits] == '.') + frac ||
      !(*secs > 0 && *secs <= max)) {
    ctl_error ("%s=%s: expected seconds, a number greater than 0 and "
               "at most %g", option, s, max);
    return false;
  }
  return true;
}

/* Parse a size: digits, and an optional suffix k, M, G, T (powers of
 * 1024, either case).
 */
static bool
parse_size (const char *key, const char *s, uint64_t *size)
{
  static const char suffixes[] = "kmgt";
  const char *p;
  char *end;
  uint64_t v;
  unsigned shift = 0;

  errno = 0;
  if (s[0] < '0' || s[0] > '9')
    goto bad;
  v = strtoull (s, &end, 10);
  if (errno != 0)
    goto bad;
  if (*end != '\0') {
    p = strchr (suffixes, end[0] | 0x20);
    if (p == NULL || end[1] != '\0')
      goto bad;
    shift = 10 * (p - suffixes + 1);
    if (v > (UINT64_MAX >> shift))
      goto bad;
  }
  *size = v << shift;
  return true;

 bad:
  ctl_error ("%s=%s: expected a size in bytes (a number, with an "
             "optional k, M, G or T)", key, s);
  return false;
}

/* Check one value; write its canonical form into out. */
static bool
check_value (const char *key, enum value_kind kind, const char *v,
             char *out, size_t outlen)
{
  double secs;
  uint64_t n;

  switch (kind) {
  case V_NAME:
    if (!valid_name (v)) {
      ctl_error ("%s=%s: a checkpoint name is 1 to %d characters from "
                 "A-Z a-z 0-9 . _ - and does not start with . or -",
                 key, v, MAX_NAME);
      return false;
    }
    break;
  case V_ID:
    if (v[0] < '1' || v[0] > '9' ||
        strspn (v, "0123456789") != strlen (v) || strlen (v) > 19) {
      ctl_error ("%s=%s: expected a freeze ID (a positive integer)",
                 key, v);
      return false;
    }
    break;
  case V_SECONDS:
    if (!parse_seconds (key, v, MAX_FREEZE, &secs))
      return false;
    break;
  case V_RESULT:
    if (strcmp (v, "ok") != 0 && strcmp (v, "failed") != 0) {
      ctl_error ("%s=%s: expected ok or failed", key, v);
      return false;
    }
    break;
  case V_SIZE:
    if (!parse_size (key, v, &n))
      return false;
    snprintf (out, outlen, "%s=%" PRIu64, key, n);
    return true;
  default:
    abort ();
  }
  snprintf (out, outlen, "%s=%s", key, v);
  return true;
}

/* Find a control command by name; NULL if unknown. */
static const struct command *
find_command (const char *name)
{
  size_t i;

  for (i = 0; i < NR_COMMANDS; ++i)
    if (strcmp (commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

/* Check one KEY=VALUE word of command c, canonical form into out. */
static bool
check_key_value (const struct command *c, const char *w,
                 char *out, size_t outlen)
{
  const char *eq = strchr (w, '=');
  const struct key *k;

  if (eq == NULL || eq == w) {
    ctl_error ("%s: %s: expected KEY=VALUE (usage: %s)", c->name, w,
               c->usage);
    return false;
  }
  for (k = c->keys; k->key; ++k)
    if (strlen (k->key) == (size_t) (eq - w) &&
        strncmp (k->key, w, eq - w) == 0)
      return check_value (k->key, k->kind, eq + 1, out, outlen);
  ctl_error ("%s: unknown argument %.*s (usage: %s)", c->name,
             (int) (eq - w), w, c->usage);
  return false;
}

/* Check the words of command c; canonical forms into out[]. */
static bool
check_words (const struct command *c, int argc, char **argv,
             char (*out)[256])
{
  int i, j;

  if (c->takes_name) {
    if (argc != 1) {
      ctl_error ("usage: %s", c->usage);
      return false;
    }
    if (!valid_name (argv[0])) {
      ctl_error ("%s: %s: a checkpoint name is 1 to %d characters from "
                 "A-Z a-z 0-9 . _ - and does not start with . or -",
                 c->name, argv[0], MAX_NAME);
      return false;
    }
    snprintf (out[0], 256, "%s", argv[0]);
    return true;
  }
  for (i = 0; i < argc; ++i) {
    if (!check_key_value (c, argv[i], out[i], 256))
      return false;
    for (j = 0; j < i; ++j)
      if (strncmp (out[i], out[j], strcspn (out[i], "=") + 1) == 0) {
        ctl_error ("%s: %.*s given twice", c->name,
                   (int) strcspn (out[i], "="), out[i]);
        return false;
      }
  }
  return true;
}

char *
join_command (const char *command, int argc, char **argv)
{
  const struct command *c = find_command (command);
  char (*words)[256];
  char *line = NULL;
  size_t len = 0;
  FILE *fp;
  int i;

  if (c == NULL) {
    ctl_error ("unknown command %s (see --help)", command);
    return NULL;
  }
  if (argc > 7) {
    ctl_error ("%s: too many arguments (usage: %s)", command, c->usage);
    return NULL;
  }
  words = calloc (argc + 1, sizeof *words);
  fp = open_memstream (&line, &len);
  if (words == NULL || fp == NULL) {
    ctl_error ("out of memory");
    free (words);
    if (fp)
      fclose (fp);
    free (line);
    return NULL;
  }
  fputs (command, fp);
  if (check_words (c, argc, argv, words))
    for (i = 0; i < argc; ++i)
      fprintf (fp, " %s", words[i]);
  else
    argc = -1;
  fclose (fp);
  free (words);
  if (argc == -1) {
    free (line);
    return NULL;
  }
  return line;
}

/* Run one request and report it: the reply (as is with --json, else
 * a summary) on stdout, an error on stderr.  Returns the exit status.
 */
static int
run_one (const char *path, const char *command, const char *line)
{
  struct ctl_reply reply;
  char err[1024];
  int status = EXIT_SUCCESS;

  if (ctl_request (path, line, &reply, err, sizeof err) == -1) {
    ctl_error ("%s", err);
    return EXIT_FAILED;
  }
  if (ctl_opts.json)
    printf ("%s\n", reply.line);
  if (!reply.ok) {
    ctl_error ("%s: %s: %s", path, command, reply.error);
    status = EXIT_FAILED;
  }
  else if (!ctl_opts.json)
    show_reply (command, reply.obj);
  ctl_reply_free (&reply);
  return status;
}

/* map: follow "next" until the asked range is done, one request per
 * page.  With --json, each page's reply line is printed as is.
 */
static int
run_map (const char *path, const char *line)
{
  uint64_t offset = 0, end = UINT64_MAX;
  const char *p;
  char *next_line = NULL;
  int status;

  if ((p = strstr (line, " offset=")) != NULL)
    offset = strtoull (p + 8, NULL, 10);
  if ((p = strstr (line, " length=")) != NULL)
    end = offset + strtoull (p + 8, NULL, 10);
  if (!ctl_opts.json)
    printf ("%20s %20s  %s\n", "OFFSET", "LENGTH", "TYPE");
  for (;;) {
    struct ctl_reply reply;
    char err[1024];
    struct json_object *next;

    if (ctl_request (path, next_line ? next_line : line, &reply,
                     err, sizeof err) == -1) {
      ctl_error ("%s", err);
      status = EXIT_FAILED;
      break;
    }
    if (ctl_opts.json)
      printf ("%s\n", reply.line);
    if (!reply.ok) {
      ctl_error ("%s: map: %s", path, reply.error);
      ctl_reply_free (&reply);
      status = EXIT_FAILED;
      break;
    }
    if (!ctl_opts.json)
      show_reply ("map", reply.obj);
    next = member_get (reply.obj, "next");
    status = EXIT_SUCCESS;
    if (next == NULL || !json_object_is_type (next, json_type_int) ||
        (uint64_t) json_object_get_int64 (next) >= end) {
      ctl_reply_free (&reply);
      break;
    }
    offset = json_object_get_int64 (next);
    ctl_reply_free (&reply);
    free (next_line);
    if (end == UINT64_MAX) {
      if (asprintf (&next_line, "map offset=%" PRIu64, offset) == -1)
        next_line = NULL;
    }
    else if (asprintf (&next_line, "map offset=%" PRIu64 " length=%"
                       PRIu64, offset, end - offset) == -1)
      next_line = NULL;
    if (next_line == NULL) {
      ctl_error ("out of memory");
      status = EXIT_FAILED;
      break;
    }
  }
  free (next_line);
  return status;
}

/* Parse the options before the command; returns the index of the
 * first word after them, or -1 (the exit status is in *status).
 */
static int
parse_options (int argc, char **argv, const char **socket, int *status)
{
  static const struct option long_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "json", no_argument, NULL, 'j' },
    { "socket", required_argument, NULL, 's' },
    { "timeout", required_argument, NULL, 't' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  int c;

  /* "+": stop at the first word that is not an option, so that a
   * command's own options (group-snapshot, watch) are left alone.
   */
  while ((c = getopt_long (argc, argv, "+hjs:t:V", long_options,
                           NULL)) != -1) {
    switch (c) {
    case 'h':
      usage (stdout);
      *status = EXIT_SUCCESS;
      return -1;
    case 'j':
      ctl_opts.json = true;
      break;
    case 's':
      *socket = optarg;
      break;
    case 't':
      if (!parse_seconds ("--timeout", optarg, 86400, &ctl_opts.timeout)) {
        *status = EXIT_USAGE;
        return -1;
      }
      break;
    case 'V':
      printf ("nbdkit-fleece-ctl %s\n", PACKAGE_VERSION);
      *status = EXIT_SUCCESS;
      return -1;
    default:
      fprintf (stderr, "Try 'nbdkit-fleece-ctl --help'.\n");
      *status = EXIT_USAGE;
      return -1;
    }
  }
  return optind;
}

int
main (int argc, char **argv)
{
  const char *path = NULL, *command;
  char *line;
  int i, status = EXIT_USAGE;

  i = parse_options (argc, argv, &path, &status);
  if (i == -1)
    return status;
  if (path == NULL && i < argc && strcmp (argv[i], "group-snapshot") == 0)
    return ctl_group_snapshot (argc - i, argv + i);
  if (path == NULL && i < argc)
    path = argv[i++];
  if (path == NULL || i >= argc) {
    ctl_error ("expected a control socket and a command (see --help)");
    return EXIT_USAGE;
  }
  command = argv[i++];
  if (strcmp (command, "watch") == 0)
    return ctl_watch (path, argc - i + 1, argv + i - 1);
  line = join_command (command, argc - i, argv + i);
  if (line == NULL)
    return EXIT_USAGE;
  ctl_catch_signals ();
  status = strcmp (command, "map") == 0 ? run_map (path, line)
    : run_one (path, command, line);
  free (line);
  return status;
}
