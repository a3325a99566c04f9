#!/usr/bin/env bash
# nbdkit-fleece: ramcache-size bounds the memory of the cache, data
# and metadata together.
# SPDX-License-Identifier: BSD-3-Clause
#
# The store below is throttled (nbdkit's rate filter over null) so
# that write-back lags behind and the cache fills to its limit.
# nbdcopy writes 128M, much more than the limit, with few requests
# in flight (so nbdkit's own request buffers stay small: 16 x 256K).
# The peak resident size of the server (VmHWM) may then grow by the
# limit plus a small allowance for those buffers and the threads, and
# it must grow by at least half the limit (the cache did fill).
# A memory measure, not a timing: the rate only makes the store slow.

source ./functions.sh
set -e
set -x

requires nbdkit --filter="$RAMCACHE_FILTER" --filter=rate null \
         ramcache-size=1M rate=1M --version
requires nbdkit pattern 1M --version
requires_program nbdcopy
case "$SANITIZERS" in
    *address*|*thread*)
        echo "$0: test skipped because sanitizer runtimes change the" \
             "memory use it measures"
        exit 77 ;;
esac

sock="$(mktemp -u /tmp/fleece-test.XXXXXX)"
pidfile="$sock.pid"
cleanup_fn rm -f "$sock" "$pidfile"
M=$((1024 * 1024))
slack=$((10 * M))

hwm () { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB$/\1/p' "/proc/$1/status"; }

for limit in 8 32; do
    start_nbdkit -P "$pidfile" -U "$sock" \
                 --filter="$RAMCACHE_FILTER" --filter=rate null 1G \
                 ramcache-size=${limit}M ramcache-block-size=64K rate=800M
    before=$(( $(hwm "$pid") * 1024 ))
    timeout 300 nbdkit -U - pattern 128M --run \
        "nbdcopy --connections=1 --requests=16 \"\$uri\" \
                 'nbd+unix:///?socket=$sock'"
    after=$(( $(hwm "$pid") * 1024 ))
    grew=$(( after - before ))
    echo "ramcache-size=${limit}M: VmHWM grew by $((grew / 1024)) KiB"
    [ "$grew" -le $(( limit * M + slack )) ]
    [ "$grew" -ge $(( limit * M / 2 )) ]
    kill_pid "$pid"
    rm -f "$sock"
done
