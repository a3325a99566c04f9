#!/usr/bin/env bash
# nbdkit-fleece: a writer of a saved cluster does not wait for a
# snapshot read's live part elsewhere.
# SPDX-License-Identifier: BSD-3-Clause
#
# A snapshot read that spans a SAVED cluster (read from the store) and
# a NEEDED one (read from the live disk) holds writers of the NEEDED
# cluster until it is done (frozen reads, test-cbw-frozen-read.sh),
# but not writers of the SAVED cluster: their old data is in the
# store, which the writer does not touch.
#
# The live disk is a file served by nbdkit's eval plugin, in which a
# read of exactly 4097 bytes (only the live part of the test's
# snapshot read has that size) says it started and then waits until
# the test says so (or 60 s pass) before reading the file.
#
#   snapshot client R             cbw              writer client W
#                                 <------------ write into cluster 0
#                                 (cluster 0 SAVED)
#   read 8193 @ C-4096 --------> 4096 from the store, 4097 @ C from
#                                 the live disk: parked
#                                 <------------ write into cluster 0
#                                 goes below at once -------> returns
#   the test sees W return while R is still parked, unparks R
#   R returns the old data of both clusters
#
# Were the whole read registered as live, W would wait for R and R
# for W: R would end first (at the 60 s bound) and the test fails.
# No timing decides it: the test only looks at which ended first.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires
requires nbdkit eval --version
requires dd --version

export disk="$tmp/disk.img" dir="$tmp"
start_parking_live "$tmp/r-go" 600
start_cbw
export writer_uri snap_uri

timeout 120 python3 - <<'PY'
import os, threading, time
import nbd
from fleecetest import conn, wait_until

C = 64 * 1024
d = os.environ["dir"]

sn = conn(os.environ["snap_uri"])
w = conn(os.environ["writer_uri"])

# Cluster 0 is SAVED once this returns; cluster 1 stays NEEDED.
w.pwrite(b"\x22" * 100, 50)

buf = nbd.Buffer(8193)
cookie = sn.aio_pread(buf, C - 4096)
def read_started():
    sn.poll(0)
    return os.path.exists(os.path.join(d, "r-started"))
wait_until(read_started, "the snapshot read never reached the live disk",
           tries=1200)

# A second write into cluster 0, while R's live part is parked.
t = threading.Thread(target=lambda: w.pwrite(b"\x33" * 100, 1000))
t.start()
while t.is_alive() and sn.aio_in_flight() > 0:
    sn.poll(100)
assert sn.aio_in_flight() > 0, \
    "the snapshot read ended before the writer: the writer of a " \
    "saved cluster waited for a live read of another cluster"
t.join()

open(os.path.join(d, "r-go"), "w").close()
while sn.aio_in_flight() > 0:
    sn.poll(-1)
assert sn.aio_command_completed(cookie)
assert buf.to_bytearray() == b"\x11" * 8193, \
    "the snapshot read returned other than the point-in-time data"
assert sn.pread(C, 0) == b"\x11" * C
assert w.pread(100, 50) == b"\x22" * 100
assert w.pread(100, 1000) == b"\x33" * 100
w.shutdown()
sn.shutdown()
PY
