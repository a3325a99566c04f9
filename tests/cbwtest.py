# nbdkit-fleece: helpers for the Python parts of the tests.
# SPDX-License-Identifier: BSD-3-Clause
#
# functions.sh puts this directory on PYTHONPATH, so the test scripts'
# inline Python can say "from cbwtest import conn, status".

import json
import os
import time

import nbd


def conn(uri, meta=False):
    """Connect to URI; with META, ask for base:allocation too."""
    h = nbd.NBD()
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


def status(uri=None):
    """The cbw-status JSON object (at $status_uri by default)."""
    h = conn(uri or os.environ["status_uri"])
    s = json.loads(h.pread(4096, 0))
    h.shutdown()
    return s


def end_snapshot(sn, uri=None):
    """Close SN, the last client of "snapshot", and wait until cbw has
    ended the snapshot.  The server handles the close after shutdown()
    returns, so a connection opened before then would join the old
    point in time instead of taking a new one.
    """
    sn.shutdown()
    while status(uri)["state"] != "none":
        time.sleep(0.05)
