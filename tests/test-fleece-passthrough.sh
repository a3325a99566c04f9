#!/usr/bin/env bash
# nbdkit-fleece: the fleece plugin passes the live disk through.
# SPDX-License-Identifier: BSD-3-Clause
#
# Live disks: nbdkit memory (has fast zero), nbdkit file (no fast
# zero), a read-only one (nbdkit -r), an odd size.  For each, through
# the fleece plugin: the same size and block sizes, the same
# capabilities (flush, FUA, trim, zero, fast zero, multi-conn, cache,
# read-only), unaligned writes and reads land on the live disk and back
# (checked over a direct connection to the live disk), zero, fast
# zero, trim, extents equal to the live disk's, flush, cache, and the
# same disk under every export name.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/fleece.sh"
set -e
set -x

fleece_requires

# run NBDKIT-ARGS...: a live disk, fleece in front, the checks.
run ()
{
    rm -f "$live_sock"
    start_nbdkit -P "$tmp/live.pid" -U "$live_sock" "$@"
    live_pid="$pid"
    start_fleece live="$live_uri"
    passthrough_check "$live_uri" "$fleece_uri"
    kill_pid "$fleece_pid"
    kill_pid "$live_pid"
}

run memory 8M
truncate -s 8M "$tmp/disk.img"
run file "$tmp/disk.img"
run memory $((8 * 1024 * 1024 + 511))
run -r memory 4M
run --filter=blocksize memory 8M minblock=512 maxdata=1M
