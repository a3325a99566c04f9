/* nbdkit-fleece: bitmap-discard filter, the control commands.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * One table lists every command: its name, the words it takes (a
 * NAME, or KEY=VALUE arguments from a fixed list) and its handler.
 * commands_run checks a line against the table before anything runs,
 * so a handler only sees well-formed arguments.
 *
 * Errors have one form throughout: a function that fails returns -1
 * with a message for the user in err (errlen bytes), saying what is
 * wrong and, where it helps, what to do; commands_run turns it into
 * {"ok":false,"error":"..."}.  On success a handler prints the rest
 * of the reply object (",\"key\":value...") to fp and returns 0.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "dirty.h"
#include "gate.h"
#include "map.h"
#include "scope.h"
#include "json.h"
#include "commands.h"

#define MAX_WORDS 8             /* the command and its arguments */
#define MAX_KEYS  4
#define MAX_FREEZE 3600         /* longest freeze timeout, seconds */

/* A command line cut into words; words[0] is the command. */
struct args {
  char *words[MAX_WORDS];
  size_t n;
};

struct command {
  const char *name;
  const char *usage;            /* shown by help */
  unsigned names;               /* NAME words after the command: 0 or 1 */
  const char *keys[MAX_KEYS + 1]; /* KEY=VALUE keys allowed, NULL-ended */
  int (*run) (const struct args *a, FILE *fp, char *err, size_t errlen);
};

/* The value of key=VALUE among the arguments; NULL if absent.  (Keys
 * were checked: each appears at most once.)
 */
static const char *
arg (const struct args *a, const char *key)
{
  size_t i, len = strlen (key);

  for (i = 1; i < a->n; ++i)
    if (strncmp (a->words[i], key, len) == 0 && a->words[i][len] == '=')
      return a->words[i] + len + 1;
  return NULL;
}

/* Parse a positive decimal integer (no sign, no leading zero). */
static int
parse_id (const char *key, const char *s, uint64_t *id,
          char *err, size_t errlen)
{
  char *end;

  errno = 0;
  if (s[0] < '1' || s[0] > '9' ||
      (*id = strtoull (s, &end, 10), errno != 0) || *end != '\0') {
    snprintf (err, errlen, "%s=%s: expected a freeze ID (a positive "
              "integer)", key, s);
    return -1;
  }
  return 0;
}

/* Parse a number of seconds: digits with an optional decimal point,
 * greater than 0 and at most MAX_FREEZE.
 */
static int
parse_seconds (const char *key, const char *s, double *secs,
               char *err, size_t errlen)
{
  size_t digits = strspn (s, "0123456789"), frac = 0;
  char *end;

  if (s[digits] == '.')
    frac = strspn (s + digits + 1, "0123456789");
  *secs = strtod (s, &end);
  if (digits + frac == 0 || *end != '\0' ||
      (size_t) (end - s) != digits + (s[digits] == '.') + frac ||
      !(*secs > 0 && *secs <= MAX_FREEZE)) {
    snprintf (err, errlen, "%s=%s: expected seconds, a number greater "
              "than 0 and at most %d", key, s, MAX_FREEZE);
    return -1;
  }
  return 0;
}

/* Parse a byte offset or length: a decimal number. */
static int
parse_u64 (const char *key, const char *s, uint64_t *n,
           char *err, size_t errlen)
{
  char *end;

  errno = 0;
  if (s[0] < '0' || s[0] > '9' ||
      (*n = strtoull (s, &end, 10), errno != 0) || *end != '\0') {
    snprintf (err, errlen, "%s=%s: expected a number of bytes", key, s);
    return -1;
  }
  return 0;
}

/* The map of the snapshot. */
static int
cmd_map (const struct args *a, FILE *fp, char *err, size_t errlen)
{
  const char *o = arg (a, "offset"), *l = arg (a, "length");
  uint64_t offset = 0, length = 0;

  if ((o && parse_u64 ("offset", o, &offset, err, errlen) == -1) ||
      (l && parse_u64 ("length", l, &length, err, errlen) == -1))
    return -1;
  return map_command (offset, l != NULL, length, fp, err, errlen);
}

