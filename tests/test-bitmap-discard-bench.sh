#!/usr/bin/env bash
# nbdkit-fleece: the cost of dirty tracking on writer IOPS.
# SPDX-License-Identifier: BSD-3-Clause
#
# Not part of "make check" (it only measures; it asserts nothing).
# Run it from the build's tests directory:
#
#   cd BUILDDIR/tests && SECS=5 REPS=3 \
#     bash SRCDIR/tests/test-bitmap-discard-bench.sh
#
# Each line is one run of 8 connections of aligned 4K random writes
# for SECS seconds, through cbw alone or bitmap-discard + cbw, to a
# memory disk: "warm" passes write granules already marked, "cold"
# ones (a 64G disk) mostly new granules.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e

requires test -x "$TESTS_BIN/bitmap-discard-writer"
SECS="${SECS:-5}"
REPS="${REPS:-3}"

bd_dir bench
bd=(--filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER")
cbw=(--filter="$CBW_FILTER")

# run NAME DISKSIZE PASSES FILTERS-ARRAY-NAME PARAMS...
run ()
{
    local name="$1" size="$2" passes="$3" pass
    local -n filters="$4"
    shift 4
    rm -rf "$d/bm" "$d/ctl" "$d/f.qcow2"
    start_nbdkit -P "$d/live.pid" -U "$d/live.sock" memory "$size"
    start_nbdkit -P "$d/bd.pid" -U "$d/sock" "${filters[@]}" \
        "$FLEECE_PLUGIN" live="nbd+unix:///?socket=$d/live.sock" \
        cbw-image="$d/f.qcow2" "$@"
    if [ -n "$*" ]; then
        wait_for "$d/ctl"
        ctl_ok "$d/ctl" "checkpoint c1" > /dev/null
    fi
    for pass in $(seq 1 "$passes"); do
        echo "$name pass $pass: $("$TESTS_BIN/bitmap-discard-writer" \
            "nbd+unix:///?socket=$d/sock" "$d" 8 $RANDOM "$SECS" 4096)"
    done
    if [ -n "$*" ]; then
        ctl_ok "$d/ctl" "status" > /dev/null
        echo "  $(python3 -c 'import json, sys
print(json.loads(sys.argv[1])["tracking"])' "$reply")"
    fi
    kill_pid "$(cat "$d/bd.pid")"
    kill_pid "$(cat "$d/live.pid")"
    rm -f "$d/bd.pid" "$d/live.pid" "$d/sock" "$d/live.sock"
}

ctl=(bitmap-dir="$d/bm" bitmap-control="$d/ctl")
for rep in $(seq 1 "$REPS"); do
    run "1G  cbw only                 " 1G 1 cbw
    run "1G  bitmap-discard, no dir   " 1G 1 bd
    run "1G  tracking 64K (2 = warm)  " 1G 2 bd "${ctl[@]}"
    run "64G cbw only                 " 64G 1 cbw
    run "64G tracking 64K, cold       " 64G 1 bd "${ctl[@]}"
    run "64G tracking 4K, cold        " 64G 1 bd "${ctl[@]}" \
        bitmap-granularity=4K cbw-cluster-size=4K
done
