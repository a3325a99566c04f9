/* nbdkit-fleece: bitmap-discard filter, the writer gate and freezes.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_BITMAP_DISCARD_GATE_H
#define NBDKIT_BITMAP_DISCARD_GATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Set up (before the first connection and the control thread). */
extern int gate_init (void);

/* Writer side: every write, zero and trim on the writer export runs
 * between gate_begin and gate_end.  gate_begin waits while the writes
 * are held (by a control step or a freeze).  The functions take the
 * gate's lock themselves.
 */
extern void gate_begin (void);
extern void gate_end (void);

/* Control side: the caller serializes these (control.c). */

/* Hold new writes and wait for those in flight; while frozen this
 * returns at once (the writes are held and drained already).
 */
extern void gate_hold (void);
/* The same, but only if freeze id is in force now: -1 with a message
 * in err (it expired, or is not in force) otherwise.
 */
extern int gate_hold_frozen (uint64_t id, char *err, size_t errlen)
  __attribute__ ((__nonnull__ (2)));
/* End gate_hold.  Writes stay held while a freeze is in force. */
extern void gate_release (void);

/* Freeze: hold writes and drain those in flight, for at most seconds
 * (the freeze then ends by itself).  Sets *id.  Fails if frozen, or
 * if the drain does not finish within seconds (then nothing stays
 * frozen).
 */
extern int gate_freeze (double seconds, uint64_t *id,
                        char *err, size_t errlen)
  __attribute__ ((__nonnull__ (2, 3)));
/* Thaw (idempotent).  *was_frozen: a freeze was in force; *expired:
 * the last freeze ended by its timeout, and none began since.
 */
extern void gate_thaw (bool *was_frozen, bool *expired)
  __attribute__ ((__nonnull__ (1, 2)));
/* End a freeze whose time is up (and log it); return the milliseconds
 * until the freeze in force ends by itself, or -1 if none is.
 */
extern int gate_expire (void);

struct gate_stats {
  bool frozen;
  uint64_t freeze_id;           /* in force; 0 if not frozen */
  double freeze_remaining;      /* seconds */
  uint64_t freezes_expired;
  uint64_t writes_held;         /* waiting in gate_begin */
  uint64_t writes_in_flight;
};
extern void gate_get_stats (struct gate_stats *st)
  __attribute__ ((__nonnull__ (1)));

#endif /* NBDKIT_BITMAP_DISCARD_GATE_H */
