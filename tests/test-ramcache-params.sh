#!/usr/bin/env bash
# nbdkit-fleece: the ramcache filter refuses bad parameters, with an
# error naming the parameter.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
set -e
set -x

requires nbdkit --filter="$RAMCACHE_FILTER" null ramcache-size=1M --version

err="$(mktemp /tmp/fleece-test.XXXXXX.err)"
cleanup_fn rm -f "$err"

# bad MESSAGE PARAMS...: nbdkit must fail and say MESSAGE.  (A socket
# path of our own, not -U -: nbdkit 1.32 leaves the directory it makes
# for -U - behind when it fails at startup.)
bad ()
{
    local msg="$1"
    shift
    if nbdkit -U "$TMPDIR/bad.sock" --filter="$RAMCACHE_FILTER" null 1M \
              "$@" --run true 2>"$err"; then
        echo "$0: nbdkit accepted: $*" >&2
        exit 1
    fi
    cat "$err"
    grep -F -- "$msg" "$err"
}

bad "ramcache-size=SIZE parameter is required"
bad "ramcache-size=foo: expected a size" ramcache-size=foo
bad "ramcache-size=0: must be greater than 0" ramcache-size=0
bad "ramcache-size=4096 is smaller than one block (ramcache-block-size=65536)" \
    ramcache-size=4K
bad "ramcache-block-size=3000: must be a power of 2 between 4K and 16M" \
    ramcache-size=1M ramcache-block-size=3000
bad "ramcache-block-size=2K: must be a power of 2 between 4K and 16M" \
    ramcache-size=1M ramcache-block-size=2K
bad "ramcache-block-size=32M: must be a power of 2 between 4K and 16M" \
    ramcache-size=64M ramcache-block-size=32M
bad "ramcache-block-size=x: expected a size" \
    ramcache-size=1M ramcache-block-size=x

# Good ones, including the smallest: one block.
nbdkit -U - --filter="$RAMCACHE_FILTER" null 1M ramcache-size=4K \
       ramcache-block-size=4K --run true
nbdkit -U - --filter="$RAMCACHE_FILTER" null 1M ramcache-size=16M \
       ramcache-block-size=16M --run true
nbdkit -U - --filter="$RAMCACHE_FILTER" null 1M ramcache-size=1G \
       --run true
