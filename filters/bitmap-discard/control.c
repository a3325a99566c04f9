/* nbdkit-fleece: bitmap-discard filter, the control socket.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * A Unix socket (mode 0600; peers of another uid, except root, are
 * refused) served by one thread.  Several clients may be connected;
 * their commands run one at a time, in arrival order, which is what
 * serializes the control commands (scope.h).  Each line is one
 * command; each gets exactly one reply line, a JSON object:
 *
 *   {"ok":true,...}  or  {"ok":false,"error":"..."}
 *
 * A line is words separated by spaces or tabs: the command, then
 * KEY=VALUE arguments.  Lines over MAX_LINE bytes, non-printable
 * bytes, unknown commands or arguments, and bad names are answered
 * with an error before anything is changed.
 */

#include <config.h>

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include "dirty.h"
#include "scope.h"
#include "control.h"

#define MAX_LINE    1024
#define MAX_CLIENTS 16
#define MAX_WORDS   8
#define SEND_TIMEOUT 10         /* seconds, see control_main */

struct client {
  int fd;
  char buf[MAX_LINE + 1];
  size_t len;
  bool overflow;                /* discarding a too-long line */
};

/* Set in control_listen / control_start, used by the thread only. */
static char *sock_path;
static int listen_fd = -1;
static int stop_pipe[2] = { -1, -1 };
static pthread_t thread;
static bool thread_running;
static struct client clients[MAX_CLIENTS];
static size_t nr_clients;

int
control_listen (const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  struct stat st;

  if (strlen (path) >= sizeof addr.sun_path) {
    nbdkit_error ("bitmap-discard: bitmap-control=%s: path too long", path);
    return -1;
  }
  strcpy (addr.sun_path, path);

  /* A socket left behind by a killed nbdkit is replaced; anything
   * else (a file, a live socket) is an error.
   */
  if (lstat (path, &st) == 0) {
    int fd;
    if (!S_ISSOCK (st.st_mode)) {
      nbdkit_error ("bitmap-discard: bitmap-control=%s exists and is not a "
                    "socket: remove it or choose another path", path);
      return -1;
    }
    fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect (fd, (struct sockaddr *) &addr, sizeof addr) == 0) {
      close (fd);
      nbdkit_error ("bitmap-discard: bitmap-control=%s: another process "
                    "is serving this socket", path);
      return -1;
    }
    if (fd >= 0)
      close (fd);
    unlink (path);
  }

  listen_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd == -1) {
    nbdkit_error ("bitmap-discard: socket: %m");
    return -1;
  }
  if (bind (listen_fd, (struct sockaddr *) &addr, sizeof addr) == -1) {
    nbdkit_error ("bitmap-discard: bind: %s: %m", path);
    return -1;
  }
  /* Also checked per peer (SO_PEERCRED), closing the window between
   * bind and chmod.
   */
  if (chmod (path, 0600) == -1) {
    nbdkit_error ("bitmap-discard: chmod: %s: %m", path);
    unlink (path);
    return -1;
  }
  if (listen (listen_fd, 16) == -1) {
    nbdkit_error ("bitmap-discard: listen: %s: %m", path);
    unlink (path);
    return -1;
  }
  sock_path = strdup (path);
  if (sock_path == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  return 0;
}

/* Write the whole reply; a client that cannot take it is dropped. */
static int
send_reply (int fd, const char *s, size_t len)
{
  while (len > 0) {
    ssize_t r = send (fd, s, len, MSG_NOSIGNAL);
    if (r == -1) {
      if (errno == EINTR) continue;
      return -1;
    }
    s += r; len -= r;
  }
  return 0;
}

/* Print s as a JSON string. */
static void
json_string (FILE *fp, const char *s)
{
  fputc ('"', fp);
  for (; *s; ++s) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      fprintf (fp, "\\%c", c);
    else if (c < 32 || c >= 127)
      fprintf (fp, "\\u%04x", c);
    else
      fputc (c, fp);
  }
  fputc ('"', fp);
}

/* Find key=VALUE among the arguments; NULL if absent.  Unknown keys
 * and repeated keys were refused before.
 */
static const char *
arg (char **words, size_t n, const char *key)
{
  size_t i, len = strlen (key);

  for (i = 1; i < n; ++i)
    if (strncmp (words[i], key, len) == 0 && words[i][len] == '=')
      return words[i] + len + 1;
  return NULL;
}

/* Check that the arguments are KEY=VALUE with keys from allowed (a
 * NULL-terminated list), each at most once.
 */
static bool
check_args (char **words, size_t n, const char *const *allowed,
            char *err, size_t errlen)
{
  size_t i, j;

  for (i = 1; i < n; ++i) {
    const char *eq = strchr (words[i], '=');
    const char *const *a;
    bool ok = false;

    if (eq == NULL || eq == words[i]) {
      snprintf (err, errlen, "%s: expected KEY=VALUE", words[i]);
      return false;
    }
    for (a = allowed; *a; ++a)
      if ((size_t) (eq - words[i]) == strlen (*a) &&
          strncmp (words[i], *a, eq - words[i]) == 0)
        ok = true;
    if (!ok) {
      snprintf (err, errlen, "%s: unknown argument for %s", words[i],
                words[0]);
      return false;
    }
    for (j = 1; j < i; ++j)
      if (strncmp (words[j], words[i], eq - words[i] + 1) == 0) {
        snprintf (err, errlen, "%.*s given twice",
                  (int) (eq - words[i]), words[i]);
        return false;
      }
  }
  return true;
}

