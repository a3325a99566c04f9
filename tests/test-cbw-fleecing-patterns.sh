#!/usr/bin/env bash
# nbdkit-fleece: the boundary patterns of QEMU's image-fleecing test.
# SPDX-License-Identifier: BSD-3-Clause
#
# Port of qemu-iotests tests/image-fleecing to the cbw filter, with
# qemu-io over NBD: a 64M disk, 64K clusters.  Patterns are written at
# 0, 1M, 32M and 64M-64K; a snapshot is taken (a client holds
# "snapshot" open); the snapshot shows the patterns and zeroes
# elsewhere; the writer then overwrites ranges around cluster
# boundaries:
#
#   0xab at 0         64K   full overwrite of a cluster
#   0xad at 1M-32K    64K   partial-left: the left half of 1M's cluster
#   0x1d at 32M+32K   64K   partial-right: the right half of 32M's
#   0xea at 64M-128K  64K   adjacent-left of the last cluster
#
# Each is checked by new qemu-io connections to "snapshot" (several
# successive connections, one PIT): the snapshot still shows the
# original patterns and zeroes, while the live disk has the new data
# and the untouched remainders.  Run with the default 64K clusters and
# again with 4K and 1M clusters (the patterns then cover several
# clusters or share one).

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires
requires_program qemu-io

patterns=("0x5d 0 64k" "0xdc 32M 64k" "0xd5 1M 64k" "0xcd 0x3ff0000 64k")
overwrite=("0xab 0 64k" "0xad 0x00f8000 64k" "0x1d 0x2008000 64k"
           "0xea 0x3fe0000 64k")
zeroes=("0 0x00f8000 32k" "0 0x2010000 32k" "0 0x3fe0000 64k")
remainder=("0xd5 0x108000 32k" "0xdc 32M 32k" "0xcd 0x3ff0000 64k")

# io URI CMD...: one qemu-io connection running the commands; fails
# if any command fails (including a pattern mismatch).
io ()
{
    local uri="$1" args=() c
    shift
    for c in "$@"; do args+=(-c "$c"); done
    timeout 60 qemu-io -f raw "${args[@]}" "$uri"
}

# reads PATTERN-ARRAY-NAME: "read -P" commands for each entry.
reads ()
{
    local -n arr="$1"
    local p
    for p in "${arr[@]}"; do
        set -- $p
        echo "read -P $1 $2 $3"
    done
}

run ()
{
    local cluster="$1" copied="$2" p
    rm -f "$tmp"/*.sock
    start_live 64M
    start_cbw cbw-cluster-size="$cluster"

    # The original data.
    for p in "${patterns[@]}"; do
        set -- $p
        io "$writer_uri" "write -P $1 $2 $3"
    done

    hold_snapshot
    [ "$(status_field state)" = '"active"' ]

    # The snapshot shows the patterns and zeroes.
    mapfile -t cmds < <(reads patterns; reads zeroes)
    io "$snap_uri" "${cmds[@]}"

    # The writer overwrites: each write on its own connection, and the
    # snapshot is checked after each one.
    for p in "${overwrite[@]}"; do
        set -- $p
        io "$writer_uri" "write -P $1 $2 $3"
        io "$snap_uri" "${cmds[@]}"
    done

    # The live disk has the new data and the remainders.
    mapfile -t live_cmds < <(reads overwrite; reads remainder)
    io "$writer_uri" "${live_cmds[@]}"

    # Exactly the clusters the overwrites touched were preserved: with
    # 64K clusters, full (1 cluster), partial-left and partial-right
    # (2 each), adjacent-left (1).
    [ "$(status_field copied_bytes)" -eq "$copied" ]
    [ "$(status_field preserved_bytes)" -eq "$copied" ]

    # The snapshot still holds after every check; one more time.
    io "$snap_uri" "${cmds[@]}"
    release_snapshot
    wait_status state '"none"'

    # After the snapshot: a new PIT sees the new data.
    hold_snapshot
    io "$snap_uri" "${live_cmds[@]}"
    release_snapshot

    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
}

run 64K $((6 * 64 * 1024))
run 4K  $((4 * 16 * 4096))
run 1M  $((4 * 1024 * 1024))
