/* nbdkit-fleece: cbw filter, the engine state shared by its files.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Internal to the engine (snap.c, copy.c): see the essay at the top
 * of snap.c for what the states mean.
 */

#ifndef NBDKIT_CBW_ENGINE_H
#define NBDKIT_CBW_ENGINE_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <pthread.h>

#include "bitmap.h"
#include "rounding.h"
#include "snap.h"
#include "timespec.h"

/* Cluster states: see the table at the top of snap.c. */
enum { CL_FREE = 0, CL_NEEDED = 1, CL_COPYING = 2, CL_SAVED = 3 };

/* Snapshot states. */
enum snap_state {
  SNAP_NONE,                    /* no snapshot */
  SNAP_ACTIVE,                  /* PIT taken, contexts open or lingering */
  SNAP_ENDING,                  /* being torn down */
};

struct engine {
  /* Set in snap_init and never changed. */
  uint64_t disk_size;
  uint64_t nr_clusters;

  /* The engine lock: guards every field below it, and the private
   * state of snap.c.
   */
  pthread_mutex_t lock;

  /* Broadcast when a writer's copies end (published or undone):
   * writers waiting for another writer's COPYING clusters, TRIM of
   * the snapshot, and the end of a snapshot wait on it.
   */
  pthread_cond_t copy_done;

  struct bitmap clusters;       /* 2 bits a cluster, CL_* */
  enum snap_state state;
  uint64_t generation;          /* PITs taken so far */

  /* The snapshot is broken: every read fails with EIO until it
   * ends.  Set once by the copy module (break_snapshot_locked),
   * reported once, with the reason (a string constant) in broken_why.
   */
  bool broken;
  const char *broken_why;

  uint64_t copies_inflight;     /* clusters in state COPYING */
  uint64_t detached_bytes;      /* held by detached copies (copy.c) */

  /* 1 bit per store chunk (STORE_CHUNK_SHIFT) of the disk: set when
   * a copy is claimed there, so the store may hold data there.  The
   * end of a snapshot empties only these chunks of the store, and
   * clears the bits once that worked.
   */
  struct bitmap stored;

  /* Statistics of the current (or last) snapshot, in bytes. */
  uint64_t preserved_bytes;     /* now SAVED */
  uint64_t copied_bytes;        /* ever copied to the store */
  uint64_t released_bytes;      /* made FREE by TRIM */
  uint64_t cbw_failures;        /* failed copy-before-writes */
};

extern struct engine eng;

/* The store is emptied in chunks of 1 GiB (1 << STORE_CHUNK_SHIFT). */
#define STORE_CHUNK_SHIFT 30

/* -D cbw.verbose=1 */
extern int cbw_debug_verbose;

/* Bytes in clusters [first, end), the last cluster being short. */
static inline uint64_t
cluster_bytes (uint64_t first, uint64_t end)
{
  uint64_t start = first * cbw_cluster_size;
  uint64_t stop = MIN (end * cbw_cluster_size, eng.disk_size);

  return stop > start ? stop - start : 0;
}

/* Clusters touched by [offset, offset+count): [*first, *end). */
static inline void
clusters_touched (uint64_t offset, uint64_t count,
                  uint64_t *first, uint64_t *end)
{
  if (count == 0) {
    *first = *end = 0;
    return;
  }
  *first = offset / cbw_cluster_size;
  *end = (offset + count - 1) / cbw_cluster_size + 1;
  assert (*end <= eng.nr_clusters);
}

#endif /* NBDKIT_CBW_ENGINE_H */
