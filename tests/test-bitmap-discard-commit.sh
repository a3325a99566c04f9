#!/usr/bin/env bash
# nbdkit-fleece: commit-on-success checkpoints.  The checkpoint of a
# "snapshot ... checkpoint=NAME" is pending until "release": a backup
# that fails (release result=failed), whose snapshot broke, or whose
# nbdkit was killed before the release, leaves no checkpoint behind,
# and its changes stay in its parent's.  kill -9 at every step of a
# commit and of a drop, also of the drop a start does (the
# BITMAP_DISCARD_TEST_CRASH hook), leaves either outcome, never a
# hole.  After each, the next incremental,
# restored with qemu-img over the previous backups, equals the disk
# byte for byte at its point in time.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

requires_program qemu-img
requires_program qemu-nbd
requires_program nbdsh

bd_dir commit
cleanup_fn stop_store

truncate -s 16M "$d/live.img"
dd if=/dev/urandom of="$d/live.img" bs=1M count=8 conv=notrunc status=none
start_live_disk "$d/live.sock" "$d/live.pid" 16M "$d/live.img"
# The fleece store: a copy before write fails while $d/store-err exists.
start_nbdkit -P "$d/store.pid" -U "$d/store.sock" --filter=error \
    memory 16M error-pwrite-rate=1 error-file="$d/store-err"
stop_store () { kill_pid "$(cat "$d/store.pid")"; }

start_stack ()
{
    rm -f "$d/ctl" "$d/sock"
    start_nbdkit -P "$d/bd.pid" -U "$d/sock" \
        --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
        "$FLEECE_PLUGIN" live="nbd+unix:///?socket=$d/live.sock" \
        cbw-store="nbd+unix:///?socket=$d/store.sock" \
        bitmap-dir="$d/bm" bitmap-control="$d/ctl"
    wait_for "$d/ctl"
}
restart_stack ()
{
    rm -f "$d/bd.pid"
    start_stack
}
live="nbd+unix:///?socket=$d/sock"
snap="nbd+unix:///snapshot?socket=$d/sock"

# write SEED: change a few places of the disk through the filter.
write ()
{
    nbdsh -u "$live" -c "
import random
r = random.Random($1)
for i in range(6):
    off = r.randrange(0, 16 * 1024 * 1024 - 8192) // 512 * 512
    h.pwrite(bytes([r.randrange(256)]) * r.choice([512, 4096, 8192]), off)
"
}

# begin N: write, take the reference, snapshot since the last
# committed checkpoint with checkpoint kN, write more (after the PIT:
# kN's changes), and copy the backup over the previous ones.
n=0
begin ()
{
    n=$((n + 1))
    write $((n * 2))
    cp --sparse=always "$d/live.img" "$d/ref$n.img"
    ctl_ok "$d/ctl" "snapshot since=$last checkpoint=k$n"
    write $((n * 2 + 1))
    qemu-img convert -f raw -O qcow2 -B "$d/$last.qcow2" -F qcow2 \
        "$snap" "$d/k$n.qcow2"
}
# good: a backup that succeeds; restored over the chain it equals the
# disk at its point in time.
good ()
{
    begin
    ctl_ok "$d/ctl" "release"
    test "$(json_get committed)" = True
    test "$(json_get checkpoint)" = "k$n"
    qemu-img compare -f qcow2 -F raw "$d/k$n.qcow2" "$d/ref$n.img"
    last="k$n"
}
# crash_in STEP COMMAND: restart the stack with the crash hook at STEP,
# begin a backup, send COMMAND (a release), check that nbdkit died at
# the hook, and restart the stack without it.
crash_in ()
{
    local i
    crash_nbdkit "$d/bd.pid"
    BITMAP_DISCARD_TEST_CRASH="$1" restart_stack
    begin
    ctl "$d/ctl" "$2" || :
    for i in $(seq 1 100); do
        pid_alive "$(cat "$d/bd.pid")" || break
        sleep 0.1
    done
    ! pid_alive "$(cat "$d/bd.pid")" || exit 1
    crash_nbdkit "$d/bd.pid" 2>/dev/null || :
    restart_stack
}

# gone: checkpoint kN does not exist (it was dropped).
gone ()
{
    ctl_ok "$d/ctl" "checkpoints"
    case "$(ckpts)" in
        *"k$n:"*) echo "$0: k$n should have been dropped" >&2; exit 1 ;;
    esac
}

