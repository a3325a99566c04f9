#!/usr/bin/env bash
# nbdkit-fleece: a chain of full and incremental backups taken while a
# writer keeps writing, each restored as a qcow2 chain and compared
# byte for byte with the disk at its point in time; an incremental
# from an older checkpoint (union); deleting checkpoints (the active
# one and one in the middle) keeps the older chains correct.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

bd_requires_restore
requires test -x "$TESTS_BIN/bitmap-discard-writer"

bd_dir chain
mkdir "$d/w"

# The live disk: a 64M file, half of it random data.
bd_live_disk 64M 32
bd_start_stack cbw-image="$d/fleece.qcow2"
snap="nbd+unix:///snapshot?socket=$d/sock"

# The writer: 4 connections of random writes, zeroes and trims, slow
# enough that an incremental holds only part of the disk.
BD_WRITER_DELAY_US=50000 BD_WRITER_MAX_LEN=131072 \
    "$TESTS_BIN/bitmap-discard-writer" "nbd+unix:///?socket=$d/sock" \
    "$d/w" 4 1 > "$d/writer.out" &
wpid=$!
track_pid "$wpid"
wait_for "$d/w/running"

# backup N SNAPSHOT-ARGS [BACKING]: pause the writer, copy the live
# disk (the reference), take the snapshot, let the writer go, copy
# the snapshot (to N.qcow2, on top of BACKING), release.
backup ()
{
    local n="$1" args="$2" base="$3"
    touch "$d/w/pause"
    wait_for "$d/w/paused"
    cp --sparse=always "$d/live.img" "$d/ref$n.img"
    ctl_ok "$d/ctl" "snapshot $args"
    scope_bytes=$(json_get scope_bytes)
    rm "$d/w/pause"
    # Let the writer overwrite some of the snapshot (copy-before-write).
    sleep 0.5
    if [ -z "$base" ]; then
        qemu-img convert -f raw -O qcow2 "$snap" "$d/$n.qcow2"
    else
        qemu-img convert -f raw -O qcow2 -B "$d/$base.qcow2" -F qcow2 \
            "$snap" "$d/$n.qcow2"
        only_in_scope "$d/$n.qcow2" "$snap"
    fi
    # A second path: nbdcopy reads the same snapshot.
    if [ -z "$base" ]; then
        nbdcopy "$snap" "$d/copy$n.img"
        cmp "$d/copy$n.img" "$d/ref$n.img"
        rm "$d/copy$n.img"
    fi
    ctl_ok "$d/ctl" "release"
    qemu-img compare -f qcow2 -F raw "$d/$n.qcow2" "$d/ref$n.img"
}

backup full "checkpoint=c1"
backup inc2 "since=c1 checkpoint=c2" full
test "$scope_bytes" -lt $((64 * 1024 * 1024))
backup inc3 "since=c2 checkpoint=c3" inc2
# From an older checkpoint: the union of c1, c2 and c3's bitmaps.
backup u4 "since=c1 checkpoint=c4" full

# Delete c2 (in the middle: merged into c1) and c4 (the active one:
# merged into c3, which becomes active again).
ctl_ok "$d/ctl" "delete-checkpoint c2"
ctl_ok "$d/ctl" "delete-checkpoint c4"
ctl_ok "$d/ctl" "checkpoints"
ckpts | grep -E '^c1::frozen:[0-9]+:[0-9]+ c3:c1:active:[0-9]+:[0-9]+$'
ctl_err "$d/ctl" "snapshot since=c2"
ctl_err "$d/ctl" "snapshot since=c4"

# since=c3 must still include what changed between c3 and c4.
backup inc5 "since=c3 checkpoint=c5" inc3
# since=c1 must still include what changed between c2 and c3.
backup inc6 "since=c1 checkpoint=c6" full

touch "$d/w/stop"
wait $wpid
cat "$d/writer.out"
ctl_ok "$d/ctl" "status"
