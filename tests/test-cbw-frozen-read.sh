#!/usr/bin/env bash
# nbdkit-fleece: a writer waits for snapshot reads of the old data.
# SPDX-License-Identifier: BSD-3-Clause
#
# A snapshot read of a cluster still on the live disk must not see a
# writer's new data: the writer, after its copy-before-write, waits
# until such reads are done (QEMU's "frozen reads").
#
# The live disk is a file served by nbdkit's eval plugin, in which a
# read of exactly 4097 bytes (only the test's snapshot read has that
# size) says it started and then waits until a writer's request has
# returned to its client (or 5 s pass) before reading the file.
#
#   snapshot client R    cbw                     writer client(s) W
#   read 4097 @ C+1 ---> live read, parked
#                        <--------------------- write into cluster 1
#                        copy cluster 1 (a different read: not parked)
#                        W must now wait for R
#   (5 s bound ends the park: R reads the file)
#   R returns the old data; only then W returns
#
# If the writer did not wait, W would return first, R would then read
# the new data, and the test fails (no timing decides it: a correct
# filter cannot let W return before R).  Two cases: one writer; and a
# second writer into the same cluster after the first one's copy (it
# copies nothing itself, and must wait just the same).

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires
requires nbdkit eval --version
requires dd --version

export disk="$tmp/disk.img" dir="$tmp"

run ()
{
    local writers="$1"
    rm -f "$tmp/w-done"
    start_parking_live "$tmp/w-done" 50
    start_cbw
    export writer_uri snap_uri writers
    timeout 120 python3 - <<'PY'
import os, threading, time
import nbd
from fleecetest import conn, wait_until

C = 64 * 1024
d = os.environ["dir"]
nwriters = int(os.environ["writers"])

sn = conn(os.environ["snap_uri"])
ws = [conn(os.environ["writer_uri"]) for _ in range(nwriters)]

buf = nbd.Buffer(4097)
cookie = sn.aio_pread(buf, C + 1)
def read_started():
    sn.poll(0)
    return os.path.exists(os.path.join(d, "r-started"))
wait_until(read_started, "the snapshot read never reached the live disk")

done = []
def writer(i):
    ws[i].pwrite(bytes([0x22 + i]) * 100, C + 50 + 200 * i)
    done.append(i)
    open(os.path.join(d, "w-done"), "w").close()
ts = []
for i in range(nwriters):
    t = threading.Thread(target=writer, args=(i,))
    t.start()
    ts.append(t)
    if i == 0 and nwriters > 1:
        # The second writer after the first one's copy: wait until
        # cluster 1 is preserved.
        st = conn(os.environ["writer_uri"].replace(":///?", ":///cbw-status?"))
        import json
        for _ in range(600):
            if json.loads(st.pread(4096, 0))["preserved_bytes"] > 0:
                break
            time.sleep(0.05)
        st.shutdown()

while sn.aio_in_flight() > 0:
    sn.poll(-1)
assert sn.aio_command_completed(cookie)
got = buf.to_bytearray()
for t in ts:
    t.join()
print("writers done:", done)
assert got == b"\x11" * 4097, \
    "the snapshot read saw a writer's new data (the writer did not wait)"
assert sn.pread(C, C) == b"\x11" * C
for i in range(nwriters):
    assert ws[i].pread(100, C + 50 + 200 * i) == bytes([0x22 + i]) * 100
    ws[i].shutdown()
sn.shutdown()
PY
    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
}

run 1
run 2
