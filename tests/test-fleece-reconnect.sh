#!/usr/bin/env bash
# nbdkit-fleece: the live disk's server restarts under writers and a
# snapshot pull, and nobody notices.
# SPDX-License-Identifier: BSD-3-Clause
#
# Stack: cbw over fleece, live-reconnect-delay=60, the live disk a
# raw file served by nbdkit (then by qemu-nbd) on a Unix socket.  A
# client holds the snapshot open (the point in time); the file is
# copied then, before any writer starts: that copy is the reference.
# Writers (random slots, several requests in flight) and an nbdcopy
# of "snapshot" run; the live server is killed (SIGKILL); a second
# nbdcopy starts during the outage (it must read the live disk, so
# it waits); the status file says "reconnecting"; the server is started
# again on the same socket.  Then: no writer saw an error, both
# snapshot copies equal the reference byte for byte, every slot of
# the live disk holds its last write, and the status file says "up" with
# one reconnection.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/fleece.sh"
set -e
set -x

fleece_requires
requires_program nbdcopy
requires_program qemu-nbd
requires nbdkit --filter="$CBW_FILTER" "$FLEECE_PLUGIN" --version

export live_uri tmp

# start_live KIND: serve $tmp/live.img on $live_sock -> $live_pid.
start_live ()
{
    rm -f "$live_sock"
    case "$1" in
        nbdkit)
            start_nbdkit -P "$tmp/live.pid" -U "$live_sock" \
                         file "$tmp/live.img"
            live_pid="$pid" ;;
        qemu-nbd)
            rm -f "$tmp/qemu-nbd.pid"
            qemu-nbd -f raw --shared=16 --persistent --cache=writeback \
                     -k "$live_sock" --pid-file="$tmp/qemu-nbd.pid" \
                     --fork "$tmp/live.img"
            live_pid="$(cat "$tmp/qemu-nbd.pid")"
            track_pid "$live_pid" ;;
    esac
}

# wait_status KEY VALUE: until the status file has KEY == VALUE.
wait_status ()
{
    timeout 60 python3 - "$1" "$2" <<'PY'
import json, os, sys, time
import nbd
key, want = sys.argv[1], sys.argv[2]
while True:
    s = json.load(open(os.path.join(os.environ["tmp"], "live.json")))
    if str(s[key]) == want:
        print(s)
        break
    time.sleep(0.1)
PY
}

# The writers: random 4K slots (never two writes in flight to one
# slot), 8 in flight, until $tmp/stop exists; progress in
# $tmp/progress; at the end every slot of the live disk (read
# directly) must hold its last write.  Exits 1 on any error.
cat > "$tmp/writers.py" <<'PY'
import json, os, random, struct, sys, time
import nbd

uri, tmp = os.environ["fleece_uri"], os.environ["tmp"]
SLOT, QD = 4096, 8
h = nbd.NBD()
h.connect_uri(uri)
nslots = h.get_size() // SLOT
rnd = random.Random(7)
last, busy, pending = {}, set(), {}
seq = done = 0
maxlat = 0.0

def pattern(slot, seq):
    return struct.pack("<QQ", slot, seq) * (SLOT // 16)

def progress():
    with open(os.path.join(tmp, "progress.new"), "w") as f:
        json.dump({"done": done, "max_latency": maxlat}, f)
    os.rename(os.path.join(tmp, "progress.new"),
              os.path.join(tmp, "progress"))

while not os.path.exists(os.path.join(tmp, "stop")) or pending:
    while len(pending) < QD and not os.path.exists(os.path.join(tmp, "stop")):
        slot = rnd.randrange(nslots)
        if slot in busy:
            continue
        seq += 1
        buf = nbd.Buffer.from_bytearray(bytearray(pattern(slot, seq)))
        c = h.aio_pwrite(buf, slot * SLOT)
        pending[c] = (slot, seq, time.monotonic(), buf)
        busy.add(slot)
    h.poll(-1)
    for c in list(pending):
        if h.aio_command_completed(c):   # raises on error
            slot, s, t0, _ = pending.pop(c)
            busy.discard(slot)
            last[slot] = s
            maxlat = max(maxlat, time.monotonic() - t0)
            done += 1
            if done % 50 == 0:
                progress()
progress()
h.shutdown()

live = nbd.NBD()
live.connect_uri(os.environ["live_uri"])
for slot, s in last.items():
    assert live.pread(SLOT, slot * SLOT) == pattern(slot, s), slot
live.shutdown()
print("writes:", done, "max latency: %.3f s" % maxlat)
PY

# done_count: writes completed so far.
done_count ()
{
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["done"])' \
            "$tmp/progress" 2>/dev/null || echo 0
}

# wait_done N: until the writers have completed N writes.
wait_done ()
{
    local i
    for i in $(seq 1 600); do
        [ "$(done_count)" -ge "$1" ] && return 0
        sleep 0.1
    done
    echo "$0: the writers never reached $1 writes" >&2
    return 1
}

run ()
{
    local kind="$1" copy1 copy2 writers holder n
    rm -f "$tmp"/stop "$tmp"/progress "$tmp"/snap*.img "$tmp"/fleece.log
    head -c 32M /dev/urandom > "$tmp/live.img"
    start_live "$kind"
    fleece_opts=(-v --filter="$CBW_FILTER" -t 8)
    start_fleece live="$live_uri" live-reconnect-delay=60 \
                 live-status-file="$tmp/live.json" \
                 cbw-image="$tmp/fleece.qcow2"
    export fleece_uri
    snap_uri="nbd+unix:///snapshot?socket=$fsock"

    # Hold the point in time; copy the reference before any write.
    timeout 300 nbdsh -u "$snap_uri" -c '
import os, time
open(os.environ["tmp"] + "/held", "w").close()
while not os.path.exists(os.environ["tmp"] + "/stop"):
    time.sleep(0.1)
' &
    holder=$!
    for i in $(seq 1 600); do [ -f "$tmp/held" ] && break; sleep 0.1; done
    cp "$tmp/live.img" "$tmp/ref.img"

    timeout 300 python3 "$tmp/writers.py" & writers=$!
    wait_done 200
    timeout 300 nbdcopy --request-size=65536 "$snap_uri" "$tmp/snap1.img" &
    copy1=$!

    kill -9 "$live_pid"
    while pid_alive "$live_pid"; do sleep 0.1; done
    timeout 300 nbdcopy --request-size=65536 "$snap_uri" "$tmp/snap2.img" &
    copy2=$!
    wait_status live_state reconnecting
    n="$(done_count)"
    start_live "$kind"

    wait_status live_reconnects 1
    wait_done $((n + 200))
    touch "$tmp/stop"
    wait "$writers"
    wait "$copy1"
    wait "$copy2"
    wait "$holder"
    cmp "$tmp/ref.img" "$tmp/snap1.img"
    cmp "$tmp/ref.img" "$tmp/snap2.img"
    wait_status live_state up
    grep 'connection lost' "$tmp/fleece.log"
    kill_pid "$fleece_pid"
    kill_pid "$live_pid"
    rm -f "$tmp/held"
}

run nbdkit
run qemu-nbd
