#!/usr/bin/env bash
# nbdkit-fleece: where the CPU of one first-write pass goes, thread by
# thread.
# SPDX-License-Identifier: BSD-3-Clause
#
# bench/threads.sh [--size SIZE] [--block-size BS] [-- KEY=VALUE ...]
#
# Starts `nbdkit memory SIZE` (filled with pseudo-random data) as the
# live disk, our stack (cbw over fleece, default qcow2 store, plus the
# KEY=VALUE parameters after --) in front of it, holds a snapshot
# open, and writes one BS request per 64K cluster in a seeded random
# order (QD16): a first write for every cluster.  Around that pass it
# reads, for every thread of the hop that lives through it, the CPU
# time and the context switches (/proc/PID/task/TID/schedstat and
# status), and for the hop, the store's qemu-nbd and the live disk
# the process totals (/proc/PID/stat, 10 ms ticks).  It prints CPU µs
# and switches per request.  nbdkit's worker threads for the writer's
# connection start and end with it: they are the process total less
# the threads listed.
#
# Uses the build tree BENCH_BUILDDIR (default: ./build).  Needs
# nbdkit, qemu-img and qemu-nbd; stops what it started by PID.

set -euo pipefail

srcdir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
builddir="${BENCH_BUILDDIR:-$srcdir/build}"
size=256M
bs=64K
while [ $# -gt 0 ]; do
    case "$1" in
        --size) size="$2"; shift 2 ;;
        --block-size) bs="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "threads.sh: unknown option: $1" >&2; exit 1 ;;
    esac
done

LOAD="$builddir/bench/nbd-load"
FLEECE="$builddir/plugins/fleece/.libs/nbdkit-fleece-plugin.so"
CBW="$builddir/filters/cbw/.libs/nbdkit-cbw-filter.so"
for f in "$LOAD" "$FLEECE" "$CBW"; do
    [ -e "$f" ] || { echo "threads.sh: missing $f (build first)" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/fleece-threads.XXXXXX")"
pids=()
cleanup ()
{
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[$i]}" 2>/dev/null || :
    done
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT

wait_up ()
{
    local i
    for i in $(seq 1 200); do
        [ -S "$1" ] && [ -s "$2" ] && return 0
        sleep 0.05
    done
    echo "threads.sh: server on $1 did not start" >&2
    exit 1
}

live="nbd+unix:///?socket=$work/live.sock"
nbdkit -U "$work/live.sock" -P "$work/live.pid" memory "$size"
wait_up "$work/live.sock" "$work/live.pid"
pids+=("$(cat "$work/live.pid")")
"$LOAD" fill "$live" --label=fill >/dev/null

nbdkit -U "$work/ours.sock" -P "$work/ours.pid" --filter="$CBW" "$FLEECE" \
       "live=$live" "cbw-image=$work/fleece.qcow2" "$@"
wait_up "$work/ours.sock" "$work/ours.pid"
hop="$(cat "$work/ours.pid")"
pids+=("$hop")
"$LOAD" hold "nbd+unix:///snapshot?socket=$work/ours.sock" >/dev/null 2>&1 &
pids+=("$!")
sleep 0.5
# The store: the hop's qemu-nbd child.
store=
for p in $(cat /proc/"$hop"/task/*/children 2>/dev/null); do
    [ "$(cat /proc/"$p"/comm 2>/dev/null)" = qemu-nbd ] && store="$p"
done

# Per thread: TID CPU-ns SWITCHES.
threads ()
{
    local t
    for t in /proc/"$hop"/task/*; do
        echo "$(basename "$t") $(cut -d' ' -f1 "$t/schedstat")" \
             "$(awk '/^(non)?voluntary_ctxt_switches/ { s += $2 } END { print s }' "$t/status")" \
             "$(tr -c -d '[:alnum:]-' <"$t/comm")"
    done | sort
}
ticks () { if [ -n "$1" ]; then awk '{ print $14 + $15 }' /proc/"$1"/stat; else echo 0; fi; }

threads >"$work/before"
h0=$(ticks "$hop") s0=$(ticks "$store") l0=$(ticks "${pids[0]}")
out="$("$LOAD" write --block-size="$bs" --stride=64K --seed=1 \
       "nbd+unix:///?socket=$work/ours.sock" --label=threads)"
h1=$(ticks "$hop") s1=$(ticks "$store") l1=$(ticks "${pids[0]}")
threads >"$work/after"

ops="$(echo "$out" | sed -n 's/.*"ops":\([0-9]*\).*/\1/p')"
rate="$(echo "$out" | sed -n 's/.*"ops_per_sec":\([0-9.]*\).*/\1/p')"
echo "first writes of $bs over $size: $ops requests, $rate/s"
echo "per request, process totals (10 ms ticks):" \
     "hop $(( (h1 - h0) * 10000 / ops )) µs," \
     "store $(( (s1 - s0) * 10000 / ops )) µs," \
     "live $(( (l1 - l0) * 10000 / ops )) µs"
echo "per request, hop threads alive through the pass (main thread $hop):"
# Joined: TID CPU0 SW0 NAME CPU1 SW1 NAME.  Our threads are named
# (fleece-live, cbw-store, ramtier-wb, ...); nbdkit's are "nbdkit".
join "$work/before" "$work/after" |
    awk -v ops="$ops" '{
        cpu = ($5 - $2) / ops / 1000; sw = ($6 - $3) / ops
        if (cpu >= 0.05 || sw >= 0.05)
            printf "  %-14s %7s: %6.1f µs, %.2f switches\n", $7, $1, cpu, sw
    }'
