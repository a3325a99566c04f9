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
  "cbw-store-limit=<SIZE>   Break the snapshot past this (default none).\n" \
  "cbw-qemu-nbd=<PATH>      qemu-nbd to serve the image (default qemu-nbd).\n" \
  "cbw-qemu-img=<PATH>      qemu-img to create the image (default qemu-img)."

/* Cross-checks after all parameters are known. */
extern int store_config_complete (void);

/* Before nbdkit forks, every check that can refuse a start: that
 * qemu-img and qemu-nbd exist and the image's directory is writable,
 * or that cbw-store answers.
 */
extern int store_get_ready (void);

/* After the fork: make the first store for a disk of SIZE bytes and
 * clusters of CLUSTER_SIZE: create the qcow2 and start qemu-nbd on it
 * (store-qemu.c), or connect to cbw-store; then the RAM tier.
 */
extern int store_open (uint64_t size, uint32_t cluster_size);

/* Disconnect (qemu-nbd exits) and remove the image unless kept. */
extern void store_close (void);

/* The engine's promise: store_prepare and store_wipe_ranges are
 * called only while no snapshot uses the store and no other store
 * call is in flight.  They may replace a lost store by a fresh one (see
 * "Losing the store" in store.c).
 */

/* Before a point in time is taken: make sure the store is up,
 * replacing it if it was lost.  Returns 0, or -1 if no store could be
 * made (the snapshot must start broken; the next one tries again).
 */
extern int store_prepare (void);

/* Notice a store that died while idle (calls snap_store_failed).
 * Cheap; call it before reporting status.  No lock held.
 */
extern void store_poll (void);

/* Data operations, callable from any thread. */
extern int store_read (void *buf, uint32_t count, uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (1, 4)));

/* Write BUF, which must come from malloc: the store takes ownership
 * of it in every case.  DEADLINE (CLOCK_MONOTONIC) may be NULL; past
 * it the call fails with ETIMEDOUT and the write completes, or not,
 * in the background.  Fails with ENOSPC, after snap_store_failed,
 * when it would pass cbw-store-limit.  Counts as preserved until
 * store_trim or the wipe.
 */
extern int store_write_owned (void *buf, uint32_t count, uint64_t offset,
                              const struct timespec *deadline, int *err)
  __attribute__ ((__nonnull__ (1, 5)));

/* The same write in two halves, so that the caller can do other
 * work while it is on its way: store_write_start takes BUF as
 * store_write_owned does and never fails by itself; store_write_finish
 * waits (until DEADLINE, if any) and returns what store_write_owned
 * would have.  Call store_write_finish exactly once for every start.
 */
struct nbdconn_cmd;
struct store_write {
  struct nbdconn_cmd *cmd;      /* on its way, or NULL: done */
  uint32_t count;
  uint64_t offset;
  bool counted;                 /* counted in the store's use */
  bool has_deadline;
  struct timespec deadline;
  int r, err;                   /* the result once done */
};
extern void store_write_start (void *buf, uint32_t count, uint64_t offset,
                               const struct timespec *deadline,
                               struct store_write *w)
  __attribute__ ((__nonnull__ (1, 5)));
extern int store_write_finish (struct store_write *w, int *err)
  __attribute__ ((__nonnull__ (1, 2)));

/* Instead of store_write_finish, for a caller that does not want to
 * wait: if W is still on its way (and has no deadline), DONE (OPAQUE,
 * R, ERR) is called once when it completes, with what
 * store_write_finish would have returned and set, and this returns
 * true.  DONE runs on the store connection's reader thread with no
 * lock of ours held; it may take the engine's lock, and must not
 * call the store or wait for anything that needs the store's
 * replies.  Otherwise (W is done, went to the RAM tier, has a
 * deadline, or failed to start) returns false: then call
 * store_write_finish, which does not wait long.
 */
typedef void (*store_done_fn) (void *opaque, int r, int err);
extern bool store_write_detach (struct store_write *w, store_done_fn done,
                                void *opaque)
  __attribute__ ((__nonnull__ (1, 2)));

/* Drop [offset, offset+count), preserved clusters only, from the
 * store, freeing its space; they no longer count as preserved.
 */
extern int store_trim (uint64_t count, uint64_t offset, int *err)
  __attribute__ ((__nonnull__ (3)));

/* Allocation of [offset, offset+count) in the store. */
extern int store_extents (uint32_t count, uint64_t offset,
                          struct nbdkit_extents *extents, int *err)
  __attribute__ ((__nonnull__ (3, 4)));

/* Empty the store at the end of a snapshot: trim the ranges that
 * NEXT_RANGE yields (it returns false when there are no more), which
 * must cover every range written since the last wipe; the cost is
 * that of those ranges, not of the disk.  A lost store is replaced by
 * a fresh, empty one instead.  Waits first for every store request
 * still in flight (including writes abandoned at a deadline), so that
 * no stale write can land after the wipe.
 */
typedef bool (*store_range_fn) (void *opaque, uint64_t *offset,
                                uint64_t *count);
extern int store_wipe_ranges (store_range_fn next_range, void *opaque,
                              int *err)
  __attribute__ ((__nonnull__ (1, 3)));

/* The store's link, use and RAM tier as JSON members (no braces)
 * into BUF.  May be called with the engine's lock held.
 */
extern void store_status_json (char *buf, size_t len)
  __attribute__ ((__nonnull__ (1)));

/* Bytes allocated in the qcow2 file (st_blocks), or -1 if unknown.
 * May be called with the engine's lock held.
 */
extern int64_t store_allocated_bytes (void);

#endif /* NBDKIT_CBW_STORE_H */
