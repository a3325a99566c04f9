#!/usr/bin/env bash
# nbdkit-fleece: snapshot reads and writer requests larger than the
# fleece store's qemu-nbd takes (32 MiB), in one NBD request each.
# SPDX-License-Identifier: BSD-3-Clause
#
# The live disk is nbdkit's memory plugin, which advertises no block
# size limit, so clients may send up to nbdkit's 64 MiB.  After the
# writer has overwritten the whole disk, every cluster of the snapshot
# comes from the fleece store, in runs longer than 32 MiB: a 48 MiB
# read of the snapshot must return the point-in-time data, with the
# store served by qemu-nbd directly and through cbw-ram.  The
# reference is the disk read before the snapshot, through the writer
# export.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

M=$((1024 * 1024))

for args in "" "cbw-ram=8M" "cbw-ram=80M"; do
    start_live $((64*M))
    start_cbw $args
    export writer_uri snap_uri
    timeout 300 python3 - <<'PY'
import os, random
import nbd

M = 1024 * 1024
w = nbd.NBD(); w.connect_uri(os.environ["writer_uri"])
rnd = random.Random(7)
old = bytes(rnd.getrandbits(8) for _ in range(M)) * 64
# Writes of 48 MiB and 16 MiB: the first is over 32 MiB too.
w.pwrite(old[:48 * M], 0)
w.pwrite(old[48 * M:], 48 * M)
assert w.pread(48 * M, 8 * M) == old[8 * M:56 * M]

s = nbd.NBD(); s.connect_uri(os.environ["snap_uri"])
# Fresh snapshot: all from the live disk.
assert s.pread(48 * M, 3 * M + 5) == old[3 * M + 5:51 * M + 5]
# Overwrite everything (the copies before write fill the store) ...
new = b"\xee" * (40 * M)
w.pwrite(new, 0)
w.pwrite(new[:24 * M], 40 * M)
# ... and read 48 MiB of the snapshot, all from the store.
got = s.pread(48 * M, 7 * M + 4097)
assert got == old[7 * M + 4097:55 * M + 4097], "snapshot data differs"
assert w.pread(48 * M, 0) == b"\xee" * (48 * M)
print("48 MiB reads of the snapshot are the point in time")
s.shutdown()
w.shutdown()
PY
    wait_status state '"none"'
    [ "$(status_field broken)" = false ]
    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
    rm -f "$tmp/fleece.qcow2"
done
