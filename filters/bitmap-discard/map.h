/* nbdkit-fleece: bitmap-discard filter, the map of the snapshot.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_BITMAP_DISCARD_MAP_H
#define NBDKIT_BITMAP_DISCARD_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The "map" command: print the extents of [offset, offset+length) of
 * the current snapshot (the rest of the disk from offset if !have_length)
 * as reply fields to fp.  Control thread only.
 */
extern int map_command (uint64_t offset, bool have_length, uint64_t length,
                        FILE *fp, char *err, size_t errlen)
  __attribute__ ((__nonnull__ (4, 5)));

#endif /* NBDKIT_BITMAP_DISCARD_MAP_H */
