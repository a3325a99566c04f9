#!/usr/bin/env bash
# nbdkit-fleece: control clients that connect and never send a command
# (or only part of one) cannot keep others out: when every slot is
# taken, the client idle longest makes room, and an idle client is
# dropped after 30 seconds.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

bd_dir idle

start_live_disk "$d/live.sock" "$d/live.pid" 1M
start_nbdkit -P "$d/bd.pid" -U "$d/sock" \
             --filter="$BITMAP_DISCARD_FILTER" --filter="$CBW_FILTER" \
             "$FLEECE_PLUGIN" live="nbd+unix:///?socket=$d/live.sock" \
             bitmap-control="$d/ctl"
wait_for "$d/ctl"

export d
timeout -k 5 120 python3 - <<'PYEOF'
import json, os, time
from fleecetest import ctl_connect

path = os.environ["d"] + "/ctl"

def connect():
    return ctl_connect(path)

def command(s, line):
    s.sendall(line)
    r = json.loads(s.makefile("rb").readline())
    print(line, "->", r)
    return r

# One client sends half a command, then 20 send nothing: more than
# the 16 slots.
half = connect()
half.sendall(b"sta")
silent = [connect() for _ in range(20)]

# A real client still gets its answer, at once, and so does another.
for _ in range(2):
    s = connect()
    r = command(s, b"status\n")
    assert r["ok"] and r["state"] == "none", r
    s.close()

# The clients idle longest (the half line first) were disconnected,
# with a reason.
for s in [half] + silent[:4]:
    s.settimeout(60)
    f = s.makefile("rb")
    line = f.readline()
    print("dropped:", line)
    r = json.loads(line)
    assert not r["ok"] and "too many control clients" in r["error"], r
    assert f.read() == b""

# A client that sent part of a line and then nothing is dropped after
# the idle timeout (30 s), told why; a client that sent a command in
# the meantime (half way) is not idle.
half = connect()
busy = connect()
half.sendall(b"checkp")
time.sleep(15)
r = command(busy, b"status\n")
assert r["ok"], r
half.settimeout(90)
line = half.makefile("rb").readline()
print("idle:", line)
r = json.loads(line)
assert not r["ok"] and "idle for 30 seconds" in r["error"], r
r = command(busy, b"status\n")
assert r["ok"], r
PYEOF
ctl_ok "$d/ctl" status
