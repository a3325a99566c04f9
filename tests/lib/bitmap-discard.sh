# nbdkit-fleece: helpers for the bitmap-discard tests (not a test: the
# test-bitmap-discard-*.sh scripts source it after functions.sh).
# SPDX-License-Identifier: BSD-3-Clause

# ctl SOCKET COMMAND...: send each COMMAND on the control socket, print
# each reply line.
ctl ()
{
    python3 -c '
import sys
from fleecetest import ctl_connect
s = ctl_connect(sys.argv[1])
f = s.makefile("rw")
for c in sys.argv[2:]:
    f.write(c + "\n")
    f.flush()
    print(f.readline().rstrip("\n"))
' "$@"
}

# ctl_ok SOCKET COMMAND: send COMMAND, fail unless the reply is ok.
# The reply is left in $reply.
ctl_ok ()
{
    reply="$(ctl "$1" "$2")"
    echo "$2 -> $reply"
    case "$reply" in
        '{"ok":true'*) ;;
        *) echo "$0: control command failed: $2: $reply" >&2; return 1 ;;
    esac
}

# ctl_err SOCKET COMMAND: send COMMAND, fail unless it is refused.
ctl_err ()
{
    reply="$(ctl "$1" "$2")"
    echo "$2 -> $reply"
    case "$reply" in
        '{"ok":false,"error":'*) ;;
        *) echo "$0: control command should fail: $2: $reply" >&2; return 1 ;;
    esac
}

# json_get KEY: print KEY of the JSON object in $reply.
json_get ()
{
    python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' \
            "$reply" "$1"
}

# The stack most tests run, in the test's directory $d:
#
#   bd_dir NAME              make $d (/tmp/bd-NAME.XXXXXX), removed at
#                            exit by stop_stack
#   bd_requires_restore      skip unless the tools that restore and
#                            map backups are there (qemu-img, qemu-nbd,
#                            nbdinfo --map --json)
#   bd_live_disk SIZE [MIB]  the live disk: $d/live.img, SIZE bytes,
#                            sparse but for MIB MiB of random data at
#                            its start, served on $d/live.sock
#                            -> $live (its URI)
#   bd_start_stack [ARGS]    nbdkit: bitmap-discard over cbw over the
#                            fleece plugin on $live, serving $d/sock
#                            (pid in $d/bd.pid), bitmaps in $d/bm,
#                            control socket $d/ctl, and ARGS; returns
#                            when the control socket is there
#   bd_stop_stack            stop it
#   bd_refused MESSAGE [ARGS]
#                            the same stack with ARGS, daemonised, must
#                            refuse to start with MESSAGE (see there)

bd_dir ()
{
    d="$(mktemp -d "/tmp/bd-$1.XXXXXX")"
    cleanup_fn stop_stack "$d"
}

bd_requires_restore ()
{
    requires_program qemu-img
    requires_program nbdinfo
    requires_program qemu-nbd
    requires nbdinfo --map --json --help
}

bd_live_disk ()
{
    truncate -s "$1" "$d/live.img"
    if [ -n "${2-}" ]; then
        dd if=/dev/urandom of="$d/live.img" bs=1M count="$2" \
           conv=notrunc status=none
    fi
    start_live_disk "$d/live.sock" "$d/live.pid" "$1" "$d/live.img"
    live="nbd+unix:///?socket=$d/live.sock"
}

bd_start_stack ()
{
    rm -f "$d/ctl" "$d/sock"
    start_nbdkit -P "$d/bd.pid" -U "$d/sock" \
        --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
        "$FLEECE_PLUGIN" live="$live" \
        bitmap-discard-dir="$d/bm" bitmap-discard-control="$d/ctl" "$@"
    wait_for "$d/ctl"
}

bd_stop_stack ()
{
    kill_pid "$(cat "$d/bd.pid")"
    rm -f "$d/bd.pid" "$d/sock" "$d/ctl"
}

