#!/usr/bin/env bash
# nbdkit-fleece: the "map" control command.  Its extents (in scope or
# not, zero or data) match, byte for byte, what nbdinfo --map and
# qemu-img map say about the snapshot export; an incremental's
# in-scope ranges are exactly the granules written since its
# checkpoint; a TRIM takes a range out of scope; replies are merged,
# at most 1024 extents, continued with "next"; bad arguments and a
# map without a snapshot are refused.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/bitmap-discard.sh"
set -e
set -x

bd_requires_restore
requires_nbd_python

bd_dir map

# A 32M disk: 2M of random data, the rest sparse.  4K granules, so
# that a few thousand small writes make thousands of extents.
bd_live_disk 32M 2
bd_start_stack cbw-image="$d/fleece.qcow2" cbw-cluster-size=4K \
    bitmap-discard-granularity=4K

# No snapshot: no map.
ctl_err "$d/ctl" "map"
ctl_ok "$d/ctl" "snapshot checkpoint=c1"
for c in "map offset=x" "map offset=-1" "map offset=+1" "map offset=1M" \
         "map offset=$((32 * 1024 * 1024 + 1))" \
         "map length=$((32 * 1024 * 1024 + 1))" \
         "map offset=1 length=$((32 * 1024 * 1024))" \
         "map offset=99999999999999999999999" "map x=1" "map 1" \
         "map offset=0 offset=0"; do
    ctl_err "$d/ctl" "$c"
done
ctl_ok "$d/ctl" "release"

export d
timeout -k 5 300 python3 - <<'PYEOF'
import json, os, random, subprocess
from fleecetest import conn, ctl_connect

d = os.environ["d"]
size = 32 << 20
gran = 4096
uri = "nbd+unix:///?socket=%s/sock" % d
snap = "nbd+unix:///snapshot?socket=%s/sock" % d
ctl = ctl_connect(d + "/ctl")
ctlf = ctl.makefile("rwb")

def command(line):
    ctlf.write(line.encode() + b"\n")
    ctlf.flush()
    r = json.loads(ctlf.readline())
    assert r["ok"], (line, r)
    return r

def runs(triples):
    """Merge (offset, length, kind) into maximal runs of one kind."""
    out = []
    for off, length, kind in triples:
        if length == 0:
            continue
        if out and out[-1][0] + out[-1][1] == off and out[-1][2] == kind:
            out[-1] = (out[-1][0], out[-1][1] + length, kind)
        else:
            out.append((off, length, kind))
    return out

def kind(in_scope, zero):
    return "out" if not in_scope else ("zero" if zero else "data")

def get_map(offset=0, length=None):
    """The whole map of [offset, offset+length), page by page."""
    end = size if length is None else offset + length
    pos, ext, pages = offset, [], 0
    while True:
        args = "map offset=%d" % pos
        if length is not None:
            args += " length=%d" % (end - pos)
        r = command(args)
        pages += 1
        e = r["extents"]
        assert 0 < len(e) <= 1024, len(e)
        assert e[0]["offset"] == pos, (e[0], pos)
        for a, b in zip(e, e[1:]):
            assert a["offset"] + a["length"] == b["offset"], (a, b)
            assert kind(a["in_scope"], a["zero"]) != \
                kind(b["in_scope"], b["zero"]), ("not merged", a, b)
        for x in e:
            assert x["in_scope"] or not x["zero"], x
        last = e[-1]["offset"] + e[-1]["length"]
        if r["next"] is None:
            assert last == end, (last, end)
        else:
            assert r["next"] == last < end, (r["next"], last)
        ext += [(x["offset"], x["length"], kind(x["in_scope"], x["zero"]))
                for x in e]
        if r["next"] is None:
            return runs(ext), pages
        pos = r["next"]

def nbdinfo_map():
    out = subprocess.check_output(["nbdinfo", "--map", "--json", snap])
    # type: 1 hole, 2 zero; a hole without zero is "not in scope".
    return runs((e["offset"], e["length"],
                 "out" if e["type"] == 1 else
                 "zero" if e["type"] & 2 else "data")
                for e in json.loads(out))

def qemu_img_map():
    out = subprocess.check_output(["qemu-img", "map", "--output=json",
                                   "--image-opts",
                                   "driver=nbd,path=%s/sock,export=snapshot"
                                   % d])
    return runs((e["start"], e["length"],
                 "zero" if e["zero"] else
                 "data" if e["data"] else "out")
                for e in json.loads(out))

def check(what):
    m, pages = get_map()
    assert m == nbdinfo_map(), what
    assert m == qemu_img_map(), what
    print("%s: %d runs, %d pages, agree with nbdinfo and qemu-img"
          % (what, len(m), pages))
    return m, pages

# A full snapshot: all in scope, data where the file has data.
command("snapshot")
m, _ = check("full")
assert all(k != "out" for _, _, k in m), m
assert m[0] == (0, 2 << 20, "data"), m[0]
command("release")

# Writes since c1: every other granule from 4M on, some data, some
# zeroes, and one unaligned write over three granules.
random.seed(5)
h = conn(uri)
written = set()
for i in range(1500):
    off = (4 << 20) + i * 2 * gran
    if i % 3 == 0:
        h.zero(gran, off)
    else:
        h.pwrite(random.randbytes(gran), off)
    written.add(off // gran)
h.pwrite(b"x" * (2 * gran), 100 * gran + 10)
written |= {100, 101, 102}
h.shutdown()

command("snapshot since=c1 checkpoint=c2")
m, pages = check("incremental")
assert pages >= 2, pages
inscope = set()
for off, length, k in m:
    if k != "out":
        inscope |= set(range(off // gran, (off + length) // gran))
assert inscope == written, sorted(inscope ^ written)[:10]
assert any(k == "zero" for _, _, k in m), "no zero range in scope"

# A part of it, from an unaligned offset.
part, _ = get_map(offset=(4 << 20) + 100, length=5 * gran)
assert part[0][0] == (4 << 20) + 100, part
assert sum(l for _, l, _ in part) == 5 * gran, part
assert [k for _, _, k in part] == \
    ["zero", "out", "data", "out", "data", "out"], part

# A TRIM on the snapshot export takes the range out of scope.
h = conn(snap)
h.trim(4 * gran, (4 << 20) + 2 * gran)
h.shutdown()
check("after trim")
part, _ = get_map(offset=(4 << 20) + 2 * gran, length=4 * gran)
assert part == [((4 << 20) + 2 * gran, 4 * gran, "out")], part
command("release")
PYEOF
