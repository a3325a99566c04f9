#!/usr/bin/env bash
# nbdkit-fleece: the snapshot is the point in time, byte for byte,
# under concurrent writers and readers.
# SPDX-License-Identifier: BSD-3-Clause
#
# For each run: the live disk is a file served by nbdkit's file
# plugin, or nbdkit's memory plugin (which has fast zero);
# pit-torture -F fills it with seeded random data (plus zeroed and
# trimmed ranges) through the cbw stack; the file is copied, or
# nbdcopy reads the memory disk directly (nothing writes then): that
# copy is the reference, made without the cbw filter.  Then
# pit-torture takes the point in time (PIT) by connecting to
# "snapshot", and several writer connections overwrite, zero, trim
# and fast-zero random unaligned, cluster-straddling ranges while
# several reader connections read random ranges of the snapshot and
# compare them with the reference.  Before it lets the PIT go it
# checks the whole snapshot and the whole live disk (which must hold
# exactly the writers' data), and runs nbdcopy (several connections)
# of the snapshot, whose output must equal the reference (and
# qemu-img compare of the snapshot with the reference).  Finally the
# live disk must differ from the reference, and cbw-status must show
# that the snapshot ended.
#
# Seeds, cluster sizes (4K, 64K, 1M), request sizes and an odd disk
# size vary between runs; -i starts readers and writers together right
# after the PIT, otherwise readers start once the writers are half
# done (many clusters then come from the fleece store).

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires
requires_program nbdcopy
requires test -x "$TESTS_BIN/pit-torture"

disk="$tmp/disk.img"
ref="$tmp/ref.img"
copy="$tmp/copy.img"

# run file|memory SIZE CLUSTER SEED PIT-TORTURE-ARGS...
run ()
{
    local live="$1" size="$2" cluster="$3" seed="$4" gen
    shift 4

    rm -f "$disk" "$ref" "$copy" "$tmp"/*.sock
    if [ "$live" = file ]; then
        truncate -s "$size" "$disk"
        start_live "$size" "$disk"
    else
        start_live "$size"
    fi
    start_cbw cbw-cluster-size="$cluster"

    timeout 300 "$TESTS_BIN/pit-torture" -F -S "$seed" -c "$cluster" \
            "$writer_uri"
    # The reference, read without the cbw filter while nothing writes.
    if [ "$live" = file ]; then
        cp "$disk" "$ref"
    else
        timeout 300 nbdcopy "$live_uri" "$ref"
    fi
    [ "$(status_field state)" = '"none"' ]
    gen="$(status_field generation)"

    timeout 300 "$TESTS_BIN/pit-torture" -S "$seed" -c "$cluster" "$@" \
            -x "nbdcopy --connections=4 '$snap_uri' '$copy' &&
                cmp '$copy' '$ref' &&
                echo nbdcopy of the snapshot equals the reference &&
                qemu-img compare -f raw -F raw '$snap_uri' '$ref'" \
            "$writer_uri" "$snap_uri" "$ref" | tee "$tmp/out"

    # The writers changed the live disk; the snapshot is over.
    if [ "$live" = file ]; then
        ! cmp -s "$disk" "$ref" || exit 1
    else
        timeout 300 nbdcopy "$live_uri" "$copy"
        ! cmp -s "$copy" "$ref" || exit 1
        # The memory plugin does fast zero: some were refused because
        # they needed a copy-before-write.
        grep -E '[1-9][0-9]* ENOTSUP' "$tmp/out"
    fi
    wait_status state '"none"'
    [ "$(status_field generation)" -eq $((gen + 1)) ]
    [ "$(status_field broken)" = false ]
    [ "$(status_field cbw_failures)" = 0 ]

    kill_pid "$cbw_pid"
    kill_pid "$live_pid"
    # The fleece image is removed at exit.
    ! test -e "$tmp/fleece.qcow2" || exit 1
}

M=$((1024 * 1024))

run file   $((32*M)) 65536   1 -w 3 -r 3 -n 1200
run memory $((32*M)) 65536   2 -w 4 -r 2 -n 1000 -i
run file   $((32*M)) 4096    3 -w 3 -r 3 -n 1500 -m 20000
run memory $((32*M)) 4096    4 -w 2 -r 4 -n 1500 -m 9000 -i
run file   $((48*M)) 1048576 5 -w 3 -r 3 -n 250 -m 3000000
run memory $((32*M)) 1048576 6 -w 4 -r 2 -n 200 -m 1500000 -i
# Odd sizes: the last cluster is short.
run file   $((32*M + 12345)) 65536 7 -w 3 -r 3 -n 1000
run memory $((10*M + 4097))  4096  8 -w 3 -r 3 -n 1200 -m 15000 -i
