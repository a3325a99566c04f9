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

/* Ask NEXT (a connection's context) its size and every capability,
 * can_multi_conn included, once: nbdkit caches each answer and
 * asserts that it was asked before the matching data call, so a
 * filter whose own can_* callbacks do not all ask below calls this in
 * .prepare.  Returns -1 if any of them failed.
 */
extern int context_ask_all (nbdkit_next *next)
  __attribute__ ((__nonnull__ (1)));

/* Ask NEXT for the extents of [OFFSET, OFFSET + COUNT) (with FLAGS
 * less NBDKIT_FLAG_REQ_ONE) and add its answer, clipped to that
 * range, to EXTENTS.  Below may answer for less than it was asked:
 * *END is set to where its answer stops (OFFSET if it answered
 * nothing).  Returns 0, or -1 with *ERR set.  For filters that report
 * part of a range themselves and pass the rest down (ramcache,
 * bitmap-discard).
 */
extern int context_extents_below (nbdkit_next *next, uint32_t count,
                                  uint64_t offset, uint32_t flags,
                                  struct nbdkit_extents *extents,
                                  uint64_t *end, int *err)
  __attribute__ ((__nonnull__ (1, 5, 6, 7)));

#endif /* NBDKIT_FLEECE_CONTEXT_H */
