# nbdkit-fleece: helpers for the Python parts of the tests.
# SPDX-License-Identifier: BSD-3-Clause
#
# functions.sh puts this directory on PYTHONPATH, so the test scripts'
# inline Python (python3 heredocs, nbdsh -c) can say
# "from fleecetest import conn, status".  A helper that two tests
# would otherwise each define goes here.

import json
import os
import random
import socket
import time

import nbd


def conn(uri, meta=False, export=None):
    """Connect to URI; with META, ask for base:allocation too; with
    EXPORT, to that export name instead of the URI's."""
    h = nbd.NBD()
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if export is not None:
        h.set_export_name(export)
    h.connect_uri(uri)
    return h


def ctl_connect(path):
    """A connection to the control socket (a Unix socket) PATH."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s


def ctl_ask(path, line):
    """Send LINE (bytes, ending in a newline) on a new connection to
    the control socket PATH; return the reply line (bytes)."""
    s = ctl_connect(path)
    try:
        s.sendall(line)
        return s.makefile("rb").readline()
    finally:
        s.close()


def expect_error(what, errname, f, *args):
    """Call F(*ARGS), which must fail with the errno named ERRNAME
    ("EIO", ...); WHAT names the call in the messages."""
    try:
        f(*args)
    except nbd.Error as ex:
        print(what, "->", ex.errno, ex.string)
        assert ex.errno == errname, (what, ex.errno, errname)
        return
    raise AssertionError("%s succeeded, expected %s" % (what, errname))


def fill_random(h, seed):
    """Write random bytes (from SEED) over the whole export of H;
    return them: the reference a snapshot taken now must match."""
    rng = random.Random(seed)
    data = bytes(rng.getrandbits(8) for _ in range(h.get_size()))
    h.pwrite(data, 0)
    return data


def read_all(h, chunk=65536):
    """The whole export of H, read CHUNK bytes at a time."""
    return b"".join(h.pread(min(chunk, h.get_size() - o), o)
                    for o in range(0, h.get_size(), chunk))


def file_has(path, data, offset):
    """True if the file PATH holds DATA at OFFSET."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(len(data)) == data


def status(uri=None):
    """The cbw-status JSON object (at $status_uri by default)."""
    h = conn(uri or os.environ["status_uri"])
    s = json.loads(h.pread(4096, 0))
    h.shutdown()
    return s


def wait_until(pred, what, tries=600, interval=0.05):
    """Call PRED every INTERVAL seconds until it returns true; after
    TRIES calls, fail saying that WHAT did not happen."""
    for _ in range(tries):
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(what)


def end_snapshot(sn, uri=None):
    """Close SN, the last client of "snapshot", and wait until cbw has
    ended the snapshot.  The server handles the close after shutdown()
    returns, so a connection opened before then would join the old
    point in time instead of taking a new one.
    """
    sn.shutdown()
    wait_until(lambda: status(uri)["state"] == "none",
               "the snapshot did not end", tries=1200)


def extents(h, size=None):
    """The base:allocation extents of H from 0 to SIZE (the export's
    size by default), as (offset, length, flags), in order, as the
    server reports them (neighbours with the same flags are not
    merged; the last may end beyond SIZE).  H must have been
    connected with meta=True."""
    size = h.get_size() if size is None else size
    out = []

    def cb(meta, offset, entries, err):
        assert meta == nbd.CONTEXT_BASE_ALLOCATION, meta
        for i in range(0, len(entries), 2):
            out.append((offset, entries[i], entries[i + 1]))
            offset += entries[i]
        return 0

    off = 0
    while off < size:
        n = len(out)
        h.block_status(size - off, off, cb)
        assert len(out) > n, "no extents at %d" % off
        off = out[-1][0] + out[-1][1]
    return out
