/* nbdkit-fleece: one NBD connection shared by many threads.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * How it works
 * ------------
 * libnbd's synchronous calls hold the handle lock across their own
 * poll, so one synchronous handle runs one command at a time.  Here
 * callers use the nbd_aio_* calls instead: they queue a command with
 * a completion callback and sleep on a per-command condition
 * variable.  One reader thread per connection polls the socket and
 * calls nbd_aio_notify_read/write; libnbd runs the completion
 * callbacks on that thread as the replies arrive.
 *
 * When a caller queues a command while the reader is asleep in
 * poll(2) waiting only for input, the socket may need writing: the
 * caller pokes the reader through a pipe so that it looks at
 * nbd_aio_get_direction again.
 *
 * Command lifetime: a struct cmd is owned by its caller until the
 * command is queued, then shared with the completion callback.  The
 * one subtle case is a caller that stops waiting at a deadline: it
 * marks the command abandoned under the lock and the callback frees
 * it (and the data buffer, which the caller handed over) when the
 * reply finally comes.
 *
 * When the connection dies, libnbd completes every queued and
 * in-flight command with an error, so no caller sleeps forever, and
 * refuses new commands, which we report as EIO.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <libnbd.h>
#include <nbdkit-filter.h> /* declares the nbdkit_* calls we use */

#include "cleanup.h"
#include "nbdconn.h"
#include "rounding.h"

struct nbdconn {
  /* Set before the reader starts and never changed. */
  char *what;                   /* "live disk", for messages */
  struct nbd_handle *h;
  int wakeup[2];                /* pipe: callers poke the reader */
  pthread_t reader;
  bool reader_started;
  uint32_t max_request;         /* largest read or write to send */

  /* Protected by lock. */
  pthread_mutex_t lock;
  pthread_cond_t idle_cond;     /* signalled when inflight drops to 0 */
  uint64_t inflight;            /* commands queued and not completed */
  bool stopping;                /* reader must exit */
  bool dead;                    /* connection lost, for good */
};

/* One command.  The fields after 'c' are protected by c->lock. */
struct cmd {
  struct nbdconn *c;
  pthread_cond_t cond;          /* signalled when done */
  bool done;                    /* reply received, err is valid */
  bool abandoned;               /* caller gave up: callback frees */
  int err;                      /* errno from the reply, or 0 */
  void *owned_buf;              /* freed with the command */
};

struct nbdconn *
nbdconn_new (const char *what)
{
  struct nbdconn *c;

  c = calloc (1, sizeof *c);
  if (c == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  c->wakeup[0] = c->wakeup[1] = -1;
  pthread_mutex_init (&c->lock, NULL);
  pthread_cond_init (&c->idle_cond, NULL);
  c->what = strdup (what);
  if (c->what == NULL) {
    nbdkit_error ("strdup: %m");
    goto err;
  }
  if (pipe2 (c->wakeup, O_CLOEXEC | O_NONBLOCK) == -1) {
    nbdkit_error ("pipe2: %m");
    goto err;
  }
  c->h = nbd_create ();
  if (c->h == NULL) {
    nbdkit_error ("%s: nbd_create: %s", what, nbd_get_error ());
    goto err;
  }
  /* Buffers are only used after a successful read, which fills them:
   * libnbd need not zero them first.
   */
  if (nbd_set_pread_initialize (c->h, false) == -1) {
    nbdkit_error ("%s: nbd_set_pread_initialize: %s", what,
                  nbd_get_error ());
    goto err;
  }
  if (nbd_add_meta_context (c->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1) {
    nbdkit_error ("%s: nbd_add_meta_context: %s", what, nbd_get_error ());
    goto err;
  }
  return c;

 err:
  nbdconn_close (c);
  return NULL;
}

/* Once connected: the largest read or write the server takes.  Its
 * advertised maximum block size if any; otherwise 32 MiB, the limit
 * of qemu-nbd and of most servers (NBD leaves it to the server, and
 * qemu-nbd refuses larger requests with EINVAL without saying so).
 */
static void
learn_limits (struct nbdconn *c)
{
  const int64_t dflt = 32 * 1024 * 1024;
  int64_t max = nbd_get_block_size (c->h, LIBNBD_SIZE_MAXIMUM);

  c->max_request = max > 0 && max < dflt ? max : dflt;
}

int
nbdconn_connect_uri (struct nbdconn *c, const char *uri)
{
  if (nbd_connect_uri (c->h, uri) == -1) {
    nbdkit_error ("%s: cannot connect to %s: %s",
                  c->what, uri, nbd_get_error ());
    return -1;
  }
  learn_limits (c);
  return 0;
}

int
nbdconn_try_connect_uri (struct nbdconn *c, const char *uri)
{
  if (nbd_connect_uri (c->h, uri) == -1)
    return -1;
  learn_limits (c);
  return 0;
}

int
nbdconn_connect_argv (struct nbdconn *c, char **argv)
{
  if (nbd_connect_systemd_socket_activation (c->h, argv) == -1) {
    nbdkit_error ("%s: cannot start %s: %s",
                  c->what, argv[0], nbd_get_error ());
    return -1;
  }
  learn_limits (c);
  return 0;
}

struct nbd_handle *
nbdconn_handle (struct nbdconn *c)
{
  return c->h;
}

/* Mark the connection dead without a message (the reader thread
 * gives one when it sees the end).
 */
static void
set_dead (struct nbdconn *c)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  c->dead = true;
}

/* Mark the connection dead, once, with a message. */
static void
mark_dead (struct nbdconn *c, const char *why)
{
  bool first;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
    first = !c->dead;
    c->dead = true;
  }
  if (first)
    nbdkit_error ("%s: connection lost: %s", c->what, why);
}

