/* nbdkit-fleece: one NBD connection shared by many threads.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * A libnbd handle driven asynchronously: callers on any thread issue
 * commands and block until their reply, while a reader thread owned
 * by the connection polls the socket.  So many requests from many
 * nbdkit connections are in flight on the one NBD connection at
 * once.  Used by the fleece plugin (the live disk) and by the cbw
 * filter (the fleece store).
 *
 * Errors: every call returns 0 on success or -1 with *err set to an
 * errno value and the reason already passed to nbdkit_error.
 */

#ifndef NBDKIT_FLEECE_NBDCONN_H
#define NBDKIT_FLEECE_NBDCONN_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <libnbd.h>

struct nbdkit_extents;
struct nbdconn;

/* Create a connection object.  WHAT names it in messages, e.g.
 * "live disk" or "fleece store".  Returns NULL on error.
 */
extern struct nbdconn *nbdconn_new (const char *what)
  __attribute__ ((__nonnull__ (1)));

/* Connect (blocking), before nbdconn_start.  The URI form accepts
 * any libnbd URI; the argv form starts a server child by systemd
 * socket activation.  Both request base:allocation.
 */
extern int nbdconn_connect_uri (struct nbdconn *c, const char *uri)
  __attribute__ ((__nonnull__ (1, 2)));
/* The same as nbdconn_connect_uri, but without a message: on
 * failure the reason is in nbd_get_error (), for callers that retry
 * and report failures themselves.
 */
extern int nbdconn_try_connect_uri (struct nbdconn *c, const char *uri)
  __attribute__ ((__nonnull__ (1, 2)));
extern int nbdconn_connect_argv (struct nbdconn *c, char **argv)
  __attribute__ ((__nonnull__ (1, 2)));

/* The underlying handle, for querying sizes and capabilities
 * (nbd_get_size, nbd_can_*) and, before connecting, for settings
 * such as TLS (nbd_set_tls*).  Never issue commands on it directly.
 */
extern struct nbd_handle *nbdconn_handle (struct nbdconn *c)
  __attribute__ ((__nonnull__ (1)));

/* Start the reader thread, named NAME (at most 15 characters,
 * for thread lists).  Call after nbdkit forks.
 */
extern int nbdconn_start (struct nbdconn *c, const char *name)
  __attribute__ ((__nonnull__ (1, 2)));

/* Stop the reader thread, disconnect and free.  NULL is a no-op. */
extern void nbdconn_close (struct nbdconn *c);

/* Data commands.  FLAGS are libnbd LIBNBD_CMD_FLAG_* values.  They
 * may be called from any number of threads at once.
 */
extern int nbdconn_pread (struct nbdconn *c, void *buf, uint32_t count,
                          uint64_t offset, uint32_t flags, int *err)
  __attribute__ ((__nonnull__ (1, 2, 6)));
extern int nbdconn_pwrite (struct nbdconn *c, const void *buf,
                           uint32_t count, uint64_t offset,
                           uint32_t flags, int *err)
  __attribute__ ((__nonnull__ (1, 2, 6)));
extern int nbdconn_zero (struct nbdconn *c, uint32_t count, uint64_t offset,
                         uint32_t flags, int *err)
  __attribute__ ((__nonnull__ (1, 5)));
extern int nbdconn_trim (struct nbdconn *c, uint32_t count, uint64_t offset,
                         uint32_t flags, int *err)
  __attribute__ ((__nonnull__ (1, 5)));
extern int nbdconn_flush (struct nbdconn *c, uint32_t flags, int *err)
  __attribute__ ((__nonnull__ (1, 3)));
extern int nbdconn_cache (struct nbdconn *c, uint32_t count, uint64_t offset,
                          uint32_t flags, int *err)
  __attribute__ ((__nonnull__ (1, 5)));

/* Block status (base:allocation) of [offset, offset+count), added
 * to EXTENTS with nbdkit_add_extent.
 */