# bd_refused MESSAGE [ARGS]: the stack, daemonised (-P, no -f), with
# ARGS, must fail at start-up (an error exit, not a crash or a hang)
# printing MESSAGE, leaving no server, socket or pid file behind, and
# the regular files in $d/bm as they were.  A daemon left running
# (the parent exited 0) is caught by its pid file and stopped.
bd_refused ()
{
    local msg="$1" r=0
    shift
    : > "$d/sums"
    if [ -d "$d/bm" ]; then
        find "$d/bm" -maxdepth 1 -type f -exec md5sum {} + > "$d/sums"
    fi
    rm -f "$d/pid2" "$d/sock2" "$d/ctl2"
    timeout -k 5 "$startup_timeout" nbdkit -P "$d/pid2" -U "$d/sock2" \
        --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
        "$FLEECE_PLUGIN" live="$live" bitmap-discard-dir="$d/bm" \
        bitmap-discard-control="$d/ctl2" "$@" 2> "$d/err" || r=$?
    cat "$d/err"
    if [ -s "$d/pid2" ]; then
        kill_pid "$(cat "$d/pid2")"
        rm -f "$d/pid2"
    fi
    if ! failed_at_startup $r; then
        echo "$0: nbdkit should have refused to start (status $r)" >&2
        exit 1
    fi
    grep -F -- "$msg" "$d/err"
    test ! -e "$d/pid2"
    test ! -e "$d/sock2"
    [ ! -s "$d/sums" ] || md5sum -c "$d/sums"
}

# wait_for FILE: wait (up to 60 s) until FILE exists.
wait_for ()
{
    local i
    for i in $(seq 1 600); do
        [ -e "$1" ] && return 0
        sleep 0.1
    done
    echo "$0: timed out waiting for $1" >&2
    return 1
}

# only_in_scope IMAGE URI: every cluster that the top layer of the
# qcow2 IMAGE holds lies where URI (the snapshot export, before it is
# released) reported in-scope extents; out-of-scope ranges were left
# to the backing file.
only_in_scope ()
{
    qemu-img map -f qcow2 --output=json "$1" > "$1.map"
    nbdinfo --map --json "$2" > "$1.scope"
    python3 - "$1.map" "$1.scope" <<'PYEOF'
import json, sys
top = [(e["start"], e["start"] + e["length"])
       for e in json.load(open(sys.argv[1])) if e["depth"] == 0 and
       (e["data"] or e["zero"])]
out = [(e["offset"], e["offset"] + e["length"])
       for e in json.load(open(sys.argv[2])) if e["type"] == 1]
bad = [(a, b, c, d) for (a, b) in top for (c, d) in out if a < d and c < b]
if bad:
    print("written outside the scope:", bad[:5])
    sys.exit(1)
print("top layer: %d bytes, all in scope" % sum(b - a for a, b in top))
PYEOF
}

# stop_stack DIR: remove the stack's directory DIR at exit.  By then
# the processes in it are gone: stop_tracked has stopped them, newest
# first (a writer started with track_pid, the nbdkit under test, the
# live disk), since a server whose disk went away first would hang on
# its requests.  Register it with cleanup_fn before starting anything.
stop_stack ()
{
    rm -rf "$1"
}

# ckpts: summarize the "checkpoints" reply in $reply, one word per
# checkpoint: NAME:PARENT:STATE:DIRTY_BYTES:CHANGED_SINCE_BYTES.
ckpts ()
{
    python3 -c '
import json, sys
print(" ".join("%(name)s:%(parent)s:%(state)s:%(dirty_bytes)d:"
               "%(changed_since_bytes)d" % c
               for c in json.loads(sys.argv[1])["checkpoints"]))' "$reply"
}

# crash_nbdkit PIDFILE: kill -9 the nbdkit whose PID is in PIDFILE, as
# a crash would.  Its qemu-nbd child (the fleece store) then exits by
# itself, but the directory /tmp/libnbdXXXXXX that libnbd made for the
# child's socket stays behind (libnbd removes it in nbd_close, which a
# killed nbdkit never calls): find it from the child's listening
# socket first, and remove it afterwards.
crash_nbdkit ()
{
    local pid child fd ino path
    local -a dirs=()
    pid="$(cat "$1")"
    for child in $(pgrep -P "$pid"); do
        for fd in /proc/"$child"/fd/*; do
            ino="$(readlink "$fd" 2>/dev/null |
                   sed -n 's/^socket:\[\([0-9]*\)\]$/\1/p')"
            [ -n "$ino" ] || continue
            path="$(awk -v i="$ino" '$7 == i && $8 ~ "^/tmp/libnbd" {
                       print $8 }' /proc/net/unix)"
            [ -n "$path" ] && dirs+=("$(dirname "$path")")
        done
    done
    kill -9 "$pid"
    for path in "${dirs[@]}"; do
        case "$path" in
            /tmp/libnbd?*) rm -rf "$path" ;;
        esac
    done
}
