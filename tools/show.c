/* nbdkit-fleece: nbdkit-fleece-ctl, human summaries of the replies.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Only what a person needs at a glance; --json gives everything.
 * Members a server does not send (an older one, say) are left out of
 * the summary rather than shown as zero.
 */

#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "ctl.h"

const char *
human_size (int64_t size, char *buf, size_t len)
{
  static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
  double v = size;
  int u = -1;

  if (size < 0) {
    snprintf (buf, len, "?");
    return buf;
  }
  while (v >= 1024 && u < 4) {
    v /= 1024;
    u++;
  }
  if (u == -1)
    snprintf (buf, len, "%" PRIi64 " B", size);
  else
    snprintf (buf, len, "%.*f %s", v < 10 ? 2 : v < 100 ? 1 : 0, v,
              units[u]);
  return buf;
}

/* Print "  label: SIZE" if o has key. */
static void
size_line (struct json_object *o, const char *key, const char *label)
{
  char b[32];

  if (member_get (o, key))
    printf ("  %-20s %s\n", label, human_size (member_int (o, key, -1), b,
                                               sizeof b));
}

/* snapshot */
static void
show_snapshot (struct json_object *o)
{
  const char *since = member_str (o, "since");
  const char *ckpt = member_str (o, "checkpoint");
  char b[32];

  printf ("snapshot %" PRIi64 " taken: %s%s, %s in scope",
          member_int (o, "generation", 0),
          since ? "incremental since " : "full", since ? since : "",
          human_size (member_int (o, "scope_bytes", -1), b, sizeof b));
  if (ckpt)
    printf (", checkpoint %s", ckpt);
  if (member_get (o, "freeze"))
    printf (", at freeze %" PRIi64, member_int (o, "freeze", 0));
  printf ("\n");
}

/* release */
static void
show_release (struct json_object *o)
{
  const char *ckpt = member_str (o, "checkpoint");
  const char *why = member_str (o, "dropped_reason");
  int64_t clients = member_int (o, "clients", 0);

  printf ("released");
  if (clients > 0)
    printf (" (%" PRIi64 " client%s still reading)", clients,
            clients == 1 ? "" : "s");
  if (ckpt)
    printf ("; checkpoint %s %s", ckpt,
            member_bool (o, "committed", true) ? "committed" : "dropped");
  if (why)
    printf (": %s", why);
  printf ("\n");
}

/* The snapshot part of status. */
static void
show_status_snapshot (struct json_object *o)
{
  const char *since = member_str (o, "since");
  const char *ckpt = member_str (o, "checkpoint");

  printf ("  %-20s %" PRIi64 " (%s%s)\n", "generation",
          member_int (o, "generation", 0),
          since && *since ? "incremental since " : "full",
          since && *since ? since : "");
  if (ckpt && *ckpt)
    printf ("  %-20s %s\n", "checkpoint", ckpt);
  size_line (o, "scope_bytes", "in scope");
  size_line (o, "remaining_bytes", "remaining");
  size_line (o, "released_bytes", "released");
  printf ("  %-20s %" PRIi64 "\n", "clients", member_int (o, "clients", 0));
}

/* The cbw part of status. */
static void
show_status_cbw (struct json_object *cbw)
{
  if (cbw == NULL || !json_object_is_type (cbw, json_type_object))
    return;
  size_line (cbw, "preserved_bytes", "preserved");
  size_line (cbw, "store_use_bytes", "store use");
  size_line (cbw, "store_peak_bytes", "store peak");
  if (member_int (cbw, "store_limit_bytes", 0) > 0)
    size_line (cbw, "store_limit_bytes", "store limit");
  if (member_int (cbw, "store_allocated_bytes", -1) >= 0)
    size_line (cbw, "store_allocated_bytes", "fleece image");
  if (member_int (cbw, "ram_limit", 0) > 0)
    size_line (cbw, "ram_held_bytes", "in RAM");
  if (member_bool (cbw, "broken", false)) {
    const char *why = member_str (cbw, "broken_reason");
    printf ("  %-20s yes%s%s\n", "BROKEN", why ? ": " : "",
            why ? why : "");
  }
}

