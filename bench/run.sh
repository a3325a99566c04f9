#!/usr/bin/env bash
# nbdkit-fleece benchmarks
# SPDX-License-Identifier: BSD-3-Clause
#
# bench/run.sh [--quick | --smoke] [--runs N] [--size SIZE] [--ram SIZE]
#              [--no-qemu] [--no-1t] [--only C1,C2,...]
#
# Builds what it needs, runs every contender interleaved run by run
# (A B C ... A B C ...), and prints a markdown table of medians with
# the goals, and the CPU time each process spent per request.  Raw results go to bench/results/<timestamp>/
# (or $BENCH_RESULTS).  See bench/README.md.
#
# Environment:
#   BENCH_BUILDDIR  a configured build tree to use (default: configure
#                   and build one in ${TMPDIR:-/tmp}/nbdkit-fleece-bench-build)
#   BENCH_RESULTS   where to keep raw results
#   BENCH_NO_BUILD  set: do not run make (the tree is built already)
#   BENCH_TMPDIR    where sockets and fleece images go (default $TMPDIR
#                   or /tmp); the same file system for every contender
#   BENCH_NO_PERF   set: count CPU from /proc/PID/stat, not perf stat

set -euo pipefail

srcdir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ---------------------------------------------------------------------
# Settings.

profile=default
runs=
size=
ram=
with_qemu=1
with_1t=1
only=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) profile=quick; shift ;;
        --smoke) profile=smoke; shift ;;
        --runs) runs="$2"; shift 2 ;;
        --runs=*) runs="${1#--runs=}"; shift ;;
        --size) size="$2"; shift 2 ;;
        --size=*) size="${1#--size=}"; shift ;;
        --ram) ram="$2"; shift 2 ;;
        --ram=*) ram="${1#--ram=}"; shift ;;
        --no-qemu) with_qemu=0; shift ;;
        --no-1t) with_1t=0; shift ;;
        --only) only="$2"; shift 2 ;;
        --only=*) only="${1#--only=}"; shift ;;
        -h|--help)
            sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
            exit 0 ;;
        *) echo "run.sh: unknown option: $1" >&2; exit 1 ;;
    esac
done

case "$profile" in
    default) : "${runs:=3}" "${size:=1G}" ;    rss_load=2000 ;;
    quick)   : "${runs:=1}" "${size:=256M}" ;  rss_load=500 ;;
    smoke)   : "${runs:=1}" "${size:=16M}" ;   rss_load=50 ;;
esac

# Size in bytes.
to_bytes ()
{
    local v="$1" n
    n="${v%[KkMmGgTt]}"
    case "$v" in
        *[Kk]) echo $((n << 10)) ;;
        *[Mm]) echo $((n << 20)) ;;
        *[Gg]) echo $((n << 30)) ;;
        *[Tt]) echo $((n << 40)) ;;
        *) echo "$v" ;;
    esac
}
size_bytes="$(to_bytes "$size")"
: "${ram:=$((size_bytes / 2))}"
ram_bytes="$(to_bytes "$ram")"
if [ $((size_bytes % (1 << 20))) -ne 0 ] || [ "$size_bytes" -lt $((4 << 20)) ]
then
    echo "run.sh: --size must be a multiple of 1M, at least 4M" >&2
    exit 1
fi

# ---------------------------------------------------------------------
# The QEMU contender needs qemu-storage-daemon (Debian package
# qemu-system-common, which scripts/setup.sh does not install: the
# tests do not need it).  As root, install it; otherwise its columns
# are skipped with a note.  Never in --smoke mode (make check).

