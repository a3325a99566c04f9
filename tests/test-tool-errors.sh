#!/usr/bin/env bash
# nbdkit-fleece: nbdkit-fleece-ctl when the server misbehaves or is
# gone: a control socket left by a killed nbdkit, a server that never
# answers (the --timeout), one that hangs up without a reply, one that
# answers something else than a control reply.  Each is a clear error
# on stderr and exit status 1, never a hang.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/tool.sh"
set -e
set -x

requires test -x "$abs_top_builddir/tools/nbdkit-fleece-ctl"

d="$(mktemp -d /tmp/tool-errors.XXXXXX)"
cleanup_fn stop_stack "$d"

# A control socket whose nbdkit was killed: the socket file stays.
start_stack "$d" 8M
expect 0 '' nbdkit-fleece-ctl "$d/ctl" status
crash_nbdkit "$d/bd.pid"
for i in $(seq 1 100); do
    pid_alive "$(cat "$d/bd.pid")" || break
    sleep 0.1
done
test -S "$d/ctl"
expect 1 "$d/ctl: no one is serving this socket" \
       nbdkit-fleece-ctl "$d/ctl" status

# Servers that are not well: MODE is "silent" (accepts, reads, never
# answers), "hangup" (closes at once) or "garbage" (answers a line
# that is not a control reply).
fake_server ()
{
    python3 - "$1" "$2" <<'PYEOF' &
import socket, sys, time
path, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(4)
while True:
    c, _ = s.accept()
    if mode == "hangup":
        c.close()
    elif mode == "garbage":
        c.recv(1024)
        c.sendall(b"hello, this is not JSON\n")
        c.close()
    elif mode == "noreply":
        c.recv(1024)
        c.sendall(b'{"state":"none"}\n')
        c.close()
    else:
        c.recv(1024)
        time.sleep(60)
PYEOF
    fake_pid=$!
    track_pid "$fake_pid"
    wait_for "$1"
}

fake_server "$d/silent" silent
expect 1 "$d/silent: no reply in time" \
       nbdkit-fleece-ctl --timeout=1 "$d/silent" status
fake_server "$d/hangup" hangup
expect 1 "$d/hangup: the server closed the connection without replying" \
       nbdkit-fleece-ctl "$d/hangup" status
fake_server "$d/garbage" garbage
expect 1 "$d/garbage: the reply is not a control reply" \
       nbdkit-fleece-ctl "$d/garbage" status
fake_server "$d/noreply" noreply
expect 1 "$d/noreply: the reply is not a control reply \(no \"ok\"\)" \
       nbdkit-fleece-ctl "$d/noreply" checkpoints
# watch gives up the same way.
expect 1 "$d/hangup: the server closed" nbdkit-fleece-ctl "$d/hangup" watch