/* Snapshot. */
static int
cmd_snapshot (const struct args *a, FILE *fp, char *err, size_t errlen)
{
  const char *f = arg (a, "freeze");
  uint64_t freeze = 0;

  if (f && parse_id ("freeze", f, &freeze, err, errlen) == -1)
    return -1;
  return scope_snapshot (arg (a, "since"), arg (a, "checkpoint"), freeze,
                         fp, err, errlen);
}

/* Freeze the writer. */
static int
cmd_freeze (const struct args *a, FILE *fp, char *err, size_t errlen)
{
  const char *t = arg (a, "timeout");
  double secs;
  uint64_t id;
  struct json_writer w;

  if (t == NULL) {
    snprintf (err, errlen, "usage: freeze timeout=SECONDS");
    return -1;
  }
  if (parse_seconds ("timeout", t, &secs, err, errlen) == -1 ||
      gate_freeze (secs, &id, err, errlen) == -1)
    return -1;
  json_init (&w, fp, true);
  json_member_uint (&w, "freeze", id);
  json_member_double (&w, "timeout", secs);
  return 0;
}

/* Thaw (idempotent). */
static int
cmd_thaw (const struct args *a, FILE *fp, char *err, size_t errlen)
{
  bool was_frozen, expired;
  struct json_writer w;

  gate_thaw (&was_frozen, &expired);
  json_init (&w, fp, true);
  json_member_bool (&w, "was_frozen", was_frozen);
  json_member_bool (&w, "expired", expired);
  return 0;
}

/* Release: result=ok (the default) commits the pending checkpoint,
 * result=failed drops it.
 */
static int
cmd_release (const struct args *a, FILE *fp, char *err, size_t errlen)
{
  const char *result = arg (a, "result");

  if (result && strcmp (result, "ok") != 0 &&
      strcmp (result, "failed") != 0) {
    snprintf (err, errlen, "result=%s: expected ok or failed", result);
    return -1;
  }
  return scope_release_snapshot (!result || strcmp (result, "ok") == 0,
                                 fp, err, errlen);
}

/* Status. */
static int
cmd_status (const struct args *a, FILE *fp, char *err, size_t errlen)
{
  scope_status (fp);
  return 0;
}

/* List the checkpoints. */
static int
cmd_checkpoints (const struct args *a, FILE *fp, char *err, size_t errlen)
{
  struct json_writer w;

  json_init (&w, fp, true);
  json_key (&w, "checkpoints");
  dirty_list_json (fp);
  return 0;
}

/* Create a checkpoint. */
static int
cmd_checkpoint (const struct args *a, FILE *fp, char *err, size_t errlen)
{
  const char *name = a->words[1];
  struct json_writer w;

  if (!dirty_valid_name (name, err, errlen) ||
      scope_checkpoint (name, err, errlen) == -1)
    return -1;
  json_init (&w, fp, true);
  json_member_string (&w, "checkpoint", name);
  return 0;
}

/* Delete a checkpoint. */
static int
cmd_delete_checkpoint (const struct args *a, FILE *fp,
                       char *err, size_t errlen)
{
  const char *name = a->words[1];
  struct json_writer w;

  if (!dirty_valid_name (name, err, errlen) ||
      scope_delete_checkpoint (name, err, errlen) == -1)
    return -1;
  json_init (&w, fp, true);
  json_member_string (&w, "checkpoint", name);
  return 0;
}

static int cmd_help (const struct args *a, FILE *fp,
                     char *err, size_t errlen);

static const struct command commands[] = {
  { "snapshot", "snapshot [since=NAME] [checkpoint=NAME] [freeze=ID]", 0,
    { "since", "checkpoint", "freeze", NULL }, cmd_snapshot },
  { "release", "release [result=ok|failed]", 0, { "result", NULL },
    cmd_release },
  { "status", "status", 0, { NULL }, cmd_status },
  { "checkpoint", "checkpoint NAME", 1, { NULL }, cmd_checkpoint },
  { "checkpoints", "checkpoints", 0, { NULL }, cmd_checkpoints },
  { "delete-checkpoint", "delete-checkpoint NAME", 1, { NULL },
    cmd_delete_checkpoint },
  { "freeze", "freeze timeout=SECONDS", 0, { "timeout", NULL },
    cmd_freeze },
  { "thaw", "thaw", 0, { NULL }, cmd_thaw },
  { "map", "map [offset=N] [length=N]", 0, { "offset", "length", NULL },
    cmd_map },
  { "help", "help", 0, { NULL }, cmd_help },
};
#define NR_COMMANDS (sizeof commands / sizeof commands[0])

