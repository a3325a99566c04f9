/* nbdkit-fleece: open a context on the layer below by hand.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Filters that talk to the layer below outside a client's connection
 * (to learn the disk size after the fork, to keep a shared context
 * for write-back, to hold cbw's snapshot export) open a context with
 * nbdkit_next_context_open.  nbdkit then wants .prepare called and
 * get_size and every can_* asked before the first data call (it
 * asserts on the cached answers).  context_open_below does that
 * dance once, the same way everywhere, and logs one form of error.
 */

#ifndef NBDKIT_FLEECE_CONTEXT_H
#define NBDKIT_FLEECE_CONTEXT_H

#include <stdint.h>

#include <nbdkit-filter.h>

/* The answers of the layer below (each can_* as nbdkit returns it:
 * 0/1, or the NBDKIT_FUA_* / NBDKIT_CACHE_* levels).
 */
struct context_caps {
  int64_t size;
  int can_write, can_flush, can_trim, can_zero, can_fast_zero;
  int can_fua, can_extents, can_cache;
};

/* Open a shared context (not tied to a client) on EXPORTNAME below
 * BACKEND, prepare it and ask its size and every capability, into
 * *CAPS if CAPS is not NULL.  WHO names the caller in the error.
 * Returns the context, or NULL with "WHO: cannot open ... below"
 * logged (and the context closed).
 */
extern nbdkit_next *context_open_below (nbdkit_backend *backend,
                                        int readonly,
                                        const char *exportname,
                                        const char *who,
                                        struct context_caps *caps)
  __attribute__ ((__nonnull__ (1, 3, 4)));

/* Finalize and close a context context_open_below opened (NULL: no
 * operation).
 */
extern void context_close_below (nbdkit_next *next);

#endif /* NBDKIT_FLEECE_CONTEXT_H */