/* status */
static void
show_status (struct json_object *o)
{
  const char *state = member_str (o, "state");
  const char *pending = member_str (o, "pending_checkpoint");
  const char *warning = member_str (o, "warning");
  struct json_object *tr = member_get (o, "tracking");
  char b[32], b2[32];

  printf ("snapshot: %s\n", state ? state : "?");
  if (state && strcmp (state, "active") == 0)
    show_status_snapshot (o);
  show_status_cbw (member_get (o, "cbw"));
  if (pending)
    printf ("pending checkpoint: %s\n", pending);
  if (member_bool (o, "frozen", false))
    printf ("frozen: freeze %" PRIi64 ", %.1f s left\n",
            member_int (o, "freeze", 0),
            member_double (o, "freeze_remaining", 0));
  if (member_int (o, "freezes_expired", 0) > 0)
    printf ("freezes expired: %" PRIi64 "\n",
            member_int (o, "freezes_expired", 0));
  if (tr && member_bool (tr, "enabled", false))
    printf ("tracking: %s, %" PRIi64 " checkpoint%s, %s changed since "
            "the newest\n",
            member_bool (tr, "failed", false) ? "FAILED" :
            member_bool (tr, "tracking", false) ? "on" : "no checkpoint yet",
            member_int (tr, "checkpoints", 0),
            member_int (tr, "checkpoints", 0) == 1 ? "" : "s",
            human_size (member_int (tr, "dirty_bytes", -1), b, sizeof b));
  else
    printf ("tracking: off (no bitmap-discard-dir)\n");
  printf ("disk: %s, granularity %s\n",
          human_size (member_int (o, "disk_size", -1), b, sizeof b),
          human_size (member_int (o, "granularity", -1), b2, sizeof b2));
  if (warning)
    printf ("warning: %s\n", warning);
}

/* checkpoints */
static void
show_checkpoints (struct json_object *o)
{
  struct json_object *list = member_get (o, "checkpoints");
  size_t i, n;

  if (list == NULL || !json_object_is_type (list, json_type_array) ||
      (n = json_object_array_length (list)) == 0) {
    printf ("no checkpoints\n");
    return;
  }
  printf ("%-20s %-20s %-8s %-19s %12s %12s\n", "NAME", "PARENT", "STATE",
          "CREATED (UTC)", "CHANGED", "SINCE IT");
  for (i = 0; i < n; ++i) {
    struct json_object *c = json_object_array_get_idx (list, i);
    const char *parent = member_str (c, "parent");
    const char *state = member_str (c, "state");
    time_t t = member_int (c, "created", 0);
    char when[32], b1[32], b2[32];
    struct tm tm;

    strftime (when, sizeof when, "%Y-%m-%d %H:%M:%S", gmtime_r (&t, &tm));
    printf ("%-20s %-20s %-8s %-19s %12s %12s\n",
            member_str (c, "name") ? member_str (c, "name") : "?",
            parent && *parent ? parent : "-", state ? state : "?", when,
            human_size (member_int (c, "dirty_bytes", -1), b1, sizeof b1),
            human_size (member_int (c, "changed_since_bytes", -1), b2,
                        sizeof b2));
  }
}

/* freeze and thaw */
static void
show_freeze_thaw (const char *command, struct json_object *o)
{
  if (strcmp (command, "freeze") == 0) {
    printf ("frozen: freeze %" PRIi64 "; writes resume by themselves "
            "after %g s unless thawed\n", member_int (o, "freeze", 0),
            member_double (o, "timeout", 0));
    return;
  }
  if (member_bool (o, "expired", false))
    printf ("thawed; the last freeze had already expired (writes "
            "resumed at its timeout)\n");
  else if (member_bool (o, "was_frozen", false))
    printf ("thawed\n");
  else
    printf ("not frozen\n");
}

/* map: one line per extent */
static void
show_map (struct json_object *o)
{
  struct json_object *list = member_get (o, "extents");
  size_t i, n;

  if (list == NULL || !json_object_is_type (list, json_type_array))
    return;
  n = json_object_array_length (list);
  for (i = 0; i < n; ++i) {
    struct json_object *e = json_object_array_get_idx (list, i);
    bool in = member_bool (e, "in_scope", false);

    printf ("%20" PRIi64 " %20" PRIi64 "  %s\n", member_int (e, "offset", 0),
            member_int (e, "length", 0),
            !in ? "not in scope" :
            member_bool (e, "zero", false) ? "in scope, zero" :
            "in scope, data");
  }
}

void
show_reply (const char *command, struct json_object *o)
{
  const char *ckpt = member_str (o, "checkpoint");

  if (strcmp (command, "snapshot") == 0)
    show_snapshot (o);
  else if (strcmp (command, "release") == 0)
    show_release (o);
  else if (strcmp (command, "status") == 0)
    show_status (o);
  else if (strcmp (command, "checkpoints") == 0)
    show_checkpoints (o);
  else if (strcmp (command, "checkpoint") == 0)
    printf ("checkpoint %s created\n", ckpt ? ckpt : "?");
  else if (strcmp (command, "delete-checkpoint") == 0)
    printf ("checkpoint %s deleted\n", ckpt ? ckpt : "?");
  else if (strcmp (command, "freeze") == 0 || strcmp (command, "thaw") == 0)
    show_freeze_thaw (command, o);
  else if (strcmp (command, "map") == 0)
    show_map (o);
  else
    abort ();
}
