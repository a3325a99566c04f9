#!/usr/bin/env bash
# nbdkit-fleece: the whole job, end to end, on a disk of its own.
# SPDX-License-Identifier: BSD-3-Clause
#
#   bash scripts/demo.sh
#
# Sets everything up (scripts/setup.sh), then:
#
#  1. makes a live disk: a file of random data (DEMO_SIZE, 256M by
#     default) served by "nbdkit file" on a Unix socket;
#  2. starts the fleece stack in front of it: the fleece plugin with
#     the cbw filter, using the .so files just built, with a qcow2
#     fleece image;
#  3. starts writers that keep overwriting random ranges of the disk
#     through the stack (DEMO_WRITERS, 2 by default);
#  4. takes the snapshot: pauses the writers, connects to the snapshot
#     export (which takes the point in time), copies the live disk file
#     as the reference image of the point in time, resumes the writers;
#  5. pulls the snapshot with nbdcopy while the writers go on;
#  6. checks that the backup equals the reference, byte for byte, and
#     that the live disk did change meanwhile;
#  7. prints a summary, and exits with status 1 if the backup is wrong.
#
# Every process it starts is stopped by PID, and its files are removed,
# however it ends.
#
# Environment:
#   DEMO_SIZE          size of the live disk (default 256M)
#   DEMO_WRITERS       number of writer connections (default 2)
#   DEMO_CLUSTER_SIZE  cbw-cluster-size (default 64K)
#   DEMO_CBW_ARGS      more cbw parameters, e.g. "cbw-ram=64M"
#   DEMO_SKIP_SETUP=1  do not run scripts/setup.sh (already built)
#   DEMO_BYPASS=1      negative control: the writers write to the live
#                      disk directly, behind the filter's back, so the
#                      backup must come out wrong and the demo FAIL
#   BUILD_DIR          as for scripts/setup.sh (default ./build)

set -euo pipefail

srcdir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
builddir="${BUILD_DIR:-$srcdir/build}"
size="${DEMO_SIZE:-256M}"
nr_writers="${DEMO_WRITERS:-2}"
cluster_size="${DEMO_CLUSTER_SIZE:-64K}"
read -r -a cbw_args <<< "${DEMO_CBW_ARGS:-}"

if [ "${DEMO_SKIP_SETUP:-}" != 1 ]; then
    bash "$srcdir/scripts/setup.sh"
fi

# Debian's python3 has the nbd module (another python3 on PATH may
# not), and nbdsh/nbdcopy/nbdkit are there too.
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:$PATH"
helper="$srcdir/scripts/demo-helper.py"
plugin="$builddir/plugins/fleece/.libs/nbdkit-fleece-plugin.so"
filter="$builddir/filters/cbw/.libs/nbdkit-cbw-filter.so"
for f in "$plugin" "$filter"; do
    if [ ! -f "$f" ]; then
        echo "demo: $f is missing: build first (bash scripts/setup.sh)" >&2
        exit 1
    fi
done

say () { echo "==> demo: $*" >&2; }

tmp="$(mktemp -d /tmp/fleece-demo.XXXXXX)"
pids=()