/* Run one command line; print the reply object into fp. */
static void
run_command (char *line, FILE *fp)
{
  static const char *const snapshot_args[] = { "since", "checkpoint", NULL };
  static const char *const no_args[] = { NULL };
  static const char *const release_args[] = { "result", NULL };
  char *words[MAX_WORDS], *p, *save = NULL;
  size_t n = 0;
  char err[512] = "";
  int r = -1;
  char *extra = NULL;
  size_t extra_len = 0;
  FILE *efp;

  for (p = line; *p; ++p)
    if ((unsigned char) *p < 32 && *p != '\t') {
      fputs ("{\"ok\":false,\"error\":\"control characters in the "
             "command\"}", fp);
      return;
    }
    else if ((unsigned char) *p >= 127) {
      fputs ("{\"ok\":false,\"error\":\"non-ASCII bytes in the "
             "command\"}", fp);
      return;
    }
  for (p = strtok_r (line, " \t", &save); p;
       p = strtok_r (NULL, " \t", &save)) {
    if (n == MAX_WORDS) {
      fputs ("{\"ok\":false,\"error\":\"too many arguments\"}", fp);
      return;
    }
    words[n++] = p;
  }
  if (n == 0) {
    fputs ("{\"ok\":false,\"error\":\"empty command: try help\"}", fp);
    return;
  }

  efp = open_memstream (&extra, &extra_len);
  if (efp == NULL) {
    fputs ("{\"ok\":false,\"error\":\"out of memory\"}", fp);
    return;
  }

  if (strcmp (words[0], "snapshot") == 0) {
    if (check_args (words, n, snapshot_args, err, sizeof err))
      r = scope_snapshot (arg (words, n, "since"),
                          arg (words, n, "checkpoint"), efp,
                          err, sizeof err);
  }
  else if (strcmp (words[0], "release") == 0) {
    const char *result = arg (words, n, "result");
    if (!check_args (words, n, release_args, err, sizeof err))
      ;
    else if (result && strcmp (result, "ok") != 0 &&
             strcmp (result, "failed") != 0)
      snprintf (err, sizeof err, "result=%s: must be ok or failed",
                result);
    else
      r = scope_release_snapshot (!result || strcmp (result, "ok") == 0,
                                  efp, err, sizeof err);
  }
  else if (strcmp (words[0], "status") == 0) {
    if (check_args (words, n, no_args, err, sizeof err)) {
      scope_status (efp);
      r = 0;
    }
  }
  else if (strcmp (words[0], "checkpoints") == 0) {
    if (check_args (words, n, no_args, err, sizeof err)) {
      fputs (",\"checkpoints\":", efp);
      dirty_list_json (efp);
      r = 0;
    }
  }
  else if (strcmp (words[0], "checkpoint") == 0 ||
           strcmp (words[0], "delete-checkpoint") == 0) {
    bool create = strcmp (words[0], "checkpoint") == 0;
    if (n != 2)
      snprintf (err, sizeof err, "usage: %s NAME", words[0]);
    else if (dirty_valid_name (words[1], err, sizeof err)) {
      r = create ? scope_checkpoint (words[1], err, sizeof err)
        : scope_delete_checkpoint (words[1], err, sizeof err);
      if (r == 0)
        fprintf (efp, ",\"checkpoint\":\"%s\"", words[1]);
    }
  }
  else if (strcmp (words[0], "help") == 0) {
    fputs (",\"commands\":[\"snapshot [since=NAME] [checkpoint=NAME]\","
           "\"release [result=ok|failed]\",\"status\",\"checkpoint NAME\",\"checkpoints\","
           "\"delete-checkpoint NAME\",\"help\"]", efp);
    r = 0;
  }
  else
    snprintf (err, sizeof err, "unknown command %s: try help", words[0]);

  fclose (efp);
  if (r == 0)
    fprintf (fp, "{\"ok\":true%s}", extra ? extra : "");
  else {
    fputs ("{\"ok\":false,\"error\":", fp);
    json_string (fp, err[0] ? err : "failed (see the nbdkit log)");
    fputc ('}', fp);
  }
  free (extra);
}

/* Answer one complete line from client c.  Returns -1 to drop it. */
static int
handle_line (struct client *c, char *line)
{
  char *reply = NULL;
  size_t len = 0;
  FILE *fp;
  int r;

  fp = open_memstream (&reply, &len);
  if (fp == NULL)
    return -1;
  if (c->overflow)
    fprintf (fp, "{\"ok\":false,\"error\":\"line longer than %d bytes\"}",
             MAX_LINE);
  else
    run_command (line, fp);
  fputc ('\n', fp);
  fclose (fp);
  r = send_reply (c->fd, reply, len);
  free (reply);
  return r;
}