/* List the commands. */
static int
cmd_help (const struct args *a, FILE *fp, char *err, size_t errlen)
{
  size_t i;
  struct json_writer w, l;

  json_init (&w, fp, true);
  json_key (&w, "commands");
  json_begin_array (&l, fp);
  for (i = 0; i < NR_COMMANDS; ++i) {
    json_element (&l);
    json_string (fp, commands[i].usage);
  }
  json_end_array (&l);
  return 0;
}

/* Is the key of word (KEY=VALUE, key_len bytes) among c's keys? */
static bool
key_allowed (const struct command *c, const char *word, size_t key_len)
{
  const char *const *k;

  for (k = c->keys; *k; ++k)
    if (strlen (*k) == key_len && strncmp (word, *k, key_len) == 0)
      return true;
  return false;
}

/* Check the words of a against command c. */
static int
check_args (const struct command *c, const struct args *a,
            char *err, size_t errlen)
{
  size_t i, j;

  if (c->names > 0) {
    if (a->n != 1 + c->names) {
      snprintf (err, errlen, "usage: %s", c->usage);
      return -1;
    }
    return 0;
  }
  for (i = 1; i < a->n; ++i) {
    const char *w = a->words[i], *eq = strchr (w, '=');

    if (eq == NULL || eq == w) {
      snprintf (err, errlen, "%s: expected KEY=VALUE", w);
      return -1;
    }
    if (!key_allowed (c, w, eq - w)) {
      snprintf (err, errlen, "%s: unknown argument for %s", w, c->name);
      return -1;
    }
    for (j = 1; j < i; ++j)
      if (strncmp (a->words[j], w, eq - w + 1) == 0) {
        snprintf (err, errlen, "%.*s given twice", (int) (eq - w), w);
        return -1;
      }
  }
  return 0;
}

/* Cut line into words in a; only printable ASCII is accepted. */
static int
split_line (char *line, struct args *a, char *err, size_t errlen)
{
  char *p, *save = NULL;

  for (p = line; *p; ++p)
    if ((unsigned char) *p < 32 && *p != '\t') {
      snprintf (err, errlen, "control characters in the command");
      return -1;
    }
    else if ((unsigned char) *p >= 127) {
      snprintf (err, errlen, "non-ASCII bytes in the command");
      return -1;
    }
  a->n = 0;
  for (p = strtok_r (line, " \t", &save); p;
       p = strtok_r (NULL, " \t", &save)) {
    if (a->n == MAX_WORDS) {
      snprintf (err, errlen, "too many arguments");
      return -1;
    }
    a->words[a->n++] = p;
  }
  if (a->n == 0) {
    snprintf (err, errlen, "empty command: try help");
    return -1;
  }
  return 0;
}

/* Find and check the command, then run it; its extra reply fields
 * go to fp.
 */
static int
dispatch (char *line, FILE *fp, char *err, size_t errlen)
{
  struct args a;
  size_t i;

  if (split_line (line, &a, err, errlen) == -1)
    return -1;
  for (i = 0; i < NR_COMMANDS; ++i)
    if (strcmp (a.words[0], commands[i].name) == 0) {
      if (check_args (&commands[i], &a, err, errlen) == -1)
        return -1;
      return commands[i].run (&a, fp, err, errlen);
    }
  snprintf (err, errlen, "unknown command %s: try help", a.words[0]);
  return -1;
}

void
commands_run (char *line, FILE *fp)
{
  char err[512] = "";
  char *extra = NULL;
  struct json_writer w;
  size_t extra_len = 0;
  FILE *efp;
  int r;

  efp = open_memstream (&extra, &extra_len);
  if (efp == NULL) {
    fputs ("{\"ok\":false,\"error\":\"out of memory\"}", fp);
    return;
  }
  r = dispatch (line, efp, err, sizeof err);
  if (fclose (efp) == EOF && r == 0) {
    snprintf (err, sizeof err, "out of memory");
    r = -1;
  }
  json_begin (&w, fp);
  json_member_bool (&w, "ok", r == 0);
  if (r == 0)
    fputs (extra ? extra : "", fp); /* members, each with its comma */
  else
    json_member_string (&w, "error",
                        err[0] ? err : "failed (see the nbdkit log)");
  json_end (&w);
  free (extra);
}
