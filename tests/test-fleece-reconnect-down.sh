#!/usr/bin/env bash
# nbdkit-fleece: an outage longer than live-reconnect-delay gives EIO
# and then recovers; a different disk behind the URI is refused.
# SPDX-License-Identifier: BSD-3-Clause
#
# The live disk is nbdkit's file plugin over a raw file;
# live-reconnect-delay=1.  The live server is killed: a read waits,
# then fails with EIO, the status file says "down"; the server comes back
# and, without restarting fleece, the same connection reads the data
# written before.  Then the live server is replaced by one serving a
# disk of another size on the same socket: fleece logs and reports
# "a different disk", requests fail with EIO, and when the right
# disk comes back, everything works again.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/fleece.sh"
set -e
set -x

fleece_requires

# start_live FILE: serve FILE on $live_sock -> $live_pid.
start_live ()
{
    rm -f "$live_sock"
    start_nbdkit -P "$tmp/live.pid" -U "$live_sock" file "$1"
    live_pid="$pid"
}

stop_live ()
{
    kill -9 "$live_pid"
    while pid_alive "$live_pid"; do sleep 0.1; done
}

# wait_status KEY TEXT: until the status file's KEY contains TEXT.
wait_status ()
{
    timeout 60 python3 - "$1" "$2" <<'PY'
import json, os, sys, time
import nbd
key, want = sys.argv[1], sys.argv[2]
while True:
    s = json.load(open(os.path.join(os.environ["tmp"], "live.json")))
    if want in str(s[key]):
        print(s)
        break
    time.sleep(0.1)
PY
}

# expect_eio: a read through fleece fails with EIO.
expect_eio ()
{
    timeout 60 nbdsh -u "$fleece_uri" -c '
try:
    h.pread(4096, 0)
except nbd.Error as ex:
    print("read ->", ex.errno, ex.string)
    assert ex.errno == "EIO", ex.errno
else:
    raise AssertionError("read succeeded without a live disk")
'
}

truncate -s 4M "$tmp/live.img"
truncate -s 8M "$tmp/other.img"
start_live "$tmp/live.img"
fleece_opts=(-v)
start_fleece live="$live_uri" live-reconnect-delay=1 \
             live-status-file="$tmp/live.json"
export tmp
export fleece_uri
timeout 60 nbdsh -u "$fleece_uri" -c 'h.pwrite(b"\x5a" * 4096, 0)'

# Outage longer than the delay: EIO, "down", then recovery.
stop_live
expect_eio
wait_status live_state down
expect_eio
start_live "$tmp/live.img"
wait_status live_state up
timeout 60 nbdsh -u "$fleece_uri" -c '
assert h.pread(4096, 0) == b"\x5a" * 4096
h.pwrite(b"\xa5" * 4096, 4096)
'
cmp -n 8192 "$tmp/live.img" <(printf '%4096s%4096s' '' '' |
                               tr ' ' '\132' | head -c 4096;
                               head -c 4096 /dev/zero | tr '\0' '\245')

# A different disk on the same socket: refused, loudly.
stop_live
start_live "$tmp/other.img"
wait_status live_last_error "a different disk"
grep 'a different disk answers.*size 8388608, expected 4194304' \
     "$tmp/fleece.log"
expect_eio
wait_status live_state down
stop_live
start_live "$tmp/live.img"
wait_status live_state up
wait_status live_reconnects 2
timeout 60 nbdsh -u "$fleece_uri" -c '
assert h.get_size() == 4 << 20
assert h.pread(4096, 0) == b"\x5a" * 4096
'
