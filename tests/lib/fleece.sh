# nbdkit-fleece: helpers for the fleece plugin tests (not a test: the
# test-fleece-*.sh scripts source it after functions.sh).
# SPDX-License-Identifier: BSD-3-Clause
#
#   fleece_requires         skip unless the plugin and its tools work
#   tmp                     a private directory, removed at exit
#   live_sock, live_uri     where the live disk is served ($tmp/live.sock)
#   start_fleece ARGS...    nbdkit ${fleece_opts[@]} fleece ARGS (stderr
#                           to $tmp/fleece.log; set fleece_opts=(-v ...)
#                           for options and filters before the plugin)
#                           -> $fsock $fleece_uri $fleece_pid
#   passthrough_check LIVE-URI FLEECE-URI
#                           the fleece plugin passes everything through

fleece_requires ()
{
    requires nbdkit "$FLEECE_PLUGIN" --version
    requires_program nbdsh
    requires_nbd_python
}

fleece_opts=()

tmp="$(mktemp -d /tmp/fleece-test.XXXXXX)"
cleanup_fn rm -rf "$tmp"

# Where the live disk is served (by start_live, or by the test).
live_sock="$tmp/live.sock"
live_uri="nbd+unix:///?socket=$live_sock"

start_fleece ()
{
    fsock="$tmp/fleece.sock"
    fleece_uri="nbd+unix:///?socket=$fsock"
    rm -f "$fsock"
    start_nbdkit -P "$tmp/fleece.pid" -U "$fsock" --log=stderr \
                 "${fleece_opts[@]}" \
                 "$FLEECE_PLUGIN" "$@" 2>>"$tmp/fleece.log"
    fleece_pid="$pid"
}

passthrough_check ()
{
    timeout 120 python3 - "$1" "$2" <<'PY'
import os, sys
import nbd
import fleecetest
from fleecetest import conn

live_uri, fleece_uri = sys.argv[1], sys.argv[2]

live = conn(live_uri, meta=True)
f = conn(fleece_uri, meta=True)
size = live.get_size()
assert f.get_size() == size, (f.get_size(), size)

# Every capability is the live disk's.
for cap in ("is_read_only", "can_flush", "can_fua", "can_trim",
            "can_zero", "can_fast_zero", "can_multi_conn", "can_cache"):
    a, b = getattr(live, cap)(), getattr(f, cap)()
    print(cap, a, b)
    assert a == b, (cap, a, b)
assert f.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION) == \
    live.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
for which in (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM):
    a, b = live.get_block_size(which), f.get_block_size(which)
    print("block size", which, a, b)
    assert b == a or a == 0 or (which == nbd.SIZE_MINIMUM and b == 1 and a <= 1), (which, a, b)

if live.is_read_only():
    try:
        f.pwrite(b"x", 0)
        raise AssertionError("write to a read-only live disk succeeded")
    except nbd.Error as ex:
        print("write ->", ex.errno)
    assert f.pread(size, 0) == live.pread(size, 0)
    sys.exit(0)

# Unaligned writes, FUA, reads both ways.
data = os.urandom(3 * 65536 + 17)
f.pwrite(data, 4096 * 3 + 5)
assert live.pread(len(data), 4096 * 3 + 5) == data
if f.can_fua():
    f.pwrite(b"\x11" * 513, 70001, nbd.CMD_FLAG_FUA)
    assert live.pread(513, 70001) == b"\x11" * 513
live.pwrite(b"\x22" * 1000, size - 1000)
assert f.pread(1000, size - 1000) == b"\x22" * 1000
assert f.pread(1, size - 1) == b"\x22"

# Zero (and fast zero where the live disk has it).
if f.can_zero():
    f.zero(65536, 65536 * 2)
    assert live.pread(65536, 65536 * 2) == bytes(65536)
    f.zero(100, 3 * 4096 + 50, nbd.CMD_FLAG_NO_HOLE)
    assert live.pread(100, 3 * 4096 + 50) == bytes(100)
if f.can_fast_zero():
    try:
        f.zero(65536, 65536 * 4, nbd.CMD_FLAG_FAST_ZERO)
        assert live.pread(65536, 65536 * 4) == bytes(65536)
    except nbd.Error as ex:
        assert ex.errno == "ENOTSUP", ex

# Trim, then the extents seen through fleece are the live disk's.
if f.can_trim():
    live.pwrite(os.urandom(1 << 20), 1 << 20)
    f.trim(1 << 20, 1 << 20)
def extents(h):
    # Merge neighbours with the same flags.
    m = []
    for _, n, flags in fleecetest.extents(h, size):
        e = (n, flags)
        if m and m[-1][1] == e[1]:
            m[-1] = (m[-1][0] + e[0], e[1])
        else:
            m.append(e)
    return m
if f.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
    a, b = extents(live), extents(f)
    print("extents", b[:8])
    assert a == b, (a[:8], b[:8])

f.flush()
if f.can_cache():
    f.cache(1 << 20, 0)

# The same disk under any export name.
for name in ("", "snapshot", "anything"):
    g = conn(fleece_uri, meta=True, export=name)
    assert g.get_size() == size
    assert g.pread(65536, 4096 * 3) == live.pread(65536, 4096 * 3)
    g.shutdown()
assert f.pread(size, 0) == live.pread(size, 0)
f.shutdown()
live.shutdown()
print("passthrough ok")
PY
}
