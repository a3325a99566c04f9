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
 * The hand-off costs what it must and no more: the callback posts
 * the caller's semaphore (one futex wake, none if the caller has not
 * gone to sleep yet) and takes no lock of ours, so the reader never
 * holds a lock a woken caller needs, and callers never contend with
 * each other or with the reader on a connection-wide lock.  The
 * in-flight count is an atomic counter; only nbdconn_wait_idle sleeps
 * on the connection lock, and a callback takes that lock only when
 * the count drops to zero while somebody waits there.  A command
 * without a deadline lives on its caller's stack.
 *
 * When a caller queues a command while the reader is asleep in
 * poll(2) waiting only for input, the socket may need writing: the
 * caller pokes the reader through a pipe so that it looks at
 * nbd_aio_get_direction again.
 *
 * Command lifetime: a struct cmd is owned by its caller until the
 * command is queued, then shared with the completion callback.  The
 * one subtle case is a caller that stops waiting at a deadline: the
 * command's state says who frees it.  Caller and callback each swap
 * in their own final state (ABANDONED, DONE) atomically; whoever
 * comes second sees the other's, and if that is the callback, it
 * frees the command (and the data buffer, which the caller handed
 * over) when the reply finally comes.  A caller that does not want
 * to wait at all detaches the command (DETACHED) with a function of
 * its own, which the callback then calls with the reply's errno
 * before it frees the command.
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
#include <semaphore.h>
#include <stdatomic.h>

#include <libnbd.h>
#include <nbdkit-filter.h> /* declares the nbdkit_* calls we use */

#include "cleanup.h"
#include "nbdconn.h"
#include "rounding.h"
#include "threadname.h"

struct nbdconn {
  /* Set before the reader starts and never changed. */
  char *what;                   /* "live disk", for messages */
  struct nbd_handle *h;
  int wakeup[2];                /* pipe: callers poke the reader */
  pthread_t reader;
  bool reader_started;
  uint32_t max_request;         /* largest read or write to send */

  /* Atomic, no lock. */
  atomic_uint_fast64_t inflight; /* commands queued and not completed */
  atomic_uint idle_waiters;     /* threads in nbdconn_wait_idle */
  atomic_bool stopping;         /* reader must exit */
  atomic_bool dead;             /* connection lost, for good */

  /* Only for nbdconn_wait_idle: a callback that brings inflight to 0
   * while idle_waiters > 0 broadcasts idle_cond under the lock.
   */
  pthread_mutex_t lock;
  pthread_cond_t idle_cond;
};

/* Who owns a command after it is queued (see "Command lifetime"). */
enum cmd_state { CMD_WAITING, CMD_DONE, CMD_ABANDONED, CMD_DETACHED };

/* One command. */
struct cmd {
  struct nbdconn *c;
  sem_t done;                   /* posted by the callback */
  atomic_int state;             /* enum cmd_state */
  int err;                      /* errno from the reply, written by the
                                 * callback before it posts done */
  void *owned_buf;              /* freed with an abandoned command */
  nbdconn_done_fn done_fn;      /* DETACHED: called with the reply */
  void *done_opaque;
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
  atomic_store (&c->dead, true);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  pthread_cond_broadcast (&c->idle_cond);
}

/* Mark the connection dead, once, with a message. */
static void
mark_dead (struct nbdconn *c, const char *why)
{
  bool first = !atomic_exchange (&c->dead, true);

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
    pthread_cond_broadcast (&c->idle_cond);
  }
  if (first)
    nbdkit_error ("%s: connection lost: %s", c->what, why);
}

