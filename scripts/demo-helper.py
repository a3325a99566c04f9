#!/usr/bin/python3
# nbdkit-fleece: helper programs for scripts/demo.sh.
# SPDX-License-Identifier: BSD-3-Clause
#
# Needs Debian's python3 with the nbd module (package python3-libnbd).
#
#   demo-helper.py writer URI DIR ID SEED
#       Keep overwriting random, unaligned ranges of the disk at URI
#       (mostly writes, some zeroes and trims) until DIR/stop exists.
#       While DIR/pause exists it finishes its request in flight,
#       writes DIR/writer-ID.paused (its counters, as JSON) and waits.
#       Every 0.1 s it writes its counters to DIR/writer-ID.progress,
#       and at the end to DIR/writer-ID.json.
#
#   demo-helper.py hold URI READYFILE
#       Connect to URI (the snapshot export: connecting takes the
#       snapshot), create READYFILE, and stay connected until SIGTERM.
#
#   demo-helper.py status URI
#       Print the JSON of the cbw-status export at URI.
#
#   demo-helper.py compare FILE1 FILE2
#       Print, as JSON, how many bytes differ between two files of the
#       same size, and where the first difference is.

import json
import os
import random
import signal
import sys
import time

import nbd


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.rename(tmp, path)


def writer(uri, d, wid, seed):
    rng = random.Random(int(seed))
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    # Random data to write, sliced at random offsets.
    pool = os.urandom(1 << 20)
    # Up to 64K: many requests straddle clusters, few cover several.
    max_len = 64 * 1024
    st = {"ops": 0, "writes": 0, "zeroes": 0, "trims": 0, "bytes": 0}
    can_zero = h.can_zero()
    can_trim = h.can_trim()
    stop = os.path.join(d, "stop")
    pause = os.path.join(d, "pause")
    paused = os.path.join(d, "writer-%s.paused" % wid)
    signal.signal(signal.SIGTERM, lambda *a: open(stop, "a").close())

    last = 0
    while not os.path.exists(stop):
        now = time.time()
        if now - last >= 0.1:
            st["time"] = now
            write_json(os.path.join(d, "writer-%s.progress" % wid), st)
            last = now
        if os.path.exists(pause):
            st["time"] = time.time()
            write_json(paused, st)
            while os.path.exists(pause) and not os.path.exists(stop):
                time.sleep(0.01)
            try:
                os.unlink(paused)
            except FileNotFoundError:
                pass
            continue
        length = rng.randint(1, max_len)
        offset = rng.randrange(0, size - length + 1)
        kind = rng.random()
        if kind < 0.1 and can_zero:
            h.zero(length, offset)
            st["zeroes"] += 1
        elif kind < 0.15 and can_trim:
            h.trim(length, offset)
            st["trims"] += 1
        else:
            start = rng.randrange(0, len(pool) - length + 1)
            h.pwrite(pool[start:start + length], offset)
            st["writes"] += 1
        st["ops"] += 1
        st["bytes"] += length

    # Every request has had its reply: disconnect cleanly.
    if h.can_flush():
        h.flush()
    h.shutdown()
    st["time"] = time.time()
    write_json(os.path.join(d, "writer-%s.json" % wid), st)


def hold(uri, ready):
    h = nbd.NBD()
    h.connect_uri(uri)
    open(ready, "w").close()
    done = []
    signal.signal(signal.SIGTERM, lambda *a: done.append(1))
    while not done:
        time.sleep(0.05)
    h.shutdown()


def status(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    print(h.pread(h.get_size(), 0).decode().strip())
    h.shutdown()


def compare(f1, f2):
    chunk = 1 << 20
    differ = 0
    first = None
    offset = 0
    with open(f1, "rb") as a, open(f2, "rb") as b:
        while True:
            x = a.read(chunk)
            y = b.read(chunk)
            if not x and not y:
                break
            if len(x) != len(y):
                sys.exit("compare: %s and %s differ in size" % (f1, f2))
            if x != y:
                # XOR as big integers: zero bytes mark equal bytes.
                n = len(x)
                z = (int.from_bytes(x, "little") ^
                     int.from_bytes(y, "little")).to_bytes(n, "little")
                differ += n - z.count(0)
                if first is None:
                    first = offset + next(i for i in range(n) if z[i])
            offset += len(x)
    print(json.dumps({"differing_bytes": differ, "first_difference": first,
                      "size": offset}, separators=(",", ":")))


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: see the top of %s" % sys.argv[0])
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "writer" and len(args) == 4:
        writer(*args)
    elif cmd == "hold" and len(args) == 2:
        hold(*args)
    elif cmd == "status" and len(args) == 1:
        status(*args)
    elif cmd == "compare" and len(args) == 2:
        compare(*args)
    else:
        sys.exit("demo-helper.py: bad command: %s" % " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
