#!/usr/bin/env bash
# nbdkit-fleece: a first write's store write travels while the live
# disk takes the new data, and snapshot readers still get the PIT.
# SPDX-License-Identifier: BSD-3-Clause
#
# Under cbw-on-error=break-snapshot (the default) a first write reads
# the old cluster, starts its store write, and goes below at once;
# the cluster stays COPYING until the store write is done, and a
# snapshot read of a COPYING cluster waits for it (copy.c,
# "Write-behind").  Without cbw-timeout the writer does not wait for
# the store write at all; with it, the writer waits so that the
# deadline holds ("Detached publish").  The store is nbdkit memory
# (cbw-store=), which the test stops with SIGSTOP:
#
#   1. A write into cluster 0 with the store stopped reaches the live
#      disk.  Without cbw-timeout the write completes, with the store
#      still stopped, and status counts the cluster as copied; with
#      cbw-timeout=600 it stays in flight.
#   2. Snapshot reads of cluster 0 sent then (the live disk already
#      holds the new data) return the old data once the store runs
#      again, and so does a read across clusters 0 (COPYING) and 1
#      (NEEDED).  Reading COPYING clusters from the live disk would
#      return the new data here.  A second write to cluster 0 waits
#      for the copy and completes after it; the snapshot still
#      returns the old data.
#   3. Memory stays bounded: with the store stopped, 600 first writes
#      to distinct clusters are sent at once; at most 16 MiB of copies
#      (256 clusters) are held for the store, so no more than 256 of
#      them complete (and more than one connection's 16 threads' worth,
#      so they were detached) until the store runs again; then all do,
#      and the snapshot still holds the old data everywhere.
#   4. The store dies with detached copies waiting for it: with the
#      store stopped and 200 first writes done, it is killed
#      (SIGKILL).  Every write completes without error and is on the
#      live disk, byte for byte; the snapshot is broken ("fleece
#      store was lost"), its reads fail with EIO; nbdkit exits
#      cleanly on SIGTERM.
#   5. pit-torture with a store slowed by nbdkit's delay filter (every
#      store write in flight for 5 ms): concurrent writers and
#      snapshot readers, every read compared with the reference;
#      without cbw-timeout, then with it.
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

