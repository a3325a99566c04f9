#!/usr/bin/env bash
# nbdkit-fleece: requests from several connections (and several on one
# connection) are in flight together, and data stays right.
# SPDX-License-Identifier: BSD-3-Clause
#
# 1. Proof of parallelism without any timing: the live disk is nbdkit's
#    eval plugin, where a read at offset 0 waits until a read at offset
#    4096 has arrived, and the read at 4096 waits until the read at 0
#    has arrived.  Both complete only if the fleece plugin has them in
#    flight at the same time; a plugin that serialised them would make
#    the first wait until its 60 s bound and fail.  Done with two client
#    connections, and with two asynchronous reads on one connection.
# 2. Four clients at once write, read back and check their own regions
#    of a memory disk through fleece; then a direct connection to the
#    live disk checks everything.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/fleece.sh"
set -e
set -x

fleece_requires
requires nbdkit eval --version

export dir="$tmp"

# wait_file FILE: the eval plugin's wait, bounded at 60 s.
cat > "$tmp/pread.sh" <<'SH'
#!/bin/bash
# $1=pread $2=handle $3=count $4=offset
wait_file () {
    for i in $(seq 1 600); do
        [ -e "$1" ] && return 0
        sleep 0.1
    done
    echo "EIO $1 never appeared: requests were not in flight together" >&2
    exit 1
}
case "$4" in
    0)    touch "$dir/a-$round"; wait_file "$dir/b-$round" ;;
    4096) touch "$dir/b-$round"; wait_file "$dir/a-$round" ;;
esac
head -c "$3" /dev/zero
SH
chmod +x "$tmp/pread.sh"

for round in 1 2; do
    rm -f "$live_sock"
    export round
    nbdkit_cmd="$plain_nbdkit" \
    start_nbdkit -P "$tmp/live.pid" -U "$live_sock" eval \
                 thread_model='echo parallel' get_size='echo 1M' \
                 pread="$tmp/pread.sh"' "$@"' can_multi_conn='exit 0'
    live_pid="$pid"
    start_fleece live="$live_uri"

    if [ $round = 1 ]; then
        # Two connections.
        timeout 120 nbdsh -u "$fleece_uri" -c 'h.pread(512, 0)' &
        a=$!
        timeout 120 nbdsh -u "$fleece_uri" -c 'h.pread(512, 4096)'
        wait $a
    else
        # Two requests on one connection.
        timeout 120 nbdsh -u "$fleece_uri" -c '
buf1 = nbd.Buffer(512)
buf2 = nbd.Buffer(512)
c1 = h.aio_pread(buf1, 0)
c2 = h.aio_pread(buf2, 4096)
while h.aio_in_flight() > 0:
    h.poll(-1)
# Raises if either read failed.
assert h.aio_command_completed(c1) and h.aio_command_completed(c2)
'
    fi
    kill_pid "$fleece_pid"
    kill_pid "$live_pid"
done

# Data under concurrency.
rm -f "$live_sock"
start_nbdkit -P "$tmp/live.pid" -U "$live_sock" memory 16M
start_fleece live="$live_uri"
pids=()
for i in 0 1 2 3; do
    timeout 120 nbdsh -u "$fleece_uri" -c '
import os, random
i = '$i'
r = random.Random(i)
region = 4 << 20
base = i * region
model = bytearray(region)
for n in range(300):
    off = r.randrange(region - 1)
    ln = r.randint(1, min(200000, region - off))
    if r.random() < 0.8:
        d = r.randbytes(ln)
        h.pwrite(d, base + off)
        model[off:off + ln] = d
    else:
        h.zero(ln, base + off)
        model[off:off + ln] = bytes(ln)
    if n % 10 == 0:
        o = r.randrange(region - 1)
        l = r.randint(1, min(300000, region - o))
        assert h.pread(l, base + o) == model[o:o + l], (i, n)
open(os.environ["dir"] + "/model%d" % i, "wb").write(model)
' &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
cat "$tmp"/model0 "$tmp"/model1 "$tmp"/model2 "$tmp"/model3 > "$tmp/all"
timeout 120 nbdcopy "$live_uri" "$tmp/live.img"
cmp "$tmp/all" "$tmp/live.img"
