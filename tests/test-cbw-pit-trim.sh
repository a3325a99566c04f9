#!/usr/bin/env bash
# nbdkit-fleece: the point in time under concurrent writers, readers
# and snapshot TRIMs.
# SPDX-License-Identifier: BSD-3-Clause
#
# As test-cbw-pit.sh, but pit-torture -T makes the readers TRIM the
# snapshot too: each reader now and then trims a range it has just
# verified (any alignment: odd lengths, straddling clusters, reaching
# the end of a disk of odd size).  The whole clusters inside are
# released: pit-torture then requires every read touching them to fail
# with EINVAL, every read of untouched clusters to return the PIT data,
# and the final pass over the whole snapshot to do both, cluster by
# cluster.  Meanwhile the writers keep writing over released and
# unreleased clusters alike; the live disk must end up with exactly
# their data.  While the PIT is still held, cbw-status must count
# released bytes.
#
# Finally a sanity check of the checker itself: the fleece plugin
# alone (no cbw filter) serves the live disk under the name
# "snapshot", so pit-torture must find a mismatch there.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires
requires test -x "$TESTS_BIN/pit-torture"

disk="$tmp/disk.img"
ref="$tmp/ref.img"

# run SIZE CLUSTER SEED PIT-TORTURE-ARGS...
run ()
{
    local size="$1" cluster="$2" seed="$3"
    shift 3

    rm -f "$disk" "$ref" "$tmp"/*.sock
    truncate -s "$size" "$disk"
    start_live "$size" "$disk"
    start_cbw cbw-cluster-size="$cluster"

    timeout 300 "$TESTS_BIN/pit-torture" -F -S "$seed" -c "$cluster" \
            "$writer_uri"
    cp "$disk" "$ref"

    timeout 300 "$TESTS_BIN/pit-torture" -T -S "$seed" -c "$cluster" "$@" \
            -x "nbdsh -u '$status_uri' -c '
import json
s = json.loads(h.pread(4096, 0))
print(s)
assert s[\"state\"] == \"active\"
assert s[\"released_bytes\"] > 0
assert not s[\"broken\"]
'" \
            "$writer_uri" "$snap_uri" "$ref" | tee "$tmp/out"
    # Some reads did fail with EINVAL after a trim.
    grep -E ' [1-9][0-9]* EINVAL' "$tmp/out"

    wait_status state '"none"'
    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
}

M=$((1024 * 1024))

run $((32*M))          65536   11 -w 3 -r 3 -n 1500
run $((32*M))          65536   12 -w 3 -r 3 -n 1500 -i
run $((16*M))          4096    13 -w 3 -r 4 -n 2000 -m 20000 -i
run $((32*M))          1048576 14 -w 3 -r 3 -n 300 -m 3000000
run $((16*M + 12345))  65536   15 -w 2 -r 4 -n 1500 -i
run $((10*M + 4097))   4096    16 -w 3 -r 3 -n 1500 -m 15000

# The checker must notice a "snapshot" that is not one.
rm -f "$disk" "$ref" "$tmp"/*.sock
truncate -s $((8*M)) "$disk"
start_live $((8*M)) "$disk"
start_nbdkit -P "$tmp/plain.pid" -U "$tmp/plain.sock" \
             "$FLEECE_PLUGIN" live="$live_uri"
plain_uri="nbd+unix:///?socket=$tmp/plain.sock"
"$TESTS_BIN/pit-torture" -F -S 17 "$plain_uri"
cp "$disk" "$ref"
if timeout 300 "$TESTS_BIN/pit-torture" -S 17 -w 2 -r 2 -n 300 \
           "$plain_uri" "nbd+unix:///snapshot?socket=$tmp/plain.sock" \
           "$ref" 2>"$tmp/err"; then
    echo "$0: pit-torture did not notice that there is no snapshot"
    exit 1
fi
cat "$tmp/err"
grep 'SNAPSHOT MISMATCH' "$tmp/err"
