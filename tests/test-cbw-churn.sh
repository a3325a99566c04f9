#!/usr/bin/env bash
# nbdkit-fleece: many snapshots in a row under writers that never stop.
# SPDX-License-Identifier: BSD-3-Clause
#
# No reference copy can be taken while writers run, so the disk checks
# itself: it is cut into 4K blocks, each holding its block number, the
# writer and a per-writer sequence number, and filler derived from
# them.  Each writer owns stripes of 5 blocks (20K: stripes straddle
# 64K clusters) and writes whole runs of blocks inside them, one
# synchronous request at a time, numbering its requests 1, 2, 3...
#
# Meanwhile snapshots are taken and dropped over and over (sometimes
# two clients overlap, sometimes a client reconnects at once), and
# each is read whole, twice (the two reads must be equal), while the
# writers go on; writes take 5 ms below, so that snapshots are often
# taken with writes in flight.  A point in time means,
# for every writer: the requests it shows form a prefix of its
# sequence.  So with m = the highest sequence number of the writer
# seen anywhere in the snapshot, every block the writer wrote must
# hold the last of its writes numbered <= m, and no block may be torn.
# At the end the live disk must hold every writer's last writes.

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

# Writes take 5 ms below, so that the PIT is often taken while
# some are in flight.
start_nbdkit -P "$tmp/live.pid" -U "$live_sock" \
             --filter=delay memory 8M delay-write=5ms
start_cbw
export writer_uri snap_uri status_uri
timeout 300 python3 - <<'PY'
import json, os, random, struct, threading, time
import nbd
from fleecetest import conn, status, wait_until

SIZE = 8 << 20
B = 4096
NB = SIZE // B
STRIPE = 5
W = 3
ROUNDS = 20

def block(b, writer, seq):
    head = struct.pack("<QQQ", b, writer, seq)
    fill = bytes([(b * 7 + writer * 13 + seq * 31) % 251 + 1]) * (B - 24)
    return head + fill

def parse(buf, b):
    bb, writer, seq = struct.unpack("<QQQ", buf[:24])
    if bytes(buf) != block(bb, writer, seq) or bb != b:
        raise AssertionError("block %d is torn or misplaced: header %r" %
                             (b, (bb, writer, seq)))
    return writer, seq

# Initial contents: writer "W" (nobody), sequence 0.
w0 = conn(os.environ["writer_uri"])
for off in range(0, SIZE, 1 << 20):
    w0.pwrite(b"".join(block(b, W, 0) for b in range(off // B, (off + (1 << 20)) // B)), off)

def owned(i):
    return [s for s in range(NB // STRIPE) if s % W == i]

# history[i][seq] = list of blocks written by writer i's request seq.
history = [dict() for _ in range(W)]
stop = threading.Event()
errors = []

def writer(i):
    try:
        h = conn(os.environ["writer_uri"])
        r = random.Random(i)
        stripes = owned(i)
        seq = 0
        while not stop.is_set():
            s = r.choice(stripes)
            first = s * STRIPE + r.randrange(STRIPE)
            n = r.randint(1, s * STRIPE + STRIPE - first)
            seq += 1
            blocks = list(range(first, first + n))
            history[i][seq] = blocks
            h.pwrite(b"".join(block(b, i, seq) for b in blocks), first * B)
        h.shutdown()
    except Exception as ex:
        errors.append(ex)
        stop.set()

def check_snapshot(sn):
    data = bytearray()
    for off in range(0, SIZE, 1 << 20):
        data += sn.pread(1 << 20, off)
    # The PIT does not change while the writers go on.
    for off in range(0, SIZE, 1 << 20):
        if sn.pread(1 << 20, off) != data[off:off + (1 << 20)]:
            raise AssertionError("the snapshot changed between two reads "
                                 "at offset %d" % off)
    seen = {}
    blocks = [parse(data[b * B:(b + 1) * B], b) for b in range(NB)]
    m = [0] * W
    for writer, seq in blocks:
        if writer < W:
            m[writer] = max(m[writer], seq)
    for i in range(W):
        expect = {}
        for seq in range(1, m[i] + 1):
            for b in history[i][seq]:
                expect[b] = seq
        for b, seq in expect.items():
            got = blocks[b]
            if got != (i, seq):
                raise AssertionError(
                    "not a point in time: writer %d is seen up to request "
                    "%d, so block %d must hold its request %d, but it "
                    "holds %r" % (i, m[i], b, seq, got))
    return m

ts = [threading.Thread(target=writer, args=(i,)) for i in range(W)]
for t in ts:
    t.start()
try:
    prev = None
    new_pits = 1                # rounds certain to take a new PIT
    for rnd in range(ROUNDS):
        if errors:
            break
        sn = conn(os.environ["snap_uri"])
        if rnd % 3 == 1:
            # A second client overlapping the first: the same PIT.
            sn2 = conn(os.environ["snap_uri"])
            m = check_snapshot(sn)
            sn.shutdown()
            assert check_snapshot(sn2) == m
            sn2.shutdown()
        else:
            m = check_snapshot(sn)
            sn.shutdown()
        print("round", rnd, "writers seen up to", m)
        if prev:
            assert all(a >= b for a, b in zip(m, prev)), (prev, m)
        prev = m
        # Usually wait until cbw has ended this snapshot, so that the
        # next round takes a new PIT.  Every fourth round the next
        # client reconnects at once instead: it may still find this
        # snapshot (the server may not have seen the close yet) and
        # share its PIT, which is right too.
        if rnd % 4 != 3:
            wait_until(lambda: status()["state"] == "none",
                       "the snapshot did not end", tries=1200)
            new_pits += 1
finally:
    stop.set()
    for t in ts:
        t.join()
if errors:
    raise errors[0]

# The live disk holds every writer's last writes.
last = {}
for i in range(W):
    for seq in sorted(history[i]):
        for b in history[i][seq]:
            last[b] = (i, seq)
for off in range(0, SIZE, 1 << 20):
    data = w0.pread(1 << 20, off)
    for b in range(off // B, (off + (1 << 20)) // B):
        got = parse(data[(b - off // B) * B:(b - off // B + 1) * B], b)
        assert got == last.get(b, (W, 0)), (b, got, last.get(b))
st = conn(os.environ["status_uri"])
s = json.loads(st.pread(4096, 0))
print(s)
# The last round's wait counted a PIT that no round took.
assert s["generation"] >= new_pits - 1 and not s["broken"], s
print("writes:", [len(h) for h in history])
PY
wait_status state '"none"'
