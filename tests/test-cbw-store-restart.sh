#!/usr/bin/env bash
# nbdkit-fleece: the fleece store comes back after its server dies.
# SPDX-License-Identifier: BSD-3-Clause
#
# With a snapshot held and clusters preserved, the store's server is
# killed by PID: the qemu-nbd child of cbw (found among the children
# of the nbdkit process), or the nbdkit memory server behind
# cbw-store=URI.  Under both cbw-on-error policies, with and without
# the RAM tier:
# - the snapshot breaks: cbw-status says so with the reason, the store
#   link is "down", every snapshot read fails with EIO;
# - writes go on, even those that would need a copy, and keep going
#   (break-write included: the preserved data is gone, there is
#   nothing left to keep by failing them);
# - when the snapshot ends the RAM tier holds nothing, and the store
#   is made again (a new qemu-nbd child; for cbw-store, a server
#   restarted on the same socket); the link is "up", one restart;
# - the next snapshot is exact, byte for byte, against the disk read
#   at its point in time, while the writer overwrites it;
# - a qemu-nbd child killed between snapshots is replaced before the
#   next point in time, which then preserves data.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

# The qemu-nbd child of nbdkit process $1, or nothing.
qemu_nbd_child ()
{
    local p
    for p in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = qemu-nbd ]; then
            echo "$p"
        fi
    done
}

# The store server for cbw-store runs on $tmp/store.sock.
start_store ()
{
    rm -f "$tmp/store.sock"
    start_nbdkit -P "$tmp/store.pid" -U "$tmp/store.sock" memory 4M
    store_pid="$pid"
}

# run KIND POLICY [ARGS...]: KIND is qcow2 or uri.
run ()
{
    local kind="$1" policy="$2" child
    shift 2

    start_live 4M
    if [ "$kind" = uri ]; then
        start_store
        start_cbw cbw-store="nbd+unix:///?socket=$tmp/store.sock" \
                  cbw-on-error="$policy" "$@"
    else
        start_cbw cbw-on-error="$policy" "$@"
    fi
    nbdsh -u "$writer_uri" -c 'h.pwrite(b"\x11" * h.get_size(), 0)'
    hold_snapshot
    # Preserve clusters 0-3.
    nbdsh -u "$writer_uri" -c 'h.pwrite(b"\x22" * (4 * 65536), 0)'
    [ "$(status_field preserved_bytes)" = $((4 * 65536)) ]

    if [ "$kind" = uri ]; then
        kill -9 "$store_pid"
        old=
    else
        child="$(qemu_nbd_child "$cbw_pid")"
        [ -n "$child" ]
        kill -9 "$child"
        old="$child"
    fi
    wait_status store_link '"down"'
    cbw_status
    [ "$(status_field broken)" = true ]
    status_field broken_reason | grep -q 'fleece store was lost'
    status_field store_last_error | grep -q 'lost'

    export writer_uri snap_uri
    timeout 60 python3 - <<'PY'
import os
from fleecetest import conn, expect_error

C = 65536
sn = conn(os.environ["snap_uri"])
for off in (0, 8 * C):          # preserved, and still on the live disk
    expect_error("snapshot read at %d" % off, "EIO", sn.pread, C, off)
w = conn(os.environ["writer_uri"])
for i in range(3):              # copies would be needed: no error
    w.pwrite(bytes([0x33 + i]) * C, (8 + i) * C)
    w.zero(C, (20 + i) * C)
    w.trim(C, (30 + i) * C)
assert w.pread(C, 10 * C) == b"\x35" * C
sn.shutdown(); w.shutdown()
PY
    release_snapshot
    wait_status state '"none"'
    # The tier dropped what it held for the lost store.
    if [ "$(status_field ram_limit)" != 0 ]; then
        [ "$(status_field ram_held_bytes)" = 0 ]
    fi

    if [ "$kind" = uri ]; then
        # Nothing to reconnect to yet: the next snapshot starts broken.
        hold_snapshot
        [ "$(status_field broken)" = true ]
        status_field broken_reason | grep -q 'no fleece store'
        [ "$(status_field store_link)" = '"down"' ]
        release_snapshot
        wait_status state '"none"'
        start_store
    fi

    # The next snapshot: exact against the disk at its point in time.
    export snap_uri writer_uri status_uri
    timeout 120 python3 - <<'PY'
import os, random
from fleecetest import conn, fill_random, read_all, status

C = 65536
w = conn(os.environ["writer_uri"])
size = w.get_size()
ref = fill_random(w, 7)
sn = conn(os.environ["snap_uri"])
s = status()
assert s["store_link"] == "up" and not s["broken"], s
rng = random.Random(8)
for i in range(40):
    off = rng.randrange(size - 3 * C)
    n = rng.randrange(1, 3 * C)
    w.pwrite(bytes([rng.getrandbits(8)]) * n, off)
assert read_all(sn) == ref, "the snapshot after the restart is not the PIT"
s = status()
print(s)
assert not s["broken"] and s["preserved_bytes"] > 0, s
assert s["store_restarts"] == 1, s
sn.shutdown(); w.shutdown()
PY
    wait_status state '"none"'
    if [ "$kind" = qcow2 ]; then
        child="$(qemu_nbd_child "$cbw_pid")"
        [ -n "$child" ] && [ "$child" != "$old" ]
        # A store lost between snapshots is replaced before the next
        # point in time, which then works.
        kill -9 "$child"
        wait_status store_link '"down"'
        [ "$(status_field broken)" = false ]
        pit="$(nbdsh -u "$writer_uri" -c 'print(h.pread(65536, 0).hex())')"
        hold_snapshot
        nbdsh -u "$writer_uri" -c 'h.pwrite(b"\x77" * 65536, 0)'
        [ "$(status_field broken)" = false ]
        [ "$(status_field store_restarts)" = 2 ]
        [ "$(status_field preserved_bytes)" = 65536 ]
        [ "$(nbdsh -u "$snap_uri" -c 'print(h.pread(65536, 0).hex())')" = \
          "$pit" ]
        release_snapshot
        wait_status state '"none"'
    fi
    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
    [ "$kind" = qcow2 ] || kill_pid "$store_pid"
    # The images, old and new, are gone.
    [ ! -e "$tmp/fleece.qcow2" ]
}

run qcow2 break-snapshot
run qcow2 break-write
run qcow2 break-write cbw-ram=1M
run qcow2 break-snapshot cbw-ram=1M
run uri break-write
run uri break-snapshot cbw-ram=1M
