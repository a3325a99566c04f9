/* nbdkit-fleece: bitmap-discard filter, the control commands.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_BITMAP_DISCARD_COMMANDS_H
#define NBDKIT_BITMAP_DISCARD_COMMANDS_H

#include <stdio.h>

/* Run one command line (NUL-terminated, without its newline; changed
 * in place) and print its reply, one JSON object without the newline,
 * to fp.  The caller runs one command at a time.
 */
extern void commands_run (char *line, FILE *fp)
  __attribute__ ((__nonnull__ (1, 2)));

#endif /* NBDKIT_BITMAP_DISCARD_COMMANDS_H */
