/* nbdkit-fleece: bitmap-discard filter, persistent dirty bitmaps.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_BITMAP_DISCARD_DIRTY_H
#define NBDKIT_BITMAP_DISCARD_DIRTY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "bitmap.h"

/* Longest checkpoint name (bytes, without the terminating NUL). */
#define CKPT_NAME_MAX 63

/* Longest bitmap-discard-disk-id (bytes, without the NUL). */
#define DISK_ID_MAX 63

/* Check a checkpoint name: 1-63 of [A-Za-z0-9._-], not starting with
 * '.' or '-'.  Returns false and writes why into err if it is bad.
 */
extern bool dirty_valid_name (const char *name, char *err, size_t errlen)
  __attribute__ ((__nonnull__ (1, 2)));

/* Load (or start) the bitmaps in dir, tracked in granules of
 * granularity bytes, for the disk named disk_id ("" if none was
 * given).  Any file that fails its checks makes this fail with an
 * error saying what to do.  It reads nothing but the directory, so
 * it runs before nbdkit forks.
 */
extern int dirty_open (const char *dir, uint32_t granularity,
                       const char *disk_id)
  __attribute__ ((__nonnull__ (1, 3)));

/* Check the loaded bitmaps against the disk (of size bytes) once the
 * layers below can be asked.
 */
extern int dirty_start (uint64_t size);

/* Write the active bitmap compactly and release everything. */
extern void dirty_close (void);

/* Record that [offset, offset+count) is about to change: returns once
 * the granules' bits are durable on disk (group commit: concurrent
 * callers share one sync).  -1 with *err = EIO if they cannot be made
 * durable; the request must then not go below.
 */
extern int dirty_mark (uint64_t offset, uint64_t count, int *err)
  __attribute__ ((__nonnull__ (3)));

/* Statistics for status and benchmarks. */
struct dirty_stats {
  bool enabled;                 /* bitmap-discard-dir given */
  bool tracking;                /* there is a checkpoint to track into */
  bool failed;                  /* a sync failed: writes fail with EIO */
  uint64_t syncs;               /* durable appends (fdatasync calls) */
  uint64_t marks_synced;        /* dirty_mark calls that waited for one */
  uint64_t active_dirty_bytes;  /* changed since the newest checkpoint */
  unsigned nr_checkpoints;
  char warning[256];            /* "" or a note from loading */
  char pending[CKPT_NAME_MAX + 1]; /* "" or the pending checkpoint */
};
extern void dirty_get_stats (struct dirty_stats *st)
  __attribute__ ((__nonnull__ (1)));

/*----------------------------------------------------------------------
 * The functions below change or read the checkpoint chain.  The
 * caller must hold the writes at this layer and have drained the ones
 * in flight (so no dirty_mark runs), and must serialize them (the
 * control lock).  On failure they return -1 and write a message for
 * the user into err.
 */

/* Does checkpoint name exist? */
extern bool dirty_checkpoint_exists (const char *name)
  __attribute__ ((__nonnull__ (1)));

/* Create checkpoint name: the changes so far are frozen under the
 * previous newest checkpoint, and tracking starts anew under name.
 * A pending checkpoint (made by a snapshot) lasts until
 * dirty_checkpoint_settle; no other can be created meanwhile.
 */
extern int dirty_checkpoint_create (const char *name, bool pending,
                                    char *err, size_t errlen)
  __attribute__ ((__nonnull__ (1, 3)));

/* Delete checkpoint name, merging its changes into its predecessor. */
extern int dirty_checkpoint_delete (const char *name, char *err,
                                    size_t errlen)
  __attribute__ ((__nonnull__ (1, 2)));

/* Set in scope (1 bit per granule, already allocated) every granule
 * changed since checkpoint name was created.
 */
extern int dirty_union_since (const char *name, struct bitmap *scope,
                              char *err, size_t errlen)
  __attribute__ ((__nonnull__ (1, 2, 3)));

/* End the pending checkpoint name: commit it, or drop it by merging
 * its changes into its parent, so that an incremental since the parent
 * still covers everything.  Writes may flow meanwhile.  Fails if name
 * is not the pending checkpoint, or the files cannot be changed (it
 * then stays pending: the next start drops it).
 */
extern int dirty_checkpoint_settle (bool commit, const char *name,
                                    char *err, size_t errlen)
  __attribute__ ((__nonnull__ (2, 3)));

/* Print the checkpoints as a JSON array. */
extern void dirty_list_json (FILE *fp)
  __attribute__ ((__nonnull__ (1)));

#endif /* NBDKIT_BITMAP_DISCARD_DIRTY_H */