/* Read what client c sent and answer its complete lines. */
static int
handle_input (struct client *c)
{
  ssize_t r;
  char *nl;

  r = recv (c->fd, c->buf + c->len, MAX_LINE - c->len, 0);
  if (r == -1 && errno == EINTR)
    return 0;
  if (r <= 0)
    return -1;
  c->len += r;
  c->buf[c->len] = '\0';
  while ((nl = memchr (c->buf, '\n', c->len)) != NULL) {
    size_t used = nl - c->buf + 1, linelen = nl - c->buf;

    *nl = '\0';
    if (linelen > 0 && c->buf[linelen-1] == '\r')
      c->buf[--linelen] = '\0';
    if (strlen (c->buf) != linelen) {
      static const char msg[] =
        "{\"ok\":false,\"error\":\"NUL byte in the command\"}\n";
      if (send_reply (c->fd, msg, strlen (msg)) == -1)
        return -1;
    }
    else if (handle_line (c, c->buf) == -1)
      return -1;
    c->overflow = false;
    memmove (c->buf, c->buf + used, c->len - used);
    c->len -= used;
    c->buf[c->len] = '\0';
  }
  if (c->len == MAX_LINE) {
    /* Too long: drop it, answer once at its newline. */
    c->overflow = true;
    c->len = 0;
  }
  return 0;
}

/* Only our own user (or root) may control us. */
static bool
peer_allowed (int fd)
{
  struct ucred cred;
  socklen_t len = sizeof cred;

  if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1)
    return false;
  return cred.uid == 0 || cred.uid == geteuid ();
}

static void *
control_main (void *arg)
{
  for (;;) {
    struct pollfd fds[MAX_CLIENTS + 2];
    size_t i;

    fds[0].fd = stop_pipe[0];
    fds[0].events = POLLIN;
    fds[1].fd = listen_fd;
    fds[1].events = POLLIN;
    for (i = 0; i < nr_clients; ++i) {
      fds[i+2].fd = clients[i].fd;
      fds[i+2].events = POLLIN;
    }
    if (poll (fds, nr_clients + 2, -1) == -1) {
      if (errno == EINTR) continue;
      nbdkit_error ("bitmap-discard: control socket: poll: %m");
      break;
    }
    if (fds[0].revents)
      break;
    /* Clients first, from the last, so removing one keeps the
     * indexes of the others.
     */
    for (i = nr_clients; i-- > 0; ) {
      if (fds[i+2].revents == 0)
        continue;
      if (handle_input (&clients[i]) == -1) {
        close (clients[i].fd);
        clients[i] = clients[--nr_clients];
      }
    }
    if (fds[1].revents & POLLIN) {
      int fd = accept4 (listen_fd, NULL, NULL, SOCK_CLOEXEC);
      if (fd == -1) {
        /* Out of file descriptors, say: the connection stays queued
         * and poll would report it again at once.  Back off instead
         * of spinning, still listening to the stop pipe.
         */
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
          nbdkit_debug ("bitmap-discard: control socket: accept: %m");
          poll (fds, 1, 100);
        }
        continue;
      }
      /* A client that sends commands but never reads its replies
       * must not stall the control thread: a reply that cannot be
       * sent within SEND_TIMEOUT drops that client.
       */
      {
        const struct timeval tv = { .tv_sec = SEND_TIMEOUT };
        setsockopt (fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      }
      if (!peer_allowed (fd)) {
        static const char msg[] =
          "{\"ok\":false,\"error\":\"permission denied\"}\n";
        send_reply (fd, msg, strlen (msg));
        close (fd);
      }
      else if (nr_clients == MAX_CLIENTS) {
        static const char msg[] =
          "{\"ok\":false,\"error\":\"too many control clients\"}\n";
        send_reply (fd, msg, strlen (msg));
        close (fd);
      }
      else {
        memset (&clients[nr_clients], 0, sizeof clients[0]);
        clients[nr_clients++].fd = fd;
      }
    }
  }
  for (size_t i = 0; i < nr_clients; ++i)
    close (clients[i].fd);
  nr_clients = 0;
  return NULL;
}

int
control_start (void)
{
  int err;

  if (pipe2 (stop_pipe, O_CLOEXEC) == -1) {
    nbdkit_error ("bitmap-discard: pipe2: %m");
    return -1;
  }
  err = pthread_create (&thread, NULL, control_main, NULL);
  if (err) {
    errno = err;
    nbdkit_error ("bitmap-discard: pthread_create: %m");
    return -1;
  }
  thread_running = true;
  return 0;
}

void
control_stop (void)
{
  if (thread_running) {
    ssize_t r = write (stop_pipe[1], "x", 1);
    (void) r;                   /* the thread also exits on any error */
    pthread_join (thread, NULL);
    thread_running = false;
  }
  if (stop_pipe[0] >= 0) {
    close (stop_pipe[0]);
    close (stop_pipe[1]);
    stop_pipe[0] = stop_pipe[1] = -1;
  }
  if (listen_fd >= 0)
    close (listen_fd);
  listen_fd = -1;
  if (sock_path) {
    unlink (sock_path);
    free (sock_path);
    sock_path = NULL;
  }
}