extern int nbdconn_extents (struct nbdconn *c, uint32_t count,
                            uint64_t offset, uint32_t flags,
                            struct nbdkit_extents *extents, int *err)
  __attribute__ ((__nonnull__ (1, 5, 6)));

/* Write with a deadline (CLOCK_MONOTONIC).  BUF must come from
 * malloc and this call takes ownership of it in every case.  If the
 * reply has not arrived by DEADLINE, returns -1 with *err =
 * ETIMEDOUT; the write stays in flight and BUF is freed when it
 * completes.  nbdconn_wait_idle waits for such writes.
 */
extern int nbdconn_pwrite_owned_deadline (struct nbdconn *c, void *buf,
                                          uint32_t count, uint64_t offset,
                                          uint32_t flags,
                                          const struct timespec *deadline,
                                          int *err)
  __attribute__ ((__nonnull__ (1, 2, 6, 7)));

/* A write the caller waits for later, so that it can do other work
 * while the write is on its way.  BUF must come from malloc; the
 * command owns it in every case.  COUNT must not exceed
 * nbdconn_max_request.  Returns NULL with *err set if the write was
 * not sent.  Every command returned must be passed to nbdconn_finish
 * exactly once.
 */
struct nbdconn_cmd;
extern struct nbdconn_cmd *nbdconn_pwrite_owned_start (struct nbdconn *c,
                                                       void *buf,
                                                       uint32_t count,
                                                       uint64_t offset,
                                                       uint32_t flags,
                                                       int *err)
  __attribute__ ((__nonnull__ (1, 2, 6)));

/* Wait for a command from nbdconn_*_start and free it; returns 0, or
 * -1 with *err set from the reply.  With a DEADLINE
 * (CLOCK_MONOTONIC, or NULL for none) that passes first, returns -1
 * with *err = ETIMEDOUT; the command stays in flight and its buffer
 * is freed when it completes.
 */
extern int nbdconn_finish (struct nbdconn_cmd *cmd,
                           const struct timespec *deadline, int *err)
  __attribute__ ((__nonnull__ (1, 3)));

/* Stop waiting for CMD (from nbdconn_*_start, never finished):
 * when its reply comes, DONE (OPAQUE, E) is called with the reply's
 * errno E (0: success; ENOTCONN: the connection was lost) and the
 * command is freed.  DONE runs on the reader thread inside libnbd's
 * completion callback, with the handle's lock held: it must not call
 * libnbd or nbdconn_* on this connection, and must not wait for
 * anything that needs this connection's replies.  Returns true if
 * detached; false if the reply has already come, and then CMD is
 * still the caller's, to pass to nbdconn_finish (which does not
 * wait long).
 */
typedef void (*nbdconn_done_fn) (void *opaque, int e);
extern bool nbdconn_detach (struct nbdconn_cmd *cmd, nbdconn_done_fn done,
                            void *opaque)
  __attribute__ ((__nonnull__ (1, 2)));

/* How many commands are in flight now (a hint: it moves). */
extern uint64_t nbdconn_inflight (struct nbdconn *c)
  __attribute__ ((__nonnull__ (1)));

/* The largest read or write sent as one command (once connected). */
extern uint32_t nbdconn_max_request (struct nbdconn *c)
  __attribute__ ((__nonnull__ (1)));

/* Wait until no command is in flight on the connection, including
 * those whose caller gave up at a deadline.
 */
extern void nbdconn_wait_idle (struct nbdconn *c)
  __attribute__ ((__nonnull__ (1)));

/* True once the connection has failed for good (all later commands
 * fail with EIO).  After a call fails, this tells a lost connection
 * (true: the command may not have reached the server, or its reply
 * was lost) from an error the server returned (false).
 */
extern int nbdconn_is_dead (struct nbdconn *c)
  __attribute__ ((__nonnull__ (1)));

#endif /* NBDKIT_FLEECE_NBDCONN_H */
