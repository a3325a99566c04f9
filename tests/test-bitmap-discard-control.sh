#!/usr/bin/env bash
# nbdkit-fleece: the control socket: mode 0600, one JSON reply per
# line, several clients at once; malformed lines, unknown commands,
# bad names and wrong states get an error and change nothing.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

requires_program qemu-nbd

bd_dir control

truncate -s 8M "$d/live.img"
start_live_disk "$d/live.sock" "$d/live.pid" 8M "$d/live.img"
args=(--filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER"
      "$FLEECE_PLUGIN" live="nbd+unix:///?socket=$d/live.sock"
      bitmap-dir="$d/bm" bitmap-control="$d/ctl")
start_nbdkit -P "$d/bd.pid" -U "$d/sock" "${args[@]}"
wait_for "$d/ctl"

test "$(stat -c %a "$d/ctl")" = 600

# A second server cannot take the same control socket.
r=0
timeout -k 5 "$startup_timeout" nbdkit -f -U "$d/sock2" "${args[@]}" \
        2> "$d/err" || r=$?
cat "$d/err"
failed_at_startup $r
grep "another process is serving this socket" "$d/err"
rm -f "$d/sock2"

ctl_ok "$d/ctl" "checkpoint c1"
ctl_ok "$d/ctl" "help"

# Bad input, and the state before and after.
ctl_ok "$d/ctl" "checkpoints"
before="$reply"
ls -l --time-style=full-iso "$d/bm" > "$d/ls.before"
md5sum "$d"/bm/* > "$d/sums"

python3 - "$d/ctl" <<'PYEOF'
import json, sys
from fleecetest import ctl_connect

def client():
    s = ctl_connect(sys.argv[1])
    return s, s.makefile("rb")

def send(conn, raw):
    s, f = conn
    s.sendall(raw)
    line = f.readline()
    assert line.endswith(b"\n"), line
    r = json.loads(line)
    print(repr(raw[:60]), "->", r)
    return r

bad = [
    b"\n", b"   \t \n", b"frobnicate\n", b"SNAPSHOT\n",
    b"snapshot since=../etc\n", b"snapshot since=a/b\n",
    b"snapshot since=\n", b"snapshot since\n", b"snapshot =x\n",
    b"snapshot foo=bar\n", b"snapshot since=c1 since=c1\n",
    b"snapshot since=nosuch\n", b"snapshot checkpoint=c1\n",
    b"snapshot checkpoint=.hidden\n", b"snapshot checkpoint=-x\n",
    b"snapshot since=c1 checkpoint=" + b"x" * 64 + b"\n",
    b"checkpoint\n", b"checkpoint a b\n", b"checkpoint ../x\n",
    b"checkpoint a\\b\n", b"checkpoint c1\n", b"checkpoint \xc3\xa9\n",
    b"checkpoint a\x01b\n", b"checkpoint a\x00b\n",
    b"delete-checkpoint\n", b"delete-checkpoint nosuch\n",
    b"delete-checkpoint /etc/passwd\n",
    b"release\n", b"release now\n", b"status please\n",
    b"checkpoints x=y\n", b"a b c d e f g h i j\n",
    b"x" * 5000 + b"\n",
]
a = client()
b = client()
c = client()
for i, raw in enumerate(bad):
    r = send([a, b, c][i % 3], raw)
    assert r["ok"] is False and isinstance(r["error"], str) and r["error"], r

# Several commands in one packet get one reply line each, in order.
s, f = a
s.sendall(b"status\r\nfrobnicate\nstatus\n")
r1, r2, r3 = (json.loads(f.readline()) for _ in range(3))
assert r1["ok"] and not r2["ok"] and r3["ok"], (r1, r2, r3)

# A line split over several packets.
s, f = b
for part in (b"sta", b"tu", b"s\n"):
    s.sendall(part)
r = json.loads(f.readline())
assert r["ok"] and r["state"] == "none", r

# A client that goes away in the middle of a line harms no one.
s, f = c
s.sendall(b"checkpoint half")
s.close()
r = send(a, b"checkpoints\n")
assert [x["name"] for x in r["checkpoints"]] == ["c1"], r
PYEOF

ctl_ok "$d/ctl" "checkpoints"
test "$reply" = "$before"
ls -l --time-style=full-iso "$d/bm" > "$d/ls.after"
diff "$d/ls.before" "$d/ls.after"
md5sum -c "$d/sums"

# Wrong states: release without a snapshot, a second snapshot.
ctl_err "$d/ctl" "release"
ctl_ok "$d/ctl" "snapshot since=c1 checkpoint=c2"
ctl_err "$d/ctl" "snapshot"
ctl_err "$d/ctl" "snapshot since=c1 checkpoint=c3"
ctl_ok "$d/ctl" "checkpoints"
case "$reply" in
    *c3*) echo "$0: a refused snapshot created a checkpoint" >&2; exit 1 ;;
esac
ctl_ok "$d/ctl" "status"
test "$(json_get state)" = active
ctl_ok "$d/ctl" "release"
ctl_err "$d/ctl" "release"

# Without a snapshot, clients cannot open the snapshot export.
if nbdinfo "nbd+unix:///snapshot?socket=$d/sock" 2> "$d/err"; then
    echo "$0: opening snapshot without a snapshot should fail" >&2
    exit 1
fi
cat "$d/err"
# And the server is still fine.
ctl_ok "$d/ctl" "status"

# A client that sends commands but never reads the replies must not
# stall the control thread: once its replies have filled the socket,
# it is dropped (after at most 10 s), and other clients are answered.
export d
timeout 120 python3 - <<'PYEOF'
import os, time
from fleecetest import ctl_connect
path = os.environ["d"] + "/ctl"
greedy = ctl_connect(path)
greedy.setblocking(False)
sent = 0
line = b"help\n"
deadline = time.monotonic() + 30
# Send until the server stops reading (its replies to us are stuck).
while time.monotonic() < deadline:
    try:
        sent += greedy.send(line * 1000)
    except BlockingIOError:
        time.sleep(0.2)
        try:
            sent += greedy.send(line)
        except BlockingIOError:
            break
print("sent %d bytes of commands without reading a reply" % sent)
other = ctl_connect(path)
other.settimeout(60)
other.sendall(b"checkpoints\n")
reply = other.makefile().readline()
print("other client:", reply.strip())
assert reply.startswith('{"ok":true'), reply
greedy.close()
PYEOF
ctl_ok "$d/ctl" "status"
