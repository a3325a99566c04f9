#!/usr/bin/env bash
# nbdkit-fleece: bad parameters of the fleece plugin give a clear
# error, never a crash or a server that runs anyway.
# SPDX-License-Identifier: BSD-3-Clause
#
# nbdkit runs in the foreground under timeout and must exit with an
# error status (not the timeout's 124, not a signal), saying what is
# wrong: live= missing or empty, not a URI, unreachable (no socket, a
# closed TCP port on 127.0.0.1, a socket that is not an NBD server),
# an unknown parameter.  The plugin's --dump-plugin and --help work.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/fleece.sh"
set -e
set -x

fleece_requires

failures=()
bad ()
{
    local pattern="$1" r=0
    shift
    rm -f "$tmp/bad.sock"
    timeout -k 5 "$startup_timeout" \
            nbdkit -f -U "$tmp/bad.sock" "$FLEECE_PLUGIN" "$@" \
            </dev/null >"$tmp/out" 2>"$tmp/err" || r=$?
    cat "$tmp/out" "$tmp/err"
    if ! failed_at_startup "$r"; then
        failures+=("fleece $*: exit status $r, expected an error")
    elif ! grep -E -- "$pattern" "$tmp/err"; then
        failures+=("fleece $*: the error does not mention $pattern")
    fi
}

bad 'live'
bad 'live' live=
bad 'live.*(URI|uri)' live=/dev/null
bad 'live.*(URI|uri)' live='not a uri'
bad 'live|connect' live="nbd+unix:///?socket=$tmp/nosuch.sock"
# A TCP port on 127.0.0.1 that nothing listens on (the kernel
# picked it for a socket we then closed).
port=$(/usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
bad 'live|connect' live="nbd://127.0.0.1:$port"
# A Unix socket whose server does not speak NBD.
/usr/bin/python3 -c '
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(5)
open(sys.argv[1] + ".up", "w").close()
while True:
    c, _ = s.accept()
    c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
    c.close()
' "$tmp/http.sock" &
http_pid=$!
track_pid "$http_pid"
for i in $(seq 1 600); do
    [ -e "$tmp/http.sock.up" ] && break
    sleep 0.1
done
bad 'live|handshake|connect' live="nbd+unix:///?socket=$tmp/http.sock"
kill_pid "$http_pid"

# An unknown parameter.
start_nbdkit -P "$tmp/live.pid" -U "$tmp/live.sock" memory 1M
bad 'nosuchparam' live="nbd+unix:///?socket=$tmp/live.sock" nosuchparam=1

# Bad values of the link's parameters, each named.
bad 'live-reconnect-delay=-1' live="nbd+unix:///?socket=$tmp/live.sock" \
    live-reconnect-delay=-1
bad 'live-reconnect-delay=soon' live="nbd+unix:///?socket=$tmp/live.sock" \
    live-reconnect-delay=soon
bad 'live-connections' live="nbd+unix:///?socket=$tmp/live.sock" \
    live-connections=0
bad 'live-connections' live="nbd+unix:///?socket=$tmp/live.sock" \
    live-connections=65
bad 'live-status-file=.*No such file' \
    live="nbd+unix:///?socket=$tmp/live.sock" \
    live-status-file="$tmp/no/such/dir/live.json"

nbdkit "$FLEECE_PLUGIN" --dump-plugin | grep '^name=fleece'
nbdkit "$FLEECE_PLUGIN" --help | grep 'live='

if [ ${#failures[@]} -gt 0 ]; then
    printf "FAILED: %s\n" "${failures[@]}" >&2
    exit 1
fi
