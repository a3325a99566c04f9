/* nbdkit-fleece: cbw filter, the fleece store.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDKIT_CBW_STORE_H
#define NBDKIT_CBW_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct nbdkit_extents;

/* Configuration, called from .config: returns 1 if KEY was a store
 * key (and VALUE was good), 0 if it is not a store key, -1 on error.
 */
extern int store_config (const char *key, const char *value)
  __attribute__ ((__nonnull__ (1, 2)));
#define store_config_help \
  "cbw-image=<FILE>         qcow2 fleece image to create (default: in $TMPDIR).\n" \
  "cbw-store=<URI>          Use an existing NBD server as the store instead.\n" \
  "cbw-keep-image=<BOOL>    Keep the fleece image at exit (default false).\n" \
  "cbw-ram=<SIZE>           RAM tier in front of the store (default 0).\n" \
  "cbw-qemu-nbd=<PATH>      qemu-nbd to serve the image (default qemu-nbd).\n" \
  "cbw-qemu-img=<PATH>      qemu-img to create the image (default qemu-img)."

/* Cross-checks after all parameters are known. */
extern int store_config_complete (void);

/* Before nbdkit forks: check that the programs exist, so that a
 * missing qemu-nbd is reported before serving.
 */
extern int store_get_ready (void);

/* After the fork: reserve the image name (O_EXCL), create the qcow2 of SIZE bytes with qcow2 clusters
 * of CLUSTER_SIZE (clamped to what qcow2 allows), start qemu-nbd on it
 * and connect; or connect to cbw-store.
 */
extern int store_open (uint64_t size, uint32_t cluster_size);

/* Disconnect (qemu-nbd exits) and remove the image unless kept. */
extern void store_close (void);

/* Data operations, callable from any thread. */
extern int store_read (void *buf, uint32_t count, uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 4)));

/* Write BUF, which must come from malloc: the store takes ownership
 * of it in every case.  DEADLINE (CLOCK_MONOTONIC) may be NULL; past
 * it the call fails with ETIMEDOUT and the write completes, or not,
 * in the background.
 */
extern int store_write_owned (void *buf, uint32_t count, uint64_t offset,
                              const struct timespec *deadline, int *err)
  __attribute__ ((__nonnull__ (1, 5)));

/* Drop [offset, offset+count) from the store, freeing its space. */
extern int store_trim (uint64_t count, uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (3)));

/* Allocation of [offset, offset+count) in the store. */
extern int store_extents (uint32_t count, uint64_t offset,
                          struct nbdkit_extents *extents, int *err)
  __attribute__ ((__nonnull__ (3, 4)));

/* Empty the whole store.  Waits first for every store request still
 * in flight (including writes abandoned at a deadline), so that no
 * stale write can land after the wipe.
 */
extern int store_wipe (int *err) __attribute__ ((__nonnull__ (1)));

/* Like store_wipe, but empty only the ranges that NEXT_RANGE yields
 * (it returns false when there are no more), for a caller that knows
 * where it wrote: the cost is that of those ranges, not of the disk.
 */
typedef bool (*store_range_fn) (void *opaque, uint64_t *offset,
                                uint64_t *count);
extern int store_wipe_ranges (store_range_fn next_range, void *opaque,
                              int *err)
  __attribute__ ((__nonnull__ (1, 3)));

/* The RAM tier's counters as JSON members (no braces) into BUF. */
extern void store_status_json (char *buf, size_t len)
  __attribute__ ((__nonnull__ (1)));

/* Bytes allocated in the qcow2 file (st_blocks), or -1 if unknown. */
extern int64_t store_allocated_bytes (void);

#endif /* NBDKIT_CBW_STORE_H */
