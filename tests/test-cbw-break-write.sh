#!/usr/bin/env bash
# nbdkit-fleece: cbw-on-error=break-write with a failing store.
# SPDX-License-Identifier: BSD-3-Clause
#
# The fleece store is a second nbdkit (memory) behind the error filter:
# its writes and zeroes fail with EIO while $tmp/fail exists.  With a
# snapshot held and the store failing:
# - a write, zero or trim that needs a copy fails with EIO, and the
#   live disk is unchanged (not even the part of a write that falls in
#   an already preserved cluster);
# - writes to clusters preserved before the failure, or released by a
#   snapshot TRIM, need no copy and succeed;
# - the snapshot stays valid all along: every read returns the PIT,
#   cbw-status says not broken and counts the failures;
# after the store heals, the same writes succeed, are copied, and the
# snapshot still shows the PIT while the live disk has the new data.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

start_failing_store

start_live 4M
start_cbw cbw-store="nbd+unix:///?socket=$store_sock" cbw-on-error=break-write
export writer_uri snap_uri status_uri fail="$tmp/fail"
timeout 120 python3 - <<'PY'
import json, os
import nbd
from fleecetest import conn, expect_error, status

K = 1024
C = 64 * K
SIZE = 4 * 1024 * K

w = conn(os.environ["writer_uri"])
for c in range(64):
    w.pwrite(bytes([c + 1]) * C, c * C)
pit = w.pread(SIZE, 0)
live = bytearray(pit)

def wr(data, off):
    w.pwrite(data, off)
    live[off:off + len(data)] = data

sn = conn(os.environ["snap_uri"])
sn2 = conn(os.environ["snap_uri"])
# Cluster 0 preserved while the store works; cluster 2 released.
wr(b"\xaa" * 100, 0)
sn.trim(C, 2 * C)

open(os.environ["fail"], "w").close()
expect_error("write needing a copy", "EIO", w.pwrite, b"\xbb" * 10, 5 * C + 3)
expect_error("zero needing a copy", "EIO", w.zero, 2 * C, 7 * C)
expect_error("trim needing a copy", "EIO", w.trim, C, 11 * C)
# Straddling preserved cluster 0 and needed cluster 1: nothing written.
expect_error("straddling write", "EIO", w.pwrite, b"\xbc" * 200, C - 100)
assert w.pread(SIZE, 0) == bytes(live), "a failed request changed the disk"
# No copy needed: these succeed.
wr(b"\xab" * 1000, 100)
wr(b"\xac" * C, 2 * C)
assert w.pread(SIZE, 0) == bytes(live)
s = status()
print(s)
assert not s["broken"] and s["cbw_failures"] >= 4, s
# The snapshot is intact (cluster 2 released).
assert sn.pread(2 * C, 0) == pit[:2 * C]
assert sn2.pread(SIZE - 3 * C, 3 * C) == pit[3 * C:]
expect_error("released cluster", "EINVAL", sn.pread, 1, 2 * C)

# Healed.
os.unlink(os.environ["fail"])
wr(b"\xbb" * 10, 5 * C + 3)
w.zero(2 * C, 7 * C); live[7 * C:9 * C] = bytes(2 * C)
wr(b"\xbc" * 200, C - 100)
w.trim(C, 11 * C)
s = status()
print(s)
assert not s["broken"], s
assert s["state"] == "active", s
assert sn.pread(2 * C, 0) == pit[:2 * C]
assert sn2.pread(SIZE - 3 * C, 3 * C) == pit[3 * C:]
got = w.pread(SIZE, 0)
assert got[:11 * C] == bytes(live[:11 * C]) and \
    got[12 * C:] == bytes(live[12 * C:])
sn.shutdown(); sn2.shutdown(); w.shutdown()
PY
wait_status state '"none"'
