#!/usr/bin/env bash
# nbdkit-fleece: the snapshot export's scope: reads outside it fail
# with EINVAL, TRIM releases whole granules (here and in cbw), extents
# show out-of-scope ranges as hole-not-zero, read-once releases what
# was read whole (including the short last granule), a full snapshot
# without a control socket, and a granularity that cbw cannot honour.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

requires_program nbdsh
requires_program nbdinfo
requires_program qemu-nbd

bd_dir scope

# 4M + 12K: the last 64K granule is short.
size=$((4 * 1024 * 1024 + 12288))
truncate -s $size "$d/live.img"
dd if=/dev/urandom of="$d/live.img" bs=1M count=4 conv=notrunc status=none
start_live_disk "$d/live.sock" "$d/live.pid" $size "$d/live.img"
live="nbd+unix:///?socket=$d/live.sock"
snap="nbd+unix:///snapshot?socket=$d/sock"

stack ()
{
    [ -s "$d/bd.pid" ] && kill_pid "$(cat "$d/bd.pid")"
    rm -f "$d/bd.pid" "$d/sock" "$d/fleece.qcow2"
    start_nbdkit -P "$d/bd.pid" -U "$d/sock" \
        --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
        "$FLEECE_PLUGIN" live="$live" cbw-image="$d/fleece.qcow2" "$@"
}

# 1. No control socket: a client gets a full snapshot; TRIM releases
# whole granules only.
stack
nbdcopy "$snap" "$d/copy.img"
cmp "$d/copy.img" "$d/live.img"
python3 - "$snap" "$d/live.img" <<'PYEOF'
import nbd, sys
from fleecetest import expect_error
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
live = open(sys.argv[2], "rb").read()

def einval(n, off):
    expect_error("read at %d" % off, "EINVAL", h.pread, n, off)

# Releases [64K, 192K) only: the partial granules at both ends stay.
h.trim(200000, 30000)
assert h.pread(4096, 30000 + 200000 - 4096 - 1) == \
    live[30000 + 200000 - 4096 - 1:30000 + 200000 - 1]
assert h.pread(1000, 30000) == live[30000:31000]
einval(1, 65536)
einval(4096, 65536 + 65536)
einval(70000, 0)
assert h.pread(65536, 196608) == live[196608:262144]
# Writing to the snapshot is refused.
try:
    h.pwrite(b"x", 0)
    assert False
except nbd.Error as ex:
    assert ex.errno == "EPERM", ex
# The released range is a hole that is not known to be zero.
ext = []
h.block_status(len(live), 0,
               lambda ctx, off, e, err: ext.extend(e) or 0)
print(ext)
assert ext[0:4] == [65536, 0, 131072, nbd.STATE_HOLE], ext
h.shutdown()
PYEOF

# 2. Incremental scope: extents and reads.
mkdir -p "$d/bm"
stack bitmap-dir="$d/bm" bitmap-control="$d/ctl"
wait_for "$d/ctl"
ctl_ok "$d/ctl" "checkpoint c1"
nbdsh -u "nbd+unix:///?socket=$d/sock" \
    -c 'h.pwrite(b"N" * 4096, 1048576 + 4096)' \
    -c 'h.zero(65536, 2097152)'
ctl_ok "$d/ctl" "snapshot since=c1"
test "$(json_get scope_bytes)" -eq 131072
nbdinfo --map "$snap" > "$d/map"
cat "$d/map"
cat > "$d/expected" <<EOF2
         0     1048576    1  hole
   1048576       65536    0  data
   1114112      983040    1  hole
   2097152       65536    3  hole,zero
   2162688     2043904    1  hole
EOF2
diff -u "$d/expected" "$d/map"
nbdsh -u "$snap" -c '
import nbd
assert h.pread(4096, 1048576 + 4096) == b"N" * 4096
assert h.pread(65536, 2097152) == bytes(65536)
for off in (0, 1048576 - 1, 1114112, 2097152 + 65536, '$size' - 1):
    try:
        h.pread(1, off)
        assert False, off
    except nbd.Error as ex:
        assert ex.errno == "EINVAL", ex
'
ctl_ok "$d/ctl" "release"

# 3. Read-once: each granule read whole is released, here and in cbw.
stack bitmap-control="$d/ctl" bitmap-discard-on-read=true
wait_for "$d/ctl"
ctl_ok "$d/ctl" "snapshot"
nbdsh -u "$snap" -c '
import nbd
from fleecetest import expect_error
live = open("'"$d/live.img"'", "rb").read()
size = '$size'
def einval(n, off):
    expect_error("read at %d" % off, "EINVAL", h.pread, n, off)
assert h.pread(65536, 0) == live[0:65536]
einval(65536, 0)
# Partial granules are not released.
assert h.pread(4096, 131072) == live[131072:135168]
assert h.pread(4096, 131072) == live[131072:135168]
# The short last granule, read to the end of the disk.
assert h.pread(12288, size - 12288) == live[size - 12288:]
einval(1, size - 1)
'
ctl_ok "$d/ctl" "status"
test "$(json_get released_bytes)" -eq $((65536 + 12288))
# The full scope counts the short last granule by its real size.
test "$(json_get scope_bytes)" -eq $size
test "$(json_get remaining_bytes)" -eq $((size - 65536 - 12288))
python3 -c 'import json, sys
r = json.loads(sys.argv[1])
assert r["cbw"]["released_bytes"] == 65536 + 12288, r' "$reply"
ctl_ok "$d/ctl" "release"

# 4. A granularity finer than cbw's clusters is refused at snapshot.
stack bitmap-control="$d/ctl" bitmap-granularity=32K
wait_for "$d/ctl"
ctl_err "$d/ctl" "snapshot"
case "$reply" in
    *"not a multiple of cbw-cluster-size=65536"*) ;;
    *) exit 1 ;;
esac
