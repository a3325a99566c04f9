#!/usr/bin/env bash
# nbdkit-fleece: nbdkit-fleece-ctl watch and status when the snapshot
# breaks: the fleece store is bounded (cbw-store-limit=256K, four 64K
# clusters) and the writer changes six clusters.  watch shows the
# store against its limit, then ends with status 1 and the reason;
# status shows it too.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/tool.sh"
set -e
set -x

requires test -x "$abs_top_builddir/tools/nbdkit-fleece-ctl"
requires_program nbdsh
requires_nbd_python

d="$(mktemp -d /tmp/tool-watch.XXXXXX)"
cleanup_fn stop_stack "$d"
start_stack "$d" 4M cbw-store-limit=256K
c="$d/ctl"

expect 0 '' nbdkit-fleece-ctl "$c" snapshot
nbdkit-fleece-ctl "$c" watch --interval=0.1 > "$d/watch.out" 2>&1 &
watch_pid=$!
track_pid "$watch_pid"
for i in $(seq 1 300); do
    grep -q "store .* of 256 KiB" "$d/watch.out" && break
    sleep 0.1
done
grep "store .* of 256 KiB" "$d/watch.out"

nbdsh -u "nbd+unix:///?socket=$d/sock" -c '
for i in range(6):
    h.pwrite(b"y" * 4096, i * 65536)
'
r=0
wait "$watch_pid" || r=$?
cat "$d/watch.out"
test "$r" -eq 1
tail -1 "$d/watch.out" |
    grep "^snapshot 1 BROKEN: the backup cannot be completed: the fleece store reached cbw-store-limit$"

expect 0 '' nbdkit-fleece-ctl "$c" status
grep -E "^  BROKEN +yes: the fleece store reached cbw-store-limit" <<< "$out"
grep -E "^  store limit +256 KiB" <<< "$out"
expect 0 '' nbdkit-fleece-ctl "$c" release
