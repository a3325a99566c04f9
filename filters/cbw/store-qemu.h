/* nbdkit-fleece: cbw filter, the qcow2 fleece image and its qemu-nbd.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * The life cycle of the processes and files behind the default fleece
 * store: the qcow2 image (created by qemu-img, removed at exit) and
 * the qemu-nbd child that serves it.  No I/O to the store goes
 * through here: store.c owns the connection once it is made.
 *
 * Called from store.c only, never from two threads at once.
 */

#ifndef NBDKIT_CBW_STORE_QEMU_H
#define NBDKIT_CBW_STORE_QEMU_H

#include <stdbool.h>
#include <stdint.h>

struct nbdconn;

/* Configuration, from .config: returns 1 if KEY is one of ours (and
 * VALUE was good), 0 if it is not, -1 on error.
 */
extern int qemu_store_config (const char *key, const char *value)
  __attribute__ ((__nonnull__ (1, 2)));

/* Defaults and checks once every parameter is known.  URI_STORE:
 * cbw-store was given, so no image is made and our keys are refused.
 */
extern int qemu_store_config_complete (bool uri_store);

/* Before nbdkit forks: check that qemu-img and qemu-nbd can be run
 * and that the image can be created where it is to go.
 */
extern int qemu_store_get_ready (void);

/* After the fork: reserve the image's name (O_EXCL), create a qcow2
 * of SIZE bytes with clusters of CLUSTER_SIZE (clamped to what qcow2
 * allows), start qemu-nbd on it and connect CONN to it.  Called
 * again for a fresh store after the last one was lost; remove the
 * old image first with qemu_store_remove.  On failure the image is
 * already removed.
 */
extern int qemu_store_create (uint64_t size, uint32_t cluster_size,
                              struct nbdconn *conn)
  __attribute__ ((__nonnull__ (3)));

/* CONN was closed (libnbd removed qemu-nbd's socket and reaped it). */
extern void qemu_store_disconnected (void);

/* Remove the image we created.  AT_EXIT: unless cbw-keep-image=true;
 * otherwise (the image of a lost store, about to be replaced) always.
 */
extern void qemu_store_remove (bool at_exit);

/* Free the parameters (at .unload). */
extern void qemu_store_free (void);

/* Bytes allocated to the image file (st_blocks), or -1. */
extern int64_t qemu_store_allocated_bytes (void);

#endif /* NBDKIT_CBW_STORE_QEMU_H */