/* The reader thread. */
static void *
reader (void *opaque)
{
  struct nbdconn *c = opaque;

  for (;;) {
    struct pollfd fds[2];
    unsigned dir;
    int fd, r;
    char buf[64];

    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
      if (c->stopping)
        break;
    }

    dir = nbd_aio_get_direction (c->h);
    fd = nbd_aio_get_fd (c->h);
    if (fd == -1) {
      mark_dead (c, nbd_get_error ());
      break;
    }
    fds[0].fd = fd;
    fds[0].events = 0;
    if (dir & LIBNBD_AIO_DIRECTION_READ)
      fds[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      fds[0].events |= POLLOUT;
    fds[0].revents = 0;
    fds[1].fd = c->wakeup[0];
    fds[1].events = POLLIN;
    fds[1].revents = 0;

    if (poll (fds, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      mark_dead (c, strerror (errno));
      break;
    }

    /* Drain the pokes; each one only means "look again". */
    if (fds[1].revents & POLLIN)
      while (read (c->wakeup[0], buf, sizeof buf) > 0)
        ;

    r = 0;
    if ((dir & LIBNBD_AIO_DIRECTION_READ) &&
        (fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
      r = nbd_aio_notify_read (c->h);
    else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) &&
             (fds[0].revents & (POLLOUT | POLLHUP | POLLERR)))
      r = nbd_aio_notify_write (c->h);

    if (r == -1 || nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h)) {
      mark_dead (c, r == -1 ? nbd_get_error () : "server disconnected");
      break;
    }
  }
  return NULL;
}

int
nbdconn_start (struct nbdconn *c)
{
  int r;

  r = pthread_create (&c->reader, NULL, reader, c);
  if (r != 0) {
    errno = r;
    nbdkit_error ("%s: pthread_create: %m", c->what);
    return -1;
  }
  c->reader_started = true;
  return 0;
}

/* Wake the reader so it re-reads the handle's direction. */
static void
poke (struct nbdconn *c)
{
  const char x = 0;
  ssize_t r;

  /* A full pipe already holds a poke, so EAGAIN is fine to ignore. */
  r = write (c->wakeup[1], &x, 1);
  (void) r;
}

void
nbdconn_close (struct nbdconn *c)
{
  if (c == NULL)
    return;
  if (c->reader_started) {
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
      c->stopping = true;
    }
    poke (c);
    pthread_join (c->reader, NULL);
  }
  if (c->h)
    nbd_close (c->h);
  if (c->wakeup[0] >= 0)
    close (c->wakeup[0]);
  if (c->wakeup[1] >= 0)
    close (c->wakeup[1]);
  pthread_cond_destroy (&c->idle_cond);
  pthread_mutex_destroy (&c->lock);
  free (c->what);
  free (c);
}

/* Completion callback, on whatever thread libnbd runs it. */
static int
complete (void *opaque, int *error)
{
  struct cmd *cmd = opaque;
  struct nbdconn *c = cmd->c;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);

  assert (c->inflight > 0);
  if (--c->inflight == 0)
    pthread_cond_broadcast (&c->idle_cond);
  if (cmd->abandoned) {
    pthread_cond_destroy (&cmd->cond);
    free (cmd->owned_buf);
    free (cmd);
  }
  else {
    cmd->done = true;
    cmd->err = *error;
    pthread_cond_signal (&cmd->cond);
  }
  return 1;                     /* retire the command */
}

