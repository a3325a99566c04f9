#!/usr/bin/env bash
# nbdkit-fleece: the point in time lives as long as a "snapshot"
# context, and no longer.
# SPDX-License-Identifier: BSD-3-Clause
#
# - No snapshot at start: state none, writes are not copied.
# - A client holds "snapshot": the PIT is taken (generation + 1).
# - Between writes, several successive clients connect to "snapshot",
#   two at once at one point, read, and disconnect: all see the same
#   PIT, the generation does not change.
# - When the holder goes (cbw-linger=0), the snapshot ends: state none,
#   nothing preserved, and the qcow2 fleece image holds (almost) no
#   data again (measured with stat while the server runs).
# - The next client gets a new PIT, with every write made before it.
# - nbdkit exits cleanly on SIGTERM and removes the fleece image; with
#   cbw-keep-image=true it keeps it.
# - Without cbw-image (and cbw-store) the image is a new
#   $TMPDIR/nbdkit-cbw-XXXXXX.qcow2, removed at exit.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

img="$tmp/fleece.qcow2"
start_live 8M
start_cbw

[ "$(status_field state)" = '"none"' ]
g0=$(status_field generation)
a0=$(allocated "$img")

export writer_uri snap_uri status_uri img tmp
# step NAME: one step of the python below, each its own connections.
step ()
{
    timeout 120 python3 "$tmp/steps.py" "$1"
}
cat > "$tmp/steps.py" <<'PY'
import json, os, sys
import nbd
from fleecetest import conn, status

K = 1024
C = 64 * K
SIZE = 8 * 1024 * K
tmp = os.environ["tmp"]

def save(name, data):
    open(os.path.join(tmp, name), "wb").write(data)

def load(name):
    return open(os.path.join(tmp, name), "rb").read()

step = sys.argv[1]
w = conn(os.environ["writer_uri"])
if step == "fill":
    for c in range(SIZE // C):
        w.pwrite(bytes([c % 250 + 1]) * C, c * C)
    s = status()
    assert s["copied_bytes"] == 0 and s["preserved_bytes"] == 0, s
    save("pit1", w.pread(SIZE, 0))
elif step.startswith("write"):
    n = int(step[5:])
    # Each write straddles clusters, at a different place.
    w.pwrite(bytes([0xe0 + n]) * (2 * C + 3), n * 5 * C + 7)
elif step.startswith("check"):
    # checkGEN-PIT: a new snapshot client sees file PIT.
    pit = load(step.split("-")[1])
    sn = conn(os.environ["snap_uri"])
    assert sn.pread(SIZE, 0) == pit, "the snapshot is not the PIT"
    sn.shutdown()
elif step == "two":
    pit = load("pit1")
    a = conn(os.environ["snap_uri"])
    b = conn(os.environ["snap_uri"])
    s = status()
    assert s["snapshot_contexts"] >= 3, s
    w.pwrite(b"\xfe" * C, 40 * C - 1)
    assert a.pread(SIZE // 2, 0) == pit[:SIZE // 2]
    assert b.pread(SIZE // 2, SIZE // 2) == pit[SIZE // 2:]
    a.shutdown(); b.shutdown()
elif step == "save2":
    save("pit2", w.pread(SIZE, 0))
w.shutdown()
PY

step fill
hold_snapshot
[ "$(status_field state)" = '"active"' ]
g1=$(status_field generation)
[ "$g1" -eq $((g0 + 1)) ]
for i in 1 2 3 4; do
    step write$i
    step check-pit1
done
step two
step check-pit1
[ "$(status_field generation)" -eq "$g1" ]
[ "$(status_field snapshot_contexts)" -eq 1 ]
a1=$(allocated "$img")
echo "fleece image: $a0 bytes at start, $a1 with the snapshot"
test "$a1" -ge $((a0 + 9 * 64 * 1024))

release_snapshot
wait_status state '"none"'
[ "$(status_field preserved_bytes)" -eq 0 ]
a2=$(allocated "$img")
echo "fleece image after the release: $a2 bytes"
test "$a2" -le $((a0 + 256 * 1024))

# A new PIT.
step save2
step check-pit2
[ "$(status_field generation)" -eq $((g1 + 1)) ]
wait_status state '"none"'

# Clean exit: nbdkit stops on SIGTERM and removes its image.
kill "$cbw_pid"
for i in $(seq 1 100); do
    kill -0 "$cbw_pid" 2>/dev/null || break
    sleep 0.1
done
! kill -0 "$cbw_pid" 2>/dev/null || exit 1
! test -e "$img" || exit 1

# cbw-keep-image=true keeps it.
start_cbw cbw-keep-image=true
hold_snapshot
step write5
release_snapshot
kill_pid "$cbw_pid"
test -f "$img"
qemu-img info "$img" | grep -E 'file format: qcow2'

# The default image, in $TMPDIR.
rm -f "$img"
mkdir "$tmp/tmpdir"
TMPDIR="$tmp/tmpdir" cbw_default_image=1 start_cbw
hold_snapshot
step write6
ls -l "$tmp/tmpdir"
test -f "$tmp"/tmpdir/nbdkit-cbw-??????.qcow2
test "$(allocated "$tmp"/tmpdir/nbdkit-cbw-??????.qcow2)" -gt 65536
release_snapshot
kill_pid "$cbw_pid"
test -z "$(ls "$tmp/tmpdir")"