if [ "$profile" != smoke ] && [ "$with_qemu" = 1 ] &&
       ! command -v qemu-storage-daemon >/dev/null 2>&1 &&
       [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing qemu-system-common (qemu-storage-daemon)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update >&2 &&
        DEBIAN_FRONTEND=noninteractive \
        apt-get install -y qemu-system-common </dev/null >&2 ||
        echo "bench: could not install qemu-system-common" >&2
fi

# ---------------------------------------------------------------------
# Build.

log () { echo "bench: [$(date +%T.%N | cut -c1-12)] $*" >&2; }

builddir="${BENCH_BUILDDIR:-}"
if [ -z "$builddir" ]; then
    builddir="${TMPDIR:-/tmp}/nbdkit-fleece-bench-build"
    if ! [ -f "$builddir/Makefile" ]; then
        log "configuring in $builddir"
        mkdir -p "$builddir"
        if ! [ -x "$srcdir/configure" ]; then
            (cd "$srcdir" && autoreconf -fi)
        fi
        (cd "$builddir" && "$srcdir/configure" -q)
    fi
fi
builddir="$(cd "$builddir" && pwd)"
if [ -z "${BENCH_NO_BUILD:-}" ]; then
    log "building in $builddir"
    make -C "$builddir" -j"$(nproc)" >"$builddir/bench-make.log" 2>&1 || {
        tail -30 "$builddir/bench-make.log" >&2
        echo "run.sh: build failed" >&2
        exit 1
    }
fi

LOAD="$builddir/bench/nbd-load"
FLEECE="$builddir/plugins/fleece/.libs/nbdkit-fleece-plugin.so"
CBW="$builddir/filters/cbw/.libs/nbdkit-cbw-filter.so"
BITMAP_DISCARD="$builddir/filters/bitmap-discard/.libs/nbdkit-bitmap-discard-filter.so"
for f in "$LOAD" "$FLEECE" "$CBW"; do
    [ -e "$f" ] || { echo "run.sh: missing after build: $f" >&2; exit 1; }
done

ts="$(date -u +%Y%m%d-%H%M%S)"
results="${BENCH_RESULTS:-$srcdir/bench/results/$ts}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
work="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/fleece-bench.XXXXXX")"
metrics="$results/metrics.jsonl"
raw="$results/raw.log"
notes="$results/notes.txt"
: >"$metrics"; : >"$raw"; : >"$notes"

# ---------------------------------------------------------------------
# Process bookkeeping: every server we start is stopped by its pid.

