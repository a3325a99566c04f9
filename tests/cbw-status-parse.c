/* nbdkit-fleece: prints what cbw_status_parse makes of each line.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * Used by test-cbw-contract.sh.  For every line of standard input
 * (at most CBW_STATUS_SIZE bytes), prints "ok" and the members, or
 * "error: MESSAGE".
 */

#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbw-contract.h"

int
main (void)
{
  char line[CBW_STATUS_SIZE + 2];
  struct cbw_status_record rec;
  char err[256];

  while (fgets (line, sizeof line, stdin)) {
    if (cbw_status_parse (line, &rec, err, sizeof err) == -1) {
      printf ("error: %s\n", err);
      continue;
    }
    printf ("ok version=%u state=%s generation=%" PRIu64
            " cluster_size=%" PRIu64 " disk_size=%" PRIu64
            " preserved_bytes=%" PRIu64 " broken=%d"
            " snapshot_contexts=%" PRIu64 "\n",
            rec.version, rec.state, rec.generation, rec.cluster_size,
            rec.disk_size, rec.preserved_bytes, rec.broken,
            rec.snapshot_contexts);
  }
  return 0;
}
