#!/usr/bin/env bash
# nbdkit-fleece: the status record of cbw, and its one parser.
# SPDX-License-Identifier: BSD-3-Clause
#
# The layers above cbw read its "cbw-status" export with
# cbw_status_parse (common/cbw-contract.c).  This checks that what a
# running cbw serves parses, with the values of the moment, and that
# the parser refuses what is not a record of its version (and ignores
# members it does not know).

source ./functions.sh
source "$abs_top_srcdir/tests/lib/cbw.sh"
set -e
set -x

cbw_requires

start_live 1M
start_cbw
export writer_uri snap_uri status_uri

parse ()
{
    ./cbw-status-parse
}

# The raw record: "version" first, padded to 4096 bytes.
python3 - > "$tmp/status" <<'PY'
import os, sys
from fleecetest import conn
h = conn(os.environ["status_uri"])
raw = h.pread(4096, 0)
assert len(raw) == 4096 and raw.endswith(b"\n"), raw
assert raw.startswith(b'{"version":1,'), raw
sys.stdout.buffer.write(raw)
h.shutdown()
PY
out="$(parse < "$tmp/status")"
test "$out" = "ok version=1 state=none generation=0 cluster_size=65536 disk_size=1048576 preserved_bytes=0 broken=0 snapshot_contexts=0"

# During a snapshot that preserved one cluster.
python3 - > "$tmp/status" <<'PY'
import os, sys
from fleecetest import conn
sn = conn(os.environ["snap_uri"])
w = conn(os.environ["writer_uri"])
w.pwrite(b"x" * 512, 0)
h = conn(os.environ["status_uri"])
sys.stdout.buffer.write(h.pread(4096, 0))
for c in (h, w, sn):
    c.shutdown()
PY
out="$(parse < "$tmp/status")"
test "$out" = "ok version=1 state=active generation=1 cluster_size=65536 disk_size=1048576 preserved_bytes=65536 broken=0 snapshot_contexts=1"

# Crafted records.
check ()
{
    local want="$1" line="$2" got
    got="$(printf '%s\n' "$line" | parse)"
    case "$got" in
        $want) ;;
        *) echo "$0: parsing $line: got '$got', wanted '$want'"; exit 1 ;;
    esac
}
check 'ok version=1 state=active generation=7 *' \
      '{"version":1,"state":"active","generation":7,"new":"a\"b","x":null,"y":-1.5e3,"z":true}   '
check 'ok version=1 state= generation=0 *' '{"version":1}'
check 'ok version=1 * broken=1 *' '{ "version" : 1 , "broken" : true }'
check 'error: cbw status record version 2, *' '{"version":2,"state":"none"}'
check 'error: the first member is not "version" *' \
      '{"state":"none","version":1}'
check 'error: no "version" member *' '{}'
check 'error: expected a string, number, true, false or null *' \
      '{"version":1,"nested":{"a":1}}'
check 'error: expected a non-negative integer *' \
      '{"version":1,"generation":"7"}'
check 'error: text after the record *' '{"version":1} x'
check "error: expected '{' *" 'not json'
check "error: expected ',' *" '{"version":1'
check 'error: string too long *' \
      '{"version":1,"state":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}'
