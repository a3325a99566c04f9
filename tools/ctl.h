/* nbdkit-fleece: nbdkit-fleece-ctl, declarations shared by its files.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_FLEECE_CTL_H
#define NBDKIT_FLEECE_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

/* Exit statuses. */
#define EXIT_FAILED 1           /* a command failed or was refused */
#define EXIT_USAGE  2           /* bad command line */

/* Options given before the command, the same for every request. */
struct ctl_options {
  bool json;                    /* --json: print the replies as they are */
  double timeout;               /* --timeout: seconds per request */
};
extern struct ctl_options ctl_opts;

/* Set by SIGINT, SIGTERM or SIGHUP (after ctl_catch_signals): requests
 * in progress stop with an error, so that callers can clean up.
 */
extern volatile int ctl_interrupted;

/* Print "nbdkit-fleece-ctl: MESSAGE" on stderr. */
extern void ctl_error (const char *fs, ...)
  __attribute__ ((__format__ (__printf__, 1, 2), __nonnull__ (1)));

/* Catch SIGINT, SIGTERM and SIGHUP into ctl_interrupted. */
extern void ctl_catch_signals (void);

/* conn.c: talking to one control socket. */

/* The result of one request. */
struct ctl_reply {
  char *line;                   /* the reply line as sent, without \n */
  struct json_object *obj;      /* parsed; an object with "ok" */
  bool ok;                      /* its "ok" */
  const char *error;            /* its "error" when !ok, else NULL */
  bool connected;               /* the command may have reached the
                                 * server (also set on failures) */
};

/* Check that path names a socket, before connecting to it; on failure
 * put the reason in err.
 */
extern int ctl_check_socket (const char *path, char *err, size_t errlen)
  __attribute__ ((__nonnull__ (1, 2)));

/* Send one command line (no newline) to the control socket at path
 * and read its reply, all within ctl_opts.timeout seconds.  Returns 0
 * with *reply filled (ok or not) when a well-formed reply came, or -1
 * with the reason in err (the socket is missing, no one serves it, no
 * reply in time, the server closed the connection, not JSON...).
 */
extern int ctl_request (const char *path, const char *command,
                        struct ctl_reply *reply, char *err, size_t errlen)
  __attribute__ ((__nonnull__ (1, 2, 3, 4)));

/* Free what ctl_request put in reply. */
extern void ctl_reply_free (struct ctl_reply *reply)
  __attribute__ ((__nonnull__ (1)));

/* Members of a reply object, with a default when missing or of
 * another type.
 */
extern int64_t member_int (struct json_object *o, const char *key,
                         int64_t dflt);
extern double member_double (struct json_object *o, const char *key,
                           double dflt);
extern bool member_bool (struct json_object *o, const char *key, bool dflt);
extern const char *member_str (struct json_object *o, const char *key);
extern struct json_object *member_get (struct json_object *o,
                                        const char *key);

/* show.c: human summaries of replies. */

/* Print a summary of a successful reply to command (its first word). */
extern void show_reply (const char *command, struct json_object *obj)
  __attribute__ ((__nonnull__ (1, 2)));

/* Print size in bytes as "1.5 GiB" into buf (at least 32 bytes). */
extern const char *human_size (int64_t size, char *buf, size_t len)
  __attribute__ ((__nonnull__ (2)));

/* watch.c: progress of a running backup. */
extern int ctl_watch (const char *path, int argc, char **argv)
  __attribute__ ((__nonnull__ (1)));

/* group.c: one snapshot of several disks at one instant. */
extern int ctl_group_snapshot (int argc, char **argv);

/* nbdkit-fleece-ctl.c: argument checks shared with group.c. */

/* Check a control command and its arguments (the words after it) as
 * the server would, and join them into one line in canonical form
 * (sizes in bytes).  On error print it and return NULL.
 */
extern char *join_command (const char *command, int argc, char **argv);

/* Parse seconds (a decimal number > 0 and <= max) for option. */
extern bool parse_seconds (const char *option, const char *s, double max,
                           double *secs);

#endif /* NBDKIT_FLEECE_CTL_H */