# Stop everything we started, newest first, by PID; then remove files.
cleanup ()
{
    local status=$? i p
    set +e
    trap '' INT TERM
    : > "$tmp/stop"
    for (( i = ${#pids[@]} - 1; i >= 0; i-- )); do
        p="${pids[$i]}"
        kill "$p" 2>/dev/null || continue
        for _ in $(seq 1 100); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$p" 2>/dev/null
    done
    if [ "$status" -ne 0 ] && [ -f "$tmp/fleece.log" ]; then
        echo "---- last lines of the fleece nbdkit log ----" >&2
        tail -20 "$tmp/fleece.log" >&2
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PIDs that have been waited for must not be killed later: forget them.
forget ()
{
    local i
    for i in "${!pids[@]}"; do
        [ "${pids[$i]}" = "$1" ] && unset 'pids[i]'
    done
    pids=("${pids[@]}")
}

# Start nbdkit in the background (in the foreground as far as nbdkit
# knows, so that its messages go to LOG), remember its PID, and wait
# until it serves (it writes PIDFILE then).
start_nbdkit ()
{
    local pidfile="$1" log="$2" p
    shift 2
    nbdkit -f -P "$pidfile" "$@" 2>>"$log" &
    p="$!"
    pids+=("$p")
    for _ in $(seq 1 300); do
        [ -s "$pidfile" ] && break
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    if [ ! -s "$pidfile" ]; then
        echo "demo: nbdkit did not start:" >&2
        cat "$log" >&2
        exit 1
    fi
}

# Wait until FILE exists (at most 30 s).
wait_for ()
{
    for _ in $(seq 1 300); do
        [ -e "$1" ] && return 0
        sleep 0.1
    done
    echo "demo: timed out waiting for $1" >&2
    exit 1
}

now () { date +%s.%N; }

# Sum of the writers' operations so far, from their SUFFIX files.
writer_ops ()
{
    local w sum=0 n
    for w in $(seq 1 "$nr_writers"); do
        n="$(json_field "$(cat "$tmp/writer-$w.$1")" ops)"
        sum=$((sum + n))
    done
    echo "$sum"
}
mib () { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
json_field () { sed -n "s/.*\"$2\":\"*\\([^,}\"]*\\).*/\\1/p" <<< "$1"; }

# 1. The live disk.
say "making a live disk of $size with random data"
truncate -s "$size" "$tmp/live.img"
bytes="$(stat -c %s "$tmp/live.img")"
head -c "$bytes" /dev/urandom > "$tmp/live.img"
start_nbdkit "$tmp/live.pid" "$tmp/live.log" \
    -U "$tmp/live.sock" file "$tmp/live.img"

# 2. The fleece stack.
say "starting the fleece stack (fleece plugin + cbw filter)"
start_nbdkit "$tmp/fleece.pid" "$tmp/fleece.log" \
    -U "$tmp/fleece.sock" \
    --filter="$filter" "$plugin" \
    live="nbd+unix:///?socket=$tmp/live.sock" \
    cbw-image="$tmp/fleece.qcow2" cbw-cluster-size="$cluster_size" \
    "${cbw_args[@]}"
writer_uri="nbd+unix:///?socket=$tmp/fleece.sock"
snapshot_uri="nbd+unix:///snapshot?socket=$tmp/fleece.sock"
status_uri="nbd+unix:///cbw-status?socket=$tmp/fleece.sock"

# 3. The writers, through the stack's writer export.
say "starting $nr_writers writers"
target_uri="$writer_uri"
if [ "${DEMO_BYPASS:-}" = 1 ]; then
    say "DEMO_BYPASS=1: the writers bypass the cbw filter"
    target_uri="nbd+unix:///?socket=$tmp/live.sock"
fi
t_start="$(now)"
for w in $(seq 1 "$nr_writers"); do
    /usr/bin/python3 "$helper" writer "$target_uri" "$tmp" "$w" "$RANDOM" \
        2>"$tmp/writer-$w.log" &
    pids+=("$!")
    writer_pids+=("$!")
done
sleep 3

# 4. The point in time.  Writers pause (their requests in flight
# complete), the holder connects to the snapshot export, which takes
# the point in time, and the live disk file is copied as the
# reference: with the writers paused it is exactly the point in time.
say "pausing the writers and taking the snapshot"
: > "$tmp/pause"
for w in $(seq 1 "$nr_writers"); do
    wait_for "$tmp/writer-$w.paused"
done
/usr/bin/python3 "$helper" hold "$snapshot_uri" "$tmp/holder.ready" \
    2>"$tmp/holder.log" &
pids+=("$!")
holder_pid="$!"
wait_for "$tmp/holder.ready"
cp --sparse=never "$tmp/live.img" "$tmp/pit.img"
ops_at_pit="$(writer_ops paused)"
status="$(/usr/bin/python3 "$helper" status "$status_uri")"
say "snapshot taken: state $(json_field "$status" state)," \
    "generation $(json_field "$status" generation)"
t_pause="$(sed -n 's/.*"time":\([0-9.]*\).*/\1/p' "$tmp/writer-1.paused")"
t_resume="$(now)"
rm -f "$tmp/pause"

# One second with the snapshot held and no backup running: what
# copy-before-write alone costs the writers.
sleep 1
ops_before_copy="$(writer_ops progress)"
t_before_copy="$(now)"

# 5. The backup, while the writers keep writing.  Sample the fleece
# image's size as the copy goes.
say "pulling the snapshot with nbdcopy while the writers write"
peak=0
t0="$(now)"
nbdcopy "$snapshot_uri" "$tmp/backup.img" &
copy_pid="$!"
pids+=("$copy_pid")
while kill -0 "$copy_pid" 2>/dev/null; do
    a="$(stat -c '%b*%B' "$tmp/fleece.qcow2" 2>/dev/null || echo 0)"
    a=$((a))
    [ "$a" -gt "$peak" ] && peak="$a"
    sleep 0.05
done
copy_status=0
wait "$copy_pid" || copy_status=$?
forget "$copy_pid"
t1="$(now)"
ops_after_copy="$(writer_ops progress)"
t_after_copy="$(now)"
if [ "$copy_status" -ne 0 ]; then
    echo "demo: nbdcopy failed (status $copy_status)" >&2
    exit 1
fi
status="$(/usr/bin/python3 "$helper" status "$status_uri")"
a="$(stat -c '%b*%B' "$tmp/fleece.qcow2")"
a=$((a))
[ "$a" -gt "$peak" ] && peak="$a"

# Stop the writers.
: > "$tmp/stop"
for p in "${writer_pids[@]}"; do
    wait "$p"
    forget "$p"
done
kill "$holder_pid"
wait "$holder_pid" || :
forget "$holder_pid"

# For comparison: the same pull from the writer export, without a
# snapshot (the writers have stopped).
t2="$(now)"
nbdcopy "$writer_uri" "$tmp/live-copy.img"
t3="$(now)"
rm -f "$tmp/live-copy.img"

# 6. Check.
say "comparing"
ops=0 wbytes=0 writes=0 zeroes=0 trims=0
for w in $(seq 1 "$nr_writers"); do
    j="$(cat "$tmp/writer-$w.json")"
    ops=$((ops + $(json_field "$j" ops)))
    wbytes=$((wbytes + $(json_field "$j" bytes)))
    writes=$((writes + $(json_field "$j" writes)))
    zeroes=$((zeroes + $(json_field "$j" zeroes)))
    trims=$((trims + $(json_field "$j" trims)))
done
live_vs_pit="$(/usr/bin/python3 "$helper" compare "$tmp/live.img" "$tmp/pit.img")"
backup_vs_pit="$(/usr/bin/python3 "$helper" compare "$tmp/backup.img" "$tmp/pit.img")"
changed="$(json_field "$live_vs_pit" differing_bytes)"
wrong="$(json_field "$backup_vs_pit" differing_bytes)"

# 7. Summary.  (Writer counters come from files refreshed every 0.1 s,
# so the rates are approximate.)
secs () { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
per_s () { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.0f", n / (b - a) }'; }
copy_s="$(secs "$t0" "$t1")"
copy_rate="$(per_s $((bytes / 1048576)) "$t0" "$t1")"
live_s="$(secs "$t2" "$t3")"
live_rate="$(per_s $((bytes / 1048576)) "$t2" "$t3")"
before_s="$(secs "$t_start" "$t_pause")"
iops_before="$(per_s "$ops_at_pit" "$t_start" "$t_pause")"
held_ops=$((ops_before_copy - ops_at_pit))
held_s="$(secs "$t_resume" "$t_before_copy")"
iops_held="$(per_s "$held_ops" "$t_resume" "$t_before_copy")"
copy_ops=$((ops_after_copy - ops_before_copy))
copy_ops_s="$(secs "$t_before_copy" "$t_after_copy")"
iops_copy="$(per_s "$copy_ops" "$t_before_copy" "$t_after_copy")"

echo
echo "nbdkit-fleece demo"
echo "  live disk ............ $(mib "$bytes") of random data, nbdkit file"
echo "  stack ................ fleece plugin + cbw filter" \
     "(cbw-cluster-size=$cluster_size${DEMO_CBW_ARGS:+ $DEMO_CBW_ARGS}," \
     "qcow2 fleece image)"
echo "  writers .............. $nr_writers connections, $ops ops" \
     "($writes writes, $zeroes zeroes, $trims trims, $(mib "$wbytes"))"
echo "  before the PIT ....... $ops_at_pit ops in ${before_s}s" \
     "($iops_before ops/s, no snapshot)"
echo "  snapshot held ........ $held_ops ops in ${held_s}s" \
     "($iops_held ops/s, copy-before-write, no backup running)"
echo "  during the backup .... $copy_ops ops in ${copy_ops_s}s" \
     "($iops_copy ops/s, copy-before-write and nbdcopy)"
echo "  live disk changed .... $changed bytes differ from the PIT image"
echo "  backup (nbdcopy) ..... $(mib "$bytes") in ${copy_s}s, $copy_rate MiB/s"
echo "  live disk pull ....... $(mib "$bytes") in ${live_s}s, $live_rate MiB/s" \
     "(writer export, no snapshot)"
echo "  copy-before-write .... $(mib "$(json_field "$status" copied_bytes)")" \
     "preserved in the fleece image"
echo "  fleece image peak .... $(mib "$peak") allocated"
if [ "$wrong" = 0 ]; then
    echo "  backup = PIT image ... yes, byte for byte"
else
    echo "  backup = PIT image ... NO: $wrong bytes differ," \
         "first at offset $(json_field "$backup_vs_pit" first_difference)"
fi
if [ "$changed" = 0 ]; then
    echo "  warning .............. the live disk did not change after" \
         "the point in time: nothing was tested"
elif [ "$copy_ops" -eq 0 ]; then
    echo "  warning .............. no write ran while nbdcopy was copying"
fi
echo
if [ "$wrong" = 0 ]; then
    echo "PASS"
else
    echo "FAIL"
    exit 1
fi
