#!/usr/bin/env bash
# nbdkit-fleece: after FLUSH (or a FUA write) returns, the data is in
# the store below.
# SPDX-License-Identifier: BSD-3-Clause
#
# The ramcache filter runs over the file plugin; the test reads the
# file directly while the server is still running.  The cache (16M)
# is larger than the disk (4M), so nothing is written back before it
# is asked for.

source ./functions.sh
set -e
set -x

requires nbdkit --filter="$RAMCACHE_FILTER" null ramcache-size=1M --version
requires_nbd_python

sock="$(mktemp -u /tmp/fleece-test.XXXXXX)"
pidfile="$sock.pid"
img="$(mktemp /tmp/fleece-test.XXXXXX.img)"
cleanup_fn rm -f "$sock" "$pidfile" "$img"
truncate -s 4M "$img"

start_nbdkit -P "$pidfile" -U "$sock" \
             --filter="$RAMCACHE_FILTER" file "$img" ramcache-size=16M

export img
nbdsh -u "nbd+unix:///?socket=$sock" -c '
import os
import fleecetest

img = os.environ["img"]

def file_has (data, offset):
    return fleecetest.file_has (img, data, offset)

# Unaligned write: held in RAM, not in the file yet.
data = os.urandom (100000)
h.pwrite (data, 12345)
assert h.pread (100000, 12345) == data
assert file_has (bytes (100000), 12345)

# After flush it is in the file.
h.flush ()
assert file_has (data, 12345)

# A FUA write is in the file when it returns.
data2 = os.urandom (5000)
h.pwrite (data2, 300001, nbd.CMD_FLAG_FUA)
assert file_has (data2, 300001)

# Zero, then flush: zeroes in the file.
h.zero (20000, 50000)
assert h.pread (20000, 50000) == bytes (20000)
h.flush ()
assert file_has (bytes (20000), 50000)
assert file_has (data[:50000 - 12345], 12345)
assert file_has (data[70000 - 12345:], 70000)

# Several blocks in several places, one flush.
chunks = [(os.urandom (70000), off) for off in (1000000, 2000003, 4194304 - 70000)]
for d, off in chunks:
    h.pwrite (d, off)
h.flush ()
for d, off in chunks:
    assert file_has (d, off)
'

# Data written and never flushed reaches the file when the last
# client disconnects.
nbdsh -u "nbd+unix:///?socket=$sock" -c '
h.pwrite (b"\xee" * 4096, 3000000)
'
for i in $(seq 1 100); do
    if cmp -s -n 4096 -i 3000000:0 "$img" <(printf '\xee%.0s' $(seq 1 4096)); then
        break
    fi
    sleep 0.1
done
cmp -n 4096 -i 3000000:0 "$img" <(printf '\xee%.0s' $(seq 1 4096))
