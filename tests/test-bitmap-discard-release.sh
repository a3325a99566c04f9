#!/usr/bin/env bash
# nbdkit-fleece: a client that is opening "snapshot" when "release"
# arrives shares the released snapshot's point in time; it never gets
# a new one that does not match the scope.
# SPDX-License-Identifier: BSD-3-Clause
#
# nbdkit's delay filter sits between bitmap-discard and cbw and makes
# every open take 2 s.  The client negotiates in option mode, then
# starts NBD_OPT_GO (it joins the snapshot in bitmap-discard at once,
# then spends 2 s opening cbw's "snapshot" below) and the test sends
# "release" meanwhile.  cbw-linger is 0: had release closed the
# holder before the client's context existed below, cbw would have
# ended the point in time and the client's open would have taken a
# new one.  The client must see cbw's generation of the snapshot,
# still active, and the data as it was then, although the writer
# changed it since.
#
# If the client was so slow that it had not even joined when release
# arrived, its open fails ("no snapshot"): that round proves nothing
# and is run again.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

requires_program nbdsh
requires_program qemu-nbd
requires_nbd_python
requires nbdkit --filter=delay null delay-open=1 --version

bd_dir release

start_live_disk "$d/live.sock" "$d/live.pid" 4M
live="nbd+unix:///?socket=$d/live.sock"
start_nbdkit -P "$d/bd.pid" -U "$d/sock" \
    --filter="$BITMAP_DISCARD_FILTER" --filter=delay --filter="$CBW_FILTER" \
    "$FLEECE_PLUGIN" live="$live" cbw-image="$d/fleece.qcow2" \
    bitmap-dir="$d/bm" bitmap-control="$d/ctl" delay-open=2
wait_for "$d/ctl"
export d

# round N: returns 0 if checked, 2 if the client joined too late.
round ()
{
    local n="$1" gen client r=0
    nbdsh -u "nbd+unix:///?socket=$d/sock" \
          -c "h.pwrite(bytes([$n]) * 65536, 0)"
    ctl_ok "$d/ctl" "snapshot"
    ctl_ok "$d/ctl" "status"
    gen="$(python3 -c 'import json, sys
print(json.loads(sys.argv[1])["cbw"]["generation"])' "$reply")"
    # After the point in time: must not be seen by the client.
    nbdsh -u "nbd+unix:///?socket=$d/sock" \
          -c "h.pwrite(b'\\xff' * 65536, 0)"

    rm -f "$d/client.out" "$d/going" "$d/done"
    python3 - > "$d/client.out" 2>&1 <<'PY' &
import os
import nbd
d = os.environ["d"]
s = nbd.NBD()
s.set_opt_mode(True)
s.connect_uri("nbd+unix:///snapshot?socket=%s/sock" % d)
open(d + "/going", "w").close()
try:
    s.opt_go()
except nbd.Error as ex:
    print("late:", ex.string)
    raise SystemExit(0)
st = nbd.NBD()
st.connect_uri("nbd+unix:///cbw-status?socket=%s/sock" % d)
print(st.pread(4096, 0).decode().strip())
st.shutdown()
print("first byte", s.pread(1, 0)[0])
s.shutdown()
PY
    client=$!
    wait_for "$d/going"
    ctl_ok "$d/ctl" release
    wait $client
    cat "$d/client.out"
    if grep -q '^late:' "$d/client.out"; then
        return 2
    fi
    grep -q '"state":"active"' "$d/client.out"
    grep -q "\"generation\":$gen," "$d/client.out"
    grep -q "^first byte $n\$" "$d/client.out"
    wait_status_none
}

# wait_status_none: cbw ended the snapshot once the client left.
wait_status_none ()
{
    local i
    for i in $(seq 1 300); do
        ctl_ok "$d/ctl" status
        python3 -c 'import json, sys
sys.exit(json.loads(sys.argv[1])["cbw"]["state"] != "none")' "$reply" &&
            return 0
        sleep 0.2
    done
    return 1
}

checked=0
for n in 1 2 3 4 5; do
    # In a subshell, so that set -e applies inside round.
    set +e
    (set -e; round $n)
    r=$?
    set -e
    case $r in
        0) checked=$((checked + 1)) ;;
        2) echo "round $n: the client joined after the release" ;;
        *) exit 1 ;;
    esac
    [ $checked -lt 2 ] || break
done
test $checked -ge 1
