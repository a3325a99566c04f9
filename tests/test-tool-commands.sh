#!/usr/bin/env bash
# nbdkit-fleece: nbdkit-fleece-ctl drives a real stack through a full
# and an incremental backup: every single-socket command, in both
# output forms, and watch following a backup to its end.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/tool.sh"
set -e
set -x

requires test -x "$abs_top_builddir/tools/nbdkit-fleece-ctl"
requires_program qemu-img
requires_program nbdsh
requires_nbd_python

d="$(mktemp -d /tmp/tool-cmds.XXXXXX)"
cleanup_fn stop_stack "$d"
start_stack "$d" 8M
c="$d/ctl"
uri="nbd+unix:///?socket=$d/sock"
snap="nbd+unix:///snapshot?socket=$d/sock"

expect 0 '' nbdkit-fleece-ctl "$c" status
grep -q "^snapshot: none" <<< "$out"
grep -q "^disk: 8.00 MiB, granularity 64.0 KiB" <<< "$out"
expect 0 '' nbdkit-fleece-ctl --json "$c" status
test "$(jq_py 'r["ok"], r["state"], r["disk_size"]')" = "(True, 'none', 8388608)"

nbdsh -u "$uri" -c 'h.pwrite(b"monday" * 1000, 0)'

# Monday: a full backup.
expect 0 '' nbdkit-fleece-ctl "$c" snapshot checkpoint=mon
test "$out" = "snapshot 1 taken: full, 8.00 MiB in scope, checkpoint mon"
expect 0 '' nbdkit-fleece-ctl -s "$c" status
grep -q "^snapshot: active" <<< "$out"
grep -q "checkpoint  *mon" <<< "$out"
# One snapshot at a time: the server's error, on stderr, and status 1.
expect 1 "$c: snapshot: .*active" nbdkit-fleece-ctl "$c" snapshot
test -z "$out"
# With --json the refusal is printed as is too.
expect 1 "$c: snapshot: " nbdkit-fleece-ctl --json "$c" snapshot
test "$(jq_py 'r["ok"]')" = False
qemu-img convert -f raw -O qcow2 "$snap" "$d/full.qcow2"
expect 0 '' nbdkit-fleece-ctl "$c" release
grep -q "^released" <<< "$out"
expect 1 "$c: release: no snapshot to release" nbdkit-fleece-ctl "$c" release

# Tuesday: an incremental, followed by watch while a client releases
# the scope (as a backup client TRIMs what it has copied).
nbdsh -u "$uri" -c 'h.pwrite(b"tuesday" * 20000, 1 << 20)'
expect 0 '' nbdkit-fleece-ctl --json "$c" snapshot since=mon checkpoint=tue
test "$(jq_py 'r["scope_bytes"], r["since"], r["checkpoint"]')" = \
     "(196608, 'mon', 'tue')"
# The map: the scope is the 192K written since "mon", at 1M (137K of
# data, then zeros in the last granule); asked from 64K on with a size
# suffix, and followed to the end.
expect 0 '' nbdkit-fleece-ctl "$c" map offset=64k
cat > "$d/map.expected" <<'EOM'
              OFFSET               LENGTH  TYPE
               65536               983040  not in scope
             1048576               163840  in scope, data
             1212416                32768  in scope, zero
             1245184              7143424  not in scope
EOM
diff -u "$d/map.expected" - <<< "$out"
expect 0 '' nbdkit-fleece-ctl --json "$c" map length=1M
test "$(jq_py '(r["offset"], r["length"], r["extents"], r["next"])')" = \
     "(0, 1048576, [{'offset': 0, 'length': 1048576, 'in_scope': False, 'zero': False}], None)"
checkpoint_state ()
{
    expect 0 '' nbdkit-fleece-ctl --json "$c" checkpoints
    jq_py '" ".join(x["name"] + ":" + x["state"] for x in r["checkpoints"])'
}
test "$(checkpoint_state)" = "mon:frozen tue:pending"
nbdkit-fleece-ctl "$c" watch --interval=0.1 > "$d/watch.out" 2>&1 &
watch_pid=$!
track_pid "$watch_pid"
# Not a terminal: one line per update.
for i in $(seq 1 300); do
    grep -q "released 0 B of 192 KiB" "$d/watch.out" && break
    sleep 0.1
done
grep "released 0 B of 192 KiB" "$d/watch.out"
qemu-img convert -f raw -O qcow2 -B "$d/full.qcow2" -F qcow2 \
         "$snap" "$d/tue.qcow2"
nbdsh -u "$snap" -c 'h.trim(128 * 1024, 1 << 20)'
for i in $(seq 1 300); do
    grep -q "released 128 KiB of 192 KiB" "$d/watch.out" && break
    sleep 0.1
done
grep "^\[#############\.\.\.\.\.\.\.\]  66% released 128 KiB of 192 KiB" \
     "$d/watch.out"
expect 0 '' nbdkit-fleece-ctl "$c" release
test "$out" = "released; checkpoint tue committed"
wait "$watch_pid"
tail -1 "$d/watch.out" | grep "^snapshot 2 ended$"
# Nothing to watch now.
expect 1 "$c: no snapshot is active" nbdkit-fleece-ctl "$c" watch

# The backups restore the disk as it was.
qemu-img compare -f qcow2 "$d/tue.qcow2" "$uri"

# Checkpoints.
expect 0 '' nbdkit-fleece-ctl "$c" checkpoint wed
test "$out" = "checkpoint wed created"
expect 0 '' nbdkit-fleece-ctl "$c" checkpoints
grep -Eq "^NAME +PARENT +STATE" <<< "$out"
grep -Eq "^tue +mon +frozen " <<< "$out"
grep -Eq "^wed +tue +active " <<< "$out"
expect 1 "$c: checkpoint: .*exists" nbdkit-fleece-ctl "$c" checkpoint wed
expect 0 '' nbdkit-fleece-ctl "$c" delete-checkpoint tue
test "$out" = "checkpoint tue deleted"
expect 1 "$c: delete-checkpoint: " nbdkit-fleece-ctl "$c" delete-checkpoint tue
expect 0 '' nbdkit-fleece-ctl --json "$c" checkpoints
test "$(jq_py '[x["name"] for x in r["checkpoints"]]')" = "['mon', 'wed']"

# A failed backup: its checkpoint is dropped, the chain stays at wed.
expect 0 '' nbdkit-fleece-ctl "$c" snapshot since=wed checkpoint=thu
test "$(checkpoint_state)" = "mon:frozen wed:frozen thu:pending"
expect 0 '' nbdkit-fleece-ctl "$c" release result=failed
grep -q "^released; checkpoint thu dropped" <<< "$out"
test "$(checkpoint_state)" = "mon:frozen wed:active"
expect 1 "$c: map: no snapshot is active" nbdkit-fleece-ctl "$c" map
