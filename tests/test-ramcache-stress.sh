#!/usr/bin/env bash
# nbdkit-fleece: ramcache filter data integrity under concurrency, at
# cache limits from one block up.
# SPDX-License-Identifier: BSD-3-Clause
#
# ramcache-stress (ramcache-stress.c) runs several connections of
# random unaligned writes, zeroes, trims, reads and flushes, each
# checked against a model of the disk.  Regions smaller than a block
# make the connections share blocks.  The last run is over the file
# plugin, and after its final flush the file itself is checked.

source ./functions.sh
set -e
set -x

requires nbdkit --filter="$RAMCACHE_FILTER" null ramcache-size=1M --version
requires test -x "$TESTS_BIN/ramcache-stress"

sock="$(mktemp -u /tmp/fleece-test.XXXXXX)"
pidfile="$sock.pid"
img="$(mktemp /tmp/fleece-test.XXXXXX.img)"
cleanup_fn rm -f "$sock" "$pidfile" "$img"

uri="nbd+unix:///?socket=$sock"

# run SIZE RAMCACHE-PARAMS -- STRESS-ARGS: one server, one stress run.
run ()
{
    local size="$1" params=() args=()
    shift
    while [ "$1" != "--" ]; do params+=("$1"); shift; done
    shift
    args=("$@")
    start_nbdkit -P "$pidfile" -U "$sock" \
                 --filter="$RAMCACHE_FILTER" memory "$size" "${params[@]}"
    "$TESTS_BIN/ramcache-stress" "${args[@]}" "$uri"
    kill_pid "$pid"
    rm -f "$sock"
}

# One block of 4K, connections sharing blocks.
run 1M ramcache-size=4K ramcache-block-size=4K -- -t 6 -n 1500 -r 3001 -S 1
# One block of 64K, requests spanning several blocks.
run 2M ramcache-size=64K ramcache-block-size=64K -- -t 4 -n 600 -r 200001 -S 2
# A few blocks.
run 1M ramcache-size=20K ramcache-block-size=4K -- -t 6 -n 1500 -r 3001 -S 3
run 2M ramcache-size=256K ramcache-block-size=64K -- -t 4 -n 600 -r 100003 -S 4
# Large: nothing needs evicting but flushes and FUA write back.
run 4M ramcache-size=64M -- -t 6 -n 1500 -r 5003 -S 5
# An odd disk size: the last block is short.
run 1000001 ramcache-size=16K ramcache-block-size=4K -- -t 4 -n 1500 -r 2999 -S 6

# A slow store below: write-back always lags behind.
start_nbdkit -P "$pidfile" -U "$sock" \
             --filter="$RAMCACHE_FILTER" --filter=delay memory 1M \
             ramcache-size=32K ramcache-block-size=4K \
             delay-write=2ms delay-read=1ms
"$TESTS_BIN/ramcache-stress" -t 4 -n 300 -r 3001 -S 7 "$uri"
kill_pid "$pid"
rm -f "$sock"

# The file plugin: after the final flush the file holds everything.
truncate -s 2M "$img"
start_nbdkit -P "$pidfile" -U "$sock" \
             --filter="$RAMCACHE_FILTER" file "$img" \
             ramcache-size=32K ramcache-block-size=4K
"$TESTS_BIN/ramcache-stress" -t 6 -n 1500 -r 3001 -S 8 -c "$img" "$uri"
kill_pid "$pid"
rm -f "$sock"
