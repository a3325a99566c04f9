#!/usr/bin/env bash
# nbdkit-fleece: bitmap files that fail their checks (corrupted bits,
# header or change log; another disk size or granularity; a broken
# chain; a foreign file) are refused at startup with a clear error,
# and are left untouched.  A torn last change record is not refused:
# everything is marked changed instead.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

requires_program nbdsh
requires_program qemu-nbd

bd_dir files

truncate -s 16M "$d/small.img"
bd_live_disk 32M
# (In bd_start_stack, the socket exists before the bitmaps are loaded;
# the first reply comes after.)

# must_refuse MESSAGE [ARGS]: nbdkit with bitmap-dir=$d/bm must fail
# at startup, printing MESSAGE, and leave the files as they were.
must_refuse ()
{
    local msg="$1" uri="$live"
    shift
    if [ "$1" = small ]; then
        shift
        uri="nbd+unix:///?socket=$d/small.sock"
    fi
    md5sum "$d"/bm/* > "$d/sums"
    # In the foreground nbdkit exits as soon as it fails; a server
    # that starts would only end at the timeout (status 124).
    r=0
    rm -f "$d/sock2"
    rm -rf "$d/tmp"
    mkdir "$d/tmp"
    TMPDIR="$d/tmp" \
    timeout -k 5 "$startup_timeout" nbdkit -f -U "$d/sock2" \
        --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
        "$FLEECE_PLUGIN" live="$uri" bitmap-dir="$d/bm" "$@" \
        2> "$d/err" || r=$?
    if ! failed_at_startup $r; then
        echo "$0: nbdkit should have refused the bitmap files" >&2
        exit 1
    fi
    cat "$d/err"
    grep -F -- "$msg" "$d/err"
    grep -F -- "next backup must then be a full one" "$d/err"
    md5sum -c "$d/sums"
    # cbw had created its fleece image (in TMPDIR) before this filter
    # refused to start: it is gone all the same.
    test -z "$(ls -A "$d/tmp")"
}

# Two checkpoints; c2 (active) gets two separate change records.
bd_start_stack
ctl_ok "$d/ctl" "checkpoint c1"
nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"1" * 4096, 0)'
ctl_ok "$d/ctl" "checkpoint c2"
nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"2" * 4096, 1048576)'
nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"3" * 4096, 2097152)'
ctl_ok "$d/ctl" "checkpoints"
# No clean shutdown: the log stays as it is.
crash_nbdkit "$d/bd.pid"
rm -f "$d/bd.pid" "$d/sock"
# 4096 header + 64 bytes of bits (512 granules) + 2 records of 64.
test "$(stat -c %s "$d/bm/c2.bitmap")" -eq $((4096 + 64 + 128))
cp -a "$d/bm" "$d/good"

flip ()                         # flip FILE OFFSET
{
    python3 -c '
import sys
f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2]))
b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x40]))
' "$1" "$2"
}
restore ()
{
    rm -rf "$d/bm"
    cp -a "$d/good" "$d/bm"
}

# The bits of a frozen checkpoint.
flip "$d/bm/c1.bitmap" 4096
must_refuse "c1.bitmap: checksum mismatch in the bits"
restore
# A header.
flip "$d/bm/c2.bitmap" 60
must_refuse "c2.bitmap: header checksum mismatch"
restore
# The first of two change records.
flip "$d/bm/c2.bitmap" $((4096 + 64 + 20))
must_refuse "c2.bitmap: a change record at byte 4160 fails its checksum"
restore
# Another disk size.
start_live_disk "$d/small.sock" "$d/small.pid" 16M "$d/small.img"
must_refuse "made for a disk of 33554432 bytes, but this disk has 16777216" \
    small
kill_pid "$(cat "$d/small.pid")"
# Another granularity.
must_refuse "written with bitmap-discard-granularity=65536" bitmap-granularity=128K
# A missing link in the chain.
rm "$d/bm/c1.bitmap"
must_refuse "do not form one chain"
restore
# A renamed file.
mv "$d/bm/c1.bitmap" "$d/bm/other.bitmap"
must_refuse "bad name, parent or state"
restore
# A foreign file.
echo hello > "$d/bm/junk.bitmap"
must_refuse "junk.bitmap: not a bitmap file"
restore

# The good files load, and say what changed since c2.
bd_start_stack
ctl_ok "$d/ctl" "checkpoints"
test "$(ckpts)" = "c1::frozen:65536:196608 c2:c1:active:131072:131072"
crash_nbdkit "$d/bd.pid"
rm -f "$d/bd.pid" "$d/sock"

# A torn last record (as a power failure could leave): accepted, but
# everything counts as changed since c2.
restore
truncate -s $((4096 + 64 + 64 + 30)) "$d/bm/c2.bitmap"
bd_start_stack
ctl_ok "$d/ctl" "checkpoints"
test "$(ckpts)" = "c1::frozen:65536:33554432 c2:c1:active:33554432:33554432"
ctl_ok "$d/ctl" "status"
case "$reply" in
    *'"warning":"c2.bitmap: the last change record was incomplete'*) ;;
    *) echo "$0: status should carry the warning" >&2; exit 1 ;;
esac
crash_nbdkit "$d/bd.pid"
rm -f "$d/bd.pid" "$d/sock"

# Crash recovery of checkpoint operations.  set_state FILE STATE
# rewrites the state in a header (1 active, 2 frozen, 3 being deleted)
# with a valid checksum, as a crash in the middle of an operation
# leaves it.
set_state ()
{
    python3 -c '
import hashlib, struct, sys
f = open(sys.argv[1], "r+b")
h = bytearray(f.read(4096))
h[28:32] = struct.pack("<I", int(sys.argv[2]))
h[4064:4096] = hashlib.sha256(bytes(h[:4064])).digest()
f.seek(0); f.write(h)
' "$1" "$2"
}
restore
bd_start_stack
ctl_ok "$d/ctl" "checkpoint c3"
nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"4" * 4096, 3145728)'
crash_nbdkit "$d/bd.pid"
rm -f "$d/bd.pid" "$d/sock"
rm -rf "$d/good"
cp -a "$d/bm" "$d/good"

# A crash while creating c3 left c2 active too: c2 is frozen on load.
set_state "$d/bm/c2.bitmap" 1
bd_start_stack
ctl_ok "$d/ctl" "checkpoints"
test "$(ckpts)" = "c1::frozen:65536:262144 c2:c1:frozen:131072:196608 \
c3:c2:active:65536:65536"
crash_nbdkit "$d/bd.pid"
rm -f "$d/bd.pid" "$d/sock"

# A crash while deleting c2: the next start finishes the delete.  c1
# then holds c1's and c2's changes, and c3 follows c1.
restore
set_state "$d/bm/c2.bitmap" 3
bd_start_stack
ctl_ok "$d/ctl" "checkpoints"
test ! -e "$d/bm/c2.bitmap"
test "$(ckpts)" = "c1::frozen:196608:262144 c3:c1:active:65536:65536"

# Deleting c1, the oldest, rewrites its child c3, the active
# checkpoint.  Changes made after that must be appended to the new c3
# file and survive a kill -9.
ctl_ok "$d/ctl" "delete-checkpoint c1"
nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"5" * 4096, 20971520)'
crash_nbdkit "$d/bd.pid"
rm -f "$d/bd.pid" "$d/sock"
bd_start_stack
ctl_ok "$d/ctl" "checkpoints"
test "$(ckpts)" = "c3::active:131072:131072"
crash_nbdkit "$d/bd.pid"
rm -f "$d/bd.pid" "$d/sock"

# A crash while deleting c2, after c2's changes were merged into c1
# and c3 was re-parented to c1, but before c2.bitmap was unlinked:
# two files then name c1 as their parent.  The next start completes
# the delete.  (The state is made by a real delete, then putting back
# c2.bitmap as it was marked "being deleted".)
restore
bd_start_stack
ctl_ok "$d/ctl" "delete-checkpoint c2"
crash_nbdkit "$d/bd.pid"
rm -f "$d/bd.pid" "$d/sock"
cp "$d/good/c2.bitmap" "$d/bm/c2.bitmap"
set_state "$d/bm/c2.bitmap" 3
bd_start_stack
ctl_ok "$d/ctl" "checkpoints"
test ! -e "$d/bm/c2.bitmap"
test "$(ckpts)" = "c1::frozen:196608:262144 c3:c1:active:65536:65536"