pids=()
qsd_snapshot_export=
holder_pid=
cleanup ()
{
    local i
    set +e
    # Newest first: holders, then the stacks, then the live disk.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        stop_pid "${pids[$i]}"
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop_pid PID: SIGTERM, wait, then SIGKILL.
stop_pid ()
{
    local p="$1" i
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || return 0
    for i in $(seq 1 100); do
        kill -0 "$p" 2>/dev/null || return 0
        sleep 0.05
    done
    log "pid $p ignored SIGTERM, killing it"
    kill -9 "$p" 2>/dev/null || :
}

forget_pid ()
{
    local p="$1" i
    for i in "${!pids[@]}"; do
        [ "${pids[$i]}" = "$p" ] && unset 'pids[i]'
    done
    pids=("${pids[@]}")
    return 0
}

# wait_for PIDFILE SOCK LOGFILE: wait for a daemon to be ready; print
# its pid.  Fails if it does not come up within 30 s.
wait_for ()
{
    local pidfile="$1" sock="$2" logf="$3" i
    for i in $(seq 1 600); do
        if [ -s "$pidfile" ] && [ -S "$sock" ]; then
            cat "$pidfile"
            return 0
        fi
        sleep 0.05
    done
    log "server did not start; its log:"
    cat "$logf" >&2 || :
    return 1
}

# start_nbdkit NAME ARGS...: daemonised nbdkit on $work/NAME.sock;
# sets $server_pid (empty if it failed).
start_nbdkit ()
{
    local name="$1"; shift
    local sock="$work/$name.sock" pidf="$work/$name.pid"
    local logf="$results/server-$name.log"
    rm -f "$sock" "$pidf"
    server_pid=
    if ! nbdkit -U "$sock" -P "$pidf" "$@" >>"$logf" 2>&1; then
        return 1
    fi
    server_pid="$(wait_for "$pidf" "$sock" "$logf")" || return 1
    pids+=("$server_pid")
}

# start_qsd NAME ARGS...: daemonised qemu-storage-daemon serving NBD
# on $work/NAME.sock; sets $server_pid.
start_qsd ()
{
    local name="$1"; shift
    local sock="$work/$name.sock" pidf="$work/$name.pid"
    local logf="$results/server-$name.log"
    rm -f "$sock" "$pidf"
    server_pid=
    if ! qemu-storage-daemon "$@" \
         --nbd-server addr.type=unix,addr.path="$sock" \
         --export type=nbd,id=writer,node-name=top,name=,writable=on \
         ${qsd_snapshot_export:+--export type=nbd,id=snap,node-name=snap,name=snapshot,writable=on} \
         --pidfile "$pidf" --daemonize >>"$logf" 2>&1; then
        return 1
    fi
    server_pid="$(wait_for "$pidf" "$sock" "$logf")" || return 1
    pids+=("$server_pid")
}

stop_server ()
{
    local p="$1"
    stop_pid "$p"
    forget_pid "$p"
}

# VmHWM of a process, in KiB.
hwm ()
{
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# Pids of the direct children of a process (the qemu-nbd of cbw).
children ()
{
    cat /proc/"$1"/task/*/children 2>/dev/null || :
}

uri ()
{
    echo "nbd+unix:///${2:-}?socket=$work/$1.sock"
}

# ---------------------------------------------------------------------
# Recording.

run_no=0

# metric CONTENDER NAME VALUE
metric ()
{
    printf '{"run":%d,"contender":"%s","metric":"%s","value":%s}\n' \
        "$run_no" "$1" "$2" "$3" >>"$metrics"
}

note ()
{
    grep -qxF -- "$*" "$notes" || echo "$*" >>"$notes"
}

# CPU accounting.  Every load is measured per process: the client
# (nbd-load), the hop (the server under test: $hop_pid), the live
# disk ($live_pid) and the hop's fleece store (its children and
# $store_pid).  With perf (software events, so it works in VMs and
# with perf_event_paranoid=2 as root) we count task-clock and context
# switches of every thread, those that start and end during the load
# included; without it, utime+stime from /proc/PID/stat (10 ms
# ticks, no switch counts).  Each figure is divided by the requests
# of the load: CPU microseconds and switches per request.
hop_pid=
store_pid=
have_perf=0
# --smoke (make check) counts with /proc only: attaching perf to
# every process of every load would triple its time.
if [ -z "${BENCH_NO_PERF:-}" ] && [ "$profile" != smoke ] &&
       perf stat -x, -e task-clock,context-switches -D -1 --control fd:0 true </dev/null >/dev/null 2>&1
then
    have_perf=1
fi

# cpu_roles: "role pid" lines for the processes of the current load.
cpu_roles ()
{
    local q
    [ -n "$hop_pid" ] && echo "hop $hop_pid"
    echo "live $live_pid"
    if [ -n "$hop_pid" ]; then
        for q in $(children "$hop_pid"); do echo "store $q"; done
    fi
    [ -n "$store_pid" ] && echo "store $store_pid"
    return 0
}

# ticks PID: utime+stime of a process (all its threads, living or
# gone), in clock ticks.
ticks ()
{
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# perf_field FILE EVENT: the count of EVENT in a perf stat -x, file.
perf_field ()
{
    awk -F, -v e="$2" '$3 == e || $3 ~ "^" e ":" { print $1; exit }' "$1"
}

# load CONTENDER METRIC ARGS...: run nbd-load, record MiB/s, ops/s
# and, per process, CPU us and context switches per request.
load ()
{
    local c="$1" m="$2" out role pid i n ops hz
    local -a roles=() rpids=() perfpids=() t0=()
    shift 2
    while read -r role pid; do
        roles+=("$role"); rpids+=("$pid")
    done < <(cpu_roles)
    for i in "${!rpids[@]}"; do
        t0[$i]="$(ticks "${rpids[$i]}")"
        if [ $have_perf = 1 ]; then
            # Attached with its counters off; enabled through its
            # control fifo, which acknowledges once they count.
            rm -f "$work/perf.$i" "$work/ctl.$i" "$work/ack.$i"
            mkfifo "$work/ctl.$i" "$work/ack.$i"
            perf stat -x, -e task-clock,context-switches -D -1 \
                 --control "fifo:$work/ctl.$i,$work/ack.$i" \
                 -p "${rpids[$i]}" -o "$work/perf.$i" 2>/dev/null &
            perfpids[$i]=$!
            # (Opened read-write: never blocks, even if perf failed;
            # kept open until the ack, or the command would be lost.)
            exec {n}<>"$work/ctl.$i" {role}<>"$work/ack.$i"
            echo enable >&$n
            read -r -t 10 -u $role pid || :
            exec {n}>&- {role}>&-
        fi
    done
    if [ $have_perf = 1 ]; then
        out="$(perf stat -x, -e task-clock,context-switches \
               -o "$work/perf.client" -- \
               "$LOAD" "$@" --label="$c/$m" 2>>"$raw")" || out=
    else
        out="$("$LOAD" "$@" --label="$c/$m" 2>>"$raw")" || out=
    fi
    for i in "${!perfpids[@]}"; do
        kill -INT "${perfpids[$i]}" 2>/dev/null || :
        wait "${perfpids[$i]}" 2>/dev/null || :
    done
    if [ -z "$out" ] || ! grep -q '"errors":0' <<<"$out"; then
        echo "$out" >>"$raw"
        log "$c $m: nbd-load failed (see $raw)"
        note "$c: $m failed (see raw.log)"
        return 0
    fi
    echo "$out" >>"$raw"
    metric "$c" "$m" "$(jq_field "$out" mib_per_sec)"
    metric "$c" "${m}_ops" "$(jq_field "$out" ops_per_sec)"
    ops="$(jq_field "$out" ops)"
    [ "${ops:-0}" -gt 0 ] || return 0
    if [ $have_perf = 1 ]; then
        roles+=(client)
        for i in "${!roles[@]}"; do
            local f="$work/perf.$i"
            [ "${roles[$i]}" = client ] && f="$work/perf.client"
            [ -s "$f" ] || continue
            cat "$f" >>"$raw"
            local ms sw
            ms="$(perf_field "$f" task-clock)"
            sw="$(perf_field "$f" context-switches)"
            case "$ms" in ''|*[!0-9.]*) continue ;; esac
            cpu_metric "$c" "$m" "${roles[$i]}" \
                "$(awk -v a="$ms" -v o="$ops" 'BEGIN { printf "%.2f", a * 1000 / o }')" \
                "$(awk -v a="${sw:-0}" -v o="$ops" 'BEGIN { printf "%.3f", a / o }')"
        done
    else
        hz="$(getconf CLK_TCK)"
        for i in "${!rpids[@]}"; do
            cpu_metric "$c" "$m" "${roles[$i]}" \
                "$(awk -v a="${t0[$i]}" -v b="$(ticks "${rpids[$i]}")" \
                   -v o="$ops" -v hz="$hz" \
                   'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / o }')" ""
        done
    fi
}

# cpu_metric CONTENDER METRIC ROLE US_PER_OP SWITCHES_PER_OP: several
# processes may share a role (the store): their figures add up.
cpu_metric ()
{
    local key="$run_no/$1/$2/$3"
    cpu_us[$key]="$(awk -v a="${cpu_us[$key]:-0}" -v b="$4" 'BEGIN { printf "%.2f", a + b }')"
    metric "$1" "$2_cpu_$3" "${cpu_us[$key]}"
    if [ -n "$5" ]; then
        cpu_sw[$key]="$(awk -v a="${cpu_sw[$key]:-0}" -v b="$5" 'BEGIN { printf "%.3f", a + b }')"
        metric "$1" "$2_csw_$3" "${cpu_sw[$key]}"
    fi
}
declare -A cpu_us=() cpu_sw=()

# jq_field JSON FIELD (numbers only; avoids needing jq).
jq_field ()
{
    sed -n "s/.*\"$2\":\([0-9.e+-]*\).*/\1/p" <<<"$1"
}

# copy CONTENDER METRIC URI: nbdcopy to null:, record MiB/s.
copy ()
{
    local c="$1" m="$2" u="$3" t0 t1
    t0="$(date +%s.%N)"
    if ! nbdcopy "$u" null: 2>>"$raw"; then
        note "$c: $m (nbdcopy) failed"
        return 0
    fi
    t1="$(date +%s.%N)"
    echo "nbdcopy $c/$m $u: $t0 .. $t1" >>"$raw"
    metric "$c" "$m" "$(awk -v b="$size_bytes" -v a="$t0" -v z="$t1" \
        'BEGIN { printf "%.2f", b / (z - a) / 1048576 }')"
}

# du of a fleece image, in bytes (0 if absent).
imgsize ()
{
    if [ -e "$1" ]; then du -B1 "$1" | cut -f1; else echo 0; fi
}

# hold URI: open a snapshot holder; sets $holder_pid.
hold ()
{
    local f="$work/hold.out" i
    : >"$f"
    "$LOAD" hold "$1" >"$f" 2>>"$raw" &
    holder_pid=$!
    pids+=("$holder_pid")
    for i in $(seq 1 600); do
        grep -q ready "$f" && return 0
        kill -0 "$holder_pid" 2>/dev/null || break
        sleep 0.05
    done
    log "snapshot holder did not connect"
    return 1
}

release ()
{
    stop_server "$holder_pid"
    wait "$holder_pid" 2>/dev/null || :
}

# ---------------------------------------------------------------------
# The live disk: nbdkit memory, filled once with pseudo-random data so
# that CBW copies real data (not zero clusters).

start_nbdkit live memory "$size_bytes"
live_pid="$server_pid"
LIVE="$(uri live)"
"$LOAD" fill "$LIVE" --label=fill >>"$raw"

# ---------------------------------------------------------------------
# Contenders.  Each one is a function run once per run.

cluster=65536
writes ()   # CONTENDER URI SUFFIX: 4K and 64K passes
{
    load "$1" "w4k$3" write --block-size=4K --stride=$cluster --seed=$run_no "$2"
    load "$1" "w64k$3" write --block-size=64K --stride=$cluster --seed=$run_no "$2"
}

# 4K reads of the first 64 MiB (at most the disk), sequential, QD16:
# the per-request cost of a hop when nothing is copied.
reads4k ()  # CONTENDER URI
{
    load "$1" r4k read --block-size=4K --size=$((size_bytes < (64 << 20) ? size_bytes : 64 << 20)) "$2"
}

c_direct ()
{
    hop_pid= store_pid=
    writes direct "$LIVE" ""
    reads4k direct "$LIVE"
    copy direct copy "$LIVE"
}

# nbdkit's stock nbd plugin in front of the live disk: the hop anyone
# can build from stock parts, the floor our own hop is compared with.
c_nbdplugin ()
{
    local c=nbdplugin p
    start_nbdkit nbdplugin nbd socket="$work/live.sock" || {
        note "$c: nbdkit nbd plugin failed to start"; return 0; }
    p="$server_pid"
    hop_pid="$p" store_pid=
    writes $c "$(uri nbdplugin)" ""
    reads4k $c "$(uri nbdplugin)"
    copy $c copy "$(uri nbdplugin)"
    metric $c rss_kib "$(hwm "$p")"
    stop_server "$p"
    hop_pid=
}

# Our stack's command line.  $1 = variant (plain, ram, bd).
ours_args ()
{
    local variant="$1" img="$2"
    case "$variant" in
        bd) echo "--filter=$BITMAP_DISCARD" ;;
    esac
    echo "--filter=$CBW" "$FLEECE" "live=$LIVE" "cbw-image=$img"
    # Extra parameters for experiments, e.g. live-connections=1.
    # shellcheck disable=SC2086
    if [ -n "${BENCH_OURS_ARGS:-}" ]; then echo $BENCH_OURS_ARGS; fi
    case "$variant" in
        ram) echo "cbw-ram=$ram_bytes" ;;
        bd) mkdir -p "$work/bitmaps"; echo "bitmap-dir=$work/bitmaps" ;;
    esac
}

