#!/usr/bin/env bash
# nbdkit-fleece: taking the point in time drains the writes in flight,
# and two clients opening "snapshot" at once get one PIT.
# SPDX-License-Identifier: BSD-3-Clause
#
# The live disk is nbdkit memory behind the delay filter: each write
# takes 2 s below.  A writer sends a write A (straddling clusters) and
# the test waits until the live server has received it (its -v log:
# no timing).  While A is in flight below, two clients connect to
# "snapshot" at the same moment.  Taking the PIT waits for A, so:
# - both clients see A, whole, at the PIT (no torn write: each write is
#   wholly before or wholly after the PIT);
# - a later write B over the same range is not visible in the snapshot;
# - the two clients share one PIT: the generation went up by exactly 1,
#   and two snapshot contexts are counted.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

start_nbdkit -P "$tmp/live.pid" -U "$live_sock" -v --log=stderr \
             --filter=delay memory 4M delay-write=2 2>"$tmp/live.log"
start_cbw

g0=$(status_field generation)
export writer_uri snap_uri status_uri tmp g0
timeout 120 python3 - <<'PY'
import json, os, threading, time
import nbd
from fleecetest import conn, status, wait_until

C = 64 * 1024
log = os.path.join(os.environ["tmp"], "live.log")

def nr_writes_below():
    return open(log, errors="replace").read().count("pwrite")

w = conn(os.environ["writer_uri"])
old = w.pread(4 * C, C)
A = b"\xa1" * (2 * C + 1000)
off = 2 * C - 500

# A is in flight below ...
before = nr_writes_below()
buf = nbd.Buffer.from_bytearray(bytearray(A))
cookie = w.aio_pwrite(buf, off)
def a_below():
    w.poll(0)
    return nr_writes_below() > before
wait_until(a_below, "write A never reached the live disk", interval=0.1)

# ... when two clients open "snapshot" at once.
snaps = [None, None]
errors = []
def opener(i):
    try:
        snaps[i] = conn(os.environ["snap_uri"])
    except Exception as ex:
        errors.append(ex)
ts = [threading.Thread(target=opener, args=(i,)) for i in range(2)]
for t in ts: t.start()
# Keep the writer's connection moving while they wait for A.
while any(t.is_alive() for t in ts):
    w.poll(100)
for t in ts: t.join()
assert not errors, errors
# At once, before looking at A's completion: opening the snapshot
# waited for A, so A is there already.
first_look = [sn.pread(len(A), off) for sn in snaps]
while w.aio_in_flight() > 0:
    w.poll(-1)
assert w.aio_command_completed(cookie)

s = status()
print(s)
assert s["state"] == "active", s
assert s["snapshot_contexts"] == 2, s

for got in first_look:
    assert got == A, "the in-flight write is not wholly in the PIT"
for sn in snaps:
    assert sn.pread(len(A), off) == A, "the PIT changed"

B = b"\xb2" * (3 * C)
w.pwrite(B, off - C)
for sn in snaps:
    assert sn.pread(len(A), off) == A
assert w.pread(len(B), off - C) == B
s = status()
print(s)
assert s["generation"] == int(os.environ["g0"]) + 1, \
    "two clients opening snapshot at once took %d PITs" % \
    (s["generation"] - int(os.environ["g0"]))
for sn in snaps:
    sn.shutdown()
w.shutdown()
PY
wait_status state '"none"'
