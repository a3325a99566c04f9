/* nbdkit-fleece: bitmap-discard filter, the on-disk format of a
 * checkpoint's bitmap file.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_BITMAP_DISCARD_BITMAP_FILE_H
#define NBDKIT_BITMAP_DISCARD_BITMAP_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bitmap.h"
#include "dirty.h"

/* The state of a checkpoint, as stored in its file. */
enum {
  ST_ACTIVE = 1,                /* the newest: records changes now */
  ST_FROZEN = 2,                /* an older one */
  ST_DELETING = 3,              /* being deleted (the next start ends it) */
  ST_PENDING = 4,               /* active, its snapshot's backup not over */
};

/* What every file of one bitmap directory shares. */
struct bmfile_geometry {
  uint64_t disk_size;           /* bytes */
  uint32_t granularity;         /* bytes per granule */
  uint64_t nr_granules;
  size_t bits_size;             /* bytes of bits: nr_granules / 8, up */
  char disk_id[DISK_ID_MAX + 1]; /* bitmap-discard-disk-id, or "" */
};

/* One file's header fields of its own. */
struct bmfile_info {
  char name[CKPT_NAME_MAX + 1];
  char parent[CKPT_NAME_MAX + 1]; /* "" for the oldest */
  uint64_t created;             /* seconds since the epoch */
  unsigned state;               /* ST_* */
  bool old_format;              /* loaded from a version 1 file */
};

/* A run of granules for a change record. */
struct range { uint64_t first, count; };

/* The end of every refusal: what the user should do. */
#define WHAT_TO_DO \
  " move the *.bitmap files out of bitmap-discard-dir (the next backup must " \
  "then be a full one, taken with \"snapshot checkpoint=NAME\") and " \
  "start nbdkit again"
#define UNTRUSTED "; it cannot be trusted:" WHAT_TO_DO

/* Size g for a disk of size bytes (granularity set already). */
extern void bmfile_set_size (struct bmfile_geometry *g, uint64_t size)
  __attribute__ ((__nonnull__ (1)));

/* Write checkpoint c's file in dir anew (header and bits, no log)
 * through a temporary file and a rename.  If fdp is not NULL it
 * receives an fd of the new file, open for appending records.
 */
extern int bmfile_write (const char *dir, const struct bmfile_geometry *g,
                         const struct bmfile_info *c,
                         const struct bitmap *bits, int *fdp)
  __attribute__ ((__nonnull__ (1, 2, 3, 4)));

/* Load and check file fname of dir into c and bits (allocated here).
 * If geom_from is NULL, the file sets g's disk size; otherwise it must
 * match g, which came from checkpoint geom_from.  A torn last change
 * record marks every granule and writes a note into warning.
 */
extern int bmfile_load (const char *dir, const char *fname,
                        struct bmfile_geometry *g, const char *geom_from,
                        struct bmfile_info *c, struct bitmap *bits,
                        char *warning, size_t warnlen)
  __attribute__ ((__nonnull__ (1, 2, 3, 5, 6, 7)));

/* Bytes of a change record of n ranges. */
extern size_t bmfile_record_size (size_t n);

/* Append a change record of n ranges at offset (of the file's end)
 * and make it durable.
 */
extern int bmfile_append (int fd, const char *dir, const struct range *r,
                          size_t n, uint64_t seq, uint64_t offset)
  __attribute__ ((__nonnull__ (2, 3)));

/* Where the log of a file starts. */
extern uint64_t bmfile_log_start (const struct bmfile_geometry *g)
  __attribute__ ((__nonnull__ (1)));

/* Remove checkpoint name's file (already gone is fine) and sync dir. */
extern int bmfile_unlink (const char *dir, const char *name)
  __attribute__ ((__nonnull__ (1, 2)));

/* Test hook (see docs/HACKING.md): with BITMAP_DISCARD_TEST_CRASH=
 * OP:POINT in the environment, nbdkit kills itself with SIGKILL when
 * bmfile_crash_op is OP and POINT is reached, as a crash would.
 */
extern const char *bmfile_crash_op;
extern void bmfile_crash_point (const char *point)
  __attribute__ ((__nonnull__ (1)));

#endif /* NBDKIT_BITMAP_DISCARD_BITMAP_FILE_H */
