#!/usr/bin/env bash
# nbdkit-fleece: cbw-ram, the RAM tier in front of the fleece store.
# SPDX-License-Identifier: BSD-3-Clause
#
# 1. The snapshot stays exact, byte for byte, with the tier at one
#    cluster, a few clusters and a few MiB, under concurrent writers,
#    readers and snapshot TRIMs (pit-torture, as test-cbw-pit.sh).
# 2. Clusters released before write-back never reach the qcow2: with
#    a tier larger than the disk, every cluster is copied (into RAM)
#    and then released by a TRIM of the whole snapshot; the fleece
#    image stays at its empty size and cbw-status counts the bytes as
#    dropped, none as written below.  Without cbw-ram the same
#    workload grows the image by the whole disk (the control).
# 3. cbw-timeout bounds a copy that waits for room in a full tier
#    over a slow store (nbdkit --filter=delay as cbw-store): with
#    break-write the writer's request fails with EIO and the snapshot
#    still reads the PIT data; with break-snapshot the write succeeds
#    and the snapshot reads fail with EIO.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires
requires test -x "$TESTS_BIN/pit-torture"
requires nbdkit --filter=delay null --version

M=$((1024 * 1024))

# --- 1. PIT torture at small tiers. ---
ref="$tmp/ref.img"
torture ()
{
    local size="$1" cluster="$2" ram="$3" seed="$4"
    shift 4

    rm -f "$ref" "$tmp"/*.sock
    start_live "$size"
    start_cbw cbw-cluster-size="$cluster" cbw-ram="$ram"
    timeout 300 "$TESTS_BIN/pit-torture" -F -S "$seed" -c "$cluster" \
            "$writer_uri"
    timeout 300 nbdcopy "$live_uri" "$ref"
    timeout 300 "$TESTS_BIN/pit-torture" -S "$seed" -c "$cluster" "$@" \
            "$writer_uri" "$snap_uri" "$ref"
    wait_status state '"none"'
    [ "$(status_field broken)" = false ]
    [ "$(status_field cbw_failures)" = 0 ]
    # The tier is emptied with the snapshot.
    [ "$(status_field ram_held_bytes)" = 0 ]
    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
}

torture $((16*M + 4097)) 65536 64K 11 -w 3 -r 3 -n 800 -T
torture $((16*M))        4096  16K 12 -w 3 -r 3 -n 1500 -m 20000 -T -i
torture $((16*M))        65536 4M  13 -w 4 -r 2 -n 800 -T

# --- 2. Released before write-back: never on disk. ---
fill_and_release ()
{
    # Copy every cluster (overwrite the whole disk under the PIT),
    # then release the whole snapshot.
    nbdsh -u "$writer_uri" -c '
import os
size = h.get_size()
h.pwrite(os.urandom(size), 0)
'
    nbdsh -u "$snap_uri" -c 'h.trim(h.get_size(), 0)'
}

start_live $((8*M))
start_cbw cbw-ram=32M
nbdsh -u "$writer_uri" -c 'import os; h.pwrite(os.urandom(h.get_size()), 0)'
empty=$(allocated "$tmp/fleece.qcow2")
hold_snapshot
fill_and_release
[ "$(status_field copied_bytes)" = $((8*M)) ]
[ "$(status_field ram_dropped_bytes)" = $((8*M)) ]
[ "$(status_field ram_written_below_bytes)" = 0 ]
after=$(allocated "$tmp/fleece.qcow2")
[ "$after" -le "$empty" ]
release_snapshot
kill_pid "$cbw_pid"
kill_pid "$live_pid"

# The control: the same without the tier writes the whole disk.
start_live $((8*M))
start_cbw
nbdsh -u "$writer_uri" -c 'import os; h.pwrite(os.urandom(h.get_size()), 0)'
hold_snapshot
nbdsh -u "$writer_uri" -c 'import os; h.pwrite(os.urandom(h.get_size()), 0)'
wait_allocated_ge "$tmp/fleece.qcow2" $((empty + 8*M))
nbdsh -u "$snap_uri" -c 'h.trim(h.get_size(), 0)'
release_snapshot
kill_pid "$cbw_pid"
kill_pid "$live_pid"

# --- 3. cbw-timeout over a full tier and a slow store. ---
slow ()
{
    local policy="$1"

    rm -f "$tmp"/*.sock
    start_live $((4*M))
    start_nbdkit -P "$tmp/store.pid" -U "$tmp/store.sock" \
                 --filter=delay memory $((4*M)) delay-write=3
    start_cbw cbw-store="nbd+unix:///?socket=$tmp/store.sock" \
              cbw-ram=64K cbw-timeout=0.5 cbw-on-error="$policy"
    nbdsh -u "$writer_uri" -c 'h.pwrite(b"\x11" * h.get_size(), 0)'
    hold_snapshot
    # The first copy fills the one-cluster tier; the second must wait
    # for a write-back that takes 3 s, longer than the timeout.
    nbdsh -u "$writer_uri" -c '
h.pwrite(b"\x22" * 65536, 0)
try:
    h.pwrite(b"\x22" * 65536, 65536 * 8)
    wrote = True
except nbd.Error as ex:
    assert ex.errno == "EIO", ex
    wrote = False
s = nbd.NBD()
s.connect_uri("'"$snap_uri"'")
try:
    data = s.pread(65536, 65536 * 8)
    snap_ok = True
except nbd.Error as ex:
    assert ex.errno == "EIO", ex
    snap_ok = False
if "'"$policy"'" == "break-write":
    assert not wrote, "the write should have failed"
    assert snap_ok and data == b"\x11" * 65536, "snapshot lost the PIT"
    assert h.pread(65536, 65536 * 8) == b"\x11" * 65536
else:
    assert wrote, "the write should have gone through"
    assert not snap_ok, "a broken snapshot must fail reads"
    assert h.pread(65536, 65536 * 8) == b"\x22" * 65536
print("ok", "'"$policy"'")
'
    [ "$(status_field cbw_failures)" -ge 1 ]
    if [ "$policy" = break-write ]; then
        [ "$(status_field broken)" = false ]
    else
        [ "$(status_field broken)" = true ]
    fi
    release_snapshot
    kill_pid "$cbw_pid"
    kill_pid "$(cat "$tmp/store.pid")"
    kill_pid "$live_pid"
}

slow break-write
slow break-snapshot