c_ours_nosnap ()
{
    local c=ours-nosnap img="$work/nosnap.qcow2"
    rm -f "$img"
    # shellcheck disable=SC2046
    start_nbdkit ours $(ours_args plain "$img") || {
        note "$c: server failed to start"; return 0; }
    local p="$server_pid"
    hop_pid="$p" store_pid=
    writes $c "$(uri ours)" ""
    reads4k $c "$(uri ours)"
    copy $c copy "$(uri ours)"
    metric $c rss_kib "$(hwm "$p")"
    stop_server "$p"
    hop_pid=
}

# A lone writer: first writes at queue depth 1, to a quarter of the
# clusters (in the seeded order), in a session of their own.
# $1 = contender, $2 = 4k1 or 64k1, $3 = the writer's URI.
qd1_pass ()
{
    local bs="${2%1}"
    load "$1" "w${bs}_qd1" write --block-size="${bs^^}" --stride=$cluster \
         --qd=1 --count=$(( (size_bytes / cluster + 3) / 4 )) \
         --seed=$run_no "$3"
}

# Snapshot contender for our stack: four sessions (4K, 64K, 4K at
# QD1, 64K at QD1), each with a fresh server and a fresh snapshot.
ours_snap ()
{
    local c="$1" variant="$2" img="$work/$1.qcow2" p ch
    for bs in 4k 64k 4k1 64k1; do
        rm -rf "$img" "$work/bitmaps"
        # shellcheck disable=SC2046
        if ! start_nbdkit ours $(ours_args "$variant" "$img"); then
            if [ "$variant" = plain ]; then
                note "$c: server failed to start"
            else
                note "$c: server refused to start (is $variant built and its parameter accepted?); skipped"
            fi
            return 0
        fi
        p="$server_pid"
        hop_pid="$p" store_pid=
        hold "$(uri ours snapshot)" || { stop_server "$p"; note "$c: holder failed"; return 0; }
        if [ $bs = 4k1 ] || [ $bs = 64k1 ]; then
            qd1_pass "$c" $bs "$(uri ours)"
        elif [ $bs = 4k ]; then
            copy "$c" copy_snap_clean "$(uri ours snapshot)"
            load "$c" w4k_p1 write --block-size=4K --stride=$cluster --seed=$run_no "$(uri ours)"
            load "$c" w4k_p2 write --block-size=4K --stride=$cluster --seed=$run_no "$(uri ours)"
        else
            load "$c" w64k_p1 write --block-size=64K --stride=$cluster --seed=$run_no "$(uri ours)"
            load "$c" w64k_p2 write --block-size=64K --stride=$cluster --seed=$run_no "$(uri ours)"
            metric "$c" img_after_write "$(imgsize "$img")"
            "$LOAD" cat "$(uri ours cbw-status)" >>"$raw" 2>&1 || :
            copy "$c" copy_snap "$(uri ours snapshot)"
            load "$c" readtrim read-and-trim "$(uri ours snapshot)"
            metric "$c" img_after_trim "$(imgsize "$img")"
            "$LOAD" cat "$(uri ours cbw-status)" >>"$raw" 2>&1 || :
            metric "$c" rss_kib "$(hwm "$p")"
            ch=0
            for q in $(children "$p"); do ch=$((ch + $(hwm "$q"))); done
            metric "$c" rss_store_kib "$ch"
        fi
        release
        stop_server "$p"
        hop_pid=
    done
}

