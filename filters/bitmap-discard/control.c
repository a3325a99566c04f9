/* nbdkit-fleece: bitmap-discard filter, the control socket.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * A Unix socket (mode 0600; peers of another uid, except root, are
 * refused) served by one thread.  Several clients may be connected;
 * their commands run one at a time, in arrival order, which is what
 * serializes the control commands (scope.h).  Each line is one
 * command (commands.c); each gets exactly one reply line, a JSON
 * object:
 *
 *   {"ok":true,...}  or  {"ok":false,"error":"..."}
 *
 * This file assembles the lines: one over MAX_LINE bytes, or with a
 * NUL byte, is answered with an error and not run.
 *
 * No client can keep the others out.  One that sends no complete
 * line for IDLE_TIMEOUT seconds (nothing, or only part of a line) is
 * told so and dropped; when all MAX_CLIENTS slots are taken, a new
 * client takes the slot of the one that has been idle longest.  Every
 * connected client is idle between its commands (replies are sent
 * before the next poll), so this never cuts a command short.
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
#include <time.h>

#include <pthread.h>

#include <nbdkit-filter.h>

#include "threadname.h"
#include "timespec.h"
#include "commands.h"
#include "control.h"
#include "gate.h"

#define MAX_LINE    1024
#define MAX_CLIENTS 16
#define SEND_TIMEOUT 10         /* seconds, see control_main */
#define IDLE_TIMEOUT 30         /* seconds without a complete line */

#define STR_(x) #x
#define STR(x) STR_ (x)

struct client {
  int fd;
  char buf[MAX_LINE + 1];
  size_t len;
  bool overflow;                /* discarding a too-long line */
  struct timespec last;         /* connected, or last complete line */
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
    nbdkit_error ("bitmap-discard: bitmap-discard-control=%s: path too "
                  "long", path);
    return -1;
  }
  strcpy (addr.sun_path, path);

  /* A socket left behind by a killed nbdkit is replaced; anything
   * else (a file, a live socket) is an error.
   */
  if (lstat (path, &st) == 0) {
    int fd;
    if (!S_ISSOCK (st.st_mode)) {
      nbdkit_error ("bitmap-discard: bitmap-discard-control=%s exists "
                    "and is not a socket: remove it or choose another "
                    "path", path);
      return -1;
    }
    fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect (fd, (struct sockaddr *) &addr, sizeof addr) == 0) {
      close (fd);
      nbdkit_error ("bitmap-discard: bitmap-discard-control=%s: another "
                    "process is serving this socket", path);
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
    commands_run (line, fp);
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

    c->last = ts_now ();

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

/* Close client i and give its slot to the last one.  A non-NULL why
 * is sent first (if the socket takes it at once) as an error reply.
 */
static void
drop_client (size_t i, const char *why)
{
  if (why) {
    char msg[128];
    int len = snprintf (msg, sizeof msg,
                        "{\"ok\":false,\"error\":\"%s\"}\n", why);
    ssize_t r = send (clients[i].fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void) r;                   /* it is going away anyway */
  }
  close (clients[i].fd);
  clients[i] = clients[--nr_clients];
}

/* Milliseconds from now until ts + IDLE_TIMEOUT (0 if past). */
static int
idle_ms_left (const struct timespec *ts, const struct timespec *now)
{
  double left = ts_seconds_between (*now, ts_add (*ts, IDLE_TIMEOUT));

  return left > 0 ? (int) (left * 1000) : 0;
}

/* Drop the clients idle for IDLE_TIMEOUT; return the poll timeout
 * (milliseconds, -1 for none) until the next one would be.  A client
 * whose input is waiting (behind a long command, say) is read first.
 */
static int
expire_idle (void)
{
  struct timespec now = ts_now ();
  size_t i;
  int timeout = -1;

  for (i = nr_clients; i-- > 0; ) {
    int left = idle_ms_left (&clients[i].last, &now);
    char c;

    if (left == 0 &&
        recv (clients[i].fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 1)
      left = 1;                 /* poll at once, read it */
    if (left == 0)
      drop_client (i, "idle for " STR (IDLE_TIMEOUT) " seconds: "
                   "disconnected");
    else if (timeout == -1 || left < timeout)
      timeout = left;
  }
  return timeout;
}

/* The client idle longest (nr_clients > 0). */
static size_t
oldest_idle (void)
{
  size_t i, oldest = 0;

  for (i = 1; i < nr_clients; ++i)
    if (ts_before (clients[i].last, clients[oldest].last))
      oldest = i;
  return oldest;
}

/* Accept one connection on the listening socket. */
static void
accept_client (void)
{
  int fd = accept4 (listen_fd, NULL, NULL, SOCK_CLOEXEC);

  if (fd == -1) {
    /* Out of file descriptors, say: the connection stays queued and
     * poll would report it again at once.  Back off instead of
     * spinning, still listening to the stop pipe.
     */
    if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
      struct pollfd stop = { .fd = stop_pipe[0], .events = POLLIN };
      nbdkit_debug ("bitmap-discard: control socket: accept: %m");
      poll (&stop, 1, 100);
    }
    return;
  }
  /* A client that sends commands but never reads its replies must
   * not stall the control thread: a reply that cannot be sent within
   * SEND_TIMEOUT drops that client.
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
    return;
  }
  if (nr_clients == MAX_CLIENTS)
    drop_client (oldest_idle (), "too many control clients: this idle "
                 "one was disconnected");
  memset (&clients[nr_clients], 0, sizeof clients[0]);
  clients[nr_clients].fd = fd;
  clients[nr_clients].last = ts_now ();
  nr_clients++;
}

/* The control thread: commands from every client, one at a time. */
static void *
control_main (void *arg)
{
  for (;;) {
    struct pollfd fds[MAX_CLIENTS + 2];
    int timeout = expire_idle ();
    int freeze_ms = gate_expire ();
    size_t i, n = nr_clients;

    /* Wake up when a freeze ends by itself, to log it on time. */
    if (freeze_ms >= 0 && (timeout == -1 || freeze_ms < timeout))
      timeout = freeze_ms;

    fds[0].fd = stop_pipe[0];
    fds[0].events = POLLIN;
    fds[1].fd = listen_fd;
    fds[1].events = POLLIN;
    for (i = 0; i < n; ++i) {
      fds[i+2].fd = clients[i].fd;
      fds[i+2].events = POLLIN;
    }
    if (poll (fds, n + 2, timeout) == -1) {
      if (errno == EINTR) continue;
      nbdkit_error ("bitmap-discard: control socket: poll: %m");
      break;
    }
    if (fds[0].revents)
      break;
    /* Clients first, from the last, so removing one keeps the
     * indexes of the others.
     */
    for (i = n; i-- > 0; ) {
      if (fds[i+2].revents == 0)
        continue;
      if (handle_input (&clients[i]) == -1)
        drop_client (i, NULL);
    }
    if (fds[1].revents & POLLIN)
      accept_client ();
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
  thread_name (thread, "bd-control");
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
