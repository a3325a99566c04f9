#!/usr/bin/env bash
# nbdkit-fleece: a first write's store write travels while the live
# disk takes the new data, and snapshot readers still get the PIT.
# SPDX-License-Identifier: BSD-3-Clause
#
# Under cbw-on-error=break-snapshot (the default) a first write reads
# the old cluster, starts its store write, and goes below at once;
# the cluster stays COPYING until the store write is done, and a
# snapshot read of a COPYING cluster waits for it (copy.c,
# "Write-behind").  The store is nbdkit memory (cbw-store=), which
# the test stops with SIGSTOP:
#
#   1. A write into cluster 0 with the store stopped reaches the live
#      disk while the write itself stays in flight (the store write
#      overlaps it).
#   2. Snapshot reads of cluster 0 sent then (the live disk already
#      holds the new data) return the old data once the store runs
#      again, and so does a read across clusters 0 (COPYING) and 1
#      (NEEDED).  Reading COPYING clusters from the live disk would
#      return the new data here.
#   3. pit-torture with a store slowed by nbdkit's delay filter (every
#      store write in flight for 5 ms): concurrent writers and
#      snapshot readers, every read compared with the reference.
#
# That break-write copies in full before the write goes below is
# test-cbw-break-write.sh's: a failed store write there must leave the
# live disk unchanged.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires
requires test -x "$TESTS_BIN/pit-torture"
requires nbdkit --filter=delay memory 1M --version

store_sock="$tmp/store.sock"
store_uri="nbd+unix:///?socket=$store_sock"

start_store ()
{
    rm -f "$store_sock"
    start_nbdkit -P "$tmp/store.pid" -U "$store_sock" "$@"
    store_pid="$pid"
    # A stopped store would keep the test's servers from exiting.
    cleanup_fn kill -CONT "$store_pid"
}

# Cases 1 and 2.
stopped_store ()
{
    start_live 4M
    nbdsh -u "$live_uri" -c 'h.pwrite(b"\x11" * (4 << 20), 0)'
    start_store memory 4M
    start_cbw cbw-store="$store_uri"
    export live_uri writer_uri snap_uri store_pid

    timeout 120 python3 - <<'PY'
import os, signal
import nbd
from fleecetest import conn, wait_until

C = 64 * 1024
store_pid = int(os.environ["store_pid"])
live = conn(os.environ["live_uri"])
sn = conn(os.environ["snap_uri"])
w = conn(os.environ["writer_uri"])

os.kill(store_pid, signal.SIGSTOP)
try:
    wcookie = w.aio_pwrite(b"\x22" * 4096, 100)
    # 1. The live disk takes the write while its store write waits.
    def on_live():
        w.poll(0)
        return live.pread(4096, 100) == b"\x22" * 4096
    wait_until(on_live, "the live disk did not get the write while "
               "the store was stopped: no write-behind", tries=1200)
    assert w.aio_in_flight() == 1, \
        "the write completed before its store write could"

    # 2. Snapshot reads of the COPYING cluster, and across it.
    b0 = nbd.Buffer(C)
    c0 = sn.aio_pread(b0, 0)
    b01 = nbd.Buffer(C)
    c01 = sn.aio_pread(b01, C // 2)
finally:
    os.kill(store_pid, signal.SIGCONT)

for h in (w, sn):
    while h.aio_in_flight() > 0:
        h.poll(-1)
assert w.aio_command_completed(wcookie)
assert sn.aio_command_completed(c0) and sn.aio_command_completed(c01)
assert b0.to_bytearray() == b"\x11" * C, \
    "a snapshot read of a cluster being copied returned new data"
assert b01.to_bytearray() == b"\x11" * C, \
    "a snapshot read across a cluster being copied returned new data"
assert live.pread(4096, 100) == b"\x22" * 4096
assert sn.pread(C, 0) == b"\x11" * C
assert w.pread(4096, 100) == b"\x22" * 4096
for h in (w, sn, live):
    h.shutdown()
PY

    [ "$(status_field broken)" = false ]
    [ "$(status_field cbw_failures)" = 0 ]
    kill_pid "$cbw_pid"
    kill_pid "$store_pid"
    kill_pid "$live_pid"
}

stopped_store

# 3. pit-torture with every store write slowed down.
M=$((1024 * 1024))
disk="$tmp/disk.img"
ref="$tmp/ref.img"
truncate -s $((16 * M)) "$disk"
start_live $((16 * M)) "$disk"
start_store --filter=delay memory $((16 * M)) delay-write=5ms
start_cbw cbw-store="$store_uri"
timeout 300 "$TESTS_BIN/pit-torture" -F -S 11 -c 65536 "$writer_uri"
cp "$disk" "$ref"
timeout 300 "$TESTS_BIN/pit-torture" -S 11 -c 65536 -w 4 -r 3 -n 800 \
        "$writer_uri" "$snap_uri" "$ref"
! cmp -s "$disk" "$ref" || exit 1
wait_status state '"none"'
[ "$(status_field broken)" = false ]
[ "$(status_field cbw_failures)" = 0 ]
