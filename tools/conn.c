/* nbdkit-fleece: nbdkit-fleece-ctl, one request on a control socket.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Every request is its own connection: connect, send one line, read
 * one reply line, close.  The server runs the commands of all its
 * clients one at a time, so nothing is gained by keeping a
 * connection, and a fresh one cannot be caught by the server's
 * idle-client limit.  One deadline (ctl_opts.timeout from the start)
 * covers the connect, the send and the reply, so a server that hangs
 * or stops reading cannot hang the tool.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <json-c/json.h>

#include "timespec.h"

#include "ctl.h"

#define MAX_REPLY (64 * 1024 * 1024) /* a sanity bound, not a limit */

/* Wait until fd is ready for events, or the deadline passes.  Returns
 * 1 when ready, 0 at the deadline, -1 on error or interruption (errno
 * EINTR then).
 */
static int
wait_fd (int fd, short events, double deadline)
{
  for (;;) {
    struct pollfd pfd = { .fd = fd, .events = events };
    double left = deadline - ts_now_seconds ();
    int r;

    if (ctl_interrupted) {
      errno = EINTR;
      return -1;
    }
    if (left <= 0)
      return 0;
    r = poll (&pfd, 1, left > 1 ? 1000 : (int) (left * 1000) + 1);
    if (r == -1 && errno != EINTR)
      return -1;
    if (r > 0)
      return 1;
  }
}

int
ctl_check_socket (const char *path, char *err, size_t errlen)
{
  struct stat st;

  if (strlen (path) >= sizeof ((struct sockaddr_un *) 0)->sun_path) {
    snprintf (err, errlen, "%s: path too long for a Unix socket", path);
    return -1;
  }
  if (stat (path, &st) == -1) {
    if (errno == ENOENT)
      snprintf (err, errlen, "%s: no such socket (is nbdkit running "
                "with bitmap-discard-control=%s?)", path, path);
    else
      snprintf (err, errlen, "%s: %s", path, strerror (errno));
    return -1;
  }
  if (!S_ISSOCK (st.st_mode)) {
    snprintf (err, errlen, "%s: not a socket (give the path of "
              "bitmap-discard-control=, not of the NBD socket or a file)",
              path);
    return -1;
  }
  return 0;
}

/* Connect to path before the deadline; -1 with err set on failure. */
static int
connect_socket (const char *path, double deadline, char *err, size_t errlen)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  int fd, r;
  socklen_t len = sizeof r;

  if (ctl_check_socket (path, err, errlen) == -1)
    return -1;
  strcpy (addr.sun_path, path);
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1) {
    snprintf (err, errlen, "socket: %s", strerror (errno));
    return -1;
  }
  if (connect (fd, (struct sockaddr *) &addr, sizeof addr) == 0)
    return fd;
  if (errno == ECONNREFUSED) {
    snprintf (err, errlen, "%s: no one is serving this socket (did "
              "nbdkit exit?)", path);
    goto fail;
  }
  if (errno != EAGAIN && errno != EINPROGRESS) {
    snprintf (err, errlen, "%s: connect: %s", path, strerror (errno));
    goto fail;
  }
  /* The server's queue of connections is full: wait for room. */
  r = wait_fd (fd, POLLOUT, deadline);
  if (r == 0) {
    snprintf (err, errlen, "%s: could not connect within %g seconds "
              "(the server is not accepting connections)", path,
              ctl_opts.timeout);
    goto fail;
  }
  if (r == -1 ||
      getsockopt (fd, SOL_SOCKET, SO_ERROR, &r, &len) == -1 || r != 0) {
    snprintf (err, errlen, "%s: connect: %s", path,
              strerror (r > 0 ? r : errno));
    goto fail;
  }
  return fd;

 fail:
  close (fd);
  return -1;
}

/* Send all of buf before the deadline. */
static int
send_all (int fd, const char *path, const char *buf, size_t len,
          double deadline, char *err, size_t errlen)
{
  while (len > 0) {
    ssize_t n = send (fd, buf, len, MSG_NOSIGNAL);
    int r;

    if (n > 0) {
      buf += n;
      len -= n;
      continue;
    }
    if (errno == EPIPE || errno == ECONNRESET) {
      snprintf (err, errlen, "%s: the server closed the connection "
                "without replying (did nbdkit exit?)", path);
      return -1;
    }
    if (errno != EAGAIN && errno != EINTR) {
      snprintf (err, errlen, "%s: send: %s", path, strerror (errno));
      return -1;
    }
    r = wait_fd (fd, POLLOUT, deadline);
    if (r <= 0) {
      snprintf (err, errlen, "%s: %s", path,
                r == 0 ? "the server is not reading its commands" :
                errno == EINTR ? "interrupted" : strerror (errno));
      return -1;
    }
  }
  return 0;
}

/* Read one line (up to \n, not included) before the deadline into a
 * new string *line.
 */