start_stack
# A full backup that fails: its checkpoint, the only one, is dropped,
# and nothing is tracked (writes still work).
ctl_ok "$d/ctl" "snapshot checkpoint=f0"
write 100
ctl_ok "$d/ctl" "release result=failed"
test "$(json_get committed)" = False
ctl_ok "$d/ctl" "checkpoints"
test "$(ckpts)" = ""
write 101

# The full backup: c0, committed.
write 1
cp --sparse=always "$d/live.img" "$d/ref0.img"
ctl_ok "$d/ctl" "snapshot checkpoint=c0"
ctl_ok "$d/ctl" "status"
test "$(json_get pending_checkpoint)" = c0
ctl_ok "$d/ctl" "checkpoints"
test "$(ckpts | cut -d: -f1,3)" = "c0:pending"
# Nothing else can be made or deleted meanwhile.
ctl_err "$d/ctl" "checkpoint other"
ctl_err "$d/ctl" "delete-checkpoint c0"
qemu-img convert -f raw -O qcow2 "$snap" "$d/c0.qcow2"
ctl_ok "$d/ctl" "release result=ok"
test "$(json_get committed)" = True
qemu-img compare -f qcow2 -F raw "$d/c0.qcow2" "$d/ref0.img"
last=c0
ctl_ok "$d/ctl" "status"
test "$(json_get pending_checkpoint)" = None
ctl_err "$d/ctl" "release result=maybe"
# A snapshot without a checkpoint has nothing to commit.
ctl_ok "$d/ctl" "snapshot since=c0"
ctl_ok "$d/ctl" "release"
test "$(json_get checkpoint)" = None
test "$(json_get committed)" = False

# A failed backup.
begin
ctl_ok "$d/ctl" "release result=failed"
test "$(json_get committed)" = False
test "$(json_get checkpoint)" = "k$n"
json_get dropped_reason | grep -F "result=failed"
gone
good

# nbdkit killed before the release: the next start drops the pending
# checkpoint and says so.
begin
crash_nbdkit "$d/bd.pid"
restart_stack
ctl_ok "$d/ctl" "status"
json_get warning | grep -F "checkpoint k$n was pending when nbdkit stopped"
gone
good

# kill -9 at every step of a commit: either the commit happened or the
# checkpoint is dropped; the next incremental is exact either way.
for point in start written renamed done; do
    crash_in "commit:$point" "release"
    ctl_ok "$d/ctl" "checkpoints"
    case "$point:$(ckpts)" in
        start:*"k$n:"* | written:*"k$n:"*)
            echo "$0: a commit cut before the rename must drop k$n" >&2
            exit 1 ;;
        renamed:*"k$n:"*:active:* | done:*"k$n:"*:active:*)
            last="k$n" ;;
        renamed:* | done:*)
            echo "$0: k$n should be committed" >&2; exit 1 ;;
    esac
    good
done

# kill -9 at every step of a drop.
for point in start written renamed marked unlinked done; do
    crash_in "drop:$point" "release result=failed"
    gone
    good
done

# kill -9 at every step of the drop that a start does.
for point in written renamed marked unlinked; do
    begin
    crash_nbdkit "$d/bd.pid"
    rm -f "$d/bd.pid" "$d/sock" "$d/ctl"
    r=0
    BITMAP_DISCARD_TEST_CRASH="recover:$point" \
    timeout -k 5 "$startup_timeout" nbdkit -f -U "$d/sock" \
        --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
        "$FLEECE_PLUGIN" live="nbd+unix:///?socket=$d/live.sock" \
        cbw-store="nbd+unix:///?socket=$d/store.sock" \
        bitmap-dir="$d/bm" bitmap-control="$d/ctl" || r=$?
    test "$r" -eq 137           # SIGKILL
    restart_stack
    gone
    good
done

# A snapshot that breaks below (a copy before write fails in the
# store) drops the checkpoint even with result=ok.
begin
touch "$d/store-err"
write $((n * 2))          # the places in scope: they are copied first
rm "$d/store-err"
ctl_ok "$d/ctl" "status"
test "$(json_get cbw | grep -c "'broken': True")" = 1
ctl_ok "$d/ctl" "release"
test "$(json_get committed)" = False
json_get dropped_reason | grep -F "snapshot broke"
gone
good
