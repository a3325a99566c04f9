#!/usr/bin/env bash
# nbdkit-fleece: nbdkit-fleece-ctl map follows the server's pages
# ("next") to the end: a scope of every other granule of a 256M disk
# is over 1024 extents, so several pages, which together must tile the
# asked range with no gap or overlap.
# SPDX-License-Identifier: BSD-3-Clause

source ./functions.sh
source "$abs_top_srcdir/tests/lib/tool.sh"
set -e
set -x

requires test -x "$abs_top_builddir/tools/nbdkit-fleece-ctl"
requires_program nbdsh
requires_nbd_python

d="$(mktemp -d /tmp/tool-map.XXXXXX)"
cleanup_fn stop_stack "$d"
start_stack "$d" 256M
c="$d/ctl"

expect 0 '' nbdkit-fleece-ctl "$c" checkpoint c1
# One byte in every other 64K granule of the first 1300 pairs.
nbdsh -u "nbd+unix:///?socket=$d/sock" -c '
for i in range(1300):
    h.pwrite(b"x", i * 2 * 65536)
'
expect 0 '' nbdkit-fleece-ctl "$c" snapshot since=c1

# Human form: a header, then one line per extent (an in-scope granule
# may be split into data and zero runs).
nbdkit-fleece-ctl "$c" map > "$d/map.txt"
python3 - "$d/map.txt" <<'PYEOF'
import sys
lines = open(sys.argv[1]).read().splitlines()
assert lines[0].split() == ["OFFSET", "LENGTH", "TYPE"], lines[0]
pos, granules = 0, set()
for l in lines[1:]:
    w = l.split(None, 2)
    off, length, kind = int(w[0]), int(w[1]), w[2]
    assert off == pos, (l, pos)
    assert kind in ("in scope, data", "in scope, zero", "not in scope"), l
    if kind != "not in scope":
        granules.update(range(off >> 16, (off + length - 1 >> 16) + 1))
    pos += length
assert granules == set(range(0, 2600, 2)), sorted(granules)[:10]
assert len(lines) - 1 > 2 * 1024, len(lines)
assert pos == 256 << 20, pos
PYEOF

# JSON: one reply line per page, each continuing at the last "next".
nbdkit-fleece-ctl --json "$c" map offset=1M length=200M > "$d/map.json"
python3 - "$d/map.json" <<'PYEOF'
import json, sys
pages = [json.loads(l) for l in open(sys.argv[1])]
assert len(pages) >= 2, len(pages)
pos = 1 << 20
for p in pages:
    assert p["ok"] and p["offset"] == pos, (p["offset"], pos)
    for e in p["extents"]:
        assert e["offset"] == pos
        pos += e["length"]
    assert p["next"] in (pos, None)
assert pages[-1]["next"] is None
assert pos == (201 << 20), pos
print(len(pages), "pages")
PYEOF
expect 0 '' nbdkit-fleece-ctl "$c" release
