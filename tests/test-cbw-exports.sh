#!/usr/bin/env bash
# nbdkit-fleece: what each export of the cbw filter allows.
# SPDX-License-Identifier: BSD-3-Clause
#
# Over a 1M memory disk with 64K clusters:
# - the three exports are listed; any other name is refused at connect;
# - "cbw-status" is read-only, 4096 bytes of one JSON line padded with
#   spaces and ending in a newline;
# - with no snapshot, writes are not copied and fast zero works;
# - "snapshot" has the live disk's size, advertises multi-conn and
#   trim; its writes and zeroes fail with EPERM (EROFS on the wire),
#   flush succeeds;
# - a fast zero on "" that needs a copy-before-write fails with ENOTSUP
#   and changes nothing; once the cluster is preserved it succeeds;
# - extents of "snapshot": data where the PIT had data (whether the
#   cluster is still on the live disk or preserved in the store),
#   hole+zero where the PIT had zeroes, hole without zero where
#   released by TRIM.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires
requires_program nbdinfo

start_live 1M
start_cbw

# Listing, and unknown names.
timeout 60 nbdinfo --list "$writer_uri" > "$tmp/list"
cat "$tmp/list"
grep 'export="snapshot"' "$tmp/list"
grep 'export="cbw-status"' "$tmp/list"
for name in nosuch snapshot2 SNAPSHOT cbw; do
    if timeout 60 nbdsh -u "nbd+unix:///$name?socket=$sock" -c 'pass' \
               2>"$tmp/err"; then
        echo "$0: export \"$name\" was not refused"
        exit 1
    fi
    cat "$tmp/err"
done

export writer_uri snap_uri status_uri
timeout 120 python3 - <<'PY'
import errno, json, os
import nbd
from fleecetest import conn, expect_error, extents

K = 1024
C = 64 * K

def status():
    h = conn(os.environ["status_uri"], meta=True)
    assert h.get_size() == 4096
    assert h.is_read_only()
    buf = h.pread(4096, 0)
    expect_error("status write", "EPERM", h.pwrite, b"x", 0)
    h.shutdown()
    text = buf.decode()
    assert text.endswith("\n")
    assert "\n" not in text[:-1]
    # One JSON object, then only spaces.
    obj, end = json.JSONDecoder().raw_decode(text)
    assert text[end:-1] == " " * (len(text) - 1 - end), repr(text[end:])
    return obj

s = status()
print(s)
assert s["state"] == "none"
assert s["cluster_size"] == C
assert s["disk_size"] == 1024 * K

w = conn(os.environ["writer_uri"], meta=True)
assert w.get_size() == 1024 * K
assert w.can_fast_zero()
# PIT contents: clusters 0, 2, 3, 6, 7 data; the rest zero.
for c in (0, 2, 3, 6, 7):
    w.pwrite(bytes([c + 1]) * C, c * C)
# No snapshot: nothing is copied, fast zero works.
w.pwrite(b"\x01" * 100, 100)
w.zero(C, 9 * C, nbd.CMD_FLAG_FAST_ZERO)
s = status()
assert s["copied_bytes"] == 0 and s["preserved_bytes"] == 0, s

pit = bytearray(w.pread(1024 * K, 0))

sn = conn(os.environ["snap_uri"], meta=True)
assert sn.get_size() == 1024 * K
assert sn.can_multi_conn()
assert sn.can_trim()
assert not sn.is_read_only()
s = status()
assert s["state"] == "active" and s["snapshot_contexts"] == 1, s
expect_error("snapshot write", "EPERM", sn.pwrite, b"x" * 10, 5)
expect_error("snapshot zero", "EPERM", sn.zero, 10, 5)
if sn.can_flush():
    sn.flush()
assert sn.pread(1024 * K, 0) == pit

# Fast zero needing a copy: ENOTSUP, nothing changed.
expect_error("fast zero on a needed cluster", "ENOTSUP",
             w.zero, 100, 2 * C + 10, nbd.CMD_FLAG_FAST_ZERO)
assert w.pread(C, 2 * C) == pit[2 * C:3 * C]
s = status()
assert s["copied_bytes"] == 0, s
# A write preserves cluster 2; then fast zero there succeeds.
w.pwrite(b"\xee" * 10, 2 * C + 1000)
s = status()
assert s["copied_bytes"] == C and s["preserved_bytes"] == C, s
w.zero(100, 2 * C + 10, nbd.CMD_FLAG_FAST_ZERO)
assert w.pread(100, 2 * C + 10) == bytes(100)
# Fast zero straddling a preserved and a needed cluster: ENOTSUP.
expect_error("fast zero straddling", "ENOTSUP",
             w.zero, 200, 3 * C - 100, nbd.CMD_FLAG_FAST_ZERO)
assert w.pread(C, 3 * C) == pit[3 * C:4 * C]

# Writer zeroes cluster 6 (preserved: data in the store), trims 7
# (preserved), writes into zero cluster 4 (preserved: zero).
w.zero(C, 6 * C)
w.trim(C, 7 * C)
w.pwrite(b"\x55" * 7, 4 * C + 3)
# Snapshot releases cluster 3 (a range a bit larger than it).
sn.trim(C + 2, 3 * C - 1)
expect_error("read of released cluster 3", "EINVAL", sn.pread, 1, 3 * C)
expect_error("read straddling into cluster 3", "EINVAL", sn.pread, 2,
             3 * C - 1)
assert sn.pread(C, 2 * C) == pit[2 * C:3 * C]
assert sn.pread(C, 4 * C) == pit[4 * C:5 * C]
assert sn.pread(2 * C, 6 * C) == pit[6 * C:8 * C]

# Extents, per 64K cluster.
HOLE, ZERO = nbd.STATE_HOLE, nbd.STATE_ZERO
flags = {}
for o, length, f in extents(sn, 1024 * K):
    for b in range(o, o + length, 4 * K):
        flags[b] = f & (HOLE | ZERO)
def cluster_flags(c):
    fs = set(flags[b] for b in range(c * C, (c + 1) * C, 4 * K))
    assert len(fs) == 1, (c, fs)
    return fs.pop()
got = [cluster_flags(c) for c in range(16)]
print("snapshot extents per cluster:", got)
expect = [0, HOLE | ZERO, 0, HOLE, HOLE | ZERO, HOLE | ZERO, 0, 0] + \
         [HOLE | ZERO] * 8
# Cluster 4 (zero at the PIT, preserved) may be reported as data or
# as zero; anything but "released".
assert got[4] in (0, HOLE | ZERO, ZERO), got
got[4] = expect[4]
assert got == expect, (got, expect)

sn.shutdown()
w.shutdown()
PY
wait_status state '"none"'
