#!/usr/bin/env bash
# nbdkit-fleece: several connections to a multi-conn live disk.
# SPDX-License-Identifier: BSD-3-Clause
#
# The live disk is a file behind nbdkit's file plugin, with the log
# filter so that we can see which connection each request came on.
# fleece opens live-connections=4 connections (the status file says so).
# With -D fleece.fill=1 even pit-torture's few clients are spread over
# them (the live log shows requests on four connections); with the
# default, a load of more than 16 requests in flight per connection
# is spread too: nbdkit's delay filter keeps each read on the live
# disk for 50 ms, so that four clients' 16 reads each pile up.  Under
# the cbw filter,
# pit-torture's writers and readers (and nbdcopy of the snapshot) get
# the exact point in time and the exact live disk, and the link
# survives a restart of the live server with all four connections.  A live disk without
# multi-conn (nbdkit's multi-conn filter, mode disable) gets one
# connection whatever live-connections says.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/fleece.sh"
set -e
set -x

fleece_requires
requires_program nbdcopy
requires test -x "$TESTS_BIN/pit-torture"
requires nbdkit --filter="$CBW_FILTER" "$FLEECE_PLUGIN" --version
requires nbdkit --filter=log --filter=multi-conn memory 1M --version

# start_live [FILTER PARAM...]: the file, logged -> $live_pid
start_live ()
{
    local filter="$1"
    shift || :
    rm -f "$live_sock"
    start_nbdkit -P "$tmp/live.pid" -U "$live_sock" ${filter:+--filter="$filter"} \
                 --filter=log file "$tmp/live.img" logfile="$tmp/live.log" \
                 "$@"
    live_pid="$pid"
}


# live_status KEY: print KEY of the status file.
live_status ()
{
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
            "$tmp/live.json" "$1"
}

# connections_used: distinct connections that sent reads or writes.
connections_used ()
{
    grep -aE ' (Read|Write) ' "$tmp/live.log" |
        sed -n 's/.*connection=\([0-9]*\).*/\1/p' | sort -u | wc -l
}

# parallel_reads: 4 clients with 16 reads in flight each.
parallel_reads ()
{
    fleece_uri="$fleece_uri" timeout 120 python3 - <<'PY'
import os
import nbd
from fleecetest import conn

hs = [conn(os.environ["fleece_uri"]) for i in range(4)]
bufs = [nbd.Buffer(4096) for i in range(64)]
for i, b in enumerate(bufs):
    hs[i % 4].aio_pread(b, i * 65536)
while any(h.aio_in_flight() > 0 for h in hs):
    for h in hs:
        h.poll(0 if h.aio_in_flight() == 0 else 10)
for h in hs:
    h.shutdown()
PY
}

truncate -s 24M "$tmp/live.img"
start_live
fleece_opts=(-v -D fleece.fill=1 --filter="$CBW_FILTER")
start_fleece live="$live_uri" live-connections=4 \
             live-status-file="$tmp/live.json" cbw-image="$tmp/fleece.qcow2"
[ "$(live_status live_connections)" -eq 4 ]

w="$fleece_uri"
s="nbd+unix:///snapshot?socket=$fsock"
timeout 120 "$TESTS_BIN/pit-torture" -F -S 41 "$w"
cp "$tmp/live.img" "$tmp/ref.img"
timeout 300 "$TESTS_BIN/pit-torture" -S 41 -w 4 -r 4 -n 1000 -i \
        -x "nbdcopy --connections=4 '$s' '$tmp/copy.img' &&
            cmp '$tmp/copy.img' '$tmp/ref.img'" \
        "$w" "$s" "$tmp/ref.img"
! cmp -s "$tmp/live.img" "$tmp/ref.img" || exit 1
[ "$(connections_used)" -ge 4 ]

# The four connections come back after a restart.
kill -9 "$live_pid"
while pid_alive "$live_pid"; do sleep 0.1; done
start_live
: > "$tmp/live.log"
timeout 300 "$TESTS_BIN/pit-torture" -F -S 43 "$w"
parallel_reads
[ "$(live_status live_reconnects)" -eq 1 ]
[ "$(connections_used)" -ge 4 ]
kill_pid "$fleece_pid"
kill_pid "$live_pid"

# The default fill: a light load stays on one connection, a heavy one
# (4 clients x 16 reads, each held 50 ms by the live disk) spreads.
start_live delay delay-read=50ms
fleece_opts=(-v)
start_fleece live="$live_uri" live-connections=4 \
             live-status-file="$tmp/live.json"
[ "$(live_status live_connections)" -eq 4 ]
: > "$tmp/live.log"
timeout 60 nbdsh -u "$fleece_uri" -c '
for i in range(20):
    h.pread(4096, i * 4096)'
[ "$(connections_used)" -eq 1 ]
parallel_reads
[ "$(connections_used)" -ge 4 ]
kill_pid "$fleece_pid"
kill_pid "$live_pid"

# Without multi-conn: one connection.
start_live multi-conn multi-conn-mode=disable
fleece_opts=(-v)
start_fleece live="$live_uri" live-connections=4 \
             live-status-file="$tmp/live.json"
[ "$(live_status live_connections)" -eq 1 ]
timeout 60 nbdsh -u "$fleece_uri" -c 'h.pwrite(b"x" * 4096, 0)'
