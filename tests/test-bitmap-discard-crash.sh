#!/usr/bin/env bash
# nbdkit-fleece: kill -9 nbdkit in the middle of writes, restart it
# with the same bitmap-dir: the next incremental is still exact.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

bd_requires_restore
requires test -x "$TESTS_BIN/bitmap-discard-writer"

bd_dir crash
mkdir "$d/w"

bd_live_disk 32M 16
snap="nbd+unix:///snapshot?socket=$d/sock"

start_stack () { bd_start_stack cbw-image="$d/fleece$1.qcow2"; }

# A full backup with checkpoint c1.
start_stack 1
cp --sparse=always "$d/live.img" "$d/ref1.img"
ctl_ok "$d/ctl" "snapshot checkpoint=c1"
qemu-img convert -f raw -O qcow2 "$snap" "$d/full.qcow2"
ctl_ok "$d/ctl" "release"
qemu-img compare -f qcow2 -F raw "$d/full.qcow2" "$d/ref1.img"

# Writers, and kill -9 the server under them.
# They write only the first 8M of the disk.
BD_WRITER_DELAY_US=2000 BD_WRITER_MAX_LEN=100000 BD_WRITER_REGION=8388608 \
    "$TESTS_BIN/bitmap-discard-writer" "nbd+unix:///?socket=$d/sock" \
    "$d/w" 4 2 > "$d/writer.out" 2>&1 &
wpid=$!
track_pid "$wpid"
wait_for "$d/w/running"
sleep 1
crash_nbdkit "$d/bd.pid"
# The writer fails now (its server is gone): that is expected.
wait $wpid || :
rm -f "$d/bd.pid" "$d/sock" "$d/fleece1.qcow2"
ls -l "$d/bm"

# The live disk holds whatever reached it.  Restart: the bitmap must
# cover all of it.
start_stack 2
ctl_ok "$d/ctl" "checkpoints"
cp --sparse=always "$d/live.img" "$d/ref2.img"
ctl_ok "$d/ctl" "snapshot since=c1 checkpoint=c2"
test "$(json_get scope_bytes)" -gt 0
test "$(json_get scope_bytes)" -le $((8 * 1024 * 1024))
qemu-img convert -f raw -O qcow2 -B "$d/full.qcow2" -F qcow2 \
    "$snap" "$d/inc2.qcow2"
only_in_scope "$d/inc2.qcow2" "$snap"
ctl_ok "$d/ctl" "release"
qemu-img compare -f qcow2 -F raw "$d/inc2.qcow2" "$d/ref2.img"

# Once more, now tracking into c2 (made by the restarted server).
rm -f "$d/w/"*
BD_WRITER_DELAY_US=2000 BD_WRITER_MAX_LEN=100000 BD_WRITER_REGION=25165824 \
    "$TESTS_BIN/bitmap-discard-writer" "nbd+unix:///?socket=$d/sock" \
    "$d/w" 2 3 > "$d/writer.out" 2>&1 &
wpid=$!
track_pid "$wpid"
wait_for "$d/w/running"
sleep 0.5
crash_nbdkit "$d/bd.pid"
wait $wpid || :
rm -f "$d/bd.pid" "$d/sock" "$d/fleece2.qcow2"
start_stack 3
cp --sparse=always "$d/live.img" "$d/ref3.img"
ctl_ok "$d/ctl" "snapshot since=c2 checkpoint=c3"
qemu-img convert -f raw -O qcow2 -B "$d/inc2.qcow2" -F qcow2 \
    "$snap" "$d/inc3.qcow2"
ctl_ok "$d/ctl" "release"
qemu-img compare -f qcow2 -F raw "$d/inc3.qcow2" "$d/ref3.img"
