#!/usr/bin/env bash
# nbdkit-fleece: a group snapshot of three disks (three stacks) is
# crash consistent.  A writer writes sequence number n to disk 1, then
# disk 2, then disk 3, each write finished before the next, for ever.
# Every group snapshot taken through nbdkit-fleece-ctl must hold a
# prefix of that sequence (a number on disk k implies every earlier
# write on every disk).  Negative control: three independent
# snapshots, with the writer past disk 1's snapshot before disk 2's is
# taken, must be caught as inconsistent by the same check.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/tool.sh"
set -e
set -x

requires test -x "$abs_top_builddir/tools/nbdkit-fleece-ctl"
requires test -x "$TESTS_BIN/fleece-seq-writer"

# At exit the writer (tracked) stops first, then the stacks.
start_group group
live=() snap=()
for k in 1 2 3; do
    live+=("nbd+unix:///?socket=$top/d$k/sock")
    snap+=("nbd+unix:///snapshot?socket=$top/d$k/sock")
done

writer_pid=
stop_writer ()
{
    if [ -n "$writer_pid" ]; then
        kill_pid "$writer_pid"
        wait "$writer_pid" || :
        writer_pid=
    fi
}

# progress: the last round the writer finished.
progress ()
{
    od -An -t u8 "$top/progress" 2>/dev/null | tr -d ' ' || :
}

# wait_progress N: until the writer has finished round N.
wait_progress ()
{
    local i p
    for i in $(seq 1 600); do
        p="$(progress)"
        [ -n "$p" ] && [ "$p" -ge "$1" ] && return 0
        sleep 0.1
    done
    echo "$0: the writer did not get to round $1 (at ${p:-none})" >&2
    return 1
}

# check_group: check the three snapshots, their numbers into
# $top/check; on an error (not an inconsistency) say which servers
# are still running.
check_group ()
{
    local r=0 k
    "$TESTS_BIN/fleece-seq-writer" check "${snap[@]}" > "$top/check" || r=$?
    cat "$top/check"
    if [ "$r" -eq 2 ]; then
        for k in 1 2 3; do
            pid_alive "$(cat "$top/d$k/bd.pid")" &&
                echo "stack $k: running" || echo "stack $k: GONE"
        done
    fi
    return "$r"
}

"$TESTS_BIN/fleece-seq-writer" write "$top/progress" "${live[@]}" &
writer_pid=$!
track_pid "$writer_pid"
wait_progress 50

# Group snapshots, while the writer goes on.
for round in 1 2 3; do
    expect 0 '' nbdkit-fleece-ctl group-snapshot --freeze-timeout=30 "${c[@]}"
    grep -q "group snapshot of 3 disks at one instant" <<< "$out"
    check_group
    read -r n1 n2 n3 < "$top/check"
    test "$n1" -gt 0
    for k in 0 1 2; do
        expect 0 '' nbdkit-fleece-ctl "${c[$k]}" release
        expect 0 '' nbdkit-fleece-ctl --json "${c[$k]}" status
        test "$(jq_py 'r["frozen"], r["freezes_expired"]')" = "(False, 0)"
    done
    # Thawed: the writer gets past the snapshot.
    wait_progress $((n1 + 2))
done

# Time between the snapshots of disks 1 and 2: a control proxy in
# front of disk 2 holds the snapshot command until the writer has
# made progress (which it cannot while the disks are frozen) or 2 s
# have passed.  A group snapshot that did not freeze would be caught
# here every time.
ctl_proxy "$top/proxy2" "${c[1]}" progress "$top/progress"
expect 0 '' nbdkit-fleece-ctl group-snapshot --freeze-timeout=30 \
       "${c[0]}" "$top/proxy2" "${c[2]}"
check_group
read -r n1 n2 n3 < "$top/check"
for k in 0 1 2; do
    expect 0 '' nbdkit-fleece-ctl "${c[$k]}" release
done
wait_progress $((n1 + 2))

# The same with --json: one object, with each disk's reply.
expect 0 '' nbdkit-fleece-ctl --json group-snapshot "${c[@]}" -- checkpoint=g1
test "$(jq_py '[d["snapshot"]["checkpoint"] for d in r["disks"]]')" = \
     "['g1', 'g1', 'g1']"
test "$(jq_py 'all(d["snapshot"]["freeze"] > 0 for d in r["disks"])')" = True
test "$(jq_py '[d["socket"] for d in r["disks"]] == sys.argv[3:]' "${c[@]}")" = True
check_group
for k in 0 1 2; do
    expect 0 '' nbdkit-fleece-ctl "${c[$k]}" release
done

# Negative control: independent snapshots, one after the other.  Disk
# 1's number is read first; disk 2 is snapshotted only after the
# writer has finished two more rounds, so it must hold a number that
# disk 1's snapshot lacks.
expect 0 '' nbdkit-fleece-ctl "${c[0]}" snapshot
n1="$("$TESTS_BIN/fleece-seq-writer" check "${snap[0]}")"
wait_progress $((n1 + 2))
expect 0 '' nbdkit-fleece-ctl "${c[1]}" snapshot
wait_progress $((n1 + 4))
expect 0 '' nbdkit-fleece-ctl "${c[2]}" snapshot
r=0
check_group || r=$?
test "$r" -eq 1
grep "^inconsistent: disk 2 holds write" "$top/check"
for k in 0 1 2; do
    expect 0 '' nbdkit-fleece-ctl "${c[$k]}" release
done

stop_writer
