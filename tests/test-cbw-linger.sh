#!/usr/bin/env bash
# nbdkit-fleece: cbw-linger lets a backup client reconnect to the same
# point in time.
# SPDX-License-Identifier: BSD-3-Clause
#
# With cbw-linger=600 (far longer than the test; no timing matters):
# the last "snapshot" client goes, the snapshot lingers (state
# "lingering", same generation); writes made meanwhile are still
# copied; a client reconnecting sees the same PIT (not the writes made
# in between), and so does the next one after it.
#
# With cbw-linger=1: after the last client goes, the test waits (by
# polling cbw-status, at most 60 s) until the state is "none"; then
# nothing is preserved, the fleece image holds (almost) no data, and a
# new client gets a new PIT that includes every write.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

img="$tmp/fleece.qcow2"
export tmp

cat > "$tmp/linger.py" <<'PY'
import json, os, sys
import nbd
from fleecetest import conn

C = 64 * 1024
SIZE = 4 << 20
tmp = os.environ["tmp"]

step = sys.argv[1]
w = conn(os.environ["writer_uri"])
if step == "fill":
    for c in range(SIZE // C):
        w.pwrite(bytes([c + 1]) * C, c * C)
elif step == "save":
    open(os.path.join(tmp, sys.argv[2]), "wb").write(w.pread(SIZE, 0))
elif step == "write":
    n = int(sys.argv[2])
    w.pwrite(bytes([0xe0 + n]) * (C + 2), n * 3 * C - 1)
elif step == "check":
    pit = open(os.path.join(tmp, sys.argv[2]), "rb").read()
    sn = conn(os.environ["snap_uri"])
    assert sn.pread(SIZE, 0) == pit, "the snapshot is not " + sys.argv[2]
    sn.shutdown()
w.shutdown()
PY
py () { timeout 120 python3 "$tmp/linger.py" "$@"; }

# Reconnecting within the linger.
start_live 4M
start_cbw cbw-linger=600
export writer_uri snap_uri
py fill
py save pit1
py check pit1              # takes the PIT, then lingers
[ "$(status_field state)" = '"lingering"' ]
g=$(status_field generation)
py write 1
[ "$(status_field copied_bytes)" -gt 0 ]
py check pit1              # the same PIT
[ "$(status_field generation)" -eq "$g" ]
py write 2
hold_snapshot
[ "$(status_field state)" = '"active"' ]
py write 3
py check pit1
release_snapshot
[ "$(status_field state)" = '"lingering"' ]
py check pit1
[ "$(status_field generation)" -eq "$g" ]
kill_pid "$cbw_pid"
kill_pid "$live_pid"

# After the linger.
rm -f "$img"
start_live 4M
start_cbw cbw-linger=1
export writer_uri snap_uri
py fill
py save pit1
[ "$(status_field state)" = '"none"' ]
a0=$(allocated "$img")
g=$(status_field generation)
py check pit1
py write 1
py write 2
py check pit1 || {
    # Only if the linger (1 s) ran out between the two clients: then
    # this was a new PIT, taken after the writes.  Not a failure, but
    # then the generations tell.
    [ "$(status_field generation)" -gt $((g + 1)) ]
}
wait_status state '"none"'
[ "$(status_field preserved_bytes)" -eq 0 ]
a1=$(allocated "$img")
echo "fleece image: $a0 bytes at start, $a1 after the linger"
test "$a1" -le $((a0 + 256 * 1024))
g2=$(status_field generation)
py save pit2
py check pit2              # a new PIT, with writes 1 and 2
[ "$(status_field generation)" -eq $((g2 + 1)) ]
! cmp -s "$tmp/pit1" "$tmp/pit2" || exit 1