# A fleece store given to cbw as cbw-store: nbdkit memory, either
# fast (nothing in front) or deliberately slow (the delay filter
# makes each write to it take 10 ms more).  64K first writes only,
# with and without the RAM tier: what cbw-ram is for.
# ours_store CONTENDER fast|slow [CBW-ARGS...]
ours_store ()
{
    local c="$1" speed="$2" s p
    shift 2
    if [ "$speed" = slow ]; then
        start_nbdkit store --filter=delay memory "$size_bytes" \
                     delay-write=10ms || {
            note "$c: the slow store failed to start"; return 0; }
    else
        start_nbdkit store memory "$size_bytes" || {
            note "$c: the fast store failed to start"; return 0; }
    fi
    s="$server_pid"
    if ! start_nbdkit ours --filter="$CBW" "$FLEECE" "live=$LIVE" \
         "cbw-store=$(uri store)" "$@"; then
        stop_server "$s"
        note "$c: server refused to start; skipped"
        return 0
    fi
    p="$server_pid"
    hop_pid="$p" store_pid="$s"
    if hold "$(uri ours snapshot)"; then
        load "$c" w64k_p1 write --block-size=64K --stride=$cluster \
             --seed=$run_no "$(uri ours)"
        "$LOAD" cat "$(uri ours cbw-status)" >>"$raw" 2>&1 || :
        release
    else
        note "$c: holder failed"
    fi
    stop_server "$p"
    stop_server "$s"
    hop_pid= store_pid=
}

