#!/usr/bin/env bash
# nbdkit-fleece
# SPDX-License-Identifier: BSD-3-Clause
#
# Smoke test of the benchmark scripts: bench/run.sh --smoke runs every
# contender once on a tiny disk and must print its markdown table;
# bench/threads.sh must name the hop's connection threads and count
# every request.  Numbers are not checked: no test asserts timing.

source ./functions.sh
set -e
set -x

requires_program nbdcopy
requires_program qemu-img
requires_program qemu-nbd
requires_program /usr/bin/python3
requires test -x "$abs_top_builddir/bench/nbd-load"
requires nbdkit --filter="$CBW_FILTER" null --version

results="$(mktemp -d /tmp/fleece-bench-smoke.XXXXXX)"
cleanup_fn rm -rf "$results"

if ! command -v qemu-storage-daemon >/dev/null 2>&1; then
    echo "$0: note: qemu-storage-daemon is missing, the QEMU contender is skipped"
fi

# The build tree is ours and already built by make check: no rebuild.
BENCH_BUILDDIR="$abs_top_builddir" BENCH_NO_BUILD=1 \
BENCH_RESULTS="$results" \
    bash "$abs_top_srcdir/bench/run.sh" --smoke

table="$results/table.md"
cat "$table"

# The table and the goals are there, with the contenders that always run.
grep -q '^| workload | direct | nbdkit nbd plugin | ours, no snapshot | ours, snapshot' "$table"
grep -q '^| 64K random writes, pass 1 (MiB/s) |' "$table"
grep -q '^| goal (median of per-run ratios) | value |' "$table"
grep -q '^| workload | contender | client | hop | live | store |' "$table"
grep -q '^| 4K write | nbdkit nbd plugin | ' "$table"
grep -q 'first write 64K: ours-snap p1 / qemu-snap p1' "$table"
grep -q 'RSS at 1 TiB, no ramcache: nbdkit (MiB)' "$table"

# Raw results are kept, and every load generator run was clean.
test -s "$results/metrics.jsonl"
test -s "$results/raw.log"
if grep '"errors":[1-9]' "$results/raw.log"; then
    echo "$0: a load generator run had failed requests" >&2
    exit 1
fi

# No workload and no server failed (contenders refused or
# not built yet are noted as "skipped", which is fine).
if grep 'failed' "$results/notes.txt"; then
    echo "$0: the bench noted failures" >&2
    exit 1
fi

# Thread by thread: the live and store readers are named, and the pass
# made one request per cluster (16M / 64K = 256).
out="$(BENCH_BUILDDIR="$abs_top_builddir" \
       bash "$abs_top_srcdir/bench/threads.sh" --size 16M --block-size 4K)"
echo "$out"
grep -q '^first writes of 4K over 16M: 256 requests, ' <<<"$out"
grep -q '^  fleece-live ' <<<"$out"
grep -q '^  cbw-store ' <<<"$out"