/* The reader thread. */
static void *
reader (void *opaque)
{
  struct nbdconn *c = opaque;
  /* The socket does not change once connected. */
  const int fd = nbd_aio_get_fd (c->h);

  if (fd == -1) {
    mark_dead (c, nbd_get_error ());
    return NULL;
  }

  while (!atomic_load (&c->stopping)) {
    struct pollfd fds[2];
    unsigned dir;
    int r;
    char buf[64];

    dir = nbd_aio_get_direction (c->h);
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
nbdconn_start (struct nbdconn *c, const char *name)
{
  int r;

  r = pthread_create (&c->reader, NULL, reader, c);
  if (r != 0) {
    errno = r;
    nbdkit_error ("%s: pthread_create: %m", c->what);
    return -1;
  }
  thread_name (c->reader, name);
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
    atomic_store (&c->stopping, true);
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

/* One command fewer in flight: wake nbdconn_wait_idle if it was the
 * last and somebody waits there.  (Both counters are sequentially
 * consistent: a waiter that registered before our decrement is seen
 * here; one that registers after it sees inflight at 0.)
 */
static void
inflight_done (struct nbdconn *c)
{
  if (atomic_fetch_sub (&c->inflight, 1) == 1 &&
      atomic_load (&c->idle_waiters) > 0) {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
    pthread_cond_broadcast (&c->idle_cond);
  }
}

/* Free a heap command and the buffer it owns. */
static void
cmd_free (struct cmd *cmd)
{
  sem_destroy (&cmd->done);
  free (cmd->owned_buf);
  free (cmd);
}

/* Completion callback, on whatever thread libnbd runs it.  After the
 * post the command belongs to its caller again (it may be gone).
 */
static int
complete (void *opaque, int *error)
{
  struct cmd *cmd = opaque;
  struct nbdconn *c = cmd->c;

  cmd->err = *error;
  switch (atomic_exchange (&cmd->state, CMD_DONE)) {
  case CMD_ABANDONED:
    cmd_free (cmd);
    inflight_done (c);
    break;
  case CMD_DETACHED: {
    nbdconn_done_fn done_fn = cmd->done_fn;
    void *done_opaque = cmd->done_opaque;
    int e = cmd->err;

    cmd_free (cmd);
    /* Before the in-flight count drops, so that nbdconn_wait_idle
     * also waits for what it does.
     */
    done_fn (done_opaque, e);
    inflight_done (c);
    break;
  }
  default:
    inflight_done (c);
    sem_post (&cmd->done);
  }
  return 1;                     /* retire the command */
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

/* Queue CMD for R, counting it in flight first (its completion may
 * run before the nbd_aio_* call returns), and poke the reader if the
 * request could not be sent at once.  Returns -1 with *err set if it
 * was not queued (then the callback never runs).
 */
static int
send_cmd (struct nbdconn *c, const struct request *r, struct cmd *cmd,
          int *err)
{
  int e;

  if (atomic_load (&c->dead)) {
    nbdkit_error ("%s: %s: connection is gone", c->what, r->name);
    *err = EIO;
    return -1;
  }
  atomic_fetch_add (&c->inflight, 1);
  if (queue (c, r, cmd) == -1) {
    e = nbd_get_errno ();
    nbdkit_error ("%s: %s: %s", c->what, r->name, nbd_get_error ());
    inflight_done (c);
    if (nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h))
      set_dead (c);
    /* A command refused by a dead or closed handle is an I/O error. */
    *err = (e == 0 || e == EINVAL || e == ENOTCONN) ? EIO : e;
    return -1;
  }
  if (nbd_aio_get_direction (c->h) & LIBNBD_AIO_DIRECTION_WRITE)
    poke (c);
  return 0;
}

/* The reply's errno E, as the caller reports it. */
static int
reply_error (struct nbdconn *c, const struct request *r, int e, int *err)
{
  if (e == 0)
    return 0;
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

/* Send a command and wait for its reply.  The command lives on this
 * stack frame: the callback posts the semaphore as its last access.
 */
static int
run (struct nbdconn *c, const struct request *r, int *err)
{
  struct cmd cmd = { .c = c, .state = CMD_WAITING };
  int e;

  sem_init (&cmd.done, 0, 0);
  if (send_cmd (c, r, &cmd, err) == -1) {
    sem_destroy (&cmd.done);
    return -1;
  }
  while (sem_wait (&cmd.done) == -1 && errno == EINTR)
    ;
  e = cmd.err;
  sem_destroy (&cmd.done);
  return reply_error (c, r, e, err);
}

/* A command whose caller waits for it later: the heap command and
 * what the reply's error message needs.
 */
struct nbdconn_cmd {
  struct cmd cmd;
  struct request r;
};

/* Queue R on the heap; OWNED_BUF is freed with the command, by us or,
 * if the caller gives up first, by the callback.  Returns NULL with
 * *err set (and OWNED_BUF freed) if it was not queued.
 */
static struct nbdconn_cmd *
start (struct nbdconn *c, const struct request *r, void *owned_buf, int *err)
{
  struct nbdconn_cmd *ac;

  ac = calloc (1, sizeof *ac);
  if (ac == NULL) {
    *err = errno;
    nbdkit_error ("calloc: %m");
    free (owned_buf);
    return NULL;
  }
  ac->r = *r;
  ac->cmd.c = c;
  ac->cmd.owned_buf = owned_buf;
  atomic_init (&ac->cmd.state, CMD_WAITING);
  sem_init (&ac->cmd.done, 0, 0);
  if (send_cmd (c, r, &ac->cmd, err) == -1) {
    cmd_free (&ac->cmd);
    return NULL;
  }
  return ac;
}

int
nbdconn_finish (struct nbdconn_cmd *ac, const struct timespec *deadline,
                int *err)
{
  struct nbdconn *c = ac->cmd.c;
  const struct request r = ac->r;
  int e, state;

  for (;;) {
    int w = deadline ?
      sem_clockwait (&ac->cmd.done, CLOCK_MONOTONIC, deadline) :
      sem_wait (&ac->cmd.done);

    if (w == 0)
      break;
    if (errno == EINTR)
      continue;
    assert (errno == ETIMEDOUT);
    if (atomic_exchange (&ac->cmd.state, CMD_ABANDONED) == CMD_WAITING) {
      /* The callback frees it now. */
      nbdkit_error ("%s: %s: no reply before the deadline",
                    c->what, r.name);
      *err = ETIMEDOUT;
      return -1;
    }
    /* The reply came meanwhile: its post is on the way. */
    deadline = NULL;
  }
  /* The callback wrote err before it swapped in DONE: reading the
   * state orders that write before our read, also for tools that do
   * not see sem_clockwait as a synchronisation (ThreadSanitizer).
   */
  state = atomic_load (&ac->cmd.state);
  assert (state == CMD_DONE);
  (void) state;
  e = ac->cmd.err;
  cmd_free (&ac->cmd);
  return reply_error (c, &r, e, err);
}

bool
nbdconn_detach (struct nbdconn_cmd *ac, nbdconn_done_fn done, void *opaque)
{
  ac->cmd.done_fn = done;
  ac->cmd.done_opaque = opaque;
  /* The exchange publishes done/done_opaque to the callback. */
  if (atomic_exchange (&ac->cmd.state, CMD_DETACHED) == CMD_WAITING)
    return true;
  /* The reply is in (its post is made or on the way): the caller
   * finishes the command as usual, without waiting long.
   */
  atomic_store (&ac->cmd.state, CMD_DONE);
  return false;
}

/* Send a command and wait for its reply until DEADLINE (see
 * start).
 */
static int
run_deadline (struct nbdconn *c, const struct request *r, void *owned_buf,
              const struct timespec *deadline, int *err)
{
  struct nbdconn_cmd *ac = start (c, r, owned_buf, err);

  if (ac == NULL)
    return -1;
  return nbdconn_finish (ac, deadline, err);
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
    if (run (c, &r, err) == -1)
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
    if (run (c, &r, err) == -1)
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
  return run_deadline (c, &r, buf, deadline, err);
}

struct nbdconn_cmd *
nbdconn_pwrite_owned_start (struct nbdconn *c, void *buf, uint32_t count,
                            uint64_t offset, uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_WRITE, .name = "write", .buf = buf,
                       .count = count, .offset = offset, .flags = flags };

  assert (count <= c->max_request);
  return start (c, &r, buf, err);
}

uint64_t
nbdconn_inflight (struct nbdconn *c)
{
  return atomic_load_explicit (&c->inflight, memory_order_relaxed);
}

uint32_t
nbdconn_max_request (struct nbdconn *c)
{
  return c->max_request;
}

int
nbdconn_zero (struct nbdconn *c, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_ZERO, .name = "zero",
                       .count = count, .offset = offset, .flags = flags };
  return run (c, &r, err);
}

int
nbdconn_trim (struct nbdconn *c, uint32_t count, uint64_t offset,
              uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_TRIM, .name = "trim",
                       .count = count, .offset = offset, .flags = flags };
  return run (c, &r, err);
}

int
nbdconn_flush (struct nbdconn *c, uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_FLUSH, .name = "flush", .flags = flags };
  return run (c, &r, err);
}

int
nbdconn_cache (struct nbdconn *c, uint32_t count, uint64_t offset,
               uint32_t flags, int *err)
{
  struct request r = { .kind = CMD_CACHE, .name = "cache",
                       .count = count, .offset = offset, .flags = flags };
  return run (c, &r, err);
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
  return run (c, &r, err);
}

void
nbdconn_wait_idle (struct nbdconn *c)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  atomic_fetch_add (&c->idle_waiters, 1);
  while (atomic_load (&c->inflight) > 0 && !atomic_load (&c->dead))
    pthread_cond_wait (&c->idle_cond, &c->lock);
  atomic_fetch_sub (&c->idle_waiters, 1);
}

int
nbdconn_is_dead (struct nbdconn *c)
{
  return atomic_load (&c->dead);
}
