#!/usr/bin/env bash
# nbdkit-fleece: freeze and thaw.  A freeze holds the writers (their
# requests do not reach the disk until the thaw); a snapshot taken
# while frozen is exactly the disk at the freeze, and does not let the
# writers go; thaw is idempotent; a freeze whose timeout passes ends
# by itself (logged, counted, and "snapshot freeze=ID" then fails); a
# freeze that cannot drain the writes in flight in time leaves nothing
# frozen; bad arguments are refused and change nothing.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

requires_program nbdcopy
requires_program qemu-nbd
requires_nbd_python
requires test -x "$TESTS_BIN/bitmap-discard-writer"

bd_dir freeze
mkdir "$d/w"

truncate -s 16M "$d/live.img"
dd if=/dev/urandom of="$d/live.img" bs=1M count=8 conv=notrunc status=none
start_live_disk "$d/live.sock" "$d/live.pid" 16M "$d/live.img"
# -v: a daemonised nbdkit keeps its stderr (the log) only with -v.
start_nbdkit -P "$d/bd.pid" -U "$d/sock" -v --log=stderr \
    --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
    "$FLEECE_PLUGIN" live="nbd+unix:///?socket=$d/live.sock" \
    cbw-image="$d/fleece.qcow2" \
    bitmap-dir="$d/bm" bitmap-control="$d/ctl" 2> "$d/bd.log"
wait_for "$d/ctl"
uri="nbd+unix:///?socket=$d/sock"
snap="nbd+unix:///snapshot?socket=$d/sock"

# status_is PYTHON-EXPR: the status reply, as s, satisfies EXPR.
status_is ()
{
    ctl_ok "$d/ctl" status
    python3 -c 'import json, sys
s = json.loads(sys.argv[1])
sys.exit(0 if eval("(%s)" % sys.argv[2]) else 1)' "$reply" "$1"
}

# wait_status PYTHON-EXPR: wait (up to 60 s) until status_is EXPR.
wait_status ()
{
    local i
    for i in $(seq 1 600); do
        status_is "$1" && return 0
        sleep 0.1
    done
    echo "$0: timed out waiting for status: $1" >&2
    return 1
}

# write_bg BYTE OFFSET LENGTH: write LENGTH bytes of BYTE at OFFSET
# through the writer export, in the background ($!); when the write
# has completed, $d/done.OFFSET appears.  A write still held after
# 60 s fails (so does the test, at its "wait").
write_bg ()
{
    timeout 60 nbdsh -u "$uri" -c "
h.pwrite(bytes([$1]) * $3, $2)
open('$d/done.$2', 'w').close()" &
}

# Bad arguments: refused, nothing frozen, nothing counted.
for c in "freeze" "freeze timeout=" "freeze timeout=0" "freeze timeout=0.0" \
         "freeze timeout=-1" "freeze timeout=3601" "freeze timeout=3600.5" \
         "freeze timeout=abc" "freeze timeout=1e3" "freeze timeout=inf" \
         "freeze timeout=nan" "freeze timeout=0x10" "freeze timeout=." \
         "freeze timeout=1 x=2" "freeze timeout=1 timeout=2" "freeze 10" \
         "thaw x=1" "thaw now" "snapshot freeze=abc" "snapshot freeze=0" \
         "snapshot freeze=-1" "snapshot freeze=01" "snapshot freeze=1" \
         "snapshot freeze=99999999999999999999999"; do
    ctl_err "$d/ctl" "$c"
done
status_is 's["frozen"] is False and s["freeze"] is None and
           s["freeze_remaining"] == 0 and s["freezes_expired"] == 0 and
           s["state"] == "none"'
ctl_ok "$d/ctl" "checkpoint c0"

# A random writer on 4 connections, in the first MiB only: the
# single writes below, whose bytes are checked after the thaw, lie
# beyond it.
BD_WRITER_DELAY_US=20000 BD_WRITER_MAX_LEN=131072 BD_WRITER_REGION=1048576 \
    "$TESTS_BIN/bitmap-discard-writer" "$uri" "$d/w" 4 7 \
    > "$d/writer.out" &
wpid=$!
track_pid "$wpid"
wait_for "$d/w/running"

# Freeze.  From the reply on, nothing reaches the disk: copy it now,
# the reference for the snapshot.
ctl_ok "$d/ctl" "freeze timeout=120"
id="$(json_get freeze)"
test "$(json_get timeout)" = 120
cp --sparse=always "$d/live.img" "$d/ref.img"
ctl_err "$d/ctl" "freeze timeout=5"
case "$reply" in *"already frozen (freeze $id)"*) ;; *) exit 1 ;; esac

