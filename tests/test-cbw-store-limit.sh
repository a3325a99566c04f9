#!/usr/bin/env bash
# nbdkit-fleece: cbw-store-limit bounds the fleece store.
# SPDX-License-Identifier: BSD-3-Clause
#
# A 4M disk, clusters of 64K, cbw-store-limit=256K (four clusters),
# under both cbw-on-error policies, with and without the RAM tier.
# With a snapshot held:
# - preserving four clusters fits; passing 80 % of the limit is logged,
#   once (the next snapshot stays under it);
# - the copy of a fifth cluster would pass the limit: the writer sees
#   no error (break-write included) and its data is on the disk; the
#   snapshot breaks: cbw-status says why, snapshot reads fail with
#   EIO; the status shows use, peak and limit;
# - later writes see no error either;
# the next snapshot starts from an empty store and is exact against
# the disk read at its point in time.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

run ()
{
    local policy="$1" i
    shift

    start_live 4M
    # As start_cbw, but in the foreground (in the background of the
    # test) so that its log can be read: a daemonised nbdkit drops
    # its stderr.
    sock="$tmp/cbw.sock"
    writer_uri="nbd+unix:///?socket=$sock"
    snap_uri="nbd+unix:///snapshot?socket=$sock"
    status_uri="nbd+unix:///cbw-status?socket=$sock"
    rm -f "$sock" "$tmp/cbw.pid" "$tmp/log"
    nbdkit -f -P "$tmp/cbw.pid" -U "$sock" \
           --filter="$CBW_FILTER" "$FLEECE_PLUGIN" live="$live_uri" \
           cbw-image="$tmp/fleece.qcow2" cbw-store-limit=256K \
           cbw-on-error="$policy" "$@" 2>"$tmp/log" &
    cbw_pid=$!
    track_pid "$cbw_pid"
    for i in $(seq 1 600); do
        [ -s "$tmp/cbw.pid" ] && break
        kill -0 "$cbw_pid"
        sleep 0.1
    done

    export writer_uri snap_uri status_uri
    timeout 120 python3 - <<'PY'
import os
from fleecetest import conn, expect_error, fill_random, read_all, status

C = 65536
w = conn(os.environ["writer_uri"])
pit = fill_random(w, 3)
sn = conn(os.environ["snap_uri"])
for c in range(4):
    w.pwrite(b"\x44" * 100, c * C + 7)
s = status()
print(s)
assert not s["broken"], s
assert s["store_use_bytes"] == 4 * C and s["store_limit_bytes"] == 4 * C, s
assert sn.pread(4 * C, 0) == pit[:4 * C]
# The fifth copy would pass the limit: the writer does not notice.
w.pwrite(b"\x55" * C, 9 * C)
assert w.pread(C, 9 * C) == b"\x55" * C
for c in range(10, 20):
    w.pwrite(b"\x66" * C, c * C)
s = status()
print(s)
assert s["broken"], s
assert s["broken_reason"] == "the fleece store reached cbw-store-limit", s
assert s["store_peak_bytes"] == 4 * C, s
for off in (0, 30 * C):
    expect_error("read of a broken snapshot", "EIO", sn.pread, C, off)
sn.shutdown()

# The next snapshot: an empty store, exact.
pit = read_all(w)
sn = conn(os.environ["snap_uri"])
s = status()
assert not s["broken"] and s["store_use_bytes"] == 0, s
for c in (0, 40, 63):          # 75 %: not logged
    w.pwrite(bytes([c]) * C, c * C)
assert read_all(sn) == pit
s = status()
assert not s["broken"] and s["store_use_bytes"] == 3 * C, s
sn.shutdown(); w.shutdown()
PY
    wait_status state '"none"'
    [ "$(grep -c 'over 80% of cbw-store-limit' "$tmp/log")" = 1 ]
    grep 'past cbw-store-limit' "$tmp/log"
    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
}

run break-snapshot
run break-write
run break-write cbw-ram=1M