c_ours_slow ()    { ours_store ours-slow slow; }
c_ours_slowram () { ours_store ours-slowram slow "cbw-ram=$ram_bytes"; }
c_ours_fast ()    { ours_store ours-fast fast; }
c_ours_fastram () { ours_store ours-fastram fast "cbw-ram=$ram_bytes"; }

c_ours_snap () { ours_snap ours-snap plain; }
c_ours_ram ()  { ours_snap ours-ram ram; }
c_ours_bd ()   { ours_snap ours-bd bd; }

# QEMU: qemu-storage-daemon with an nbd node on the live disk.
qsd_live="driver=nbd,node-name=live,server.type=unix,server.path=$work/live.sock"

c_qemu_nosnap ()
{
    local c=qemu-nosnap p
    qsd_snapshot_export=
    start_qsd qemu --blockdev "$qsd_live" \
        --blockdev driver=raw,node-name=top,file=live || {
        note "$c: qemu-storage-daemon failed to start"; return 0; }
    p="$server_pid"
    hop_pid="$p" store_pid=
    writes $c "$(uri qemu)" ""
    reads4k $c "$(uri qemu)"
    copy $c copy "$(uri qemu)"
    metric $c rss_kib "$(hwm "$p")"
    stop_server "$p"
    hop_pid=
}

