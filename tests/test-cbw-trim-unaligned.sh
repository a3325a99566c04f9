#!/usr/bin/env bash
# nbdkit-fleece: TRIMs on "snapshot" at any alignment are safe and
# release exactly the whole clusters inside.
# SPDX-License-Identifier: BSD-3-Clause
#
# Disks of odd sizes (10M+12345 with 64K and 4K clusters, 3M+1 with
# 1M clusters: the last cluster is short).  With a snapshot held, a
# list of odd TRIMs (1 byte, straddling a boundary, exactly one
# cluster, one byte short of a cluster, past a cluster, reaching the
# end of the disk, just short of it), then random ones, each followed
# by a check of every cluster against a model: a released cluster
# fails reads with EINVAL and shows as hole-without-zero in extents;
# every other cluster reads the point-in-time data.  Released bytes in
# cbw-status must match the model.  Meanwhile the writer overwrites
# the disk: released clusters must not be copied (copied_bytes counts
# only unreleased ones) and the live disk gets every write.
# QEMU's snapshot-access aborts on unaligned TRIMs; nbdkit must still
# be running at the end.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

run ()
{
    local size="$1" cluster="$2" seed="$3"
    start_live "$size"
    start_cbw cbw-cluster-size="$cluster"
    timeout 120 nbdsh -u "$writer_uri" -c '
import random
random.seed('"$seed"')
size = h.get_size()
for off in range(0, size, 1 << 20):
    n = min(1 << 20, size - off)
    h.pwrite(random.randbytes(n), off)
'
    hold_snapshot
    export writer_uri snap_uri status_uri size cluster seed
    timeout 300 python3 - <<'PY'
import json, os, random
import nbd
from fleecetest import conn, extents, status

size = int(os.environ["size"])
C = int(os.environ["cluster"])
random.seed(int(os.environ["seed"]) + 1000)
N = (size + C - 1) // C

w = conn(os.environ["writer_uri"])
sn = conn(os.environ["snap_uri"], meta=True)
pit = sn.pread(size, 0)
released = [False] * N
copied = [False] * N     # clusters the writer has touched (copied if
                         # not released at the time)

def cluster_len(c):
    return min(C, size - c * C)

def inside(off, n):
    first = (off + C - 1) // C
    end = N if off + n == size else (off + n) // C
    return range(first, max(first, end))

def trim(off, n):
    sn.trim(n, off)
    for c in inside(off, n):
        released[c] = True

def extents_flags():
    # per cluster: the set of flags covering it
    per = [set() for _ in range(N)]
    for o, n, f in extents(sn, size):
        for c in range(o // C, (o + n - 1) // C + 1):
            if c < N:
                per[c].add(f & (nbd.STATE_HOLE | nbd.STATE_ZERO))
    return per

def check():
    per = extents_flags()
    for c in range(N):
        off, n = c * C, cluster_len(c)
        if released[c]:
            for o, l in ((off, n), (off + n - 1, 1), (off, 1)):
                try:
                    sn.pread(l, o)
                    raise AssertionError("cluster %d is released, but a "
                                         "read at %d+%d succeeded" % (c, o, l))
                except nbd.Error as ex:
                    assert ex.errno == "EINVAL", (c, ex)
            assert per[c] == {nbd.STATE_HOLE}, (c, per[c])
        else:
            assert sn.pread(n, off) == pit[off:off + n], \
                "cluster %d: wrong data" % c
            assert nbd.STATE_HOLE not in per[c] or \
                nbd.STATE_HOLE | nbd.STATE_ZERO in per[c], (c, per[c])
    s = status()
    rel = sum(cluster_len(c) for c in range(N) if released[c])
    assert s["released_bytes"] == rel, (s, rel)
    cop = sum(cluster_len(c) for c in range(N) if copied[c])
    assert s["copied_bytes"] == cop, (s, cop)

def write(off, n):
    data = random.randbytes(n)
    w.pwrite(data, off)
    assert w.pread(n, off) == data
    for c in range(off // C, (off + n - 1) // C + 1):
        if not released[c]:
            copied[c] = True

last = (N - 1) * C
cases = [
    (C, 1), (C + 5, 1), (2 * C - 1, 2),   # nothing whole inside
    (3 * C, C - 1), (4 * C + 1, C),       # one byte short / unaligned
    (5 * C, C),                           # exactly cluster 5
    (7 * C - 3, 2 * C + 6),               # past: clusters 7, 8
    (12 * C + 1, 3 * C - 2),              # inside: cluster 13 only
    (last - 1, size - last),              # up to 1 byte before the end
    (size - 1, 1),                        # the last byte: nothing
    (last - C // 2, size - last + C // 2),  # to the end: last cluster
    (last - C - 7, 10),                   # straddling before the last
]
for off, n in cases:
    if off < 0 or off + n > size or n < 1:
        continue
    print("trim", off, n, "releases", list(inside(off, n)))
    trim(off, n)
    check()
assert released[N - 1], "the short last cluster was not released"

# Writer overwrites, then random trims and writes.
for i in range(16):
    off = random.randrange(size)
    n = random.randint(1, min(3 * C, size - off))
    if i % 2:
        write(off, n)
    else:
        trim(off, n)
    check()
print(status())
sn.shutdown()
w.shutdown()
PY
    release_snapshot
    kill -0 "$cbw_pid"
    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
}

run $((10 * 1024 * 1024 + 12345)) 65536 1
run $((10 * 1024 * 1024 + 12345)) 4096 2
run $((3 * 1024 * 1024 + 1)) 1048576 3
