#!/usr/bin/env bash
# nbdkit-fleece: ending a snapshot costs what was preserved, not the
# size of the disk.
# SPDX-License-Identifier: BSD-3-Clause
#
# A sparse 1P disk, clusters of 16M, and a fleece store (cbw-store) of
# nbdkit memory under the log filter.  A snapshot preserves two
# clusters, at the start and at the end of the disk, and ends.  The
# store must see two TRIMs for the wipe (it used to see one per GiB of
# the disk: a million).  With cbw-ram, the tier trims below around
# what it held: a few more, still not per GiB.  The next snapshot
# reads the point in time at both places.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

size=$((1 << 50))
cl=$((16 << 20))

run ()
{
    local max="$1"
    shift

    start_live "$size"
    rm -f "$tmp/store.sock" "$tmp/store.log"
    start_nbdkit -P "$tmp/store.pid" -U "$tmp/store.sock" \
                 --filter=log memory "$size" logfile="$tmp/store.log"
    store_pid="$pid"
    start_cbw cbw-store="nbd+unix:///?socket=$tmp/store.sock" \
              cbw-cluster-size=16M "$@"

    hold_snapshot
    nbdsh -u "$writer_uri" \
          -c "h.pwrite(b'\x11', 5); h.pwrite(b'\x22', $size - 7)"
    [ "$(status_field preserved_bytes)" = $((2 * cl)) ]
    before=$(grep -c ' Trim ' "$tmp/store.log" || :)
    release_snapshot
    wait_status state '"none"'
    trims=$(( $(grep -c ' Trim ' "$tmp/store.log" || :) - before ))
    echo "the wipe sent $trims TRIMs"
    [ "$trims" -ge 2 ] && [ "$trims" -le "$max" ]

    # The next snapshot is right where the last one preserved data.
    export writer_uri snap_uri size
    timeout 60 python3 - <<'PY'
import os
from fleecetest import conn

size = int(os.environ["size"])
w = conn(os.environ["writer_uri"])
sn = conn(os.environ["snap_uri"])
w.pwrite(b"\x33" * 4096, 0)
w.pwrite(b"\x44" * 4096, size - 4096)
assert sn.pread(8, 0) == b"\0" * 5 + b"\x11" + b"\0" * 2
assert sn.pread(8, size - 8) == b"\0" + b"\x22" + b"\0" * 6
assert w.pread(4096, 0) == b"\x33" * 4096
sn.shutdown(); w.shutdown()
PY
    wait_status state '"none"'
    kill_pid "$cbw_pid"
    kill_pid "$store_pid"
    kill_pid "$live_pid"
}

run 2
run 8 cbw-ram=64M
