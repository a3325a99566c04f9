#!/usr/bin/env bash
# nbdkit-fleece: cbw-timeout, with a slow fleece store.
# SPDX-License-Identifier: BSD-3-Clause
#
# The store is a second nbdkit (memory) behind the delay filter, every
# write and zero taking 3 seconds.  A copy-before-write slower than
# cbw-timeout=0.5 counts as failed:
# - break-write: the writer's request fails with EIO, the live disk is
#   unchanged and the snapshot stays valid; after the snapshot ends
#   (which waits for the abandoned store write), a new one works;
# - break-snapshot: the writer's request succeeds and the snapshot is
#   broken (reads fail with EIO).
# Without cbw-timeout a slow store only slows the writer: the write
# succeeds and the snapshot is right.
# (No timing is asserted: only which of the outcomes happened.)

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

store_sock="$tmp/store.sock"
start_nbdkit -P "$tmp/store.pid" -U "$store_sock" \
             --filter=delay memory 4M delay-write=3 delay-zero=3

# run EXPECT CBW-PARAMS...: EXPECT is fail-write, broken or ok.
run ()
{
    local expect="$1"
    shift
    start_live 4M
    start_cbw cbw-store="nbd+unix:///?socket=$store_sock" "$@"
    export writer_uri snap_uri status_uri expect
    timeout 120 python3 - <<'PY'
import json, os
import nbd
from fleecetest import conn, end_snapshot, status

C = 64 * 1024
SIZE = 4 << 20
expect = os.environ["expect"]

w = conn(os.environ["writer_uri"])
for c in range(64):
    w.pwrite(bytes([c + 1]) * C, c * C)
pit = w.pread(SIZE, 0)
sn = conn(os.environ["snap_uri"])

err = None
try:
    w.pwrite(b"\xee" * 300, 3 * C - 100)
except nbd.Error as ex:
    err = ex.errno
s = status()
print(expect, err, s)
if expect == "fail-write":
    assert err == "EIO", err
    assert w.pread(SIZE, 0) == pit, "the failed write changed the disk"
    assert not s["broken"] and s["cbw_failures"] >= 1, s
    assert sn.pread(SIZE, 0) == pit
elif expect == "broken":
    assert err is None, err
    assert s["broken"] and s["cbw_failures"] >= 1, s
    try:
        sn.pread(C, 0)
        raise AssertionError("broken snapshot read succeeded")
    except nbd.Error as ex:
        assert ex.errno == "EIO", ex
else:
    assert err is None, err
    assert not s["broken"] and s["cbw_failures"] == 0, s
    assert sn.pread(SIZE, 0) == pit
    assert w.pread(300, 3 * C - 100) == b"\xee" * 300
end_snapshot(sn)

# The next snapshot works (once the old one is torn down).
sn = conn(os.environ["snap_uri"])
s = status()
assert s["state"] == "active" and not s["broken"], s
now = w.pread(SIZE, 0)
assert sn.pread(SIZE, 0) == now
sn.shutdown(); w.shutdown()
PY
    wait_status state '"none"'
    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
}

run fail-write cbw-timeout=0.5 cbw-on-error=break-write
run broken cbw-timeout=0.5 cbw-on-error=break-snapshot
run ok
