#!/usr/bin/env bash
# nbdkit-fleece: the ramcache filter over a store whose writes fail.
# SPDX-License-Identifier: BSD-3-Clause
#
# nbdkit's error filter below the cache fails every write while the
# trigger file exists.  Writes still land in RAM, but FLUSH fails
# with EIO, and a write that needs room in a tier full of data that
# cannot be written fails with EIO instead of hanging.  Once the store
# recovers, FLUSH writes everything and the file holds it.

source ./functions.sh
set -e
set -x

requires nbdkit --filter="$RAMCACHE_FILTER" null ramcache-size=1M --version
requires nbdkit --filter=error null --version
requires_nbd_python

sock="$(mktemp -u /tmp/fleece-test.XXXXXX)"
pidfile="$sock.pid"
img="$(mktemp /tmp/fleece-test.XXXXXX.img)"
trigger="$sock.trigger"
cleanup_fn rm -f "$sock" "$pidfile" "$img" "$trigger"
truncate -s 1M "$img"

# One block of 4K.
start_nbdkit -P "$pidfile" -U "$sock" \
             --filter="$RAMCACHE_FILTER" --filter=error file "$img" \
             ramcache-size=4K ramcache-block-size=4K \
             error-pwrite=EIO error-pwrite-rate=100% \
             error-pwrite-file="$trigger"

export img trigger
nbdsh -u "nbd+unix:///?socket=$sock" -c '
import os
import fleecetest

img = os.environ["img"]
trigger = os.environ["trigger"]

def file_has (data, offset):
    return fleecetest.file_has (img, data, offset)

open (trigger, "w").close ()

h.pwrite (b"x" * 4096, 0)
try:
    h.flush ()
    assert False, "flush should have failed"
except nbd.Error as ex:
    assert ex.errno == "EIO", ex
try:
    h.pwrite (b"y" * 4096, 8192)
    assert False, "write should have failed"
except nbd.Error as ex:
    assert ex.errno == "EIO", ex
assert h.pread (4096, 0) == b"x" * 4096
assert file_has (bytes (4096), 0)

os.unlink (trigger)
h.flush ()
assert file_has (b"x" * 4096, 0)
h.pwrite (b"y" * 4096, 8192)
h.flush ()
assert file_has (b"y" * 4096, 8192)
assert h.pread (4096, 0) == b"x" * 4096
'
