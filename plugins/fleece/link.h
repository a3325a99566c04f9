/* nbdkit-fleece: the fleece plugin's link to the live disk.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * The connections to the live disk, kept up across outages of its
 * server: see link.c.
 */

#ifndef NBDKIT_FLEECE_LINK_H
#define NBDKIT_FLEECE_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct nbdkit_extents;

/* What the live disk advertised when we first connected.  Read once
 * in link_get_ready and never changed: a disk that comes back with
 * less than this is refused.
 */
struct link_caps {
  int64_t size;
  uint32_t block_min, block_pref, block_max; /* 0: not advertised */
  bool read_only, flush, rotational, trim, zero, fast_zero, fua;
  bool multi_conn, cache, extents;
};

/* One request to the live disk.  FLAGS are LIBNBD_CMD_FLAG_*. */
enum link_kind { LINK_READ, LINK_WRITE, LINK_ZERO, LINK_TRIM, LINK_FLUSH,
                 LINK_CACHE, LINK_EXTENTS };
struct link_req {
  enum link_kind kind;
  void *buf;                    /* read, write */
  uint32_t count;
  uint64_t offset;
  uint32_t flags;
  struct nbdkit_extents *extents; /* extents */
};

/* .config: 1 if KEY is one of ours (and VALUE is valid), 0 if not
 * ours, -1 on a bad value (already reported).
 */
extern int link_config (const char *key, const char *value);

/* .config_complete: checks that need every parameter. */
extern int link_config_complete (void);

/* Help text for link_config's keys. */
#define link_config_help \
  "live=<URI>       (required) NBD URI of the live disk.\n" \
  "live-reconnect-delay=<SECS>\n" \
  "                 How long requests wait for a lost live disk (10).\n" \
  "live-status-file=<PATH>  Keep the link's state (JSON) in PATH.\n" \
  "live-connections=<N>  Connections to the live disk (4 at most\n" \
  "                 one per CPU; 1 without multi-conn).\n" \
  "tls=off|on|require  TLS to the live disk (libnbd's default).\n" \
  "tls-certificates=<DIR>  X.509 certificates directory.\n" \
  "tls-psk=<FILE>   PSK keys file.\n" \
  "tls-username=<NAME>  TLS user name (default: login name).\n" \
  "tls-verify=<BOOL>  Verify the server's certificate (true)."

/* .get_ready: connect and read the capabilities. */
extern int link_get_ready (void);

/* .after_fork: start the reader and reconnect threads. */
extern int link_after_fork (void);

/* .unload: stop the threads and disconnect. */
extern void link_unload (void);

/* The capabilities read at start-up. */
extern const struct link_caps *link_caps (void);

/* Send one request, waiting for the link through an outage (up to
 * live-reconnect-delay) and sending it again on a new connection if
 * the old one died under it.  Returns 0, or -1 with *ERR set.
 */
extern int link_request (const struct link_req *r, int *err);

#endif /* NBDKIT_FLEECE_LINK_H */