c_qemu_snap ()
{
    local c=qemu-snap img="$work/qemu.qcow2" p
    for bs in 4k 64k 4k1 64k1; do
        rm -f "$img"
        qemu-img create -q -f qcow2 "$img" "$size_bytes"
        qsd_snapshot_export=1
        start_qsd qemu --blockdev "$qsd_live" \
            --blockdev driver=file,node-name=tgtfile,filename="$img",discard=unmap \
            --blockdev driver=qcow2,node-name=tgt,file=tgtfile,discard=unmap \
            --blockdev driver=copy-before-write,node-name=top,file=live,target=tgt \
            --blockdev driver=snapshot-access,node-name=snap,file=top,discard=unmap || {
            note "$c: qemu-storage-daemon failed to start"; return 0; }
        p="$server_pid"
        hop_pid="$p" store_pid=
        if [ $bs = 4k1 ] || [ $bs = 64k1 ]; then
            qd1_pass "$c" $bs "$(uri qemu)"
        elif [ $bs = 4k ]; then
            copy "$c" copy_snap_clean "$(uri qemu snapshot)"
            load "$c" w4k_p1 write --block-size=4K --stride=$cluster --seed=$run_no "$(uri qemu)"
            load "$c" w4k_p2 write --block-size=4K --stride=$cluster --seed=$run_no "$(uri qemu)"
        else
            load "$c" w64k_p1 write --block-size=64K --stride=$cluster --seed=$run_no "$(uri qemu)"
            load "$c" w64k_p2 write --block-size=64K --stride=$cluster --seed=$run_no "$(uri qemu)"
            metric "$c" img_after_write "$(imgsize "$img")"
            copy "$c" copy_snap "$(uri qemu snapshot)"
            # 1M chunks: cluster-aligned TRIMs (QEMU 7.2 aborts on
            # unaligned ones).
            load "$c" readtrim read-and-trim --block-size=1M "$(uri qemu snapshot)"
            metric "$c" img_after_trim "$(imgsize "$img")"
            metric "$c" rss_kib "$(hwm "$p")"
        fi
        stop_server "$p"
        hop_pid=
    done
    qsd_snapshot_export=
}