static void
cmd_free (struct cmd *cmd)
{
  pthread_cond_destroy (&cmd->cond);
  free (cmd->owned_buf);
  free (cmd);
}

/* What to send: one of the NBD commands and its arguments. */
enum kind { CMD_READ, CMD_WRITE, CMD_ZERO, CMD_TRIM, CMD_FLUSH,
            CMD_CACHE, CMD_BLOCK_STATUS };
struct request {
  enum kind kind;
  const char *name;             /* for messages */
  void *buf;                    /* read, write */
  uint32_t count;
  uint64_t offset;
  uint32_t flags;
  struct nbdkit_extents *extents; /* block status */
};

static int add_extents (void *opaque, const char *metacontext,
                        uint64_t offset, uint32_t *entries,
                        size_t nr_entries, int *error);

/* Queue one command. */
static int64_t
queue (struct nbdconn *c, const struct request *r, struct cmd *cmd)
{
  nbd_completion_callback done = { .callback = complete, .user_data = cmd };
  nbd_extent_callback ext = { .callback = add_extents,
                              .user_data = r->extents };

  switch (r->kind) {
  case CMD_READ:
    return nbd_aio_pread (c->h, r->buf, r->count, r->offset, done, r->flags);
  case CMD_WRITE:
    return nbd_aio_pwrite (c->h, r->buf, r->count, r->offset, done, r->flags);
  case CMD_ZERO:
    return nbd_aio_zero (c->h, r->count, r->offset, done, r->flags);
  case CMD_TRIM:
    return nbd_aio_trim (c->h, r->count, r->offset, done, r->flags);
  case CMD_FLUSH:
    return nbd_aio_flush (c->h, done, r->flags);
  case CMD_CACHE:
    return nbd_aio_cache (c->h, r->count, r->offset, done, r->flags);
  case CMD_BLOCK_STATUS:
    return nbd_aio_block_status (c->h, r->count, r->offset, ext, done,
                                 r->flags);
  }
  abort ();
}

/* Send a command and wait for its reply (or DEADLINE, if not NULL).
 * OWNED_BUF, if not NULL, is freed with the command.
 */
static int
run (struct nbdconn *c, const struct request *r, void *owned_buf,
     const struct timespec *deadline, int *err)
{
  struct cmd *cmd;
  int e;

  cmd = calloc (1, sizeof *cmd);
  if (cmd == NULL) {
    *err = errno;
    nbdkit_error ("calloc: %m");
    free (owned_buf);
    return -1;
  }
  cmd->c = c;
  cmd->owned_buf = owned_buf;
  pthread_cond_init (&cmd->cond, NULL);

  /* Count the command as in flight before queuing it: its completion
   * may run before the nbd_aio_* call returns.
   */
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
    if (c->dead) {
      nbdkit_error ("%s: %s: connection is gone", c->what, r->name);
      *err = EIO;
      goto free_cmd;
    }
    c->inflight++;
  }

  if (queue (c, r, cmd) == -1) {
    /* Never queued, so the callback will not run. */
    e = nbd_get_errno ();
    nbdkit_error ("%s: %s: %s", c->what, r->name, nbd_get_error ());
    {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
      if (--c->inflight == 0)
        pthread_cond_broadcast (&c->idle_cond);
    }
    if (nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h))
      set_dead (c);
    /* A command refused by a dead or closed handle is an I/O error. */
    *err = (e == 0 || e == EINVAL || e == ENOTCONN) ? EIO : e;
    goto free_cmd;
  }

  if (nbd_aio_get_direction (c->h) & LIBNBD_AIO_DIRECTION_WRITE)
    poke (c);

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
    while (!cmd->done) {
      if (deadline == NULL)
        pthread_cond_wait (&cmd->cond, &c->lock);
      else if (pthread_cond_clockwait (&cmd->cond, &c->lock,
                                       CLOCK_MONOTONIC,
                                       deadline) == ETIMEDOUT &&
               !cmd->done) {
        cmd->abandoned = true;  /* the callback frees it now */
        nbdkit_error ("%s: %s: no reply before the deadline",
                      c->what, r->name);
        *err = ETIMEDOUT;
        return -1;
      }
    }
    e = cmd->err;
  }
  cmd_free (cmd);
  if (e != 0) {
    /* Tell a lost connection from an error the server returned:
     * libnbd fails the commands it cut off with ENOTCONN (servers do
     * not send it), and the handle may not look dead yet to this
     * thread when the reader is still inside the state machine.
     */
    if (e == ENOTCONN ||
        nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h))
      set_dead (c);
    nbdkit_error ("%s: %s at offset %" PRIu64 ": %s",
                  c->what, r->name, r->offset, strerror (e));
    /* libnbd fails commands cut off by a lost connection with
     * ENOTCONN; to nbdkit's clients that is an I/O error.
     */
    *err = e == ENOTCONN ? EIO : e;
    return -1;
  }
  return 0;

 free_cmd:
  cmd_free (cmd);
  return -1;
}

