/* nbdkit-fleece: bitmap-discard filter, the control socket.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_BITMAP_DISCARD_CONTROL_H
#define NBDKIT_BITMAP_DISCARD_CONTROL_H

/* Create and bind the socket at path (absolute), mode 0600. */
extern int control_listen (const char *path)
  __attribute__ ((__nonnull__ (1)));

/* Start serving it (in the server process). */
extern int control_start (void);

/* Stop serving and remove the socket. */
extern void control_stop (void);

#endif /* NBDKIT_BITMAP_DISCARD_CONTROL_H */