static int
read_line (int fd, const char *path, double deadline, char **line,
           char *err, size_t errlen)
{
  char *buf = NULL, *nl = NULL;
  size_t len = 0, cap = 0;

  while (nl == NULL) {
    ssize_t n;
    int r;

    if (cap - len < 4096) {
      char *p;
      if (cap >= MAX_REPLY) {
        snprintf (err, errlen, "%s: reply longer than %d bytes", path,
                  MAX_REPLY);
        goto fail;
      }
      cap = cap ? cap * 2 : 8192;
      p = realloc (buf, cap + 1);
      if (p == NULL) {
        snprintf (err, errlen, "realloc: %s", strerror (errno));
        goto fail;
      }
      buf = p;
    }
    r = wait_fd (fd, POLLIN, deadline);
    if (r <= 0) {
      snprintf (err, errlen, "%s: %s", path,
                r == 0 ? "no reply in time (see --timeout)" :
                errno == EINTR ? "interrupted" : strerror (errno));
      goto fail;
    }
    n = recv (fd, buf + len, cap - len, 0);
    if (n == 0 || (n == -1 && errno == ECONNRESET)) {
      snprintf (err, errlen, "%s: the server closed the connection "
                "without replying (did nbdkit exit?)", path);
      goto fail;
    }
    if (n == -1) {
      if (errno == EAGAIN || errno == EINTR)
        continue;
      snprintf (err, errlen, "%s: recv: %s", path, strerror (errno));
      goto fail;
    }
    nl = memchr (buf + len, '\n', n);
    len += n;
  }
  *nl = '\0';
  *line = buf;
  return 0;

 fail:
  free (buf);
  return -1;
}

/* Parse line into reply. */
static int
parse_reply (const char *path, struct ctl_reply *reply,
             char *err, size_t errlen)
{
  enum json_tokener_error jerr;
  struct json_object *ok;

  reply->obj = json_tokener_parse_verbose (reply->line, &jerr);
  if (reply->obj == NULL ||
      !json_object_is_type (reply->obj, json_type_object) ||
      !json_object_object_get_ex (reply->obj, "ok", &ok) ||
      !json_object_is_type (ok, json_type_boolean)) {
    snprintf (err, errlen, "%s: the reply is not a control reply (%s): "
              "%.200s", path,
              reply->obj == NULL ? json_tokener_error_desc (jerr)
              : "no \"ok\"", reply->line);
    return -1;
  }
  reply->ok = json_object_get_boolean (ok);
  if (!reply->ok) {
    reply->error = member_str (reply->obj, "error");
    if (reply->error == NULL)
      reply->error = "failed (the server gave no reason)";
  }
  return 0;
}

int
ctl_request (const char *path, const char *command,
             struct ctl_reply *reply, char *err, size_t errlen)
{
  double deadline = ts_now_seconds () + ctl_opts.timeout;
  size_t len = strlen (command);
  char *line;
  int fd;

  memset (reply, 0, sizeof *reply);
  fd = connect_socket (path, deadline, err, errlen);
  if (fd == -1)
    return -1;
  line = malloc (len + 2);
  if (line == NULL) {
    snprintf (err, errlen, "malloc: %s", strerror (errno));
    close (fd);
    return -1;
  }
  reply->connected = true;
  memcpy (line, command, len);
  strcpy (line + len, "\n");
  if (send_all (fd, path, line, len + 1, deadline, err, errlen) == -1 ||
      read_line (fd, path, deadline, &reply->line, err, errlen) == -1) {
    free (line);
    close (fd);
    return -1;
  }
  free (line);
  close (fd);
  if (parse_reply (path, reply, err, errlen) == -1) {
    ctl_reply_free (reply);
    reply->connected = true;
    return -1;
  }
  return 0;
}

void
ctl_reply_free (struct ctl_reply *reply)
{
  if (reply->obj)
    json_object_put (reply->obj);
  free (reply->line);
  memset (reply, 0, sizeof *reply);
}

struct json_object *
member_get (struct json_object *o, const char *key)
{
  struct json_object *v;

  if (o == NULL || !json_object_is_type (o, json_type_object) ||
      !json_object_object_get_ex (o, key, &v))
    return NULL;
  return v;
}

int64_t
member_int (struct json_object *o, const char *key, int64_t dflt)
{
  struct json_object *v = member_get (o, key);

  if (v && (json_object_is_type (v, json_type_int) ||
            json_object_is_type (v, json_type_double)))
    return json_object_get_int64 (v);
  return dflt;
}

double
member_double (struct json_object *o, const char *key, double dflt)
{
  struct json_object *v = member_get (o, key);

  if (v && (json_object_is_type (v, json_type_int) ||
            json_object_is_type (v, json_type_double)))
    return json_object_get_double (v);
  return dflt;
}

bool
member_bool (struct json_object *o, const char *key, bool dflt)
{
  struct json_object *v = member_get (o, key);

  if (v && json_object_is_type (v, json_type_boolean))
    return json_object_get_boolean (v);
  return dflt;
}

const char *
member_str (struct json_object *o, const char *key)
{
  struct json_object *v = member_get (o, key);

  if (v && json_object_is_type (v, json_type_string))
    return json_object_get_string (v);
  return NULL;
}