/* Reads and writes larger than the server takes go in pieces, one
 * after the other (they are rare: nbdkit clients see the block size
 * limits, and our own copies are smaller).
 */
int
nbdconn_pread (struct nbdconn *c, void *buf, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_READ, .name = "read", .flags = flags };

  assert (c->max_request > 0);   /* connected */

  do {
    r.buf = buf;
    r.count = MIN (count, c->max_request);
    r.offset = offset;
    if (run (c, &r, NULL, NULL, err) == -1)
      return -1;
    buf = (char *) buf + r.count;
    offset += r.count;
    count -= r.count;
  } while (count > 0);
  return 0;
}

int
nbdconn_pwrite (struct nbdconn *c, const void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_WRITE, .name = "write", .flags = flags };

  assert (c->max_request > 0);   /* connected */

  do {
    /* libnbd takes a const buffer for writes; the cast only fits the
     * shared request struct.
     */
    r.buf = (void *) buf;
    r.count = MIN (count, c->max_request);
    r.offset = offset;
    if (run (c, &r, NULL, NULL, err) == -1)
      return -1;
    buf = (const char *) buf + r.count;
    offset += r.count;
    count -= r.count;
  } while (count > 0);
  return 0;
}

int
nbdconn_pwrite_owned_deadline (struct nbdconn *c, void *buf,
                               uint32_t count, uint64_t offset,
                               uint32_t flags,
                               const struct timespec *deadline, int *err)
{
  struct request r = { .kind = CMD_WRITE, .name = "write", .buf = buf,
                       .count = count, .offset = offset, .flags = flags };
  return run (c, &r, buf, deadline, err);
}

int
nbdconn_zero (struct nbdconn *c, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_ZERO, .name = "zero",
                       .count = count, .offset = offset, .flags = flags };
  return run (c, &r, NULL, NULL, err);
}

int
nbdconn_trim (struct nbdconn *c, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_TRIM, .name = "trim",
                       .count = count, .offset = offset, .flags = flags };
  return run (c, &r, NULL, NULL, err);
}

int
nbdconn_flush (struct nbdconn *c, uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_FLUSH, .name = "flush", .flags = flags };
  return run (c, &r, NULL, NULL, err);
}

int
nbdconn_cache (struct nbdconn *c, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_CACHE, .name = "cache",
                       .count = count, .offset = offset, .flags = flags };
  return run (c, &r, NULL, NULL, err);
}

/* Extent callback: copy base:allocation entries into nbdkit's list.
 * NBD_STATE_HOLE/ZERO have the same values as NBDKIT_EXTENT_*.
 */
static int
add_extents (void *opaque, const char *metacontext, uint64_t offset,
             uint32_t *entries, size_t nr_entries, int *error)
{
  struct nbdkit_extents *extents = opaque;
  size_t i;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  for (i = 0; i + 1 < nr_entries; i += 2) {
    if (nbdkit_add_extent (extents, offset, entries[i],
                           entries[i + 1] & 3) == -1) {
      *error = errno;
      return -1;
    }
    offset += entries[i];
  }
  return 0;
}

int
nbdconn_extents (struct nbdconn *c, uint32_t count, uint64_t offset,
                 uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  struct request r = { .kind = CMD_BLOCK_STATUS, .name = "block status",
                       .count = count, .offset = offset, .flags = flags,
                       .extents = extents };
  return run (c, &r, NULL, NULL, err);
}

void
nbdconn_wait_idle (struct nbdconn *c)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  while (c->inflight > 0 && !c->dead)
    pthread_cond_wait (&c->idle_cond, &c->lock);
}

int
nbdconn_is_dead (struct nbdconn *c)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  return c->dead;
}