# One more write and a zero, at known places: they wait at the gate
# with the 4 writer threads' requests, and none reaches the disk.
write_bg 0xab $((1024 * 1024 + 5)) 70000
w1=$!
timeout 60 nbdsh -u "$uri" -c "h.zero(8192, 12 * 1024 * 1024 - 4096)" &
z1=$!
wait_status 's["writes_held"] == 6 and s["writes_in_flight"] == 0'
status_is "s['frozen'] is True and s['freeze'] == $id and
           0 < s['freeze_remaining'] <= 120"
cmp "$d/live.img" "$d/ref.img"
test ! -e "$d/done.$((1024 * 1024 + 5))"

# A snapshot in the freeze: at the frozen instant, writes still held.
ctl_ok "$d/ctl" "snapshot since=c0 checkpoint=c1 freeze=$id"
test "$(json_get freeze)" = "$id"
status_is "s['frozen'] is True and s['writes_held'] == 6 and
           s['state'] == 'active'"
cmp "$d/live.img" "$d/ref.img"

# Thaw: the writes go on; thaw again is no error.
ctl_ok "$d/ctl" thaw
test "$(json_get was_frozen)" = True
test "$(json_get expired)" = False
wait $w1 $z1
test -e "$d/done.$((1024 * 1024 + 5))"
test "$(od -An -tx1 -j $((1024 * 1024 + 5)) -N1 "$d/live.img")" = " ab"
cmp -s -n 8192 -i $((12 * 1024 * 1024 - 4096)):0 "$d/live.img" /dev/zero
ctl_ok "$d/ctl" thaw
test "$(json_get was_frozen)" = False
test "$(json_get expired)" = False
ctl_err "$d/ctl" "snapshot freeze=$id"

# The snapshot is the disk at the freeze, byte for byte, while the
# writer changes it (full: all of it, as a full backup would read it).
ctl_ok "$d/ctl" release
ctl_ok "$d/ctl" "freeze timeout=120"
id="$(json_get freeze)"
cp --sparse=always "$d/live.img" "$d/ref.img"
ctl_ok "$d/ctl" "snapshot freeze=$id"
ctl_ok "$d/ctl" thaw
test "$(json_get was_frozen)" = True
nbdcopy "$snap" "$d/snap.img"
cmp "$d/snap.img" "$d/ref.img"
ctl_ok "$d/ctl" release
touch "$d/w/stop"
wait $wpid
cat "$d/writer.out"

# The timeout: a freeze of 1 s ends by itself, the held write goes
# on, the freeze is reported as expired, and a snapshot that depends
# on it fails.
ctl_ok "$d/ctl" "freeze timeout=1"
id="$(json_get freeze)"
write_bg 0xcd $((2 * 1024 * 1024)) 4096
w2=$!
wait $w2
test "$(od -An -tx1 -j $((2 * 1024 * 1024)) -N1 "$d/live.img")" = " cd"
status_is 's["frozen"] is False and s["freeze"] is None and
           s["freezes_expired"] == 1 and s["freeze_remaining"] == 0'
ctl_err "$d/ctl" "snapshot freeze=$id"
case "$reply" in *"freeze $id expired"*) ;; *) exit 1 ;; esac
status_is 's["state"] == "none"'
grep "freeze $id expired" "$d/bd.log"
test "$(grep -c "freeze $id expired" "$d/bd.log")" = 1
ctl_ok "$d/ctl" thaw
test "$(json_get was_frozen)" = False
test "$(json_get expired)" = True
ctl_ok "$d/ctl" thaw
test "$(json_get expired)" = True

# A freeze that cannot drain: a write is stuck below (the live disk
# is stopped).  The freeze fails after its timeout and nothing stays
# frozen; the write completes when the disk goes on.
ctl_ok "$d/ctl" "freeze timeout=30"
ctl_ok "$d/ctl" thaw
test "$(json_get expired)" = False
kill -STOP "$(cat "$d/live.pid")"
write_bg 0xef $((3 * 1024 * 1024)) 4096
w3=$!
wait_status 's["writes_in_flight"] == 1'
ctl_err "$d/ctl" "freeze timeout=0.5"
case "$reply" in *"did not finish within 0.5 seconds"*) ;; *) exit 1 ;; esac
status_is 's["frozen"] is False and s["freezes_expired"] == 1'
kill -CONT "$(cat "$d/live.pid")"
wait $w3
test "$(od -An -tx1 -j $((3 * 1024 * 1024)) -N1 "$d/live.img")" = " ef"
status_is 's["writes_in_flight"] == 0 and s["writes_held"] == 0'
