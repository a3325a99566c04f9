/* nbdkit-fleece: bitmap-discard filter, snapshot scope.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_BITMAP_DISCARD_SCOPE_H
#define NBDKIT_BITMAP_DISCARD_SCOPE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <nbdkit-filter.h>

/* The writer gate (gate_begin, gate_end) for the writer export. */
#include "gate.h"

/* Parameters, set in .config and never changed after. */
extern uint32_t bd_granularity;   /* bitmap-granularity, bytes */
extern bool bd_discard_on_read;   /* bitmap-discard-on-read */
extern bool bd_have_control;      /* bitmap-control was given */

/* Set up for a disk of size bytes; backend opens contexts below. */
extern int scope_init (nbdkit_backend *backend, uint64_t size)
  __attribute__ ((__nonnull__ (1)));
/* Close the holder context, if any (nbdkit is shutting down). */
extern void scope_cleanup (void);
extern void scope_free (void);

/* A client context on the "snapshot" export opens / closes.  Open
 * fails (with an error logged) when there is no snapshot to join.
 * After a successful scope_client_open, the caller opens the context
 * below and then calls scope_client_opened, whether that worked or
 * not: until then, "release" waits, so the context below joins the
 * same point in time as the scope.
 */
extern int scope_client_open (void);
extern void scope_client_opened (void);
extern void scope_client_close (void);

/* Client data calls on the "snapshot" export. */
extern int scope_pread (nbdkit_next *next, void *buf, uint32_t count,
                        uint64_t offset, uint32_t flags, int *err)
  __attribute__ ((__nonnull__ (1, 2, 6)));
extern int scope_trim (nbdkit_next *next, uint32_t count, uint64_t offset,
                       uint32_t flags, int *err)
  __attribute__ ((__nonnull__ (1, 5)));
extern int scope_extents (nbdkit_next *next, uint32_t count,
                          uint64_t offset, uint32_t flags,
                          struct nbdkit_extents *extents, int *err)
  __attribute__ ((__nonnull__ (1, 5, 6)));

/* The end of the run of bytes from pos (< end) that are all in scope
 * (*in set) or all out of it, at most end.
 */
extern uint64_t scope_run (uint64_t pos, uint64_t end, bool *in)
  __attribute__ ((__nonnull__ (3)));

/* Control commands.  The caller serializes them.  Each prints the rest
 * of a JSON reply object (",\"key\":value...") to fp on success, or
 * returns -1 with a message in err.
 */
/* freeze: 0, or the freeze the snapshot must be taken in. */
extern int scope_snapshot (const char *since, const char *checkpoint,
                           uint64_t freeze, FILE *fp,
                           char *err, size_t errlen)
  __attribute__ ((__nonnull__ (4, 5)));
/* ok: the backup succeeded (release result=ok): commit the pending
 * checkpoint, unless the snapshot broke; otherwise drop it.
 */
extern int scope_release_snapshot (bool ok, FILE *fp, char *err,
                                   size_t errlen)
  __attribute__ ((__nonnull__ (2, 3)));
extern void scope_status (FILE *fp) __attribute__ ((__nonnull__ (1)));
/* Our context on "snapshot" below (control thread only), or NULL if
 * no snapshot is active (taken on the control socket).
 */
extern nbdkit_next *scope_holder (void);
extern uint64_t scope_disk_size (void);
extern int scope_checkpoint (const char *name, char *err, size_t errlen)
  __attribute__ ((__nonnull__ (1, 2)));
extern int scope_delete_checkpoint (const char *name, char *err,
                                    size_t errlen)
  __attribute__ ((__nonnull__ (1, 2)));

#endif /* NBDKIT_BITMAP_DISCARD_SCOPE_H */
