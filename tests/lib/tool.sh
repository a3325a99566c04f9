# nbdkit-fleece: helpers for the nbdkit-fleece-ctl tests (not a test:
# the test-tool-*.sh scripts source it after functions.sh).
# SPDX-License-Identifier: BSD-3-Clause

source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"

# start_stack DIR SIZE [ARGS...]: a live disk of SIZE in memory
# (DIR/live.sock) and bd_start_stack's stack in front of it, in DIR
# (DIR/sock, DIR/bm, DIR/ctl).  Register "cleanup_fn stop_stack DIR"
# before calling it.
start_stack ()
{
    local d="$1" size="$2" live
    shift 2
    start_live_disk "$d/live.sock" "$d/live.pid" "$size"
    live="nbd+unix:///?socket=$d/live.sock"
    bd_start_stack "$@"
}

# start_group NAME: three stacks of 4M in $top/d1..d3 ($top made
# with mktemp, named after NAME), all stopped and removed at exit;
# their control sockets in the array c.
start_group ()
{
    local k
    top="$(mktemp -d "/tmp/tool-$1.XXXXXX")"
    for k in 1 2 3; do
        mkdir "$top/d$k"
        cleanup_fn stop_stack "$top/d$k"
    done
    cleanup_fn rm -rf "$top"
    for k in 1 2 3; do
        start_stack "$top/d$k" 4M
    done
    c=("$top/d1/ctl" "$top/d2/ctl" "$top/d3/ctl")
}

# expect STATUS PATTERN CMD ARGS...: run CMD, which must exit with
# STATUS and, unless PATTERN is empty, print a line matching PATTERN
# (grep -E) on stderr.  Its stdout is left in $out, stderr in $err.
expect ()
{
    local want="$1" pattern="$2" status=0
    shift 2
    out="$("$@" 2> "$tmp_err")" || status=$?
    err="$(cat "$tmp_err")"
    # (On stderr, so that expect can be used inside $(...).)
    echo "$* -> status $status" >&2
    echo "stdout: $out" >&2
    echo "stderr: $err" >&2
    if [ "$status" -ne "$want" ]; then
        echo "$0: expected exit status $want from: $*" >&2
        return 1
    fi
    if [ -n "$pattern" ] && ! grep -Eq -- "$pattern" "$tmp_err"; then
        echo "$0: expected '$pattern' on stderr from: $*" >&2
        return 1
    fi
}
tmp_err="$(mktemp /tmp/tool-err.XXXXXX)"
cleanup_fn rm -f "$tmp_err"

# jq_py EXPR [ARGS...]: evaluate the Python expression EXPR with r
# bound to the JSON object in $out (ARGS are sys.argv[3:]).
jq_py ()
{
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' \
            "$out" "$@"
}

# ctl_proxy LISTEN TARGET MODE [ARG]: a control socket at LISTEN that
# passes every line to the real one at TARGET and its reply back, but
# holds a "snapshot" line first, to put time between the steps of a
# group snapshot:
#   progress FILE  until the writer's progress FILE has gone up by 2
#                  rounds, or 2 s have passed (a writer held by a
#                  freeze makes no progress)
#   expire         until TARGET's status shows that its freeze ended
#                  by its timeout
#   hang           for ever (the proxy serves other lines meanwhile)
# Stopped by PID when the test exits.
ctl_proxy ()
{
    python3 - "$@" <<'PYEOF' &
import json, os, socket, struct, sys, threading, time
from fleecetest import ctl_ask
listen, target, mode = sys.argv[1], sys.argv[2], sys.argv[3]
arg = sys.argv[4] if len(sys.argv) > 4 else None

def ask(line):
    return ctl_ask(target, line)

def progress():
    try:
        with open(arg, "rb") as f:
            return struct.unpack("=Q", f.read(8))[0]
    except (OSError, struct.error):
        return 0

def hold():
    if mode == "progress":
        p0, t0 = progress(), time.monotonic()
        while progress() < p0 + 2 and time.monotonic() < t0 + 2:
            time.sleep(0.01)
    elif mode == "expire":
        while True:
            st = json.loads(ask(b"status\n"))
            if not st["frozen"] and st["freezes_expired"] > 0:
                break
            time.sleep(0.05)
    elif mode == "hang":
        while True:
            time.sleep(60)

def serve(c):
    line = c.makefile("rb").readline()
    if line.startswith(b"snapshot"):
        hold()
    c.sendall(ask(line))
    c.close()

s = socket.socket(socket.AF_UNIX)
s.bind(listen)
s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PYEOF
    proxy_pid=$!
    track_pid "$proxy_pid"
    wait_for "$1"
}
