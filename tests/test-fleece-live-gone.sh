#!/usr/bin/env bash
# nbdkit-fleece: a live disk that goes away gives EIO, not a hang.
# SPDX-License-Identifier: BSD-3-Clause
#
# The live disk is nbdkit memory behind the delay filter (reads take
# 2 s, so that some are surely in flight at the moment it dies: the
# test waits until the live server has them, by its log, not by
# time).  While a client has reads in flight through fleece, the live
# server is killed (SIGKILL).  Every request in flight, and every
# later one (read, write, flush, on the old connection and on new
# ones), must fail with EIO at once (live-reconnect-delay=0), each
# under a 60 s bound; new connections still open (the capabilities
# were read at start-up), and so does cbw-status; the status file
# (live-status-file) says the link is down; fleece logs "connection
# lost", keeps running and exits cleanly on SIGTERM.  The same with
# the cbw filter on top: snapshot reads fail too (EIO), and nothing
# crashes.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/fleece.sh"
set -e
set -x

fleece_requires

export tmp

run ()
{
    rm -f "$live_sock" "$tmp/live.log"
    # -v: the live server logs each request it receives.
    start_nbdkit -P "$tmp/live.pid" -U "$live_sock" -v --log=stderr \
                 --filter=delay memory 4M delay-read=2 \
                 2>"$tmp/live.log"
    live_pid="$pid"
    : > "$tmp/fleece.log"
    # -v keeps the daemon's stderr (for the "connection lost" message).
    fleece_opts=(-v "$@")
    start_fleece live="$live_uri" live-reconnect-delay=0 \
                 live-status-file="$tmp/live.json" "${cbw_args[@]}"
    export fleece_uri live_pid with_cbw="${cbw_args[*]}"
    timeout 120 python3 - <<'PY'
import os, signal, time
import nbd
from fleecetest import expect_error

uri = os.environ["fleece_uri"]
h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(b"\x5a" * 65536, 0)
assert h.pread(65536, 0) == b"\x5a" * 65536
sn = None
if os.environ.get("with_cbw"):
    sn = nbd.NBD()
    sn.connect_uri(uri.replace(":///?", ":///snapshot?"))
    assert sn.pread(65536, 0) == b"\x5a" * 65536

# Reads in flight; wait until the live server has received them.
bufs = [nbd.Buffer(4096) for _ in range(4)]
cookies = [h.aio_pread(b, i * 4096) for i, b in enumerate(bufs)]
log = os.path.join(os.environ["tmp"], "live.log")
for _ in range(600):
    if open(log, errors="replace").read().count("pread") >= 5:
        break
    time.sleep(0.1)
else:
    raise AssertionError("the reads never reached the live disk")
os.kill(int(os.environ["live_pid"]), signal.SIGKILL)

def expect_eio(what, f, *args):
    expect_error(what + " on a dead live disk", "EIO", f, *args)

while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    expect_eio("in-flight read", h.aio_command_completed, c)
expect_eio("read", h.pread, 512, 0)
expect_eio("write", h.pwrite, b"x", 0)
if h.can_flush():
    expect_eio("flush", h.flush)
h.shutdown()
if sn:
    expect_eio("snapshot read", sn.pread, 512, 8192)
    sn.shutdown()

# A new connection opens (the capabilities were read at start-up),
# and its requests fail.
g = nbd.NBD()
g.connect_uri(uri)
assert g.get_size() == 4 << 20
expect_eio("read on a new connection", g.pread, 512, 0)
g.shutdown()

# cbw-status still opens; the status file says the link is down.
import json
if sn:
    s = nbd.NBD()
    s.connect_uri(uri.replace(":///?", ":///cbw-status?"))
    print(json.loads(s.pread(4096, 0)))
    s.shutdown()
for _ in range(600):
    live = json.load(open(os.path.join(os.environ["tmp"], "live.json")))
    if live["live_state"] == "down":
        break
    time.sleep(0.1)
print(live)
assert live["live_state"] == "down", live
assert live["live_last_error"] != "", live
PY
    grep -i 'connection lost' "$tmp/fleece.log"
    # Still running, and stops cleanly.
    kill -0 "$fleece_pid"
    kill "$fleece_pid"
    for i in $(seq 1 100); do
        kill -0 "$fleece_pid" 2>/dev/null || break
        sleep 0.1
    done
    ! kill -0 "$fleece_pid" 2>/dev/null || exit 1
}

cbw_args=()
run
# With the cbw filter on top (if built).
if nbdkit --filter="$CBW_FILTER" "$FLEECE_PLUGIN" --version >/dev/null 2>&1
then
    cbw_args=(cbw-image="$tmp/fleece.qcow2")
    run --filter="$CBW_FILTER"
fi
