#!/usr/bin/env bash
# nbdkit-fleece: TRIM on "snapshot" frees space in the fleece image.
# SPDX-License-Identifier: BSD-3-Clause
#
# A 64M live disk full of random data, 64K clusters, a qcow2 fleece
# image.  With a snapshot held:
# 1. the writer overwrites the first 32M: 32M are preserved and the
#    qcow2 file (measured with stat while the server runs) grows by at
#    least that;
# 2. TRIM of the first 16M on "snapshot": the file shrinks by about
#    16M, reads there fail with EINVAL, cbw-status counts the release;
# 3. the writer overwrites the released 16M again: nothing is copied
#    and the file does not grow; the live disk has the new data;
# 4. the writer overwrites 48M..56M (still needed): copied, the file
#    grows again, and the snapshot there still shows the PIT;
# 5. after the release of the snapshot the file holds (almost) no
#    data.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

img="$tmp/fleece.qcow2"
M=$((1024 * 1024))
start_live 64M
start_cbw
timeout 120 nbdsh -u "$writer_uri" -c '
import os
for off in range(0, 64 << 20, 1 << 20):
    h.pwrite(os.urandom(1 << 20), off)
'
timeout 120 nbdcopy "$live_uri" "$tmp/ref.img"

test -f "$img"
a0=$(allocated "$img")
hold_snapshot

export writer_uri snap_uri img
export ref="$tmp/ref.img"
timeout 120 python3 - <<'PY'
import json, os
import nbd
from fleecetest import conn, status as cbw_status, wait_until

M = 1 << 20
img = os.environ["img"]
ref = open(os.environ["ref"], "rb").read()

def alloc():
    st = os.stat(img)
    return st.st_blocks * 512

def alloc_at_least(n):
    """The image once it holds N bytes: a write returns before its
    copy's store write lands (copy.c, "Detached publish")."""
    wait_until(lambda: alloc() >= n,
               "the fleece image did not grow to %d bytes" % n)
    return alloc()

def status():
    return cbw_status(os.environ["writer_uri"].replace(":///?",
                                                       ":///cbw-status?"))

w = conn(os.environ["writer_uri"])
sn = conn(os.environ["snap_uri"])

a1 = alloc()
print("allocated at the PIT:", a1)

# 1. Overwrite the first 32M.
new = os.urandom(32 * M)
for off in range(0, 32 * M, M):
    w.pwrite(new[off:off + M], off)
s = status()
print(s)
assert s["preserved_bytes"] == 32 * M and s["copied_bytes"] == 32 * M, s
a2 = alloc_at_least(a1 + 32 * M)
print("allocated after 32M of copy-before-write:", a2)
assert a2 >= a1 + 32 * M, (a1, a2)
assert sn.pread(M, 5 * M) == ref[5 * M:6 * M]

# 2. Release the first 16M.
sn.trim(16 * M, 0)
a3 = alloc()
print("allocated after the 16M TRIM:", a3)
assert a3 <= a2 - 15 * M, (a2, a3)
s = status()
print(s)
assert s["released_bytes"] == 16 * M, s
assert s["preserved_bytes"] == 16 * M, s
for off in (0, 1, 8 * M + 12345, 16 * M - 1):
    try:
        sn.pread(1, off)
        raise AssertionError("read of a released cluster at %d succeeded" % off)
    except nbd.Error as ex:
        assert ex.errno == "EINVAL", ex
assert sn.pread(M, 16 * M) == ref[16 * M:17 * M]

# 3. Overwrite the released range again: not copied, no growth.
new2 = os.urandom(16 * M)
for off in range(0, 16 * M, M):
    w.pwrite(new2[off:off + M], off)
s = status()
assert s["copied_bytes"] == 32 * M, s
a4 = alloc()
print("allocated after writing over released clusters:", a4)
assert a4 <= a3 + M, (a3, a4)
assert w.pread(16 * M, 0) == new2

# 4. Overwrite 48M..56M: still needed, so copied.
for off in range(48 * M, 56 * M, M):
    w.pwrite(os.urandom(M), off)
s = status()
assert s["copied_bytes"] == 40 * M, s
a5 = alloc_at_least(a4 + 8 * M - M)
print("allocated after 8M more copy-before-write:", a5)
assert a5 >= a4 + 8 * M - M, (a4, a5)
assert sn.pread(8 * M, 48 * M) == ref[48 * M:56 * M]
assert sn.pread(48 * M, 16 * M) == ref[16 * M:64 * M]

sn.shutdown()
w.shutdown()
PY

release_snapshot
wait_status state '"none"'
a6=$(allocated "$img")
echo "allocated after the release: $a6 (before the PIT: $a0)"
test "$a6" -le $((a0 + 2 * M))
[ "$(status_field preserved_bytes)" = 0 ]
