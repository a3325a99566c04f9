#!/usr/bin/env bash
# nbdkit-fleece: cbw-on-error=break-snapshot with a failing store.
# SPDX-License-Identifier: BSD-3-Clause
#
# The fleece store is a second nbdkit (memory) behind the error filter:
# its writes and zeroes fail with EIO while $tmp/fail exists.  With a
# snapshot held:
# - while the store works, a write is copied and the snapshot is right;
# - once the store fails, a write needing a copy still succeeds (the
#   live disk gets it), and the snapshot is broken: every read (even of
#   clusters preserved before, or never written) and every extents
#   request fails with EIO; cbw-status says broken, counts the
#   failure;
# - healing the store does not mend the snapshot: it stays broken
#   until it ends;
# - the next snapshot is a new PIT and works.
# The default policy is break-snapshot: run with it given and not.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

start_failing_store
store_uri="nbd+unix:///?socket=$store_sock"

run ()
{
    rm -f "$tmp/fail"
    start_live 4M
    start_cbw cbw-store="$store_uri" "$@"
    export writer_uri snap_uri status_uri fail="$tmp/fail"
    timeout 120 python3 - <<'PY'
import json, os
import nbd
from fleecetest import conn, expect_error, status

K = 1024
C = 64 * K

w = conn(os.environ["writer_uri"])
for c in range(64):
    w.pwrite(bytes([c + 1]) * C, c * C)
pit = w.pread(4 * 1024 * K, 0)

sn = conn(os.environ["snap_uri"], meta=True)
# A working copy-before-write.
w.pwrite(b"\xaa" * 100, 0)
assert sn.pread(C, 0) == pit[:C]
s = status()
assert not s["broken"] and s["cbw_failures"] == 0, s

# The store fails: the writer does not notice.
open(os.environ["fail"], "w").close()
w.pwrite(b"\xbb" * (C + 10), 5 * C - 5)
assert w.pread(C + 10, 5 * C - 5) == b"\xbb" * (C + 10)
w.zero(100, 9 * C)
w.trim(C, 10 * C)
s = status()
print(s)
assert s["broken"] and s["cbw_failures"] >= 1, s
assert s["state"] == "active", s

# The snapshot is broken everywhere.
for off, n in ((0, C), (5 * C, 1), (20 * C + 7, 3), (63 * C, C)):
    expect_error("broken snapshot read at %d" % off, "EIO", sn.pread, n, off)
expect_error("broken snapshot extents", "EIO",
             sn.block_status, C, 30 * C, lambda *a: 0)
sn2 = conn(os.environ["snap_uri"])
expect_error("broken snapshot read, new connection", "EIO",
             sn2.pread, 1, 40 * C)
sn2.shutdown()

# Healing the store does not mend it.
os.unlink(os.environ["fail"])
w.pwrite(b"\xcc" * 10, 30 * C)
expect_error("broken snapshot read after healing", "EIO",
             sn.pread, C, 40 * C)
assert status()["broken"]
sn.shutdown()
PY
    wait_status state '"none"'

    # A new snapshot: a new, working PIT (the live disk as it is now).
    export writer_uri snap_uri status_uri
    timeout 120 python3 - <<'PY'
import json, os
import nbd

C = 64 * 1024
w = nbd.NBD(); w.connect_uri(os.environ["writer_uri"])
now = w.pread(w.get_size(), 0)
sn = nbd.NBD(); sn.connect_uri(os.environ["snap_uri"])
st = nbd.NBD(); st.connect_uri(os.environ["status_uri"])
s = json.loads(st.pread(4096, 0))
print(s)
assert s["state"] == "active" and not s["broken"], s
w.pwrite(b"\xdd" * (3 * C), 7 * C + 1)
assert sn.pread(len(now), 0) == now
assert not json.loads(st.pread(4096, 0))["broken"]
sn.shutdown(); w.shutdown(); st.shutdown()
PY
    wait_status state '"none"'
    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
}

run cbw-on-error=break-snapshot
run
