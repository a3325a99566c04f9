#!/usr/bin/env bash
# nbdkit-fleece: a bitmap directory that must be refused stops a
# daemonised nbdkit (-P, no -f) at once: the command exits non-zero
# with the message, leaving no server, socket or pid file.  (Only the
# check against the disk's size waits until nbdkit serves.)  A FIFO,
# a symlink or a directory named NAME.bitmap is refused without
# opening it for reading (a FIFO used to hang nbdkit for ever).
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

requires_program nbdsh
requires_program qemu-nbd

bd_dir startup

bd_live_disk 32M

# Good files to start from: two checkpoints.
bd_start_stack
ctl_ok "$d/ctl" "checkpoint c1"
nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"1" * 4096, 0)'
ctl_ok "$d/ctl" "checkpoint c2"
bd_stop_stack
cp -a "$d/bm" "$d/good"

# A FIFO named like a bitmap file.
mkfifo "$d/bm/x.bitmap"
bd_refused "x.bitmap: not a regular file"
rm "$d/bm/x.bitmap"
# A directory.
mkdir "$d/bm/y.bitmap"
bd_refused "y.bitmap: not a regular file"
rmdir "$d/bm/y.bitmap"
# A symlink, even to a good file.
mv "$d/bm/c1.bitmap" "$d/c1.bitmap"
ln -s "$d/c1.bitmap" "$d/bm/c1.bitmap"
bd_refused "c1.bitmap: is a symbolic link"
rm "$d/bm/c1.bitmap"
mv "$d/c1.bitmap" "$d/bm/c1.bitmap"
# A corrupted file.
printf 'X' | dd of="$d/bm/c2.bitmap" bs=1 seek=60 conv=notrunc
bd_refused "c2.bitmap: header checksum mismatch"
rm -rf "$d/bm"
cp -a "$d/good" "$d/bm"
# A file cut short.
truncate -s 4100 "$d/bm/c1.bitmap"
bd_refused "c1.bitmap: inconsistent header"
rm -rf "$d/bm"
cp -a "$d/good" "$d/bm"

# A stale temporary file (here a FIFO) is removed, not opened, and the
# good files load in a daemonised nbdkit.  This start spells the keys
# the old way (bitmap-dir, bitmap-control), still accepted as aliases.
mkfifo "$d/bm/c2.bitmap.tmp"
start_nbdkit -P "$d/bd.pid" -U "$d/sock" \
    --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
    "$FLEECE_PLUGIN" live="$live" bitmap-dir="$d/bm" bitmap-control="$d/ctl"
wait_for "$d/ctl"
ctl_ok "$d/ctl" "checkpoints"
test "$(ckpts)" = "c1::frozen:65536:65536 c2:c1:active:0:0"
test ! -e "$d/bm/c2.bitmap.tmp"
