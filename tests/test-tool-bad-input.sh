#!/usr/bin/env bash
# nbdkit-fleece: nbdkit-fleece-ctl refuses bad command lines (exit 2)
# before it sends anything, and says what is wrong; a missing socket
# or a path that is not a socket is an error (exit 1) naming it.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/tool.sh"
set -e
set -x

requires test -x "$abs_top_builddir/tools/nbdkit-fleece-ctl"

d="$(mktemp -d /tmp/tool-bad.XXXXXX)"
cleanup_fn stop_stack "$d"

expect 0 '' nbdkit-fleece-ctl --help
grep -q "group-snapshot" <<< "$out"
expect 0 '' nbdkit-fleece-ctl --version
grep -q "^nbdkit-fleece-ctl [0-9]" <<< "$out"

# A real server, to show that refused command lines never reach it.
start_stack "$d" 8M
c="$d/ctl"
expect 0 '' nbdkit-fleece-ctl --json "$c" checkpoints
before="$out"

expect 2 'expected a control socket' nbdkit-fleece-ctl
expect 2 'expected a control socket' nbdkit-fleece-ctl "$c"
expect 2 'unknown command frob' nbdkit-fleece-ctl "$c" frob
expect 2 'unknown command' nbdkit-fleece-ctl "$c" SNAPSHOT
expect 2 'Try' nbdkit-fleece-ctl --frob "$c" status
expect 2 'timeout=0' nbdkit-fleece-ctl --timeout=0 "$c" status
expect 2 'timeout=x' nbdkit-fleece-ctl -t x "$c" status
expect 2 'since=\.\./etc: a checkpoint name' \
       nbdkit-fleece-ctl "$c" snapshot since=../etc
expect 2 'checkpoint=-x' nbdkit-fleece-ctl "$c" snapshot checkpoint=-x
expect 2 'checkpoint=' nbdkit-fleece-ctl "$c" snapshot \
       checkpoint="$(printf 'x%.0s' $(seq 64))"
expect 2 'unknown argument foo' nbdkit-fleece-ctl "$c" snapshot foo=bar
expect 2 'expected KEY=VALUE' nbdkit-fleece-ctl "$c" snapshot mon
expect 2 'since given twice' nbdkit-fleece-ctl "$c" snapshot since=a since=a
expect 2 'freeze=0: expected a freeze ID' \
       nbdkit-fleece-ctl "$c" snapshot freeze=0
expect 2 'freeze=1x' nbdkit-fleece-ctl "$c" snapshot freeze=1x
expect 2 'result=maybe: expected ok or failed' \
       nbdkit-fleece-ctl "$c" release result=maybe
expect 2 'unknown argument now' nbdkit-fleece-ctl "$c" release now=1
expect 2 'usage: checkpoint NAME' nbdkit-fleece-ctl "$c" checkpoint
expect 2 'usage: checkpoint NAME' nbdkit-fleece-ctl "$c" checkpoint a b
expect 2 'a/b: a checkpoint name' nbdkit-fleece-ctl "$c" checkpoint a/b
expect 2 'usage: delete-checkpoint' nbdkit-fleece-ctl "$c" delete-checkpoint
expect 2 'unknown argument x' nbdkit-fleece-ctl "$c" status x=y
expect 2 'expected KEY=VALUE' nbdkit-fleece-ctl "$c" thaw now
expect 2 'timeout=0: expected seconds' \
       nbdkit-fleece-ctl "$c" freeze timeout=0
expect 2 'timeout=3601' nbdkit-fleece-ctl "$c" freeze timeout=3601
expect 2 'timeout=1e3' nbdkit-fleece-ctl "$c" freeze timeout=1e3
expect 2 'timeout=-1' nbdkit-fleece-ctl "$c" freeze timeout=-1
expect 2 'length=1X: expected a size' \
       nbdkit-fleece-ctl "$c" map length=1X
expect 2 'offset=-1' nbdkit-fleece-ctl "$c" map offset=-1
expect 2 'offset=99999999999T' nbdkit-fleece-ctl "$c" map offset=99999999999T
expect 2 'interval=0' nbdkit-fleece-ctl "$c" watch --interval=0
expect 2 'usage: watch' nbdkit-fleece-ctl "$c" watch now
expect 2 'no sockets given' nbdkit-fleece-ctl group-snapshot
expect 2 'no sockets given' nbdkit-fleece-ctl group-snapshot -- since=a
expect 2 'freeze-timeout=0' \
       nbdkit-fleece-ctl group-snapshot --freeze-timeout=0 "$c"
expect 2 'given twice' nbdkit-fleece-ctl group-snapshot "$c" "$c"
expect 2 'freeze= is chosen by the tool' \
       nbdkit-fleece-ctl group-snapshot "$c" -- freeze=1
expect 2 'since=\.\.: a checkpoint name' \
       nbdkit-fleece-ctl group-snapshot "$c" -- since=..

# Nothing reached the server: no snapshot, no checkpoint.
expect 0 '' nbdkit-fleece-ctl --json "$c" checkpoints
test "$out" = "$before"
expect 0 '' nbdkit-fleece-ctl --json "$c" status
test "$(jq_py 'r["state"]')" = none

# Paths that are not control sockets.
expect 1 "$d/nosuch: no such socket" nbdkit-fleece-ctl "$d/nosuch" status
expect 1 "$d/live.pid: not a socket" nbdkit-fleece-ctl "$d/live.pid" status
expect 1 "$d: not a socket" nbdkit-fleece-ctl "$d" status
expect 1 "path too long" nbdkit-fleece-ctl "/tmp/$(printf 'x%.0s' $(seq 120))" status
expect 1 "$d/nosuch: no such socket" nbdkit-fleece-ctl -s "$d/nosuch" status
expect 1 "$d/nosuch: no such socket" \
       nbdkit-fleece-ctl group-snapshot "$c" "$d/nosuch"
grep -q "nothing was changed" <<< "$err"
