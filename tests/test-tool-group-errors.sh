#!/usr/bin/env bash
# nbdkit-fleece: a group snapshot that fails leaves nothing behind.
# A missing socket, a failing --freeze-cmd or --thaw-cmd, a disk
# frozen by someone else, a snapshot refused on the last disk, a
# freeze that expires before its snapshot, and a socket whose nbdkit
# was killed: each is a clear error and exit status 1, and afterwards
# no disk is frozen by the tool and no snapshot of it is active.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/tool.sh"
set -e
set -x

requires test -x "$abs_top_builddir/tools/nbdkit-fleece-ctl"

start_group grouperr

# state K: "STATE FROZEN EXPIRED" of disk K (0-based) from status.
state ()
{
    expect 0 '' nbdkit-fleece-ctl --json "${c[$1]}" status
    jq_py '"%s %s %d" % (r["state"], r["frozen"], r["freezes_expired"])'
}

# all_clear: no disk frozen or snapshotted, and no freeze expired (the
# tool thawed them all itself).
all_clear ()
{
    local k
    for k in 0 1 2; do
        test "$(state $k)" = "none False 0"
    done
}

# A socket that does not exist: nothing is done at all.
expect 1 "$top/nosuch: no such socket" \
       nbdkit-fleece-ctl group-snapshot "${c[@]}" "$top/nosuch"
grep -q "group snapshot not started: nothing was changed" <<< "$err"
all_clear

# The hooks run outside the freeze: before it and after the thaw.
expect 0 '' nbdkit-fleece-ctl group-snapshot --freeze-timeout=60 \
       --freeze-cmd="nbdkit-fleece-ctl --json ${c[0]} status > $top/before" \
       --thaw-cmd="nbdkit-fleece-ctl --json ${c[0]} status > $top/after" \
       "${c[@]}"
out="$(cat "$top/before")"
test "$(jq_py '(r["state"], r["frozen"])')" = "('none', False)"
out="$(cat "$top/after")"
test "$(jq_py '(r["state"], r["frozen"])')" = "('active', False)"
for k in 0 1 2; do
    expect 0 '' nbdkit-fleece-ctl "${c[$k]}" release
done
all_clear

# A failing freeze hook: nothing is frozen, the thaw hook still runs.
expect 1 "--freeze-cmd=exit 3 failed with exit status 3" \
       nbdkit-fleece-ctl group-snapshot --freeze-cmd="exit 3" \
       --thaw-cmd="touch $top/thawed" "${c[@]}"
test -f "$top/thawed"
all_clear

# checkpoints K: the checkpoint names of disk K.
checkpoints ()
{
    expect 0 '' nbdkit-fleece-ctl --json "${c[$1]}" checkpoints
    jq_py '" ".join(x["name"] for x in r["checkpoints"])'
}

# A failing thaw hook: the snapshots were taken, and are released as
# failed backups: their pending checkpoints are dropped.
expect 1 "--thaw-cmd=false failed with exit status 1" \
       nbdkit-fleece-ctl group-snapshot --freeze-timeout=60 \
       --thaw-cmd=false "${c[@]}" -- checkpoint=g0
grep -q "every snapshot it took released" <<< "$err"
all_clear
for k in 0 1 2; do
    test -z "$(checkpoints $k)"
done

# Disk 2 frozen by someone else: refused there; disk 1 thawed, disk 2
# left as the other holder froze it, disk 3 never touched.
expect 0 '' nbdkit-fleece-ctl --json "${c[1]}" freeze timeout=60
other="$(jq_py 'r["freeze"]')"
expect 1 "${c[1]}: freeze timeout=60: already frozen" \
       nbdkit-fleece-ctl group-snapshot --freeze-timeout=60 "${c[@]}"
test "$(state 0)" = "none False 0"
expect 0 '' nbdkit-fleece-ctl --json "${c[1]}" status
test "$(jq_py '(r["frozen"], r["freeze"])')" = "(True, $other)"
test "$(state 2)" = "none False 0"
expect 0 '' nbdkit-fleece-ctl "${c[1]}" thaw
test "$out" = thawed
all_clear

# A snapshot refused on the last disk (one is active there already):
# the snapshots of disks 1 and 2 are released, all are thawed, and
# the other snapshot of disk 3 is left alone.
# Their checkpoint g1 is dropped.
expect 0 '' nbdkit-fleece-ctl "${c[2]}" snapshot
expect 1 "${c[2]}: snapshot checkpoint=g1 freeze=[0-9]+: " \
       nbdkit-fleece-ctl group-snapshot --freeze-timeout=60 "${c[@]}" \
       -- checkpoint=g1
test "$(state 0)" = "none False 0"
test "$(state 1)" = "none False 0"
test "$(state 2)" = "active False 0"
expect 0 '' nbdkit-fleece-ctl "${c[2]}" release
all_clear
for k in 0 1 2; do
    test -z "$(checkpoints $k)"
done

# A freeze that expires before its snapshot: a control proxy in front
# of disk 1 holds the snapshot command until disk 1's freeze has timed
# out.  The server refuses the snapshot; nothing stays frozen.
ctl_proxy "$top/proxy1" "${c[0]}" expire
expect 1 "$top/proxy1: snapshot freeze=[0-9]+: .*expired" \
       nbdkit-fleece-ctl group-snapshot --freeze-timeout=0.5 \
       "$top/proxy1" "${c[1]}" "${c[2]}"
# (Disks 2 and 3 may have timed out too, meanwhile.)
for k in 0 1 2; do
    state $k | grep "^none False [01]$"
done
test "$(state 0)" = "none False 1"

# Interrupted (SIGTERM, as Ctrl-C) while a snapshot hangs: a proxy in
# front of disk 1 never passes the snapshot on.  Once every disk is
# frozen the tool is stopped; it thaws them all before it exits.
before="$(state 0) $(state 1) $(state 2)"
ctl_proxy "$top/proxy-hang" "${c[0]}" hang
nbdkit-fleece-ctl group-snapshot --freeze-timeout=60 \
    "$top/proxy-hang" "${c[1]}" "${c[2]}" 2> "$top/hang.err" &
tool_pid=$!
for i in $(seq 1 600); do
    expect 0 '' nbdkit-fleece-ctl --json "${c[2]}" status
    [ "$(jq_py 'r["frozen"]')" = True ] && break
    sleep 0.1
done
expect 0 '' nbdkit-fleece-ctl --json "${c[0]}" status
test "$(jq_py 'r["frozen"]')" = True
kill -TERM "$tool_pid"
r=0
wait "$tool_pid" || r=$?
cat "$top/hang.err"
test "$r" -eq 1
grep "interrupted by signal" "$top/hang.err"
test "$(state 0) $(state 1) $(state 2)" = "$before"

# The nbdkit of disk 3 is killed; its socket stays behind.  Disks 1
# and 2 were frozen first, and are thawed (by the tool: their freezes
# could not time out so soon).
before0="$(state 0)" before1="$(state 1)"
crash_nbdkit "$top/d3/bd.pid"
for i in $(seq 1 100); do
    pid_alive "$(cat "$top/d3/bd.pid")" || break
    sleep 0.1
done
expect 1 "${c[2]}: (no one is serving this socket|the server closed)" \
       nbdkit-fleece-ctl group-snapshot --freeze-timeout=60 "${c[@]}"
test "$(state 0)" = "$before0"
test "$(state 1)" = "$before1"
