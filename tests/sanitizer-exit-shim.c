/* nbdkit-fleece: test helper, preloaded into nbdkit with a sanitizer.
 * SPDX-License-Identifier: BSD-3-Clause
 *
 * With AddressSanitizer's or ThreadSanitizer's runtime preloaded into
 * Debian 12's nbdkit (which is not built with either), nbdkit hangs
 * in exit() whenever it has printed an error first: libp11-kit's destructor calls
 * freelocale, which blocks on glibc's locale lock, found in a
 * corrupted state.  It happens with nbdkit's own plugins and no code
 * of ours (nbdkit null --filter=nosuch), so it is not our bug, but it
 * turned every "nbdkit must refuse this" test and every clean stop
 * after an error into a timeout.
 *
 * The tests' nbdkit wrapper preloads this after the runtime:
 * freelocale becomes a no-op, so the destructor returns.  The locale
 * objects it leaves are freed by the process exit anyway.
 */

#include <config.h>

#include <locale.h>

void
freelocale (locale_t loc)
{
  (void) loc;
}