# cbw-ram is cbw's own parameter: if cbw refuses it, ours_ram notes
# the skip itself.
contenders=(direct nbdplugin ours_nosnap ours_snap ours_ram
            ours_fast ours_fastram ours_slow ours_slowram)
if [ -e "$BITMAP_DISCARD" ]; then
    contenders+=(ours_bd)
else
    note "ours-bd: filters/bitmap-discard not built yet; skipped"
fi
if [ $with_qemu = 1 ]; then
    if command -v qemu-storage-daemon >/dev/null 2>&1; then
        contenders+=(qemu_nosnap qemu_snap)
    else
        note "qemu: qemu-storage-daemon not installed (Debian package qemu-system-common); skipped"
    fi
fi

if [ -n "$only" ]; then
    kept=()
    for c in "${contenders[@]}"; do
        case ",$only," in *",$c,"*) kept+=("$c") ;; esac
    done
    contenders=("${kept[@]}")
    [ ${#contenders[@]} -gt 0 ] || { echo "run.sh: --only: no such contender: $only" >&2; exit 1; }
    with_1t=0
fi

log "profile $profile: size $size, $runs run(s), contenders: ${contenders[*]}"
log "results in $results"
t_start="$(date +%s)"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
for run_no in $(seq 1 "$runs"); do
    for c in "${contenders[@]}"; do
        log "run $run_no: $c"
        "c_$c"
    done
done

# ---------------------------------------------------------------------
# RSS of our stack at 1 TiB of virtual size, no ramcache, a snapshot
# open and a little load.

if [ $with_1t = 1 ]; then
    run_no=1
    log "RSS at 1 TiB"
    c=ours-1t
    if start_nbdkit live1t memory 1T; then
        lp="$server_pid"
        L1="$(uri live1t)"
        img="$work/1t.qcow2"
        if start_nbdkit ours1t --filter="$CBW" "$FLEECE" "live=$L1" "cbw-image=$img"; then
            p="$server_pid"
            load $c w64k_before write --count="$rss_load" --block-size=64K "$(uri ours1t)" || :
            hold "$(uri ours1t snapshot)" && {
                load $c w64k_p1 write --count="$rss_load" --block-size=64K "$(uri ours1t)" || :
                load $c w4k_p1 write --count="$rss_load" --block-size=4K --seed=7 "$(uri ours1t)" || :
                load $c read read --size=256M "$(uri ours1t snapshot)" || :
                "$LOAD" cat "$(uri ours1t cbw-status)" >>"$raw" 2>&1 || :
                metric $c rss_kib "$(hwm "$p")"
                ch=0
                for q in $(children "$p"); do ch=$((ch + $(hwm "$q"))); done
                metric $c rss_store_kib "$ch"
                release
            }
            stop_server "$p"
        else
            note "$c: our stack failed to start on a 1 TiB disk"
        fi
        stop_server "$lp"
    fi
fi

stop_server "$live_pid"
t_end="$(date +%s)"

# ---------------------------------------------------------------------
# The table.

{
    echo "machine=$(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "profile=$profile size=$size runs=$runs ram=$ram_bytes elapsed=$((t_end - t_start))s"
    echo "load average (1, 5, 15 min)=at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the numbers)"
    echo "versions=nbdkit $(nbdkit --version | awk '{print $2}'), libnbd $(nbdcopy --version | awk '/libnbd/ {print $2}'), $(qemu-storage-daemon --version 2>/dev/null | head -1 || echo 'no qemu-storage-daemon')"
} >"$results/machine.txt"

/usr/bin/python3 "$srcdir/bench/summarize.py" "$results" | tee "$results/table.md"
log "raw results: $results"
