/* nbdkit-fleece: the contract between the cbw filter and the layers
 * above it.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * A layer above cbw (bitmap-discard) talks to it only through cbw's
 * exports, with NBD requests: see "FOR FILTER AUTHORS" in
 * nbdkit-cbw-filter(1) for what each request means.  This header
 * holds the names and the one parser of the status record, so both
 * sides spell them the same way.
 *
 * The status record is one line of JSON, an object of scalar members
 * (strings, numbers, true/false), padded with spaces to
 * CBW_STATUS_SIZE bytes with a newline last.  Its first member is
 * "version".  A reader accepts only the versions it knows.  Members
 * may be added without a new version (readers ignore members they do
 * not know); removing a member or changing its meaning needs a new
 * version.
 */

#ifndef NBDKIT_FLEECE_CBW_CONTRACT_H
#define NBDKIT_FLEECE_CBW_CONTRACT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The exports of the cbw filter. */
#define CBW_WRITER_EXPORT   ""
#define CBW_SNAPSHOT_EXPORT "snapshot"
#define CBW_STATUS_EXPORT   "cbw-status"

/* The size of the status export, and the record's version. */
#define CBW_STATUS_SIZE     4096
#define CBW_STATUS_VERSION  1

/* The members of the status record that a layer above relies on.  A
 * member missing from the record reads as 0 (or "").
 */
struct cbw_status_record {
  unsigned version;
  char state[16];               /* none, active, lingering, ending */
  uint64_t generation;          /* PITs taken so far */
  uint64_t cluster_size;
  uint64_t disk_size;
  uint64_t preserved_bytes;
  uint64_t copied_bytes;
  uint64_t released_bytes;
  uint64_t cbw_failures;
  bool broken;
  uint64_t snapshot_contexts;
};

/* Parse LINE, the contents of the status export (NUL-terminated;
 * trailing blanks allowed), into *REC.  Returns 0, or -1 with a
 * message in ERR (of ERRLEN bytes) if LINE is not a status record of
 * CBW_STATUS_VERSION.
 */
extern int cbw_status_parse (const char *line,
                             struct cbw_status_record *rec,
                             char *err, size_t errlen)
  __attribute__ ((__nonnull__ (1, 2, 3)));

#endif /* NBDKIT_FLEECE_CBW_CONTRACT_H */