# Cases 1 and 2; $1 = detached (no cbw-timeout) or waits.
stopped_store ()
{
    local mode="$1"
    start_live 4M
    nbdsh -u "$live_uri" -c 'h.pwrite(b"\x11" * (4 << 20), 0)'
    start_store memory 4M
    if [ "$mode" = detached ]; then
        start_cbw cbw-store="$store_uri"
    else
        start_cbw cbw-store="$store_uri" cbw-timeout=600
    fi
    export live_uri writer_uri snap_uri store_pid mode status_uri

    timeout 120 python3 - <<'PY'
import os, signal, time
import nbd
from fleecetest import conn, status, wait_until

C = 64 * 1024
store_pid = int(os.environ["store_pid"])
detached = os.environ["mode"] == "detached"
live = conn(os.environ["live_uri"])
sn = conn(os.environ["snap_uri"])
w = conn(os.environ["writer_uri"])
w2 = conn(os.environ["writer_uri"])

os.kill(store_pid, signal.SIGSTOP)
try:
    wcookie = w.aio_pwrite(b"\x22" * 4096, 100)
    # 1. The live disk takes the write while its store write waits.
    def on_live():
        w.poll(0)
        return live.pread(4096, 100) == b"\x22" * 4096
    wait_until(on_live, "the live disk did not get the write while "
               "the store was stopped: no write-behind", tries=1200)
    if detached:
        def completed():
            w.poll(0)
            return w.aio_in_flight() == 0
        wait_until(completed, "without cbw-timeout the write waited "
                   "for its store write", tries=1200)
        assert w.aio_command_completed(wcookie)
        # Counted when the writer is done, not when the store is.
        s = status(os.environ["status_uri"])
        assert s["copied_bytes"] == C and s["preserved_bytes"] == C, s
    else:
        time.sleep(0.5)
        w.poll(0)
        assert w.aio_in_flight() == 1, \
            "with cbw-timeout the write completed before its store write"

    # 2. Snapshot reads of the COPYING cluster, and across it, and a
    #    second write to it, which must wait for the copy.
    b0 = nbd.Buffer(C)
    c0 = sn.aio_pread(b0, 0)
    b01 = nbd.Buffer(C)
    c01 = sn.aio_pread(b01, C // 2)
    w2cookie = w2.aio_pwrite(b"\x33" * 4096, 8192)
    time.sleep(0.5)
    for h in (sn, w2):
        h.poll(0)
    assert sn.aio_in_flight() == 2, \
        "a snapshot read of a cluster being copied did not wait"
    if w2.aio_in_flight() != 1:
        try:
            how = "completed: %r" % w2.aio_command_completed(w2cookie)
        except nbd.Error as ex:
            how = "failed: %s" % ex
        raise AssertionError("a second write to a cluster being copied "
                             "did not wait (%s); status: %r"
                             % (how, status(os.environ["status_uri"])))
finally:
    os.kill(store_pid, signal.SIGCONT)

for h in (w, w2, sn):
    while h.aio_in_flight() > 0:
        h.poll(-1)
if not detached:
    assert w.aio_command_completed(wcookie)
assert w2.aio_command_completed(w2cookie)
assert sn.aio_command_completed(c0) and sn.aio_command_completed(c01)
assert b0.to_bytearray() == b"\x11" * C, \
    "a snapshot read of a cluster being copied returned new data"
assert b01.to_bytearray() == b"\x11" * C, \
    "a snapshot read across a cluster being copied returned new data"
assert live.pread(4096, 100) == b"\x22" * 4096
assert sn.pread(C, 0) == b"\x11" * C
assert w.pread(4096, 100) == b"\x22" * 4096
assert live.pread(4096, 8192) == b"\x33" * 4096
for h in (w, w2, sn, live):
    h.shutdown()
PY

    [ "$(status_field broken)" = false ]
    [ "$(status_field cbw_failures)" = 0 ]
    kill_pid "$cbw_pid"
    kill_pid "$store_pid"
    kill_pid "$live_pid"
}

stopped_store detached
stopped_store waits

# 3. The bound on what detached copies hold.
start_live 64M
nbdsh -u "$live_uri" -c 'h.pwrite(b"\x11" * (64 << 20), 0)'
start_store memory 64M
start_cbw cbw-store="$store_uri"
export live_uri writer_uri snap_uri store_pid
timeout 120 python3 - <<'PY'
import os, signal, time
from fleecetest import conn

C = 64 * 1024
N = 600
store_pid = int(os.environ["store_pid"])
sn = conn(os.environ["snap_uri"])
w = conn(os.environ["writer_uri"])

os.kill(store_pid, signal.SIGSTOP)
try:
    cookies = [w.aio_pwrite(b"\x22" * 4096, i * C + 512) for i in range(N)]
    # Drive the connection (libnbd sends and receives only in poll)
    # until a whole second passes without a completion.
    done, last = 0, time.monotonic()
    while time.monotonic() - last < 1.0:
        w.poll(50)
        now = N - w.aio_in_flight()
        if now != done:
            done, last = now, time.monotonic()
    print("completed with the store stopped:", done)
    assert 16 < done <= 256, done
finally:
    os.kill(store_pid, signal.SIGCONT)
while w.aio_in_flight() > 0:
    w.poll(-1)
for c in cookies:
    assert w.aio_command_completed(c)
assert sn.pread(1 << 20, 0) == b"\x11" * (1 << 20)
for off in range(0, N * C, 8 << 20):
    assert sn.pread(8 << 20, off) == b"\x11" * (8 << 20), off
w.shutdown()
sn.shutdown()
PY
[ "$(status_field broken)" = false ]
[ "$(status_field cbw_failures)" = 0 ]
kill_pid "$cbw_pid"
kill_pid "$store_pid"
kill_pid "$live_pid"

# 4. The store killed with detached copies waiting for it.
start_live 16M
nbdsh -u "$live_uri" -c 'h.pwrite(b"\x11" * (16 << 20), 0)'
start_store memory 16M
start_cbw cbw-store="$store_uri"
timeout 120 python3 - <<'PY'
import os, signal, time
import nbd
from fleecetest import conn, status, wait_until

C = 64 * 1024
N = 200
store_pid = int(os.environ["store_pid"])
live = conn(os.environ["live_uri"])
sn = conn(os.environ["snap_uri"])
w = conn(os.environ["writer_uri"])

os.kill(store_pid, signal.SIGSTOP)
cookies = [w.aio_pwrite(b"\x22" * 4096, i * C + 1024) for i in range(N)]
def all_done():
    w.poll(50)
    return w.aio_in_flight() == 0
wait_until(all_done, "first writes did not complete with the store "
           "stopped (detached)", tries=600)
for c in cookies:
    assert w.aio_command_completed(c)
os.kill(store_pid, signal.SIGKILL)
wait_until(lambda: status(os.environ["status_uri"])["broken"],
           "the snapshot did not break when the store died")
s = status(os.environ["status_uri"])
assert "fleece store was lost" in s["broken_reason"], s
try:
    sn.pread(4096, 0)
    raise AssertionError("a snapshot read succeeded after the store died")
except nbd.Error as ex:
    assert ex.errno == "EIO", ex
for i in range(N):
    assert live.pread(4096, i * C + 1024) == b"\x22" * 4096, i
    assert live.pread(1024, i * C) == b"\x11" * 1024, i
# Writers go on after the break.
w.pwrite(b"\x33" * 4096, N * C)
assert live.pread(4096, N * C) == b"\x33" * 4096
for h in (w, sn, live):
    h.shutdown()
PY
kill "$cbw_pid"
for i in $(seq 1 300); do
    pid_alive "$cbw_pid" || break
    sleep 0.1
done
if pid_alive "$cbw_pid"; then
    echo "$0: nbdkit did not exit after the store died" >&2
    exit 1
fi
kill_pid "$live_pid"

# 5. pit-torture with every store write slowed down.
M=$((1024 * 1024))
disk="$tmp/disk.img"
ref="$tmp/ref.img"
for timeout in "" cbw-timeout=600; do
    rm -f "$disk"
    truncate -s $((16 * M)) "$disk"
    start_live $((16 * M)) "$disk"
    start_store --filter=delay memory $((16 * M)) delay-write=5ms
    start_cbw cbw-store="$store_uri" $timeout
    timeout 300 "$TESTS_BIN/pit-torture" -F -S 11 -c 65536 "$writer_uri"
    cp "$disk" "$ref"
    timeout 300 "$TESTS_BIN/pit-torture" -S 11 -c 65536 -w 4 -r 3 -n 800 \
            "$writer_uri" "$snap_uri" "$ref"
    ! cmp -s "$disk" "$ref" || exit 1
    wait_status state '"none"'
    [ "$(status_field broken)" = false ]
    [ "$(status_field cbw_failures)" = 0 ]
    kill_pid "$cbw_pid"
    kill_pid "$store_pid"
    kill_pid "$live_pid"
done
